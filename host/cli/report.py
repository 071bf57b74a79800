"""`fleetnas report RUN`: an HTML page, PNG figures and the front as CSV/JSON for one search run."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import CliError


def register(sub) -> None:
    p = sub.add_parser("report", help="write a search run's report (HTML, PNG, CSV, JSON)")
    p.add_argument("run", metavar="RUN", help="the run's id (which `fleetnas search` printed) or its --name")
    p.add_argument("--db", help="the store (default fleetnas.db or $FLEETNAS_DB)")
    p.add_argument("--out", help="output folder: new, empty, or an earlier report's "
                                                "(default fleetnas-report-RUN)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fleetnas.search.run import find_run
    from fleetnas.store import StoreError, open_store

    if args.out == "":  # Path("") is the current folder: never the silent choice
        raise CliError("--out must name a folder", 2)
    try:
        with open_store(args.db, read_only=True) as store:
            try:
                run_id = find_run(store, args.run).id
            except KeyError as exc:  # only here: a KeyError from deeper down is no missing run
                raise CliError(exc.args[0]) from None
            # The default names the id, known once the run is found.
            out = Path(args.out) if args.out is not None else Path(f"fleetnas-report-{run_id}")
            index = _write(store, run_id, out)
    except StoreError as exc:
        raise CliError(str(exc)) from None
    print(index)
    return 0


def _write(store, run_id: int, out: Path) -> Path:
    """Writes the report into `out`. Only here is an OSError the output folder's: one from opening the store
    (a --db name too long, say) is the store's, and open_store names it."""
    from fleetnas.report import ForeignFolder, write_report

    try:
        if out.exists() and not out.is_dir():
            raise CliError(f"--out {out} is a file; give a folder")
        return write_report(store, run_id, out)
    except ForeignFolder as exc:
        raise CliError(f"--out {exc}") from None
    except OSError as exc:
        raise CliError(f"cannot write the report to {out}: {exc.strerror or exc}") from None
