"""`fleetnas search`: find the Pareto-optimal sub-networks of a space for real devices."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import unicodedata
from contextlib import contextmanager
from types import SimpleNamespace

from .common import (FARM_GIVE_UP_S, STOPPING_FLAGS, CliError, add_stopping_options, seed, positive_int,
                     no_empty_store_if_refused, positive_seconds, print_json, stopping_from)


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
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--accuracy", metavar="MODULE:CALLABLE",
                   help="accuracy evaluator: a function of a config, or a class to instantiate (demo has its own)")
    p.add_argument("--inventory",
                   help="farm inventory (default fleetnas.toml); with --resume, where the run's inventory now is")
    p.add_argument("--db", help="the store (default fleetnas.db or $FLEETNAS_DB)")
    p.add_argument("--give-up", type=positive_seconds, default=FARM_GIVE_UP_S, metavar="SECONDS",
                   help="measurements wait this long for an agent of their kind to come back before they fail "
                        f"(default {FARM_GIVE_UP_S:g}); also with --resume")
    p.add_argument("--name", help="a name for the run (unique in the store; report and --resume take it too)")
    p.add_argument("--resume", metavar="RUN", help="continue run RUN (its id or --name) where it stopped")
    p.add_argument("--json", action="store_true", help="print the measured front as JSON")
    # The measurement settings are part of what a run learns from: a calibration taken with the same rule
    # (and runtime, threads) is known to the search, one taken with another is not.
    add_stopping_options(p)
    # No option of a run has a parser default: None says it was not given, which --resume must know
    # (`--budget 100` given with it is refused like any other budget); `_apply_defaults` fills them in.
    p.set_defaults(handler=run, **{name: None for name in RUN_OPTIONS})


def run(args: argparse.Namespace) -> int:
    from fleetnas.farm.scheduler import FarmError
    from fleetnas.search.live import EvaluationError
    from fleetnas.store import StoreError, open_store

    try:
        with no_empty_store_if_refused(args.db, may_make=args.resume is None):
            if args.resume is not None:
                _refuse_options_with_resume(args)
            # A finished run's front is only read: that also works on a store that cannot be written (an archive).
            with open_store(args.db, existing=args.resume is not None, read_only=_finished_run(args)) as store:
                session, run_id = _search(store, args)
                _report(store, run_id, session, args.json)
    except (EvaluationError, FarmError, StoreError, ValueError, KeyError, ImportError) as exc:
        raise CliError(exc.args[0] if exc.args else str(exc)) from None
    return 0


def _finished_run(args: argparse.Namespace) -> bool:
    """Whether --resume names a run that is finished (a look through a read-only store)."""
    from fleetnas.search.run import find_run
    from fleetnas.store import open_store

    if args.resume is None:
        return False
    with open_store(args.db, read_only=True) as store:
        return find_run(store, args.resume).state == "finished"


#: What a new run is started with where an option is not given; a resumed run keeps what it was started with.
RUN_OPTIONS = {"space": None, "objective": [], "constraint": [], "tactic": "linas", "algorithm": "nsga2",
               "budget": 100, "batch": None, "seed": 0, "accuracy": None, "name": None,
               **{flag: 0 for flag in STOPPING_FLAGS}}


def _refuse_options_with_resume(args: argparse.Namespace) -> None:
    given = [name for name in RUN_OPTIONS if getattr(args, name) is not None]
    if given:
        raise CliError(f"--resume {args.resume} continues the run with the settings it was started with; "
                       f"--{given[0].replace('_', '-')} cannot be given with it", 2)


def _apply_defaults(args: argparse.Namespace) -> None:
    for name, default in RUN_OPTIONS.items():
        if getattr(args, name) is None:
            setattr(args, name, list(default) if isinstance(default, list) else default)


def _search(store, args: argparse.Namespace):
    """(session, run id): a new run is stored only once its evaluator could be set up (farm, accuracy), so a
    mistake there leaves no run behind."""
    from fleetnas.farm.scheduler import FarmError
    from fleetnas.search.live import EvaluationError, Unmeasurable
    from fleetnas.search.run import evaluations_spent, find_run, finish_recorded, load_spec, start_run
    from fleetnas.search.session import TooManyFailures
    from fleetnas.store import StoreError, StoreGone

    run = find_run(store, args.resume) if args.resume is not None else None
    if run is not None and run.state == "finished":  # nothing to evaluate: no farm or evaluator to set up
        print(f"search run {run.id} is finished; its front:", file=sys.stderr)
        return _finished(store, run.id), run.id
    run_id = run.id if run is not None else None
    spec = load_spec(store, run_id) if run_id is not None else _new_spec(args)
    if run is not None and evaluations_spent(store, run.id)[0] >= spec.budget:
        # Killed after its last evaluation: what is left is done from the store, without the farm.
        print(f"search run {run.id} has every evaluation recorded; finishing it", file=sys.stderr)
        try:
            finish_recorded(store, run.id)
        except TooManyFailures as exc:
            raise CliError(str(exc)) from None
        return _finished(store, run.id), run.id
    with _evaluator(store, spec, args.inventory if run_id is not None else None, resuming=run_id is not None,
                    give_up_s=args.give_up) as evaluator:
        resuming = run_id is not None
        if not resuming:
            run_id = start_run(store, spec, name=args.name)
            _warn_about_bounds_below_the_smallest_network(spec)

        def announce() -> None:  # once the run is this process's: what it says holds then
            print(f"search run {run_id} resumed in {store.path}: {evaluations_spent(store, run_id)[0]} of "
                  f"{spec.budget} evaluations done" if resuming else f"search run {run_id} started in {store.path}",
                  file=sys.stderr)

        try:
            return _execute(store, run_id, spec, evaluator, announce), run_id
        except (StoreGone, Unmeasurable):
            raise  # nothing a resume could change: the run went with the file, or the device cannot measure it
        except (EvaluationError, FarmError, TooManyFailures, StoreError) as exc:  # a device, an evaluator or the
            # disk failed: say how to go on
            hint = _how_to_go_on(store, run_id, spec.budget, fix_first=isinstance(exc, TooManyFailures))
            raise CliError(f"{exc.args[0] if exc.args else exc}\n{hint}") from None


def _how_to_go_on(store, run_id: int, budget: int, fix_first: bool = False) -> str:
    """`fix_first`: the run stopped on failures that a resume would meet again (an evaluator's bug)."""
    from fleetnas.search.run import evaluations_spent

    spent, failed = evaluations_spent(store, run_id)
    if spent < budget:
        then = "fix the cause, then " if fix_first else ""
        return f"run {run_id} keeps what it evaluated: {then}`fleetnas search --resume {run_id}` continues it"
    # A resume would only say the same again: there is nothing left to evaluate.
    return (f"run {run_id} has spent its budget of {budget} evaluations ({failed} failed); fix the cause and start "
            "a new run")


def _new_spec(args: argparse.Namespace):
    from pathlib import Path

    from fleetnas.search.run import RunSpec

    if args.tactic == "random" and args.algorithm is not None:
        raise CliError("--algorithm is for the linas and evolutionary tactics; random search uses none", 2)
    _apply_defaults(args)
    if not args.space or not args.objective:
        raise CliError("give --space and at least two --objective, or --resume RUN", 2)
    if args.name is not None:
        _check_name(args.name)
    settings = {}
    if args.tactic != "random":
        settings["algorithm"] = args.algorithm
    if args.batch:
        if args.tactic != "linas":
            raise CliError(f"--batch is a LINAS setting; the {args.tactic} tactic has no batches", 2)
        settings["batch"] = args.batch
    on_devices = any("@" in o for o in args.objective)
    if args.give_up != FARM_GIVE_UP_S and not on_devices:
        raise CliError("--give-up is for measurements on devices; no --objective is measured on one", 2)
    if args.inventory is not None and not on_devices:
        raise CliError("--inventory is for measurements on devices; no --objective is measured on one", 2)
    stopping = stopping_from(args)
    if stopping and not on_devices:
        raise CliError("a stopping rule is for measurements on devices; no --objective is measured on one", 2)
    # The inventory is kept as an absolute path: a resume may run from another folder.
    inventory = str(Path(args.inventory or "fleetnas.toml").resolve()) if on_devices else None
    spec = RunSpec(space=args.space, objectives=args.objective, tactic=args.tactic, budget=args.budget,
                   seed=args.seed, constraints=args.constraint, tactic_settings=settings, inventory=inventory,
                   accuracy=args.accuracy, accuracy_folder=os.getcwd() if args.accuracy else None,
                   stopping=stopping or None)
    spec.validate()
    if args.accuracy and not any(o.metric == "accuracy" for o in spec.parsed_objectives()):
        raise CliError(f"--accuracy {args.accuracy} evaluates an accuracy objective, and no --objective is "
                       "accuracy:max", 2)
    return spec


def _check_name(name: str) -> None:
    if not name.strip():
        raise CliError("--name must not be empty", 2)
    if name != name.strip() or not name.isprintable():
        raise CliError(f"--name {name!r} has spaces around it or characters a terminal cannot show", 2)
    if _looks_like_a_number(name):  # '2', '２' or '2.5' would read as (or be mistaken for) a run id
        raise CliError(f"--name {name} is a number, which names run ids; give a name with a letter in it", 2)


def _looks_like_a_number(name: str) -> bool:
    """Digits of any script ('２'), or what Python reads as a number ('2.5', '+3', '1e5'); a date is a name."""
    if any(ch.isalpha() for ch in name):
        return False
    if unicodedata.normalize("NFKC", name).isdigit():
        return True
    try:
        float(name)
    except ValueError:
        return False
    return True


@contextmanager
def _evaluator(store, spec, inventory: str | None, resuming: bool = False, give_up_s: float = FARM_GIVE_UP_S):
    """The run's LiveEvaluator, with its farm open; `inventory` (a resume's --inventory) overrides the stored one,
    for a farm whose inventory file has moved. A new run notes how each device kind measures
    (`spec.measured_with`); a resumed one must measure them the same way."""
    from fleetnas.search.live import LiveEvaluator, accuracy_metric, resolve_accuracy

    objectives = spec.parsed_objectives()
    farm = None
    kinds = sorted({o.device_kind for o in objectives if o.device_kind})
    if inventory is not None and not kinds:  # a resume's --inventory, which would be passed over without a word
        raise CliError("--inventory is for measurements on devices; this run measures none of its objectives on one",
                       2)
    if kinds:
        from fleetnas.farm import Farm
        farm = Farm.open(inventory or spec.inventory, db=store.path, give_up_s=give_up_s)
        try:
            farm.require_answering(set(kinds))
            _check_measured_with(farm, spec, kinds, resuming)
        except BaseException:
            farm.close()
            raise
    needs_accuracy = any(o.metric == "accuracy" for o in objectives)
    try:
        yield LiveEvaluator(spec.space, objectives, farm=farm, store=store, stopping=spec.stopping,
                            accuracy=resolve_accuracy(spec.space, spec.accuracy, spec.accuracy_folder)
                            if needs_accuracy else None,
                            accuracy_metric=accuracy_metric(spec.accuracy))
    finally:
        if farm is not None:
            farm.close()


def _check_measured_with(farm, spec, kinds: list[str], resuming: bool) -> None:
    from fleetnas.search.run import measurement_settings

    now = measurement_settings(farm, kinds)
    if not resuming:
        spec.measured_with = now
        return
    for kind, then in (spec.measured_with or {}).items():  # runs started before this was kept have none
        if now.get(kind) != then:
            raise CliError(f"the inventory now measures {kind} with {now[kind]['runtime']}, {now[kind]['threads']} "
                           f"thread(s); the run measured it with {then['runtime']}, {then['threads']}: one front "
                           "would mix both. Restore the inventory's entry (or give --inventory), or start a new run")


#: After this many evaluations, a constraint that none has met is worth a warning: the run may be long.
WARN_UNMET_AFTER = 10


def _finished(store, run_id: int) -> SimpleNamespace:
    """What `_report` reads of a session, for a finished run, from the store alone."""
    from fleetnas.search.run import evaluations_spent

    used, failed = evaluations_spent(store, run_id)
    known = store.run_events(run_id, "known")
    return SimpleNamespace(used=used, failed=failed, known_counts=known[-1].payload if known else {})


def _execute(store, run_id: int, spec, evaluator, on_start):
    """The run to the end of its budget, with a progress bar; `on_start` once it is this process's to drive."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fleetnas.search.run import execute_run

    with Progress(TextColumn(f"run {run_id}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("search", total=spec.budget)
        checked = not spec.constraints

        def progress(used: int, _total: int) -> None:  # called once per batch
            nonlocal checked
            bar.update(task, completed=used)
            if not checked and WARN_UNMET_AFTER <= used < spec.budget:  # the end has its own word on it
                checked = True
                _warn_about_constraints(store, run_id)

        return execute_run(store, run_id, evaluator, progress, on_start)


def _warn_about_bounds_below_the_smallest_network(spec) -> None:
    """A bound on MACs, parameters or activations below what the space's network of first choices has (the
    smallest, in spaces whose choices grow from small to large, as FleetNAS's do), said before the run spends
    its budget on a front that stays empty; a warning only, since a plug-in's choices may run otherwise."""
    import numpy as np

    from fleetnas.search.live import ANALYTIC
    from fleetnas.supernets import get_supernet
    from fleetnas.supernets.analytic import analytic_features

    bounds = [c for c in spec.parsed_constraints() if c.objective in ANALYTIC and c.op == "<="]
    supernet = get_supernet(spec.space) if bounds else None
    if supernet is None or supernet.table_only:
        return
    first = supernet.space.decode(np.zeros(supernet.space.n_var, dtype=np.int64))
    if not supernet.space.is_valid(first):
        return
    try:
        features = analytic_features(supernet, first)
    except Exception:  # noqa: BLE001 — a plug-in's network that cannot be built here: the run says so itself
        return
    for c in bounds:
        if features[c.objective] > c.value:
            print(f"warning: {c} may be unmeetable: the network of {spec.space}'s first choices, its smallest, has "
                  f"{c.in_its_unit(features[c.objective])}", file=sys.stderr, flush=True)


def _warn_about_constraints(store, run_id: int) -> None:
    from fleetnas.search.run import constraint_warnings

    for line in constraint_warnings(store, run_id):
        print(f"warning: {line}", file=sys.stderr, flush=True)


def _report(store, run_id: int, session, as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from fleetnas.search.objectives import shown_unit
    from fleetnas.search.run import known_summary, measured_front

    configs, values, objectives = measured_front(store, run_id)
    _warn_about_constraints(store, run_id)  # the run's last word on them, after any warning on the way
    failures = store.run_events(run_id, "failed")
    if failures:
        print(f"warning: {len(failures)} configurations could not be evaluated (first: "
              f"{failures[0].payload['error']}); `fleetnas report {run_id}` lists them", file=sys.stderr)
    if as_json:
        print_json({"run": run_id, "evaluations": session.used, "failed": session.failed,
                    "known": session.known_counts, "front": [
            {"config": c, **{o.name: float(v) for o, v in zip(objectives, row)}} for c, row in zip(configs, values)]})
        return
    failed = f", {session.failed} failed" if session.failed else ""
    table = Table(title=f"run {run_id}: measured Pareto front ({len(configs)} of {session.used} evaluations{failed})")
    factors = []
    for o in objectives:
        unit, factor = shown_unit(o)
        table.add_column(f"{o} ({unit})" if unit else str(o), justify="right")
        factors.append(factor)
    table.add_column("config")
    for c, row in zip(configs, values):
        table.add_row(*[f"{v * f:.4g}" for v, f in zip(row, factors)], json.dumps(c, separators=(",", ":"))[:80])
    Console().print(table)
    learned = known_summary(session)
    if learned:
        print(learned)
    print(f"report: fleetnas report {run_id}" + (f" --db={shlex.quote(str(store.path))}" if store.path else ""))
