# hessext: every target sets up .venv idempotently, then runs.
#   make test    lint (ruff E, F, I) + build + run the test suite (compiled backend, then HESSEXT_FORCE_PYTHON=1)
#   make demo    train a tiny transformer and write a Hessian report to ./hessext-demo
#   make bench   kernel and engine benchmarks (installs the peer libraries into the venv)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH  ?= torch==2.13.0
export CUDA_HOME ?= /usr/local/cuda
BASE_STAMP  = $(VENV)/.base-installed
BUILD_STAMP = $(VENV)/.hessext-installed
BENCH_STAMP = $(VENV)/.bench-installed
SOURCES = setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

LINT_STAMP = $(VENV)/.lint-installed

.PHONY: venv install lint test test-compiled test-python demo bench bench-kernels bench-engine cuda-check info clean

venv: $(BASE_STAMP)
$(BASE_STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q numpy scipy tqdm matplotlib pytest "transformers>=5"
	touch $@

install: $(BUILD_STAMP)
$(BUILD_STAMP): $(BASE_STAMP) $(SOURCES)
	$(BIN)/pip install -q --no-build-isolation -e .
	touch $@

# ruff (rules E, F, I; pyproject.toml) over the package, tests, benchmarks, examples and tools.
$(LINT_STAMP): $(BASE_STAMP)
	$(BIN)/pip install -q ruff
	touch $@

lint: $(LINT_STAMP)
	$(BIN)/ruff check hessext tests benchmarks examples tools setup.py

test: install lint
	$(MAKE) test-compiled test-python

# pytest exits 5 when it collects no test: that is not a failure of the build.
# One OpenMP thread per test process: the tiny test models gain nothing from threads, and the distributed
# tests run several processes at once (measured: 2 threads per process on 2 busy cores made a gradient of a
# 16k-parameter model 300x slower, 0.33 s instead of 1.1 ms).
test-compiled: install
	$(BIN)/python -m hessext info
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q tests || [ $$? -eq 5 ]

test-python: install
	HESSEXT_FORCE_PYTHON=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q tests || [ $$? -eq 5 ]

demo: install
	$(BIN)/python -m hessext demo

$(BENCH_STAMP): $(BUILD_STAMP)
	# Peers for the side-by-side benchmark. curvlinops' hard dependency backpack pulls a torchvision built
	# for another torch (it breaks on import); the parts of curvlinops we use need neither, so the peers are
	# installed without dependencies and their real runtime dependencies are named here.
	$(BIN)/pip install -q --no-deps pyhessian==0.1 hessian-eigenthings==1.0.0a5 curvlinops-for-pytorch==3.0.1
	$(BIN)/pip install -q einops einconv linear_operator opt_einsum "$(TORCH)"
	touch $@

bench: bench-kernels bench-engine

bench-kernels: install
	$(BIN)/python benchmarks/bench_kernels.py

bench-engine: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench_engine.py

cuda-check: $(BASE_STAMP)
	$(BIN)/python tools/cuda_check.py

# First contact with a CUDA device (tools/gpu_check.py, < 5 min): rebuild for the device's architecture, CUDA
# tests, kernel benchmark against the measured copy bandwidth, Lanczos / trace / analyze_step GPU vs CPU.
# Without CUDA it says so and exits 0. Uses the venv when there is one, else $(PYTHON) as it is: a borrowed GPU
# machine has its own CUDA torch (2.11 there; the build targets it, see setup.py) and cannot download the venv's.
.PHONY: gpu-check
gpu-check:
	@if [ -x $(BIN)/python ]; then $(BIN)/python tools/gpu_check.py; else $(PYTHON) tools/gpu_check.py; fi

info: install
	$(BIN)/python -m hessext info

clean:
	rm -rf build *.egg-info hessext/_C*.so $(BUILD_STAMP)
