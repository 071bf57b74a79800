"""Calibration on one loopback agent: time and accuracy of a calibration, and how drift detection behaves.

    .venv/bin/python benchmarks/bench_calibrate.py                         # demo space, 30 samples
    .venv/bin/python benchmarks/bench_calibrate.py --quiet-rounds 20 --trials 10 --slowdowns 0.1 0.2
    .venv/bin/python benchmarks/bench_calibrate.py --samples 10 --quiet-rounds 40 --swing 0.5 --trials 3 --slowdowns 3.0

1. `calibrate` the demo space: wall time, measurements, cross-validated metrics of both predictors.
2. Quiet rounds: `watch` rounds with nothing changed; every drift it reports is a false alarm. From the
   SWING_MIN_STEPS-th round on, the watch judges against the swings it learned from the rounds before.
   With --swing F the device swings: the agent restarts before each round, 1+F times slower in a share of them.
3. Slowdown trials: the agent restarted with --test-slowdown F; each trial judges fresh reference rounds
   against the latest baseline exactly as a watch round does (one round, a second to confirm, the swings
   learned from the quiet rounds), without acting on it, so every trial faces the same baseline. Then one
   full watch round times the reaction: mark stale, re-measure the sample, refit.
The machine's load average is printed beside the figures: other processes inflate and disturb timings.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fleetnas.calibrate import calibrate, compare_rounds, watch, watch_round
from fleetnas.calibrate.calibration import least_of, measure_reference_rounds
from fleetnas.calibrate.drift import SWING_MIN_STEPS, RoundEntry
from fleetnas.calibrate.reference import reference_set
from fleetnas.farm import AgentEntry, Farm, Inventory
from fleetnas.predictors.metrics import figure
from fleetnas.store import open_store
from fleetnas.supernets import get_supernet

KIND, AGENT = "bench-cpu-1t", "bench-a"
STOPPING = {"warmup_min_runs": 2, "warmup_min_s": 0.05, "min_runs": 10, "min_s": 0.2, "max_s": 1.0}


class Agent:
    """`fleetnas-agent serve` on 127.0.0.1 in its own process."""

    def __init__(self, cache_dir: Path, port: int = 0, slowdown: float = 0.0):
        cmd = [sys.executable, "-m", "fleetnas_agent.cli", "serve", "--port", str(port), "--cache-dir",
               str(cache_dir), "--label", AGENT, "--log-level", "WARNING"]
        if slowdown:
            cmd += ["--test-slowdown", str(slowdown)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if "serving on" not in line:
            self.stop()
            raise RuntimeError(f"agent did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def load() -> str:
    return "load %.2f" % os.getloadavg()[0]


def judged(farm, reference, baseline_entries, history, settings_stopping) -> tuple[bool, bool, float]:
    """(looked drifted, confirmed, median change) of fresh rounds against the baseline, as watch judges
    (`history`: the rounds recorded before, that the device's swings are learned from)."""
    first = measure_reference_rounds(farm, reference, KIND, settings_stopping)[AGENT]
    verdict = compare_rounds(baseline_entries, first.entries, history=history)
    if not verdict.drift:
        return False, False, verdict.median_change
    second = measure_reference_rounds(farm, reference, KIND, settings_stopping)[AGENT]
    confirmed = compare_rounds(baseline_entries, least_of(first, second).entries, history=history)
    return True, confirmed.drift, confirmed.median_change


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=30)
    p.add_argument("--quiet-rounds", type=int, default=10)
    p.add_argument("--trials", type=int, default=5, help="slowdown trials per slowdown")
    p.add_argument("--slowdowns", type=float, nargs="+", default=[0.2])
    p.add_argument("--swing", type=float, default=0.0, metavar="F",
                   help="quiet rounds on a device whose speed swings: before each round the agent restarts, with "
                        "--test-slowdown F in a --swing-share of the rounds and none in the others")
    p.add_argument("--swing-share", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0, help="which rounds swing")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="  %(message)s")
    root = Path(tempfile.mkdtemp(prefix="bench-calibrate-"))
    os.environ.setdefault("FLEETNAS_CACHE_DIR", str(root / "cache"))
    agent = Agent(root / "agent-cache")
    inventory = Inventory(root / "farm.toml", [AgentEntry(AGENT, f"127.0.0.1:{agent.port}", KIND)])
    inventory.save()
    try:
        with Farm(inventory, open_store(root / "bench.db")) as farm:
            started = time.perf_counter()
            result = calibrate(farm, farm.store, "demo", KIND, args.samples, stopping=STOPPING, out_dir=root / "p")
            print(f"calibration of demo, {args.samples} samples + 10 reference configs x2: "
                  f"{time.perf_counter() - started:.1f} s, {result.measured} measurements ({load()})")
            for metric, fit in result.fits.items():
                cv = fit.cv_metrics
                print(f"  {metric}: {fit.model}, {fit.rows} rows, CV MAPE {figure(cv['mape'])} %, "
                      f"within ±10 % {figure(cv['within_10'], '.0%')}, Kendall tau {figure(cv['kendall_tau'])}")
            print(f"  parity plot: {result.plot_path}")

            changes, fired, learned = [], [], []
            swings = random.Random(args.seed)
            started = time.perf_counter()
            for report in watch(farm, farm.store, "demo", KIND, interval_s=0, rounds=args.quiet_rounds,
                                out_dir=root / "p"):
                verdict = report.verdicts[AGENT]
                changes.append(verdict.median_change)
                if verdict.changed:
                    fired.append(report.round)
                learned.append(verdict.swing if verdict.swing_steps >= SWING_MIN_STEPS else None)
                if args.swing:  # the next round's state, held for it and its confirmation
                    agent.stop()
                    agent = Agent(root / "agent-cache", port=agent.port,
                                  slowdown=args.swing if swings.random() < args.swing_share else 0.0)
            print(f"quiet rounds: {len(fired)} false alarm(s) in {args.quiet_rounds} rounds (rounds {fired}); median "
                  f"change per round {statistics.median(changes):+.2%}, largest |change| {max(map(abs, changes)):.2%}; "
                  f"{(time.perf_counter() - started) / args.quiet_rounds:.1f} s per round ({load()})")
            known = [swing for swing in learned if swing is not None]
            if known:
                print(f"  swings learned from round {learned.index(known[0]) + 1}: ×/÷{min(known):.2f} to "
                      f"×/÷{max(known):.2f}")
            rounds = farm.store.reference_rounds("demo", KIND, agent=AGENT)
            baseline = [RoundEntry.from_dict(e) for e in [r for r in rounds if r.role == "baseline"][-1].entries]
            history = [[RoundEntry.from_dict(e) for e in r.entries] for r in rounds]
            reference = reference_set(get_supernet("demo").space)

        for slowdown in args.slowdowns:
            agent.stop()
            agent = Agent(root / "agent-cache", port=agent.port, slowdown=slowdown)
            with Farm(inventory, open_store(root / "bench.db")) as farm:
                outcomes = [judged(farm, reference, baseline, history, STOPPING) for _ in range(args.trials)]
            looked = sum(o[0] for o in outcomes)
            confirmed = sum(o[1] for o in outcomes)
            print(f"slowdown {slowdown:.0%}: detected in {confirmed}/{args.trials} trials ({looked} looked drifted "
                  f"after one round); measured change median {statistics.median(o[2] for o in outcomes):+.1%} "
                  f"({load()})")
        with Farm(inventory, open_store(root / "bench.db")) as farm:
            started = time.perf_counter()
            report = watch_round(farm, farm.store, "demo", KIND, out_dir=root / "p")
            if report.refit is not None:
                mape = report.refit.fits["latency_ms"].cv_metrics["mape"]
                print(f"reaction to the last slowdown: {report.verdicts[AGENT].reason}; marked "
                      f"{report.stale_marked.get(AGENT, 0)} stale, re-measured {report.refit.measured}, refit "
                      f"latency MAPE {figure(mape)} %: {time.perf_counter() - started:.1f} s ({load()})")
            else:
                print(f"no refit after the last slowdown: {report.verdicts[AGENT].reason}")
    finally:
        agent.stop()


if __name__ == "__main__":
    main()
