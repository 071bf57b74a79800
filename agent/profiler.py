"""The agent's side of a measurement: the device-wide queue and lock, and the child process that measures.

One measurement runs at a time on a device (anything else running would disturb it); later requests wait
in FIFO order, up to a bound, and every agent on the device takes one lock file while it measures. Each
measurement runs in a fresh child interpreter (`python -m fleetnas_agent.worker`), which is killed with its
whole process group on a deadline or when the client goes away.
"""
from __future__ import annotations

import importlib.util
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator

CHILD_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
AGENT_PID_VAR = "FLEETNAS_AGENT_PID"  # tells the child which process it must not outlive


class ProfileError(Exception):
    """A measurement that failed; `code` is the gRPC status name to answer with, `cause` a `FailureCause` name
    (without its prefix) where the code alone leaves open whose fault it is: the device's or the model's."""

    def __init__(self, code: str, message: str, cause: str | None = None):
        super().__init__(message)
        self.code, self.cause = code, cause


def _default_device_lock() -> Path:
    """One path for every agent on the machine: /run/lock where the system has it for every user (a systemd
    unit's private /tmp and a user's own TMPDIR would each give an agent a lock of its own), else the temporary
    folder (Termux, macOS, a distribution whose /run/lock only root may write)."""
    folder = Path("/run/lock")
    shared = folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)
    return (folder if shared else Path(tempfile.gettempdir())) / "fleetnas-device.lock"


#: Where every agent on a machine locks its device by default (`DeviceLock`).
DEFAULT_DEVICE_LOCK = _default_device_lock()


class DeviceLock:
    """A lock on a file that every agent on the device takes while it measures (`flock`: the system releases
    it however the agent ends). One device may run several agents, one per runtime or thread count, each a
    process of its own: without it they would time their models at once and slow each other, unseen. The
    DeviceQueue orders one agent's requests; this lock orders the agents. `path` None: no lock (an agent that
    is alone on its device by construction, or a platform without advisory locks).

    Agents take turns: a waiter first holds the turnstile (`<lock>.turn`), so that an agent with a backlog of
    its own cannot take the device again the moment it lets go while another waits."""

    POLL_S = 0.05

    def __init__(self, path: Path | None):
        self.path = path if path is not None and importlib.util.find_spec("fcntl") is not None else None

    def check(self) -> None:
        """Raises ValueError, naming the files, where the lock cannot be taken at all."""
        if self.path is not None:
            try:
                for path in self._files():
                    os.close(self._open(path))
            except OSError as exc:
                raise ValueError(f"cannot use the device lock {exc.filename or self.path}: {exc.strerror or exc} "
                                 "(give --device-lock a file every agent on this device can open, or 'none')") from None

    def _files(self) -> tuple[Path, Path]:
        return self.path, self.path.with_name(self.path.name + ".turn")

    @staticmethod
    def _open(path: Path) -> int:
        """Read-only is enough to lock. An existing file is opened without O_CREAT: Linux refuses O_CREAT on
        another user's file in a sticky folder such as /tmp (fs.protected_regular), even to root."""
        try:
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            pass
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # another agent made it meanwhile
            return os.open(path, os.O_RDONLY)
        os.fchmod(fd, 0o644)  # readable, so lockable, by every user's agent whatever this one's umask
        return fd

    @contextmanager
    def held(self, cancelled: Callable[[], bool], on_wait: Callable[[], None], wait_s: float) -> Iterator[None]:
        """Holds the lock for the block; `on_wait` is called once if another agent holds it first.
        ProfileError CANCELLED when the caller leaves while waiting, RESOURCE_EXHAUSTED (the device is busy)
        after `wait_s`, UNAVAILABLE where the lock file cannot be opened."""
        if self.path is None:
            yield
            return
        main, turn = self._files()
        try:
            device_fd, turn_fd = self._open(main), self._open(turn)
        except OSError as exc:
            raise ProfileError("UNAVAILABLE", f"cannot open the device lock {exc.filename}: "
                                              f"{exc.strerror or exc}") from None
        try:
            waiting = _Waiting(cancelled, on_wait, wait_s)
            self._take(turn_fd, waiting)
            try:
                self._take(device_fd, waiting)
            finally:
                os.close(turn_fd)  # the next waiter's turn; closing releases the lock
                turn_fd = None
            yield
        finally:
            if turn_fd is not None:
                os.close(turn_fd)
            os.close(device_fd)  # releases the device

    def _take(self, fd: int, waiting: "_Waiting") -> None:
        import fcntl

        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                waiting.check()
                time.sleep(self.POLL_S)  # flock cannot wait with a timeout; a short poll keeps cancelling possible


