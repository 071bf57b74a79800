"""A user-style super-network plugin for tests, installed into a temporary directory on PYTHONPATH.

Registers through the `fleetnas.supernets` entry point group exactly as a user's package would, and
provides networks that misbehave on purpose: one crashes its process, one hangs, one runs out of memory as
Python sees it (MemoryError), one is ended as the kernel's OOM killer ends it (SIGKILL), one as a machine
stopping its services ends it (SIGTERM).
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

MODULE = '''
import os, signal, threading


class _Plugin:
    def __init__(self, behaviour):
        self.behaviour = behaviour

    def build(self, config, weights=None):
        import torch
        if self.behaviour == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        if self.behaviour == "hang":
            threading.Event().wait()
        if self.behaviour == "oom":
            raise MemoryError()
        if self.behaviour == "killed":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.behaviour == "terminated":
            os.kill(os.getpid(), signal.SIGTERM)
        return torch.nn.Linear(4, 4)


CRASH = _Plugin("crash")
HANG = _Plugin("hang")
OOM = _Plugin("oom")
KILLED = _Plugin("killed")
TERMINATED = _Plugin("terminated")
TINY = _Plugin("tiny")
'''


def install_plugin(root: Path) -> Path:
    """Writes the plugin module and its dist-info under `root`; put `root` on PYTHONPATH to activate it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "fleetnas_test_plugin.py").write_text(textwrap.dedent(MODULE))
    info = root / "fleetnas_test_plugin-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fleetnas-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[fleetnas.supernets]\n"
        "test-crash = fleetnas_test_plugin:CRASH\n"
        "test-hang = fleetnas_test_plugin:HANG\n"
        "test-oom = fleetnas_test_plugin:OOM\n"
        "test-killed = fleetnas_test_plugin:KILLED\n"
        "test-terminated = fleetnas_test_plugin:TERMINATED\n"
        "test-tiny = fleetnas_test_plugin:TINY\n")
    return root


def spec(space: str) -> bytes:
    return json.dumps({"space": space, "config": {},
                       "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}]}).encode()
