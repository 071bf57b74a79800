import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from agents import running_agent  # noqa: E402
from counts import COUNTS, pytest_terminal_summary  # noqa: E402,F401  (the hook prints the tally)


@pytest.fixture
def agent(tmp_path):
    """A real agent on a 127.0.0.1 port, with its own cache; yields (address, config)."""
    with running_agent(tmp_path / "agent-cache") as running:
        yield running


@pytest.fixture(scope="session")
def counts():
    """The session's tally of requests tried, faults injected and failures seen (see tests/counts.py)."""
    return COUNTS


def pytest_unconfigure(config):
    """gRPC calls left in reference cycles are collected while gRPC's threads still run (fleetnas.cli.main's
    reason): at exit their finalisers could wait for ever on a lock a stopped daemon thread holds."""
    import gc

    gc.collect()
