"""A tally of what the reliability and security tests tried: requests sent, faults injected, failures seen.

Tests add to the session-wide `COUNTS` (through the `counts` fixture); the totals are printed at the end
of the run, and written as JSON to $FLEETNAS_COUNTS_FILE when set (benchmarks/bench_reliability.py reads
it). A "failure" is a broken guarantee the test observed (a wrong status, a lost or doubled row, a leaked
process or byte); every test also asserts that it saw none, so the target is always 0.

$FLEETNAS_RELIABILITY_SCALE (default 1) multiplies the number of fuzz cases and load rounds: the benchmark
runs the same tests larger.
"""
from __future__ import annotations

import json
import os
import threading
from collections import Counter, defaultdict

KINDS = ("requests", "faults", "failures")


def scale() -> int:
    """How many times larger than the CI default the fuzz and load tests run."""
    return max(1, int(os.environ.get("FLEETNAS_RELIABILITY_SCALE", "1")))


class Counts:
    def __init__(self):
        self._lock = threading.Lock()
        self.by_area: dict[str, Counter] = defaultdict(Counter)

    def add(self, area: str, requests: int = 0, faults: int = 0, failures: int = 0) -> None:
        with self._lock:
            self.by_area[area].update(requests=requests, faults=faults, failures=failures)

    def totals(self) -> Counter:
        total = Counter({kind: 0 for kind in KINDS})
        for counter in self.by_area.values():
            total.update(counter)
        return total

    def lines(self) -> list[str]:
        rows = [(area, *(c[k] for k in KINDS)) for area, c in sorted(self.by_area.items())]
        rows.append(("total", *(self.totals()[k] for k in KINDS)))
        width = max(len(r[0]) for r in rows)
        out = [f"{'area':<{width}}  {'requests':>9}  {'faults':>7}  {'failures':>8}"]
        out += [f"{a:<{width}}  {r:>9}  {f:>7}  {x:>8}" for a, r, f, x in rows]
        return out

    def as_dict(self) -> dict:
        return {"by_area": {a: dict(c) for a, c in sorted(self.by_area.items())}, "total": dict(self.totals()),
                "scale": scale()}


COUNTS = Counts()


def pytest_terminal_summary(terminalreporter) -> None:
    """Prints the tally after the test run (only when a test counted something)."""
    if not COUNTS.by_area:
        return
    terminalreporter.section("reliability and security counts (requests tried, faults injected, failures seen)")
    for line in COUNTS.lines():
        terminalreporter.write_line(line)
    path = os.environ.get("FLEETNAS_COUNTS_FILE")
    if path:
        with open(path, "w") as f:
            json.dump(COUNTS.as_dict(), f, indent=2)
