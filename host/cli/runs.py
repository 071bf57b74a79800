"""`fleetnas runs`: the search runs a store holds, with how far each got and whether it can be resumed."""
from __future__ import annotations

import argparse
from datetime import datetime

from .common import CliError, print_json


def register(sub) -> None:
    p = sub.add_parser("runs", help="list the search runs in the store",
                       description="Each search run in the store: its id and name (either one names it to "
                                   "`fleetnas report` and `fleetnas search --resume`), its state, settings, "
                                   "evaluations spent and last hypervolume. A run whose process was killed "
                                   "shows as interrupted.")
    p.add_argument("--db", help="the store (default fleetnas.db or $FLEETNAS_DB)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fleetnas.store import StoreError, open_store

    try:
        with open_store(args.db, read_only=True) as store:
            rows = [_row(store, r) for r in store.runs()]
            where = store.path
    except StoreError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print_json(rows)
    elif not rows:
        print(f"no search runs in {where}; start one with `fleetnas search`")
    else:
        _print(rows, where)
    return 0


def _row(store, record) -> dict:
    from fleetnas.search.run import evaluations_spent, run_state

    settings = record.settings
    hypervolume = store.run_events(record.id, "hypervolume")
    evaluations, failed = evaluations_spent(store, record.id)
    return {"id": record.id, "name": record.name, "state": run_state(store, record),
            "space": settings.get("space"), "tactic": record.tactic, "objectives": settings.get("objectives", []),
            "constraints": settings.get("constraints", []), "budget": settings.get("budget"),
            "evaluations": evaluations, "failed": failed,
            "hypervolume": hypervolume[-1].payload["hv"] if hypervolume else None,
            "created_unix_s": record.created_at, "updated_unix_s": record.updated_at}


def _print(rows: list[dict], where) -> None:
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from .devices import console

    table = Table(title=Text(f"search runs in {where}"),  # Text: a path's "[old]" is no markup
                  caption="HV: the hypervolume of the run's feasible front, each objective scaled to the range of "
                          "its first 10 evaluations and, under constraints, of those up to the first that meets "
                          "them (reference point 1.1): for following one run, not for comparing runs")
    for column in ("id", "name", "state", "space", "tactic", "objectives", "evaluated", "HV", "updated"):
        table.add_column(column, justify="right" if column in ("id", "evaluated", "HV") else "left")
    for r in rows:
        state = {"interrupted": "[yellow]interrupted[/]", "failed": "[red]failed[/]"}.get(r["state"], r["state"])
        constraints = [f"[dim]{escape(c)}[/]" for c in r["constraints"]]
        objectives = ", ".join([escape(o) for o in r["objectives"]] + constraints)
        table.add_row(str(r["id"]), Text(r["name"] or ""), state, r["space"], r["tactic"], objectives,
                      f"{r['evaluations']}/{r['budget']}" + (f" ({r['failed']} failed)" if r["failed"] else ""),
                      "" if r["hypervolume"] is None else f"{r['hypervolume']:.4f}",
                      datetime.fromtimestamp(r["updated_unix_s"]).strftime("%Y-%m-%d %H:%M"))
    console().print(table)
