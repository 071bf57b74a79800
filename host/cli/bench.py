"""`fleetnas bench`: figures from recorded tables. Each sub-command is a `_add_<name>(sub)` function below."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from .common import (CliError, existing_file, model_families, output_file, positive_int, refuse_overwriting_inputs,
                     seed)


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark predictors (and search) on recorded tables",
                       description="Replay recorded measurement tables to score FleetNAS's predictors and search "
                                   "tactics.")
    bench_sub = p.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    _add_predictor(bench_sub)
    _add_search(bench_sub)


# ----- fleetnas bench predictor ----------------------------------------------------------------------
def _add_predictor(bench_sub) -> None:
    p = bench_sub.add_parser(
        "predictor", help="fit predictors on random train splits of a table and score them on the other rows",
        description="For each target, train size and seed: fit a predictor (cross-validated model choice) on "
                    "N random rows, predict every remaining row, and score the predictions.")
    p.add_argument("--table", required=True, type=existing_file, metavar="CSV", help="the recorded table")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--space", metavar="NAME", help="the rows are configs of this space (needs --key)")
    what.add_argument("--features", metavar="C1,C2,...", help="numeric feature columns of the table")
    p.add_argument("--key", metavar="COLUMN[,COLUMN...]",
                   help="with --space: the key column, or the columns the space reads a row from (e.g. ks,e,d,r)")
    p.add_argument("--target", action="append", default=[], metavar="COLUMN", help="column to predict (repeatable)")
    p.add_argument("--target-sum", action="append", default=[], metavar="C1+C2",
                   help="predict the sum of these columns (repeatable)")
    p.add_argument("--train-size", action="append", type=positive_int, required=True, metavar="N",
                   help="training rows (repeatable)")
    p.add_argument("--seeds", type=positive_int, default=3, metavar="K", help="random splits per size (default 3)")
    p.add_argument("--models", default="auto", help="comma-separated model families, or auto (default)")
    p.add_argument("--log-target", choices=("auto", "yes", "no"), default="auto",
                   help="fit log(y): auto lets cross-validation decide (default)")
    p.add_argument("--cv", type=positive_int, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--json", type=output_file, metavar="OUT",
                   help="write every run's keys, truths and predictions here")
    p.set_defaults(handler=run_predictor)


def run_predictor(args: argparse.Namespace) -> int:
    import numpy as np

    from ..predictors import fit_predictor, regression_metrics
    from ..predictors.features import feature_views

    if args.space is not None and not args.space.strip():
        raise CliError("--space is empty: name a space (`fleetnas space list`)", 2)
    if args.space and not args.key:
        raise CliError("--space needs --key (the column(s) that name each row's config)", 2)
    if args.key and not args.space:
        raise CliError("--key goes with --space", 2)
    targets = args.target + args.target_sum
    if not targets:
        raise CliError("give at least one --target or --target-sum", 2)
    try:  # a repeat would fit the same split twice and count it as two
        _refuse_repeats("--target", targets)
        _refuse_repeats("--train-size", [str(n) for n in args.train_size])
    except ValueError as exc:
        raise CliError(str(exc), 2) from None
    too_small = [n for n in args.train_size if n < 4]
    if too_small:  # before any fit: a predictor cross-validates on at least 4 rows
        raise CliError(f"--train-size {too_small[0]} is too small: a predictor needs at least 4 rows", 2)
    models = model_families(args.models)
    if args.cv < 2:
        raise CliError(f"--cv needs at least 2 folds, got {args.cv}", 2)
    output = _output_file(args.json, args.table)
    table, X, keys, spec = _table_features(args)
    leaked = [t for t in targets if spec["kind"] == "table" and set(t.split("+")) & set(spec["columns"])]
    if leaked:
        raise CliError(f"--target {leaked[0]} is also a --features column: the predictor would read the answer", 2)
    try:  # every target is read (and checked) before the first fit
        truths = {target: table.column(target) for target in targets}
    except ValueError as exc:
        raise CliError(str(exc)) from None
    views = feature_views(spec["columns"]) if spec["kind"] == "space" else None
    log_target = {"auto": None, "yes": True, "no": False}[args.log_target]
    too_big = [n for n in args.train_size if n > len(keys) - 1]
    if too_big:
        raise CliError(f"--train-size {too_big[0]} leaves no test rows: {args.table} has {len(keys)} rows")

    runs = []
    for target, y in truths.items():
        for size in args.train_size:
            for seed in range(args.seeds):
                order = np.random.default_rng(seed).permutation(len(y))
                train, test = order[:size], order[size:]
                try:
                    predictor = fit_predictor(X[train], y[train], models=models, log_target=log_target, cv=args.cv,
                                              seed=seed, feature_spec={**spec, "target": target}, views=views)
                except ValueError as exc:
                    raise CliError(f"{target}, {size} rows, seed {seed}: {exc}") from None
                predicted = predictor.predict(X[test])
                runs.append({"target": target, "train_size": size, "seed": seed, "model": predictor.model_name,
                             "log_target": predictor.log_target, "view": predictor.feature_spec.get("view", "all"),
                             "fit_seconds": predictor.cv_metrics["fit_seconds"],
                             "fit_cpu_seconds": predictor.cv_metrics["fit_cpu_seconds"],
                             "keys": [keys[i] for i in test], "y_true": y[test].tolist(), "y_pred": predicted.tolist(),
                             "metrics": regression_metrics(y[test], predicted)})
                _progress(runs[-1])
    _print_summary(runs, args.table.name)
    _write_json(output, {"table": str(args.table), "features": spec, "runs": runs})
    return 0


def _table_features(args):
    """(table, feature matrix, row keys, feature spec) for --space/--key or --features."""
    from ..tables import read_table, table_configs

    try:
        table = read_table(args.table)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.features is not None:  # "" too: it names no column, it does not mean --space
        columns = [c.strip() for c in args.features.split(",") if c.strip()]
        if not columns:
            raise CliError(f"--features {args.features!r} names no column", 2)
        try:
            X = table.features(columns)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        return table, X, list(range(len(table.rows))), {"kind": "table", "columns": columns}
    from ..predictors.features import config_features
    from ..supernets import InvalidConfig, get_supernet

    try:
        supernet = get_supernet(args.space)
    except (KeyError, ImportError) as exc:
        raise CliError(f"--space {args.space}: {exc.args[0] if exc.args else exc}") from None
    try:
        configs = table_configs(table, supernet, args.key)
    except (InvalidConfig, ValueError) as exc:  # its message names the table
        raise CliError(str(exc)) from None
    X, names = config_features(supernet, configs)
    keys = [supernet.space.key(c) for c in configs]
    return table, X, keys, {"kind": "space", "space": args.space, "key": args.key, "columns": names}


def _progress(run: dict) -> None:
    m = run["metrics"]
    view = f" on {run['view']} features" if run["view"] != "all" else ""
    print(f"{run['target']}  n={run['train_size']}  seed {run['seed']}: {run['model']}"
          f"{' (log)' if run['log_target'] else ''}{view}  within ±10 % {m['within_10']:.1%}  "
          f"MAPE {m['mape']:.2f} %  fit {run['fit_seconds']:.2f} s ({run['fit_cpu_seconds']:.2f} s CPU)", file=sys.stderr, flush=True)


def summarise(runs: list[dict]) -> list[dict]:
    """Median over seeds of each metric, per (target, train size), with the models chosen."""
    import numpy as np
    from collections import Counter

    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["target"], run["train_size"]), []).append(run)
    rows = []
    for (target, size), group in groups.items():
        row = {"target": target, "train_size": size, "seeds": len(group)}
        for name in ("within_10", "within_5", "mape", "kendall_tau", "rmse"):
            row[name] = float(np.median([r["metrics"][name] for r in group]))
        row["fit_seconds"] = float(np.median([r["fit_seconds"] for r in group]))
        row["fit_cpu_seconds"] = float(np.median([r["fit_cpu_seconds"] for r in group]))
        chosen = Counter(r["model"] + ("/log" if r["log_target"] else "") for r in group)
        row["models"] = ", ".join(f"{m}×{k}" if k > 1 else m for m, k in chosen.most_common())
        rows.append(row)
    return rows


def _print_summary(runs: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{title}: medians over seeds")
    for column in ("target", "train", "seeds", "±10 %", "±5 %", "MAPE %", "Kendall τ", "RMSE", "fit s", "fit CPU s", "models"):
        table.add_column(column, justify="left" if column in ("target", "models") else "right")
    for row in summarise(runs):
        table.add_row(row["target"], str(row["train_size"]), str(row["seeds"]), f"{row['within_10']:.1%}",
                      f"{row['within_5']:.1%}", f"{row['mape']:.2f}", f"{row['kendall_tau']:.3f}", f"{row['rmse']:.4g}",
                      f"{row['fit_seconds']:.2f}", f"{row['fit_cpu_seconds']:.2f}", row["models"])
    # A log file or pipe gets the full width, not rich's 80-column default.
    Console(width=None if sys.stdout.isatty() else 170).print(table)


# ----- fleetnas bench search -------------------------------------------------------------------------
REACH = (0.95, 0.98, 0.99)


def _add_search(bench_sub) -> None:
    p = bench_sub.add_parser(
        "search", help="replay a table as a search problem and score tactics by hypervolume per evaluation",
        description="Every row of the table is a config with its true objective values; a real evaluation is a "
                    "look-up. Each run is scored by the fraction of the table's true Pareto front hypervolume it "
                    "has reached after each evaluation (objectives normalised so that the true front's ideal point "
                    "is 0 and its nadir 1; reference point 1.1).")
    p.add_argument("--table", required=True, type=existing_file, metavar="CSV")
    p.add_argument("--space", required=True, metavar="NAME")
    p.add_argument("--key", required=True, metavar="COLUMN[,COLUMN...]")
    p.add_argument("--objective", action="append", required=True, metavar="COLUMN:max|min",
                   help="a column and its direction (repeat: two or more)")
    p.add_argument("--tactic", action="append", required=True, choices=["linas", "evolutionary", "random"])
    p.add_argument("--algorithm", choices=["nsga2", "agemoea", "unsga3", "ctaea", "moead"],
                   help="the evolutionary algorithm of linas's inner search and of evolutionary (default nsga2)")
    p.add_argument("--budget", type=positive_int, required=True, metavar="N", help="real evaluations per run")
    p.add_argument("--seeds", type=positive_int, default=3, metavar="K", help="runs per tactic (seeds S..S+K-1)")
    p.add_argument("--first-seed", type=seed, default=0, metavar="S",
                   help="the first run's seed (default 0): seeds a tactic was not tuned on, or more runs beside "
                        "earlier ones")
    p.add_argument("--known", action="append", default=[], type=_known_rows, metavar="COLUMN:N",
                   help="each run knows N random rows' values of objective COLUMN beforehand, as a search knows a "
                        "calibration's measurements or an earlier run's accuracy (repeatable; not counted)")
    p.add_argument("--json", type=output_file, metavar="OUT", help="every run's evaluated keys and hypervolume curve")
    p.set_defaults(handler=run_search_bench)


def _known_rows(text: str) -> tuple[str, int]:
    column, _, n = text.rpartition(":")
    if not column or not n.isdigit() or int(n) <= 0:
        raise argparse.ArgumentTypeError(f"expected COLUMN:N with N a positive number of rows, got {text!r}")
    return column, int(n)


def _seeds(first: int, count: int) -> range:
    from ..search.run import MAX_SEED

    if first + count - 1 > MAX_SEED:
        raise ValueError(f"--first-seed {first} with --seeds {count} goes past the largest seed, {MAX_SEED}")
    return range(first, first + count)


def _refuse_repeats(option: str, values: list[str]) -> None:
    repeated = [v for i, v in enumerate(values) if v in values[:i]]
    if repeated:
        raise ValueError(f"{option} {repeated[0]} is given twice")


def _output_file(path: Path | None, table: Path) -> Path | None:
    """--json OUT, checked before hours of benchmarking: its folder is made now, and one that cannot be
    written to is refused now (a folder given as OUT already was, by `output_file`). OUT itself is written at
    the end, whole (`atomic_write`): a run interrupted or failed leaves no empty file that would pass for results."""
    if path is None:
        return None
    refuse_overwriting_inputs(path, "--json", {"the --table": table})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise CliError(f"cannot write --json {path}: {exc.strerror}") from None
    return path


def run_search_bench(args: argparse.Namespace) -> int:
    from ..search.objectives import parse_column_objective
    from ..search.replay import ReplayProblem, evaluations_to_reach
    from ..search.tactics import LEARNING
    from ..tables import read_table

    try:
        objectives = [parse_column_objective(o) for o in args.objective]
        if len(objectives) < 2:
            raise ValueError("give at least two --objective")
        _refuse_repeats("--objective", [o.metric for o in objectives])
        _refuse_repeats("--tactic", args.tactic)
        _refuse_repeats("--known", [column for column, _ in args.known])
        problem = ReplayProblem.from_table(read_table(args.table), args.space, args.key, objectives)
        if args.budget > problem.size:
            raise ValueError(f"--budget {args.budget} is more than the {problem.size:,} configurations of {args.table.name}")
        problem.known_sample(dict(args.known), 0)  # refuses an unknown column or too many rows before any run
        seeds = _seeds(args.first_seed, args.seeds)
    except (ValueError, KeyError, ImportError) as exc:  # ImportError: a space's plug-in that cannot be loaded
        raise CliError(exc.args[0] if exc.args else str(exc)) from None
    output = _output_file(args.json, args.table)
    blind = [t for t in args.tactic if t not in LEARNING]
    if args.known and blind:  # they propose from what they evaluate alone: known values change nothing for them
        them = "run as they" if len(blind) > 1 else "runs as it"
        print(f"fleetnas: --known informs {', '.join(sorted(LEARNING))} only: {' and '.join(blind)} {them} would "
              "without it", file=sys.stderr)
    searching = set(args.tactic) - {"random"} - ({"linas"} if problem.pool is not None else set())
    if args.algorithm and not searching:
        why = (f"{args.table.name} holds part of {args.space}, and linas then predicts each of its rows instead "
               "of searching the space" if "linas" in args.tactic else "random search uses none")
        print(f"fleetnas: --algorithm {args.algorithm} is unused: {why}", file=sys.stderr)
    runs = []
    for tactic in args.tactic:
        settings = {} if tactic == "random" else {"algorithm": args.algorithm or "nsga2"}
        for run_seed in seeds:
            run = problem.run(tactic, run_seed, args.budget, known=dict(args.known), **settings)
            runs.append(run)
            reached = [evaluations_to_reach(run["hv"], f) for f in REACH]
            print(f"{tactic} seed {run_seed}: final {run['hv'][-1]:.2%}; evaluations to "
                  + ", ".join(f"{f:.0%}: {r or '-'}" for f, r in zip(REACH, reached)), file=sys.stderr, flush=True)
    _print_search_summary(runs, args)
    _write_json(output, {"table": str(args.table), "objectives": args.objective, "budget": args.budget,
                         "known": dict(args.known), "runs": runs})
    return 0


def _write_json(output: Path | None, results: dict) -> None:
    """The --json file, whole, after the summary: a write that fails (a full disk) still leaves the figures on
    the terminal, and the error says what was not saved."""
    from ..export.artifact import atomic_write
    from ..predictors.metrics import json_safe

    if output is None:
        return
    try:  # strict JSON: a figure that cannot be computed (Kendall's tau of a constant) is null, not NaN
        atomic_write(output, json.dumps(json_safe(results), allow_nan=False).encode())
    except OSError as exc:
        raise CliError(f"cannot write --json {output}: {exc.strerror or exc}; the figures above are all that is "
                       "left of this benchmark") from None


def _print_search_summary(runs: list[dict], args) -> None:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from ..search.replay import evaluations_to_reach

    table = Table(title=f"{args.table.name}: {' × '.join(args.objective)}, budget {args.budget}")
    table.add_column("tactic")
    for f in REACH:
        table.add_column(f"evals to {f:.0%} (mean; runs reaching)", justify="right")
    table.add_column("HV at budget (median)", justify="right")
    for tactic in args.tactic:
        mine = [r for r in runs if r["tactic"] == tactic]
        cells = []
        for f in REACH:
            reached = [evaluations_to_reach(r["hv"], f) for r in mine]
            hit = [n for n in reached if n is not None]
            cells.append(f"{np.mean(hit):.0f} ({len(hit)}/{len(mine)})" if hit else f"- (0/{len(mine)})")
        table.add_row(tactic, *cells, f"{np.median([r['hv'][-1] for r in mine]):.2%}")
    Console(width=None if sys.stdout.isatty() else 170).print(table)  # a log keeps its headers on one line
