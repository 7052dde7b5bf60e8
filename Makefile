# The two set-up commands of the README:
#   make demo   installs everything into .venv and runs the main job (parity check + benchmark tables)
#   make test   installs everything into .venv and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Benchmarks run under this allocator setting (see benchmarks/harness.py): both sides of every ratio alike.
FAULT_FREE_MALLOC := glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184

.PHONY: install demo test bench clean

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

bench: install
	GLIBC_TUNABLES=$(FAULT_FREE_MALLOC) $(BIN)/python -m benchmarks.bench_depthwise_conv2d

clean:
	rm -rf build fusedops/_C*.so *.egg-info
