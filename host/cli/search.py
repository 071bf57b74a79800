"""`fleetnas search`: find the Pareto-optimal sub-networks of a space for real devices."""
from __future__ import annotations

import argparse
import json
import sys

from .common import CliError, positive_int, print_json


def register(sub) -> None:
    p = sub.add_parser("search", help="multi-objective search over a super-network, measured on devices",
                       description="Search a space for configurations that trade accuracy against latency, memory, "
                                   "MACs or parameters on real devices. Every evaluation is stored: "
                                   "--resume RUN continues a run that was interrupted.")
    p.add_argument("--space", help="the search space (fleetnas space list)")
    p.add_argument("--objective", action="append", default=[], metavar="NAME:max|min",
                   help="accuracy:max, latency@KIND:min, memory@KIND:min, macs:min, params:min (repeatable)")
    p.add_argument("--constraint", action="append", default=[], metavar="EXPR",
                   help="e.g. 'latency@rpi4 <= 30ms' or 'accuracy >= 0.9' (repeatable)")
    p.add_argument("--tactic", default="linas", choices=["linas", "evolutionary", "random"])
    p.add_argument("--algorithm", default="nsga2", choices=["nsga2", "agemoea", "unsga3", "ctaea", "moead"],
                   help="the evolutionary algorithm (inside LINAS, or on real evaluations)")
    p.add_argument("--budget", type=positive_int, default=100, help="real evaluations to spend (default 100)")
    p.add_argument("--batch", type=positive_int, help="LINAS: real evaluations per iteration (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accuracy", metavar="MODULE:CALLABLE",
                   help="accuracy evaluator: a function of a config, or a class to instantiate (demo has its own)")
    p.add_argument("--inventory", default="fleetnas.toml", help="farm inventory (default fleetnas.toml)")
    p.add_argument("--db", help="the store (default fleetnas.db or $FLEETNAS_DB)")
    p.add_argument("--name", help="a name for the run (unique in the store)")
    p.add_argument("--resume", type=int, metavar="RUN", help="continue run RUN where it stopped")
    p.add_argument("--json", action="store_true", help="print the measured front as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fleetnas.search.live import EvaluationError
    from fleetnas.store import StoreError, open_store

    try:
        with open_store(args.db) as store:
            run_id = args.resume if args.resume is not None else _start(store, args)
            session = _execute(store, run_id)
            _report(store, run_id, session, args.json)
    except (EvaluationError, StoreError, ValueError, KeyError) as exc:
        raise CliError(exc.args[0] if exc.args else str(exc)) from None
    return 0


def _start(store, args: argparse.Namespace) -> int:
    from fleetnas.search.run import RunSpec, start_run

    if not args.space or not args.objective:
        raise CliError("give --space and at least two --objective, or --resume RUN", 2)
    settings = {}
    if args.tactic != "random":
        settings["algorithm"] = args.algorithm
    if args.batch and args.tactic == "linas":
        settings["batch"] = args.batch
    spec = RunSpec(space=args.space, objectives=args.objective, tactic=args.tactic, budget=args.budget,
                   seed=args.seed, constraints=args.constraint, tactic_settings=settings,
                   inventory=args.inventory if any("@" in o for o in args.objective) else None,
                   accuracy=args.accuracy)
    run_id = start_run(store, spec, name=args.name)
    print(f"search run {run_id} started in {store.path}", file=sys.stderr)
    return run_id


def _execute(store, run_id: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fleetnas.search.live import LiveEvaluator, resolve_accuracy
    from fleetnas.search.run import execute_run, load_spec

    spec = load_spec(store, run_id)
    objectives = spec.parsed_objectives()
    farm = None
    if any(o.device_kind for o in objectives):
        from fleetnas.farm import Farm
        farm = Farm.open(spec.inventory, db=store.path)
    needs_accuracy = any(o.metric == "accuracy" for o in objectives)
    try:
        evaluator = LiveEvaluator(spec.space, objectives, farm=farm, store=store, stopping=spec.stopping,
                                  accuracy=resolve_accuracy(spec.space, spec.accuracy) if needs_accuracy else None)
        with Progress(TextColumn(f"run {run_id}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      transient=True, disable=not sys.stderr.isatty()) as bar:
            task = bar.add_task("search", total=spec.budget)
            return execute_run(store, run_id, evaluator, lambda used, _: bar.update(task, completed=used))
    finally:
        if farm is not None:
            farm.close()


def _report(store, run_id: int, session, as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from fleetnas.search.run import known_summary, measured_front

    configs, values, objectives = measured_front(store, run_id)
    if as_json:
        print_json({"run": run_id, "evaluations": session.used, "known": session.known_counts, "front": [
            {"config": c, **{o.name: float(v) for o, v in zip(objectives, row)}} for c, row in zip(configs, values)]})
        return
    table = Table(title=f"run {run_id}: measured Pareto front ({len(configs)} of {session.used} evaluations)")
    for o in objectives:
        table.add_column(str(o), justify="right")
    table.add_column("config")
    for c, row in zip(configs, values):
        table.add_row(*[f"{v:.4g}" for v in row], json.dumps(c, separators=(",", ":"))[:80])
    Console().print(table)
    learned = known_summary(session)
    if learned:
        print(learned)
    print(f"report: fleetnas report {run_id}" + (f" --db {store.path}" if store.path else ""))
