"""One process at a time: an exclusive advisory lock on a file, which the operating system drops when its
holder dies, however it dies (so what a killed process held can be taken over at once)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


class Busy(ValueError):
    """Another process holds the lock; the message names it."""


@contextmanager
def exclusive(path: str | Path, what: str, wait: bool = False):
    """Holds `path` locked while the block runs; `Busy("{what} is being driven by process N …")` if another
    process holds it, or, with `wait`, once that one lets go (for short edits such as an inventory's).
    Without advisory locks (Windows), one process at a time is the user's care."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is None:
        yield
        return
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise Busy(f"{what} is being driven by {holder}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)
