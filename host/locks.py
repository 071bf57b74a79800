"""One process at a time: an exclusive advisory lock on a file, which the operating system drops when its
holder dies, however it dies (so what a killed process held can be taken over at once).

The holder deletes the file when it lets go, so that locks taken once per search run do not pile up beside
the database. Deleting a lock file races with a process that opened it just before: that process would then
lock a file no longer at the path while a third process locks a new one there. So a process that got the lock
checks that the file it locked is still the one at the path, and starts again if it is not.
"""
from __future__ import annotations

import os
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None


#: How long a lock may stay taken before its taker is called busy (see `_lock_now`).
BUSY_GRACE_S = 0.2


class Busy(ValueError):
    """Another process holds the lock; the message names it."""


@contextmanager
def exclusive(path: str | Path, what: str, wait: bool = False):
    """Holds `path` locked while the block runs; `Busy("{what} is being driven by process N …")` if another
    process holds it, or, with `wait`, once that one lets go (for short edits such as an inventory's).
    Without advisory locks (Windows), one process at a time is the user's care."""
    if fcntl is None:
        yield
        return
    path = Path(path).absolute()  # the block may change the working folder before the file is deleted
    handle = _lock(path, what, wait)
    try:
        handle.write(f"process {os.getpid()}")
        handle.flush()
        yield
    finally:
        try:
            os.unlink(path)  # still locked: whoever opens the path next gets a new file
        except FileNotFoundError:
            pass
        finally:
            handle.close()  # closing lets go of the lock


@contextmanager
def lease(path: str | Path | None, what: str, busy: Callable[[Busy], Exception]):
    """`exclusive(path, what)` for a long piece of work (a search run, a watch), whose Busy on entry becomes
    `busy(exc)`, the caller's own error; nothing to hold where path is None (no file on this machine)."""
    if path is None:
        yield
        return
    held = ExitStack()
    try:
        held.enter_context(exclusive(path, what))
    except Busy as exc:
        raise busy(exc) from None
    with held:  # Busy raised inside the block is the block's own, not this lock's
        yield


def beside_store(store, suffix: str) -> str | None:
    """A lock file beside the store's database, `<database>.<suffix>.lock`, named after the resolved path (a
    symbolic link to the database must meet the same lock); None for a store that is no file on this machine."""
    db = getattr(store, "path", None)
    if db is None or str(db) == ":memory:":
        return None
    return f"{Path(db).resolve()}.{suffix}.lock"


def holder(path: str | Path) -> str | None:
    """Who holds the lock at `path` ("process N"), or None when no process does. Only reads: it works where
    the lock could not be taken, such as on read-only media (where no process can be holding it to write)."""
    if fcntl is None:
        return None
    try:
        handle = open(path)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _signature(handle)
        return None  # a file left by a holder that died before deleting it; closing unlocks it


def _lock(path: Path, what: str, wait: bool):
    """An open handle on `path`, locked and still the file at the path, truncated for the holder to sign."""
    while True:
        handle = open(path, "a+")
        try:
            if wait:
                fcntl.flock(handle, fcntl.LOCK_EX)
            else:
                _lock_now(handle, what)
        except BaseException:
            handle.close()
            raise
        if _still_at(handle, path):
            handle.seek(0)
            handle.truncate()
            return handle
        handle.close()  # its holder deleted it while this process waited: lock the new one


def _lock_now(handle, what: str) -> None:
    """Locks `handle` or raises Busy. A `holder` probe holds the lock for microseconds; a real holder keeps it
    for as long as its work takes. So a lock still taken after BUSY_GRACE_S is a holder's."""
    deadline = time.monotonic() + BUSY_GRACE_S
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise Busy(f"{what} is being driven by {_signature(handle)}") from None
            time.sleep(0.01)


def _signature(handle) -> str:
    """What the lock's holder wrote into the file ("process N")."""
    handle.seek(0)
    return handle.read().strip() or "another process"


def _still_at(handle, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False
