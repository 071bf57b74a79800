"""`fleetnas predict`: sub-networks' latency and memory on a device kind, from its latest calibration."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import datetime

from .common import CliError, count_up_to, print_json, seed
from .export import parse_config
from .space import load_supernet

#: The metrics a calibration fits, with how they are shown: heading, factor from the stored unit, format.
SHOWN = {"latency_ms": ("latency ms", 1.0, ".3g"), "peak_bytes": ("memory MiB", 2.0 ** -20, ".3g")}
MAX_SAMPLE = 10_000


def register(sub) -> None:
    p = sub.add_parser("predict", help="predict sub-networks' latency and memory on a device kind from its "
                                       "latest calibration",
                       description="What a device kind's calibrated predictors expect of sub-networks, without "
                                   "measuring: the latest `fleetnas calibrate` of the space on the kind, each "
                                   "figure with the spread of the predictor's ensemble (±).")
    p.add_argument("--space", required=True, metavar="NAME", help="super-network space, e.g. demo or ofa_mbv3")
    p.add_argument("--device-kind", required=True, metavar="KIND", help="a device kind the space was calibrated on")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", action="append", metavar="JSON",
                       help="a config as a JSON object, or @FILE holding one (repeatable)")
    which.add_argument("--sample", type=count_up_to(MAX_SAMPLE), metavar="N", help="N configs sampled with --seed")
    p.add_argument("--seed", type=seed, default=0, help="seed of --sample (default 0)")
    p.add_argument("--db", help="the store (default fleetnas.db or $FLEETNAS_DB)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fleetnas.calibrate import latest_predictor
    from fleetnas.calibrate.calibration import CalibrationError
    from fleetnas.calibrate.watch import changes_since
    from fleetnas.store import StoreError, open_store

    supernet = load_supernet(args.space)
    configs = _configs(supernet, args)
    try:
        with open_store(args.db, read_only=True) as store:
            calibration = store.latest_calibration(args.space, args.device_kind)
            predictors = {m: latest_predictor(store, args.space, args.device_kind, m)
                          for m in SHOWN if calibration is None or m in calibration.result["metrics"]}
            changes = changes_since(store, calibration)
    except (StoreError, CalibrationError) as exc:
        raise CliError(str(exc)) from None
    watch_store = f" --db {shlex.quote(args.db)}" if args.db else ""
    for agent, verdict in changes.items():  # a watch stopped before its refit: the fit predates the device's change
        print(f"warning: {agent} changed after calibration {calibration.id} ({verdict['reason']}), which has not been "
              f"refitted since: these predictions may be out of date; `fleetnas calibrate --space {args.space} "
              f"--device-kind {args.device_kind} --watch{watch_store}` refits it", file=sys.stderr)
    predicted = {m: _predict(supernet, p, configs, calibration.id) for m, p in predictors.items()}
    rows = [{"config": c, **{m: {"mean": float(mean[i]), "std": float(std[i])} for m, (mean, std) in predicted.items()}}
            for i, c in enumerate(configs)]
    if args.json:
        print_json({"space": args.space, "device_kind": args.device_kind,
                    "calibration": {**_about(calibration), "changed_since": changes}, "predictions": rows})
    else:
        _print(rows, calibration, args)
    return 0


def _configs(supernet, args: argparse.Namespace) -> list[dict]:
    if args.sample:
        return supernet.space.sample(args.sample, args.seed)
    configs = []
    for text in args.config:
        try:
            configs.append(supernet.space.validate(parse_config(text)))
        except ValueError as exc:  # InvalidConfig names the variable and its choices
            raise CliError(f"bad config for {supernet.id}: {exc}") from None
    return configs


def _predict(supernet, predictor, configs, calibration_id: int):
    """(mean, std) of one metric; refused where the space's features are no longer those it was fitted on."""
    from fleetnas.predictors.features import config_features

    X, names = config_features(supernet, configs)
    fitted_on = predictor.feature_spec.get("columns")
    if fitted_on is not None and list(fitted_on) != list(names):
        raise CliError(f"calibration {calibration_id} was fitted on other features of {supernet.id} than the "
                       "space has now (its definition changed since): calibrate again")
    return predictor.predict_dist(X)


def _about(calibration) -> dict:
    metrics = calibration.result["metrics"]
    return {"id": calibration.id, "created_unix_s": calibration.created_at, "runtime": calibration.runtime,
            "threads": calibration.settings.get("threads"),
            **{m: {"model": f["model"], "rows": f["rows"], "cv_mape_pct": f["cv"].get("mape"),
                   "kendall_tau": f["cv"].get("kendall_tau")} for m, f in metrics.items() if m in SHOWN}}


def _print(rows: list[dict], calibration, args: argparse.Namespace) -> None:
    from rich.table import Table
    from rich.text import Text

    from fleetnas.predictors.metrics import figure

    from .devices import console

    metrics = [m for m in SHOWN if rows and m in rows[0]]
    table = Table(title=Text(f"{args.space} on {args.device_kind}, predicted"))
    for m in metrics:
        table.add_column(SHOWN[m][0], justify="right")
    table.add_column("config")
    for row in rows:
        cells = [f"{row[m]['mean'] * SHOWN[m][1]:{SHOWN[m][2]}} ± {row[m]['std'] * SHOWN[m][1]:.2g}" for m in metrics]
        table.add_row(*cells, Text(json.dumps(row["config"], separators=(",", ":"))))
    out = console()
    out.print(table)
    about = _about(calibration)
    when = datetime.fromtimestamp(calibration.created_at).strftime("%Y-%m-%d %H:%M")
    fits = "; ".join(f"{m}: {about[m]['model']} on {about[m]['rows']} measurements, cross-validated MAPE "
                     f"{figure(about[m]['cv_mape_pct'], '.1f')} %, Kendall τ {figure(about[m]['kendall_tau'], '.2f')}"
                     for m in metrics)
    out.print(Text(f"from calibration {calibration.id} of {when} ({calibration.runtime}, "
                       f"{about['threads']} thread(s)); {fits}"))
