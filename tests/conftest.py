import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from agents import running_agent  # noqa: E402


@pytest.fixture
def agent(tmp_path):
    """A real agent on a 127.0.0.1 port, with its own cache; yields (address, config)."""
    with running_agent(tmp_path / "agent-cache") as running:
        yield running