class _Waiting:
    """One wait for the device lock: said once, cancelled with the call, bounded."""

    def __init__(self, cancelled: Callable[[], bool], on_wait: Callable[[], None], wait_s: float):
        self.cancelled, self.on_wait, self.wait_s = cancelled, on_wait, wait_s
        self.since: float | None = None

    def check(self) -> None:
        if self.since is None:
            self.since = time.monotonic()
            self.on_wait()
        if self.cancelled():
            raise ProfileError("CANCELLED", "the client left while another agent measured on this device")
        if time.monotonic() - self.since > self.wait_s:
            raise ProfileError("RESOURCE_EXHAUSTED", f"another agent on this device has measured for more than "
                                                     f"{self.wait_s:g} s; try later, or on a peer",
                               cause="DEVICE_BUSY")


class DeviceQueue:
    """A FIFO lock with a bounded number of waiters."""

    #: How often a waiter is told its place again while the request ahead holds the device within its bound:
    #: a client's watchdog takes silence for a frozen agent (agent/client.py), and a measurement ahead may run
    #: far longer than the waiter's own.
    HEARTBEAT_S = 5.0

    def __init__(self, max_waiting: int):
        self.max_waiting = max_waiting
        self._cond = threading.Condition()
        self._waiting: deque[object] = deque()
        self._busy = False
        self._holder_until = 0.0  # monotonic time by which the holder must have released the device

    def wait_turn(self, cancelled: Callable[[], bool], hold_s: float) -> Iterator[int]:
        """Yields the number of requests ahead whenever it changes, and again every HEARTBEAT_S while the
        request holding the device is within its `hold_s` (what it may take); returns holding the device. A
        holder past its bound (a measurement that does not end) gets no heartbeat said for it: the waiters'
        watchdogs then see the queue stand still, as it does.

        Raises ProfileError(RESOURCE_EXHAUSTED) when the queue is full, CANCELLED when the caller leaves.
        Callers must call release() after the generator finishes normally.
        """
        ticket = object()
        with self._cond:
            # Counted as if the device were taken: just after release() it is not, yet its next owner is among
            # the waiters, and those admitted meanwhile would then stand beyond the bound.
            taken_or_next = len(self._waiting) + (1 if self._busy else 0)  # the measuring one or its next owner,
            if taken_or_next > self.max_waiting:                            # and those who wait behind it
                raise ProfileError("RESOURCE_EXHAUSTED", f"the device is busy and {taken_or_next - 1} "
                                                         f"measurements already wait (limit {self.max_waiting})",
                                   cause="DEVICE_BUSY")
            self._waiting.append(ticket)
        reported, reported_at = None, 0.0
        try:
            while True:
                with self._cond:
                    if not self._busy and self._waiting[0] is ticket:
                        self._waiting.popleft()
                        self._busy = True
                        self._holder_until = time.monotonic() + hold_s
                        return
                    ahead = self._waiting.index(ticket) + (1 if self._busy else 0)
                    now = time.monotonic()
                    heartbeat = now - reported_at >= self.HEARTBEAT_S and now < self._holder_until
                    if ahead == reported and not heartbeat:
                        # Woken by release(), leave(), or the periodic check for a client that left.
                        self._cond.wait(timeout=min(1.0, self.HEARTBEAT_S))
                        if cancelled():
                            raise ProfileError("CANCELLED", "the client left while queued")
                        continue
                reported, reported_at = ahead, time.monotonic()
                yield ahead
        except BaseException:
            with self._cond:
                if ticket in self._waiting:
                    self._waiting.remove(ticket)
                self._cond.notify_all()
            raise

    def release(self) -> None:
        with self._cond:
            self._busy = False
            self._holder_until = 0.0
            self._cond.notify_all()

    def wake(self) -> None:
        """Lets waiters re-check whether their client is still there."""
        with self._cond:
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)


