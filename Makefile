# The two set-up commands of the README:
#   make demo   installs everything into .venv and runs the main job (parity check + converted models' timings)
#   make test   installs everything into .venv and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-cuda-emu test-cuda-emu-sanitize test-cuda-emu-mutations test-triton-compile bench lint \
	format check-cpu-only clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps: requirements-dev.txt requirements-bench.txt | $(BIN)/activate
	$(BIN)/python -m pip install -q -r requirements-dev.txt -r requirements-bench.txt
	touch $@

# Editable install: the extension is compiled in place (fusedops/_C*.so), CUDA sources included when a
# toolkit is found (FUSEDOPS_CUDA=0/1 to decide explicitly).
install: $(VENV)/.deps
	$(BIN)/python -m pip install -q --no-build-isolation --no-deps -e .

# The main job: the parity check of every op on every backend this machine runs, then the converted models
# against eager PyTorch, torch.compile (freezing), ONNX Runtime and OpenVINO (fusedops/cli.py). The per-op
# benchmark tables: python -m benchmarks.demo.
DEMO_MODELS = mobilenet_v2 mobilenet_v3_large shufflenet_v2_x1_0 timm:ghostnet_100
demo: install
	$(BIN)/fusedops check
	$(BIN)/fusedops bench --model $(DEMO_MODELS) --batch 1 8 --rounds 5 --csv benchmarks/data/results.csv \
		--png benchmarks/data/models_converted.png

# TRITON_INTERPRET=1 lets the Triton kernels run on CPU tensors, so their parity tests run without a GPU.
# Then the CUDA kernels' tests again, through the CPU emulation of the CUDA execution model.
# The suite's files are shared among TEST_WORKERS processes (pytest-xdist, a whole file per worker, so a file's
# tests run in their order): the interpreted Triton tests are single-threaded Python, which a second process
# overlaps with the rest (2-vCPU Xeon: 364 s instead of 714 s with one process).
TEST_WORKERS ?= 2
CUDA_EMU_TESTS = FUSEDOPS_CUDA_EMU=1 $(BIN)/python -m pytest -q tests/test_cuda_*.py
test: install
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests
	$(CUDA_EMU_TESTS)

# The CUDA kernels' tests on CPU tensors through the test-only emulation of the CUDA execution model
# (csrc/testing/cuda_emu, built by tests/cuda_emu.py with the host compiler), in a process of their own: the
# emulated kernels replace the CPU kernels there.
test-cuda-emu: install
	$(CUDA_EMU_TESTS)

# The same, built with AddressSanitizer + UndefinedBehaviorSanitizer (libasan preloaded into Python; torch's
# own allocations are not instrumented, so leak and allocator-mismatch reports are off). --capture=sys leaves
# file descriptor 2 to the sanitizers: under pytest's default capture a report that ends the process is lost.
# Not in `make test`: ~4 min of CPU plus the sanitized build.
test-cuda-emu-sanitize: install
	LD_PRELOAD=$$(gcc -print-file-name=libasan.so):$$(gcc -print-file-name=libubsan.so) \
	ASAN_OPTIONS=detect_leaks=0:alloc_dealloc_mismatch=0:detect_odr_violation=0 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	FUSEDOPS_CUDA_EMU=1 FUSEDOPS_CUDA_EMU_SANITIZE=1 $(BIN)/python -m pytest -q --capture=sys tests/test_cuda_*.py

# Shows the emulated tests catching bugs injected into copies of the CUDA kernels.
test-cuda-emu-mutations: install
	$(BIN)/python tests/cuda_emu_mutations.py

# Every Triton kernel compiled for sm_80 and sm_90 (no GPU needed).
test-triton-compile: install
	FUSEDOPS_TRITON_GPU_COMPILE=1 $(BIN)/python -m pytest -q tests/test_triton_gpu_compile.py

bench: install
	$(BIN)/python -m benchmarks.bench_depthwise_conv2d

# Style: ruff (pyproject.toml's settings) over the Python, clang-format (.clang-format) over csrc/.
CXX_SOURCES = $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')
lint: $(VENV)/.deps
	$(BIN)/ruff check fusedops tests benchmarks examples setup.py
	$(BIN)/clang-format --dry-run --Werror $(CXX_SOURCES)

