# Two commands: `make demo` (the main job) and `make test` (the test suite).
# Each creates .venv and installs the package with torch pinned by constraints.txt;
# the install is skipped while setup.py, constraints.txt and this file are unchanged.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install

install: $(STAMP)

# k-diffusion (the benchmarks' peer) and torch-fidelity (Inception FID) are installed without their
# dependencies: their package imports pull torchvision and more, and the tests use only the modules
# that run without them.
$(STAMP): setup.py constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,diffusers]" torchsde
	$(PY) -m pip install -q -c constraints.txt --no-deps k-diffusion==0.1.1.post1 torch-fidelity==0.4.0
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m sde_diffusion.app.demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q tests
