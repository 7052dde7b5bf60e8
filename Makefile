# The two set-up commands of the README:
#   make demo   installs everything into .venv and runs the main job (parity check + benchmark tables)
#   make test   installs everything into .venv and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Benchmarks run under this allocator setting (see benchmarks/harness.py): both sides of every ratio alike.
FAULT_FREE_MALLOC := glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184

.PHONY: install demo test test-cuda-emu test-cuda-emu-sanitize test-cuda-emu-mutations test-triton-compile bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps: requirements-dev.txt requirements-bench.txt | $(BIN)/activate
	$(BIN)/python -m pip install -q -r requirements-dev.txt -r requirements-bench.txt
	touch $@

# Editable install: the extension is compiled in place (fusedops/_C*.so), CUDA sources included when a
# toolkit is found (FUSEDOPS_CUDA=0/1 to decide explicitly).
install: $(VENV)/.deps
	$(BIN)/python -m pip install -q --no-build-isolation --no-deps -e .

demo: install
	GLIBC_TUNABLES=$(FAULT_FREE_MALLOC) $(BIN)/python -m benchmarks.demo

# TRITON_INTERPRET=1 lets the Triton kernels run on CPU tensors, so their parity tests run without a GPU.
test: install
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q tests

# The CUDA kernels' tests on CPU tensors through the test-only emulation of the CUDA execution model
# (csrc/testing/cuda_emu, built by tests/cuda_emu.py with the host compiler), in a process of their own: the
# emulated kernels replace the CPU kernels there.
test-cuda-emu: install
	FUSEDOPS_CUDA_EMU=1 $(BIN)/python -m pytest -q tests/test_cuda_*.py

# The same, built with AddressSanitizer + UndefinedBehaviorSanitizer (libasan preloaded into Python; torch's
# own allocations are not instrumented, so leak and allocator-mismatch reports are off).
test-cuda-emu-sanitize: install
	LD_PRELOAD=$$(gcc -print-file-name=libasan.so):$$(gcc -print-file-name=libubsan.so) \
	ASAN_OPTIONS=detect_leaks=0:alloc_dealloc_mismatch=0:detect_odr_violation=0 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	FUSEDOPS_CUDA_EMU=1 FUSEDOPS_CUDA_EMU_SANITIZE=1 $(BIN)/python -m pytest -q tests/test_cuda_*.py

# Shows the emulated tests catching bugs injected into copies of the CUDA kernels.
test-cuda-emu-mutations: install
	$(BIN)/python tests/cuda_emu_mutations.py

# Every Triton kernel compiled for sm_80 and sm_90 (no GPU needed).
test-triton-compile: install
	FUSEDOPS_TRITON_GPU_COMPILE=1 $(BIN)/python -m pytest -q tests/test_triton_gpu_compile.py

bench: install
	GLIBC_TUNABLES=$(FAULT_FREE_MALLOC) $(BIN)/python -m benchmarks.bench_depthwise_conv2d

clean:
	rm -rf build fusedops/_C*.so *.egg-info
