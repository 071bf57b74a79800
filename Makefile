# The two set-up commands: `make demo` (the main job) and `make test` (the test suite).
# Each builds its own virtual environment in .venv on first use.
VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench

demo: $(STAMP)
	$(VENV)/bin/fleetnas demo

test: $(STAMP)
	$(PYTHON) -m pytest

$(STAMP): pyproject.toml setup.py
	python3 -m venv $(VENV)
	# torch first, pinned: this build is a local CPU wheel; an unpinned request could fetch a multi-GB CUDA build.
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)
