# Two entry points for a fresh clone: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION := 2.13.0
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' 2>/dev/null)
EXTENSION_STAMP := $(VENV)/.extension-built
DEPS_STAMP := $(VENV)/.deps-installed

.PHONY: demo test test-python test-cpp bench build clean

demo: $(EXTENSION_STAMP)
	$(VENV)/bin/diffmask demo

test: test-python test-cpp

test-python: $(EXTENSION_STAMP)
	$(PY) -m pytest -q tests

test-cpp:
	cmake -S . -B build/cpp -DCMAKE_BUILD_TYPE=Debug -DDIFFMASK_SANITIZE=ON > /dev/null
	cmake --build build/cpp -j 2
	ctest --test-dir build/cpp --output-on-failure

bench: $(EXTENSION_STAMP)
	$(PY) benchmarks/run.py --write

build: $(EXTENSION_STAMP)

$(DEPS_STAMP): setup.py requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	# torch first and pinned: an unpinned torch would pull several GB of CUDA packages.
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q numpy pybind11 ninja -r requirements-dev.txt
	touch $@

$(EXTENSION_STAMP): $(DEPS_STAMP) $(CSRC)
	$(PIP) install -q --no-build-isolation -e .
	touch $@

clean:
	rm -rf build diffmask_fast/_C*.so *.egg-info
