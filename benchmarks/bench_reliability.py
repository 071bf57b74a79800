"""The reliability and security suite, run larger: many more fuzz cases, the 50-client load many times.

    .venv/bin/python benchmarks/bench_reliability.py [--scale 20] [--repeat-faults 3] [-k EXPR]

Runs tests/test_security_*.py and tests/test_reliability_*.py with $FLEETNAS_RELIABILITY_SCALE=scale
(hypothesis examples and load rounds are multiplied by it; cases are drawn at random instead of the CI's
fixed ones), then the fault tests `--repeat-faults` more times (each repeat injects its faults afresh).
Prints, per area, the requests tried, the faults injected and the failures seen (the target is 0), and
writes them to benchmarks/results/reliability_counts.md. Exits non-zero if any test failed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = ["tests/test_security_auth.py", "tests/test_security_fuzz.py", "tests/test_reliability_load.py"]
FAULTS = ["tests/test_reliability_faults.py"]
KINDS = ("requests", "faults", "failures")


def run(files: list[str], scale: int, extra: list[str]) -> tuple[dict, int, float]:
    """Runs pytest on `files`; returns (counts by area, exit code, seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        counts_file = Path(tmp) / "counts.json"
        env = {**os.environ, "FLEETNAS_RELIABILITY_SCALE": str(scale), "FLEETNAS_COUNTS_FILE": str(counts_file)}
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "--timeout", "3600", *files, *extra], cwd=ROOT, env=env)
        seconds = time.monotonic() - started
        counts = json.loads(counts_file.read_text())["by_area"] if counts_file.exists() else {}
    return counts, done.returncode, seconds


def table(by_area: dict[str, Counter]) -> list[str]:
    lines = ["| area | requests tried | faults injected | failures seen |", "|---|---:|---:|---:|"]
    total = Counter()
    for area, c in sorted(by_area.items()):
        lines.append(f"| {area} | {c['requests']} | {c['faults']} | {c['failures']} |")
        total.update(c)
    lines.append(f"| **total** | **{total['requests']}** | **{total['faults']}** | **{total['failures']}** |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=20, help="fuzz cases and load rounds x this (default 20)")
    p.add_argument("--repeat-faults", type=int, default=3, help="extra runs of the fault tests (default 3)")
    p.add_argument("-k", dest="select", help="only tests matching this pytest -k expression")
    args = p.parse_args()
    extra = ["-k", args.select] if args.select else []

    by_area: dict[str, Counter] = {}
    worst, runs = 0, []
    for files, scale in [(SUITE + FAULTS, args.scale)] + [(FAULTS, 1)] * args.repeat_faults:
        counts, code, seconds = run(files, scale, extra)
        runs.append(f"{' '.join(Path(f).stem for f in files)} at scale {scale}: exit {code}, {seconds:.0f} s")
        worst = max(worst, code)
        for area, c in counts.items():
            by_area.setdefault(area, Counter()).update({k: c.get(k, 0) for k in KINDS})

    lines = table(by_area)
    print("\n".join(["", *runs, "", *lines]))
    out = ROOT / "benchmarks" / "results" / "reliability_counts.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join([
        "# Reliability and security counts", "",
        f"`{' '.join(['.venv/bin/python', 'benchmarks/bench_reliability.py', *sys.argv[1:]])}` "
        f"on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}.", "",
        "Requests: RPCs and farm jobs the tests sent. Faults: agents killed, disks filled, networks cut, "
        "databases locked, clients and hosts killed. Failures: broken guarantees seen (wrong status, lost or "
        "doubled row, leaked process or byte, overlap); the target is 0.", "",
        *lines, "", "Runs:", "", *[f"- {r}" for r in runs], ""]))
    print(f"\nwritten to {out.relative_to(ROOT)}")
    return 1 if worst else 0


if __name__ == "__main__":
    sys.exit(main())
