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

