"""Faults for tests to inject: a network cable pulled, a full disk, a database locked by another process;
and the observations that prove nothing leaked (measuring processes, open files).

The network and disk faults need root (network namespaces, tmpfs mounts); `NetworkCut.available()` and
`SmallDisk.available()` say whether this machine allows them, so that tests can fall back or skip. Read-only
media (`on_read_only_mount`) need only Linux's unshare, and skip the test where it cannot mount.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

WORKER = "fleetnas_agent.worker"


def wait_until(condition, timeout_s: float = 60.0, what: str = "condition") -> None:
    """Polls an observable condition (never a fixed sleep); raises AssertionError past the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def workers_of(pid: int) -> list[psutil.Process]:
    """Measuring children of one process (an agent process, or this one for in-process agents)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    alive = []
    for child in children:
        try:
            if WORKER in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.Error:
            continue
    return alive


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


#: on_read_only_mount's exit status where the mount could not be made (the test is skipped).
CANNOT_MOUNT = 97


def on_read_only_mount(source: Path, target: Path, script: str, timeout_s: float = 600.0):
    """Runs the shell `script` where folder `target` shows `source` read-only: a bind mount in a mount namespace of
    its own, so nothing outside sees it and nothing stays mounted. Skips the test where unshare or the mount is
    refused; a mount that can be written is an error (the script would test nothing)."""
    import pytest

    if sys.platform != "linux" or shutil.which("unshare") is None:
        pytest.skip("needs Linux's unshare to mount a folder read-only")
    Path(target).mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["unshare", "--map-root-user", "--mount", "sh", "-c",
         f"mount --bind -o ro {source} {target} || exit {CANNOT_MOUNT}\n"
         f"touch {target}/probe 2>/dev/null && {{ echo 'the read-only mount can be written' >&2; exit 9; }}\n"
         f"{script}"], capture_output=True, text=True, timeout=timeout_s)
    if done.returncode == CANNOT_MOUNT or (done.returncode and done.stderr.startswith("unshare:")):
        pytest.skip(f"cannot mount a folder read-only here: {done.stderr.strip()}")
    assert "the read-only mount can be written" not in done.stderr
    return done


def _root_can(*cmd: str) -> bool:
    if os.geteuid() != 0 or shutil.which(cmd[0]) is None:
        return False
    return subprocess.run(cmd, capture_output=True).returncode == 0


class NetworkCut:
    """A network namespace joined to this one by a veth pair, like a device on its own cable.

    A process started with `wrapper` runs inside it and is reachable at `agent_ip`; `cut()` takes the
    device's end of the link down (its packets are silently dropped: no reset, no ICMP, as with a pulled
    cable), `restore()` brings it back. Addresses come from 198.18.0.0/15, reserved for network tests.
    """

    def __init__(self):
        n = os.getpid() % 16000
        self.name = f"fleetnas-cut-{os.getpid()}"
        self.host_if, self.agent_if = f"fnh{n}", f"fna{n}"
        base = f"198.{18 + n // 8000}.{n % 8000 // 32}.{n % 32 * 8}"
        prefix, last = base.rsplit(".", 1)
        self.host_ip, self.agent_ip = f"{prefix}.{int(last) + 1}", f"{prefix}.{int(last) + 2}"
        self.wrapper = ["ip", "netns", "exec", self.name]

    @staticmethod
    def available() -> bool:
        probe = f"fleetnas-probe-{os.getpid()}"
        if not _root_can("ip", "netns", "add", probe):
            return False
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
        return True

    def _ip(self, *args: str, inside: bool = False) -> None:
        cmd = [*self.wrapper, "ip", *args] if inside else ["ip", *args]
        subprocess.run(cmd, check=True, capture_output=True)

    def __enter__(self) -> "NetworkCut":
        self._ip("netns", "add", self.name)
        try:
            self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.agent_if, "netns", self.name)
            self._ip("addr", "add", f"{self.host_ip}/29", "dev", self.host_if)
            self._ip("link", "set", self.host_if, "up")
            self._ip("addr", "add", f"{self.agent_ip}/29", "dev", self.agent_if, inside=True)
            self._ip("link", "set", self.agent_if, "up", inside=True)
            self._ip("link", "set", "lo", "up", inside=True)
        except BaseException:
            self.__exit__()
            raise
        return self

    def cut(self) -> None:
        self._ip("link", "set", self.agent_if, "down", inside=True)

    def restore(self) -> None:
        self._ip("link", "set", self.agent_if, "up", inside=True)

    def __exit__(self, *exc) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


class SmallDisk:
    """A tmpfs of `size_kib` mounted on `path`: a disk that fills up."""

    def __init__(self, path: Path, size_kib: int):
        self.path, self.size_kib = Path(path), size_kib

    @staticmethod
    def available(scratch: Path) -> bool:
        probe = Path(scratch) / "tmpfs-probe"
        probe.mkdir(parents=True, exist_ok=True)
        if not _root_can("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)):
            return False
        subprocess.run(["umount", str(probe)], capture_output=True)
        return True

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave_bytes: int) -> Path:
        """Fills the disk with a file until only about `leave_bytes` are free."""
        filler = self.path / "filler"
        with filler.open("ab") as f:
            f.write(b"\0" * max(0, self.free_bytes() - leave_bytes))
        return filler

    def __enter__(self) -> "SmallDisk":
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_kib}k", "tmpfs", str(self.path)], check=True,
                       capture_output=True)
        return self

    def __exit__(self, *exc) -> None:
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


LOCK_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")  # the database's write lock, held until told
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


class DatabaseLock:
    """Another process holding a SQLite database's write lock until `release()`."""

    def __init__(self, path: Path):
        self.path = path
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "DatabaseLock":
        self.proc = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(self.path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "locked":
            self.proc.kill()
            raise RuntimeError(f"could not lock {self.path}: {line!r}")
        return self

    def release(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)

    def __exit__(self, *exc) -> None:
        self.release()
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.stdout.close()
