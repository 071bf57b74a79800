"""`fleetnas demo`: the main job on the embedded default (agent on loopback, demo super-network, SQLite)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .common import CliError, seed, positive_int


def register(sub) -> None:
    p = sub.add_parser("demo", help="the whole loop on this machine: agent, training, calibration, search, report",
                       description="Starts an agent on 127.0.0.1 (this machine is the device), trains the demo "
                                   "super-network on scikit-learn's digits, calibrates, searches with LINAS over "
                                   "accuracy, measured latency and measured memory, and writes a report.")
    p.add_argument("--out", type=_folder, default=Path("fleetnas-demo"), help="output folder (default fleetnas-demo)")
    p.add_argument("--budget", type=positive_int, default=60, help="real evaluations for the search (default 60)")
    p.add_argument("--samples", type=_samples, default=16,
                   help=f"sub-networks measured to calibrate (default 16, at most {MAX_SAMPLES})")
    p.add_argument("--seed", type=seed, default=0)
    p.set_defaults(handler=run)


#: Each calibration sample is a measurement of a second or more: beyond this the demo would run for hours.
MAX_SAMPLES = 1000


def _folder(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder")
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder")
    return Path(text)


def _samples(text: str) -> int:
    value = positive_int(text)
    if value > MAX_SAMPLES:
        raise argparse.ArgumentTypeError(f"at most {MAX_SAMPLES}, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from fleetnas.demo import run_demo
    from fleetnas.predictors.metrics import figure

    console = Console(stderr=True)
    started = time.monotonic()
    try:
        result = run_demo(args.out, args.budget, args.samples, args.seed, say=lambda m: console.print(f"• {m}"))
    except (OSError, ValueError, KeyError) as exc:
        raise CliError(f"demo failed: {exc}") from None
    table = Table(title=f"best trade-offs found (run {result.run_id}; {time.monotonic() - started:.0f} s)")
    names = [k for k in result.front[0] if k != "config"] if result.front else []
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("sub-network")
    for row in result.front:
        cells = [f"{row[n]:.1%}" if n == "accuracy" else f"{row[n] / 2**20:.2f} MiB" if n.startswith("memory")
                 else f"{row[n]:.3f} ms" for n in names]
        table.add_row(*cells, json.dumps(row["config"], separators=(",", ":"))[:60])
    Console().print(table)
    for metric, fit in ((m, result.calibration.get(m)) for m in ("latency_ms", "peak_bytes")):
        if fit:
            console.print(f"• calibrated {metric} predictor: {fit['model']} on {fit['rows']} measurements, "
                          f"cross-validated MAPE {figure(fit['cv_mape_pct'], '.1f')} %, "
                          f"Kendall τ {figure(fit['kendall_tau'])}")
    print(f"report: {result.report}\nstore:  {result.db}", file=sys.stdout)
    return 0
