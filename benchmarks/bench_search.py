"""Search tactics replayed on NAS-Bench-201: every accuracy × every latency column of the shared table.

    .venv/bin/python benchmarks/bench_search.py [--seeds 10] [--budget 200] [--tactics linas,evolutionary,random]
                                                [--first-seed 0] [--only imagenet16_test] [--out benchmarks/results/search]
                                                [--jobs 2] [--rerun] [--known-accuracy N] [--at 100,200]

Runs `fleetnas bench search` once per (accuracy, latency) pair, keeps every run's JSON under --out, and
prints, per pair and tactic, the mean number of real evaluations needed to reach 95 %, 98 % and 99 % of the
true front's hypervolume (with how many seeds got there within the budget) and the fraction reached at
100 and 200 evaluations. Reference (DyNAS-T 1.6.0's LINAS on ImageNet16 × Pixel 3): 99 evaluations to 95 %,
225 to 98 %, 99 % in 1 of 5 seeds within 400; random search needs about 1,500 for 98 %.

--known-accuracy N gives each run the accuracy of N random cells beforehand (`fleetnas bench search --known`),
as a search on a new device finds an earlier run's accuracy evaluations in the store; write those runs to
another --out. --at chooses the evaluation counts whose hypervolume fraction is printed.
"""
from __future__ import annotations

import argparse
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT.parent / "shared" / "data" / "nb201_accuracy_latency.csv"
ACCURACIES = ["cifar10_test", "cifar100_test", "imagenet16_test"]
LATENCIES = ["lat_ms_pixel3", "lat_ms_gold_6226", "lat_ms_titanxp_1", "lat_ms_titan_rtx_32"]
REACH = (0.95, 0.98, 0.99)


def run_pair(accuracy: str, latency: str, args) -> Path:
    out = args.out / f"{accuracy}__{latency}.json"
    if out.exists() and not args.rerun:
        return out
    cmd = [sys.executable, "-m", "fleetnas.cli", "bench", "search", "--table", str(TABLE), "--space", "nb201",
           "--key", "cellstr", "--objective", f"{accuracy}:max", "--objective", f"{latency}:min",
           "--budget", str(args.budget), "--seeds", str(args.seeds), "--first-seed", str(args.first_seed),
           "--json", str(out)]
    if args.known_accuracy:
        cmd += ["--known", f"{accuracy}:{args.known_accuracy}"]
    for tactic in args.tactics.split(","):
        cmd += ["--tactic", tactic]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def reach(hv: list[float], fraction: float) -> int | None:
    return next((i + 1 for i, h in enumerate(hv) if h >= fraction - 1e-12), None)


def summarise(path: Path, at: list[int]) -> list[str]:
    data = json.loads(path.read_text())
    lines = []
    for tactic in dict.fromkeys(r["tactic"] for r in data["runs"]):
        runs = [r for r in data["runs"] if r["tactic"] == tactic]
        cells = []
        for f in REACH:
            hits = [n for n in (reach(r["hv"], f) for r in runs) if n is not None]
            cells.append(f"{np.mean(hits):6.0f} ({len(hits):2d}/{len(runs)})" if hits else f"{'-':>6s} ( 0/{len(runs)})")
        fractions = [np.mean([r["hv"][min(k, len(r["hv"])) - 1] for r in runs]) for k in at]
        lines.append(f"{path.stem.replace('__', ' × '):42s} {tactic:13s} " + "  ".join(cells)
                     + "".join(f"  {f:.4f}" for f in fractions))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed..first-seed+seeds-1: held-out "
                        "ones for a change tuned on 0..9")
    parser.add_argument("--budget", type=int, default=200)
    parser.add_argument("--tactics", default="linas,evolutionary,random")
    parser.add_argument("--only", default="", help="comma-separated accuracy columns to run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "search")
    parser.add_argument("--rerun", action="store_true", help="run pairs whose JSON already exists")
    parser.add_argument("--jobs", type=int, default=1, help="pairs run at once (one core each)")
    parser.add_argument("--known-accuracy", type=int, default=0, metavar="N",
                        help="each run knows the accuracy of N random cells beforehand")
    parser.add_argument("--at", default="100,200", help="evaluation counts to print the hypervolume fraction at")
    args = parser.parse_args()
    at = [int(k) for k in args.at.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    accuracies = [a for a in ACCURACIES if not args.only or a in args.only.split(",")]
    print(f"{'pair':42s} {'tactic':13s} {'to 95% (seeds)':>14s}  {'to 98% (seeds)':>14s}  {'to 99% (seeds)':>14s}"
          + "".join(f"  {'HV@' + str(k):>6s}" for k in at))
    pairs = [(accuracy, latency) for accuracy in accuracies for latency in LATENCIES]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:  # each pair is its own process
        for path in pool.map(lambda pair: run_pair(*pair, args), pairs):
            for line in summarise(path, at):
                print(line, flush=True)


if __name__ == "__main__":
    main()
