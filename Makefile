# Two entry points for a fresh clone: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The venv's tools first: ninja for the extension build, cmake and ctest for the C++ tests.
WITH_VENV := PATH="$(abspath $(VENV))/bin:$$PATH"
TORCH_VERSION := 2.13.0
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' 2>/dev/null)
EXTENSION_STAMP := $(VENV)/.extension-built
DEPS_STAMP := $(VENV)/.deps-installed

.PHONY: demo test test-python test-cpp bench build clean gpu-check gpu-build gpu-test gpu-pytest gpu-ctest gpu-bench \
  gpu-profile

demo: $(EXTENSION_STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/diffmask demo --plot build/demo/masking.png

test: test-python test-cpp

test-python: $(EXTENSION_STAMP)
	$(PY) -m pytest -q tests

test-cpp: $(DEPS_STAMP)
	$(WITH_VENV) cmake -S . -B build/cpp -DCMAKE_BUILD_TYPE=Debug -DDIFFMASK_SANITIZE=ON > /dev/null
	$(WITH_VENV) cmake --build build/cpp -j 2
	$(WITH_VENV) ctest --test-dir build/cpp --output-on-failure

# On a machine with an NVIDIA GPU and a CUDA build of torch (never part of `make test`):
# gpu-build compiles the extension with its CUDA kernels for this GPU (in place, with GPU_PY, the
# Python that has the CUDA torch); gpu-test runs the CUDA tests (gpu-pytest: failing, not skipping,
# if the kernels are missing) and the C++ kernel tests on the GPU (gpu-ctest: also under
# compute-sanitizer's memcheck, racecheck and synccheck when it is installed); gpu-bench replaces
# the GPU section of benchmarks/RESULTS.md (`make bench` elsewhere keeps it); gpu-profile reads the
# kernels' hardware counters (not part of gpu-check). gpu-check runs every step after the build
# even when one fails, the benchmarks before the slow sanitizers, and fails at the end if any step
# did: a failing test must not cost a GPU session its benchmark numbers.
GPU_PY ?= python3
GPU_JOBS ?= 8
# The system's compilers, not a CXX the environment exports: an extension built by a compiler
# wrapper (/opt/gcc/bin/g++ on one GPU image) crashed the process on its first C++ exception.
GPU_CC ?= cc
GPU_CXX ?= c++
# This GPU's architecture as torch reports it ("90" on an H100): CMake understands "native" only
# from 3.24.
GPU_ARCH ?= $(shell $(GPU_PY) -c "import torch; print('%d%d' % torch.cuda.get_device_capability())" 2>/dev/null \
  || echo native)
# The nvcc torch builds with where none is on PATH (CMake looks only there and in CUDACXX).
GPU_NVCC ?= $(shell command -v nvcc 2>/dev/null || $(GPU_PY) -c "from torch.utils.cpp_extension import CUDA_HOME; \
  import os; print(os.path.join(CUDA_HOME, 'bin', 'nvcc') if CUDA_HOME else '')" 2>/dev/null)

gpu-check:
	$(MAKE) gpu-build
	status=0; \
	$(MAKE) gpu-pytest || status=1; \
	$(MAKE) gpu-bench || status=1; \
	$(MAKE) gpu-ctest || status=1; \
	exit $$status

gpu-build:
	CC=$(GPU_CC) CXX=$(GPU_CXX) DIFFMASK_FAST_CUDA=1 MAX_JOBS=$(GPU_JOBS) $(GPU_PY) setup.py build_ext --inplace
	CC=$(GPU_CC) CXX=$(GPU_CXX) cmake -S . -B build/gpu -DCMAKE_BUILD_TYPE=Release -DDIFFMASK_SANITIZE=OFF \
	  -DDIFFMASK_EMULATED_CUDA=OFF -DCMAKE_CUDA_ARCHITECTURES=$(GPU_ARCH) \
	  $(if $(GPU_NVCC),-DCMAKE_CUDA_COMPILER=$(GPU_NVCC)) > /dev/null
	cmake --build build/gpu -j $(GPU_JOBS)

gpu-test: gpu-pytest gpu-ctest

gpu-pytest:
	DIFFMASK_FAST_REQUIRE_CUDA=1 $(GPU_PY) -m pytest -q -rs tests/test_cuda.py tests/test_masking_module.py \
	  tests/test_compile.py tests/test_ops.py

gpu-ctest:
	@test -x build/gpu/test_cuda_kernels || { echo "build/gpu/test_cuda_kernels was not built: CMake found no nvcc" \
	  "(GPU_NVCC='$(GPU_NVCC)')"; exit 1; }
	ctest --test-dir build/gpu --output-on-failure
	if command -v compute-sanitizer > /dev/null; then \
	  status=0; \
	  for tool in memcheck racecheck synccheck; do \
	    compute-sanitizer --tool $$tool --error-exitcode 1 build/gpu/test_cuda_kernels --quick || status=1; \
	  done; \
	  exit $$status; \
	fi

gpu-bench:
	$(GPU_PY) benchmarks/run.py --only gpu --write

# The hardware counters of each GPU path (Nsight Compute), for tuning: build/gpu/profile.txt.
gpu-profile:
	mkdir -p build/gpu
	ncu --profile-from-start off --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis \
	  --section Occupancy --section LaunchStats $(GPU_PY) benchmarks/profile_gpu.py > build/gpu/profile.txt

bench: $(EXTENSION_STAMP)
	$(PY) benchmarks/run.py --write

build: $(EXTENSION_STAMP)

$(DEPS_STAMP): setup.py requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	# torch first and pinned: an unpinned torch would pull several GB of CUDA packages. Where pip's
	# index serves CUDA builds of torch (PyPI on Linux), install the CPU build into .venv first
	# (pip install torch==$(TORCH_VERSION) --index-url https://download.pytorch.org/whl/cpu).
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q numpy pybind11 ninja cmake -r requirements-dev.txt
	touch $@

$(EXTENSION_STAMP): $(DEPS_STAMP) $(CSRC)
	$(WITH_VENV) $(PIP) install -q --no-build-isolation -e .
	touch $@

clean:
	rm -rf build diffmask_fast/_C*.so *.egg-info
