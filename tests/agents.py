"""Real agents for tests: in-process (a real server on a real socket) or as a separate process."""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from fleetnas_agent.server import AgentConfig, build_server


@contextmanager
def running_agent(cache_dir: Path, **overrides):
    """An agent serving in this process on 127.0.0.1; yields (address, config)."""
    config = replace(AgentConfig(port=0, cache_dir=cache_dir, label="test-agent"), **overrides)
    server, port = build_server(config)
    try:
        yield f"127.0.0.1:{port}", config
    finally:
        server.stop(grace=None).wait()


class AgentProcess:
    """`fleetnas-agent serve` in its own process group, so that a test can SIGKILL or SIGSTOP it."""

    def __init__(self, cache_dir: Path, port: int = 0, args: list[str] = (), env: dict | None = None):
        self.cache_dir, self.args, self.env = cache_dir, list(args), env
        self.port = port
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> "AgentProcess":
        cmd = [sys.executable, "-m", "fleetnas_agent.cli", "serve", "--port", str(self.port),
               "--cache-dir", str(self.cache_dir), "--log-level", "WARNING", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True, env={**os.environ, **(self.env or {})})
        line = _read_line(self.proc, timeout_s)
        if "serving on" not in line:
            self.stop()
            raise RuntimeError(f"agent did not start: {line!r} {self.proc.stderr.read()[-2000:]}")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the agent and everything it started, as a power cut would."""
        if self.proc and self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc:
            for stream in (self.proc.stdout, self.proc.stderr):
                stream.close()

    def __enter__(self) -> "AgentProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _read_line(proc: subprocess.Popen, timeout_s: float) -> str:
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            return ""
    return proc.stdout.readline().strip()