class Outbox:
    """What a measurement has to tell its client, handed from the thread that measures to the one that sends.

    The measuring thread never waits for the client: a client that reads slowly (or not at all) must not stop
    it from enforcing its deadline and releasing the device. Progress is a snapshot, so an unsent one is
    replaced by a newer one of the same kind (phase); a change of phase is kept, so each phase is reported.
    The outcome, put last, is never dropped, and replaces whatever progress is still unsent.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._pending: list[tuple[Hashable, Any]] = []
        self._outcome: Any = None
        self.closed = threading.Event()  # set by the sender once it sends no more: done, or its client left

    def progress(self, kind: Hashable, event: Any) -> None:
        with self._cond:
            if self._pending and self._pending[-1][0] == kind:
                self._pending[-1] = (kind, event)
            else:
                self._pending.append((kind, event))
            self._cond.notify_all()

    def finish(self, outcome: Any) -> None:
        with self._cond:
            self._outcome = outcome
            self._cond.notify_all()

    def take(self) -> tuple[bool, Any]:
        """(True, the outcome) once there is one, else (False, the oldest unsent progress); waits for either."""
        with self._cond:
            while self._outcome is None and not self._pending:
                self._cond.wait()
            if self._outcome is not None:
                return True, self._outcome
            return False, self._pending.pop(0)[1]


def run_child(request: dict, threads: int, timeout_s: float, cancelled: Callable[[], bool]) -> Iterator[dict]:
    """Runs one measurement in a child process; yields its progress dicts, then returns its result dict."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{AGENT_PID_VAR: str(os.getpid())},
               **{var: str(threads) for var in CHILD_THREAD_VARS})
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen([sys.executable, "-m", "fleetnas_agent.worker"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=stderr, env=env, start_new_session=True)
        lines: queue.Queue[bytes | None] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(child.stdout, lines), daemon=True)
        reader.start()
        try:
            child.stdin.write(json.dumps(request).encode())
            child.stdin.close()
        except BrokenPipeError:
            pass
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    line = lines.get(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
                except queue.Empty:
                    line = b""
                if line is None:  # the child closed its output: it has finished or died
                    break
                if line:
                    message = json.loads(line)
                    if "progress" in message:
                        yield message["progress"]
                    elif "error" in message:
                        error = message["error"]
                        raise ProfileError(error["code"], error["message"], error.get("cause"))
                    else:
                        return message["result"]
                if cancelled():
                    raise ProfileError("CANCELLED", "the client went away during the measurement")
                if time.monotonic() >= deadline:
                    raise ProfileError("DEADLINE_EXCEEDED", f"the measurement did not finish within {timeout_s:.3g} s "
                                                            "(a hanging model?); its process was killed",
                                       cause="MODEL_TIMEOUT")
            returncode = child.wait(timeout=30)
            stderr.seek(0)
            raise ProfileError(*_death(returncode, stderr.read()[-2000:].decode(errors="replace")))
        finally:
            _kill(child)
            reader.join(timeout=5)


def _pump(stream, lines: queue.Queue) -> None:
    for line in iter(stream.readline, b""):
        lines.put(line)
    lines.put(None)


def _kill(child: subprocess.Popen) -> None:
    """Kills the child and anything it started, and reaps it, so no process outlives its measurement."""
    if child.poll() is None:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    child.wait()


#: Signals that stop a process from outside, as a machine stopping its services does: not the model's fault.
STOP_SIGNALS = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT}


def _death(returncode: int, stderr_tail: str) -> tuple[str, str, str | None]:
    """The status, message and failure cause for a child that ended without a result."""
    if returncode < 0:
        sig = signal.Signals(-returncode)
        if sig == signal.SIGKILL:  # the agent kills on a deadline only after reporting it: the OOM killer, mostly
            return ("RESOURCE_EXHAUSTED", f"the measuring process was killed ({sig.name}), most likely out of memory",
                    "KILLED")
        if sig in STOP_SIGNALS:
            return "UNAVAILABLE", f"the measuring process was stopped by {sig.name}", None
        return "INVALID_ARGUMENT", f"the model crashed its runtime ({sig.name})", "MODEL_CRASHED"
    last = stderr_tail.strip().splitlines()[-1:] or ["no output"]
    return "INTERNAL", f"the measuring process exited with code {returncode}: {last[0]}", None
