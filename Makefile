# plmkit: `make demo` runs the end-to-end job, `make test` runs the test suite.
# Both create .venv and install everything on a fresh machine.
#
# torch is installed first, from TORCH_SPEC (pip arguments), so you choose the build:
#   make demo                                    # torch==2.13.0 from PyPI (CPU, or CUDA on Linux x86-64)
#   make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"    # CPU-only, small
#   make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"  # a CUDA build
# A venv made with another TORCH_SPEC is kept: `make clean` first to change it.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

test-fast: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/plmkit demo

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs/demo
