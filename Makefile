# Two commands: `make demo` (the main job) and `make test` (the test suite).
# Each creates .venv and installs the package with torch pinned by constraints.txt;
# the install is skipped while setup.py and constraints.txt are unchanged.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,diffusers]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m sde_diffusion.app.demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q tests