format: $(VENV)/.deps
	$(BIN)/ruff check --fix fusedops tests benchmarks examples setup.py
	$(BIN)/clang-format -i $(CXX_SOURCES)

# The build without CUDA kernels (what users without a toolkit get), compiled apart from the main build
# at -O0 without debug info (it checks that the path compiles, links and loads, not its speed; -O0 -g took a third
# longer) and imported from there.
CPU_ONLY_DIR = build/cpu-only
check-cpu-only: $(VENV)/.deps
	rm -rf $(CPU_ONLY_DIR) && mkdir -p $(CPU_ONLY_DIR)
	FUSEDOPS_CUDA=0 FUSEDOPS_OPT=-O0 $(BIN)/python setup.py -q build_ext --build-lib $(CPU_ONLY_DIR)/lib \
		--build-temp $(CPU_ONLY_DIR)/tmp
	cp -r fusedops $(CPU_ONLY_DIR)/pkg && cp $(CPU_ONLY_DIR)/lib/fusedops/_C*.so $(CPU_ONLY_DIR)/pkg/
	rm -rf $(CPU_ONLY_DIR)/run && mkdir -p $(CPU_ONLY_DIR)/run && mv $(CPU_ONLY_DIR)/pkg $(CPU_ONLY_DIR)/run/fusedops
	cd $(CPU_ONLY_DIR)/run && PYTHONPATH=. ../../../$(BIN)/python ../../../tests/cpu_only_smoke.py

clean:
	rm -rf build fusedops/_C*.so *.egg-info

# Reliability checks (tests/test_reliability_*.py).
# make fuzz: the long property-based fuzzing profile, FUZZ_EXAMPLES random examples per op and module against
# the PyTorch composition each replaces (the test suite runs a fixed, smaller set).
FUZZ_EXAMPLES ?= 2000
# make sanitize: the CPU extension built with AddressSanitizer and UndefinedBehaviorSanitizer (in build/sanitize,
# the in-place build is left alone) and the CPU tests of SANITIZE_TESTS run against it; any report fails the run.
# Python is not instrumented, so the sanitizer runtimes are preloaded, and leak checks are off (Python's own).
# Built at -O1 (AddressSanitizer's recommended level): at -O3 the instrumented kernel files take about an hour
# to compile on 2 cores.
SANITIZE_DIR := build/sanitize
SANITIZE_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
SANITIZE_TESTS ?= tests/test_depthwise_conv2d_parity.py tests/test_depthwise_conv2d_cpu_paths.py \
	tests/test_dwpw_conv2d.py tests/test_channel_shuffle.py tests/test_inverted_residual.py tests/test_ghost_module.py \
	tests/test_reliability_fuzz.py tests/test_reliability_special_values.py tests/test_reliability_runtime.py \
	tests/test_reliability_accuracy.py

.PHONY: fuzz sanitize

fuzz: install
	FUSEDOPS_FUZZ_PROFILE=long FUSEDOPS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q \
		-p no:cacheprovider tests/test_reliability_fuzz.py

sanitize: $(VENV)/.deps
	mkdir -p $(SANITIZE_DIR)/lib
	find fusedops -name '*.py' -exec cp --parents {} $(SANITIZE_DIR)/lib/ \;
	FUSEDOPS_CUDA=0 FUSEDOPS_OPT=-O1 CFLAGS="$(SANITIZE_FLAGS)" LDFLAGS="$(SANITIZE_FLAGS)" \
		$(BIN)/python setup.py -q build_ext \
		--build-temp $(SANITIZE_DIR)/temp --build-lib $(SANITIZE_DIR)/lib
	cd $(SANITIZE_DIR)/lib && \
		LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 FUSEDOPS_FUZZ_EXAMPLES=50 \
		$(abspath $(BIN))/python -m pytest -q -p no:cacheprovider -k "not triton and not cuda and not compile and not export" \
		$(addprefix $(CURDIR)/,$(SANITIZE_TESTS))
