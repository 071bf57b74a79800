"""`fleetnas report RUN`: an HTML page, PNG figures and the front as CSV/JSON for one search run."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import CliError


def register(sub) -> None:
    p = sub.add_parser("report", help="write a search run's report (HTML, PNG, CSV, JSON)")
    p.add_argument("run", type=int, metavar="RUN", help="the run id that `fleetnas search` printed")
    p.add_argument("--db", help="the store (default fleetnas.db or $FLEETNAS_DB)")
    p.add_argument("--out", type=Path, help="output folder (default fleetnas-report-RUN)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fleetnas.report import write_report
    from fleetnas.store import StoreError, open_store

    out = args.out or Path(f"fleetnas-report-{args.run}")
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file; give a folder")
    try:
        with open_store(args.db, existing=True) as store:
            index = write_report(store, args.run, out)
    except (KeyError, StoreError) as exc:
        raise CliError(exc.args[0] if exc.args else str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot write the report to {out}: {exc.strerror}") from None
    print(index)
    return 0
