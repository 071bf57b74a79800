"""File locks: one holder at a time, nothing left behind, and no two holders when a lock file is deleted
while another process waits on it."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from fleetnas.locks import Busy, exclusive, holder

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="advisory file locks are POSIX")


def test_a_lock_names_its_holder_and_leaves_no_file_behind(tmp_path):
    path = tmp_path / "x.lock"
    with exclusive(path, "the job"):
        assert holder(path) == f"process {os.getpid()}"
        with pytest.raises(Busy, match=f"the job is being driven by process {os.getpid()}"):
            with exclusive(path, "the job"):
                pass
    assert not path.exists() and holder(path) is None
    with exclusive(path, "the job"):  # free again
        pass


def test_a_lock_file_left_by_a_killed_holder_holds_nothing(tmp_path):
    path = tmp_path / "x.lock"
    holding = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom fleetnas.locks import exclusive\n"
                               "with exclusive(sys.argv[1], 'killed'):\n    print('held', flush=True)\n"
                               "    time.sleep(600)", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holding.stdout.readline().strip() == "held"
        assert holder(path) == f"process {holding.pid}"
    finally:
        holding.kill()
        holding.wait()
    assert path.exists() and holder(path) is None  # SIGKILL deletes nothing, and the lock went with the process
    with exclusive(path, "the next one"):
        assert holder(path) == f"process {os.getpid()}"
    assert not path.exists()


def test_a_waiter_on_a_deleted_lock_file_locks_the_file_at_the_path(tmp_path):
    """The first holder deletes the file as it lets go; a waiter blocked on that file must not think it holds
    the lock while a newcomer locks a new file at the path."""
    path = tmp_path / "x.lock"
    got_it, release = threading.Event(), threading.Event()

    def waiter():
        with exclusive(path, "the waiter", wait=True):
            got_it.set()
            release.wait(30)

    with exclusive(path, "the first"):
        thread = threading.Thread(target=waiter)
        thread.start()
        _until_someone_waits_on(path)
    assert got_it.wait(30)
    try:
        assert holder(path) is not None  # the waiter holds the file at the path, not the deleted one
        with pytest.raises(Busy):
            with exclusive(path, "a newcomer"):
                pass
    finally:
        release.set()
        thread.join(30)
    assert not path.exists()


def _until_someone_waits_on(path, timeout_s: float = 30.0) -> None:
    """Returns once /proc/locks shows a process blocked on the file at `path` (Linux); skips elsewhere."""
    if not os.path.exists("/proc/locks"):
        pytest.skip("needs /proc/locks to see a blocked waiter")
    inode = os.stat(path).st_ino
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with open("/proc/locks") as locks:
            if any("->" in line and line.split()[-3].endswith(f":{inode}") for line in locks):
                return
        time.sleep(0.01)
    raise AssertionError("the waiter never blocked on the lock")


def test_probing_who_holds_a_lock_never_makes_a_taker_busy(tmp_path):
    """`fleetnas runs` probes run leases while a resume may be taking one: the probe's brief hold is no holder."""
    path, stop = tmp_path / "x.lock", tmp_path / "stop"
    path.write_text("process 1")  # as a killed holder leaves it: the probe then finds a file to lock
    prober = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time\nfrom fleetnas.locks import holder\nprint('probing', flush=True)\n"
                               "deadline = time.monotonic() + 60\n"
                               "while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:\n"
                               "    holder(sys.argv[1])", str(path), str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        assert prober.stdout.readline().strip() == "probing"
        busy = 0
        for _ in range(3000):
            path.touch()  # the file the probe locks, as a stale one would be
            try:
                with exclusive(path, "the run"):
                    pass
            except Busy:
                busy += 1
        assert busy == 0, busy
    finally:
        stop.touch()
        prober.wait(60)
