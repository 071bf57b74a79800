"""Real agents for tests: in-process (a real server on a real socket) or as a separate process."""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import threading
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
    """`fleetnas-agent serve` in its own process group, so that a test can SIGKILL or SIGSTOP it.

    `host` is the address it listens on; `wrapper` prefixes the command (e.g. `ip netns exec NAME`).
    """

    def __init__(self, cache_dir: Path, port: int = 0, args: list[str] = (), env: dict | None = None,
                 host: str = "127.0.0.1", wrapper: list[str] = ()):
        self.cache_dir, self.args, self.env = cache_dir, list(args), env
        if "--device-lock" not in self.args:  # each test agent stands for a device of its own
            self.args += ["--device-lock", f"{cache_dir}.device.lock"]
        self.port, self.host, self.wrapper = port, host, list(wrapper)
        self.proc: subprocess.Popen | None = None
        self.log_lines: list[str] = []  # the agent's stderr (its log), read continuously so the pipe never fills
        self._log_reader: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> "AgentProcess":
        cmd = [*self.wrapper, sys.executable, "-m", "fleetnas_agent.cli", "serve", "--host", self.host,
               "--port", str(self.port), "--cache-dir", str(self.cache_dir), "--log-level", "WARNING", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True, env={**os.environ, **(self.env or {})})
        line = _read_line(self.proc, timeout_s)
        if "serving on" not in line:
            if self.proc.poll() is None:  # still starting (or hung): its stderr ends only once it is stopped
                self.kill()
            why = self.proc.stderr.read()[-2000:]
            self.stop()
            raise RuntimeError(f"agent did not start: {line!r} {why}")
        self.port = int(line.rsplit(":", 1)[1])
        self._log_reader = threading.Thread(target=self._read_log, args=(self.proc.stderr,), daemon=True)
        self._log_reader.start()
        return self

    def _read_log(self, stream) -> None:
        try:
            for line in stream:
                self.log_lines.append(line.rstrip("\n"))
        except ValueError:  # closed by stop()
            pass

    @property
    def log(self) -> str:
        return "\n".join(self.log_lines)

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
        if self._log_reader is not None:
            self._log_reader.join(timeout=5)  # the agent has exited: its log reaches end of file
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
