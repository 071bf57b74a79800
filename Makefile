# The two set-up commands: `make demo` (the main job) and `make test` (the test suite).
# Each builds its own virtual environment in .venv on first use. `make test-oldest` runs the agent's tests on the
# oldest gRPC and protobuf it supports, in .venv-oldest (CI runs both test targets).
VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

OLDEST := .venv-oldest

.PHONY: demo test test-oldest bench

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

# The agent's tests on the oldest gRPC and protobuf it supports (tests/oldest-runtimes.txt), in .venv-oldest.
test-oldest: $(OLDEST)/.installed
	$(OLDEST)/bin/python -m pytest tests/test_agent_cli.py tests/test_agent_service.py tests/test_agent_units.py \
		tests/test_agent_security.py tests/test_security_auth.py tests/test_security_fuzz.py \
		tests/test_reliability_faults.py tests/test_reliability_load.py tests/test_device_lock.py

$(OLDEST)/.installed: pyproject.toml setup.py tests/oldest-runtimes.txt
	python3 -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet torch==2.13.0
	$(OLDEST)/bin/python -m pip install --quiet -e '.[dev,protos]' -c tests/oldest-runtimes.txt
	touch $@
