"""`fleetnas calibrate`: fit a device kind's latency and memory predictors, and keep them true (--watch)."""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path

from .common import (FARM_GIVE_UP_S, CliError, add_stopping_options, count_up_to, missing_folders, model_families,
                     no_empty_store_if_refused, positive_int, positive_seconds, print_json, remove_empty, seed,
                     stopping_from)
from .space import MAX_SAMPLE

DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h|d)?\s*$")
UNIT_S = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


#: The longest --interval: a year. Longer waits overflow the platform's timer (and mean "never").
MAX_INTERVAL_S = 366 * 86400.0


def duration_s(text: str) -> float:
    """'90', '30s', '10m', '1.5h', '1d' as seconds (at most a year; 0: rounds back to back)."""
    match = DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30s, 10m, 1.5h or 1d")
    seconds = float(match.group(1)) * UNIT_S[match.group(2)]
    if seconds > MAX_INTERVAL_S:
        raise argparse.ArgumentTypeError(f"must be at most a year (366d), got {text}")
    return seconds


def fraction(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100.0 if text.endswith("%") else 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction such as 0.1 or 10%") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def register(sub) -> None:
    p = sub.add_parser(
        "calibrate", help="fit latency and memory predictors for a device kind; watch for drift",
        description="Measure a Latin-hypercube sample of a space plus its fixed reference set on the farm's agents of "
                    "one kind, fit the latency and memory predictors (model chosen by cross-validation), and write "
                    "them with a parity plot. --watch then re-measures the reference set every --interval and, when "
                    "a device drifted or changed its runtime version, marks its old measurements stale, measures "
                    "again and refits.")
    p.add_argument("--space", required=True, metavar="NAME", help="super-network space, e.g. demo or ofa_mbv3")
    p.add_argument("--device-kind", required=True, metavar="KIND", help="device kind from the inventory")
    p.add_argument("--samples", type=count_up_to(MAX_SAMPLE), metavar="N",
                   help=f"sub-networks to sample and measure (besides the reference set, at most {MAX_SAMPLE:,}); "
                        "needed unless --watch continues an earlier calibration")
    p.add_argument("--seed", type=seed, default=0, help="sampling and model-selection seed (default 0)")
    p.add_argument("--inventory", type=Path, default=Path("fleetnas.toml"), metavar="FILE",
                   help="farm inventory (default: fleetnas.toml in the working directory)")
    p.add_argument("--db", metavar="FILE", help="measurement database (default: fleetnas.db, or $FLEETNAS_DB)")
    p.add_argument("--out-dir", type=Path, metavar="DIR",
                   help="where predictors and the parity plot go (default: predictors/ beside the database)")
    p.add_argument("--include-throttled", action="store_true",
                   help="fit on measurements taken while the device was throttled too (left out by default)")
    p.add_argument("--models", default="auto", help="model families to choose from, comma-separated: ridge, svr, "
                                                    "lgbm, mlp (default auto: all)")
    p.add_argument("--give-up", type=positive_seconds, default=FARM_GIVE_UP_S, metavar="SECONDS",
                   help="fail waiting jobs once no agent of the kind has answered for this long "
                        f"(default {FARM_GIVE_UP_S:g})")
    w = p.add_argument_group("continuous mode")
    w.add_argument("--watch", action="store_true", help="keep re-measuring the reference set and refit on change")
    w.add_argument("--interval", type=duration_s, default=600.0, metavar="DURATION",
                   help="time between reference rounds, start to start: 30s, 10m, 1h (default 10m)")
    w.add_argument("--rounds", type=positive_int, metavar="N", help="stop after N rounds (default: until interrupted)")
    w.add_argument("--threshold", type=fraction, default=0.10, metavar="FRACTION",
                   help="median latency change that counts as drift: 0.1 or 10%% (default 10%%)")
    w.add_argument("--alpha", type=fraction, default=0.01,
                   help="significance level of the paired test across reference configs (default 0.01)")
    add_stopping_options(p)
    p.add_argument("--json", action="store_true",
                   help="print JSON instead of a summary (with --watch: JSON Lines, the calibration that --samples "
                        "makes first, then one line per round)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fleetnas.calibrate import CalibrationError, default_out_dir
    from fleetnas.calibrate.watch import watch_lock
    from fleetnas.farm import Farm, FarmError, Inventory, InventoryError, JobError
    from fleetnas.store import StoreError, open_store

    stopping = stopping_from(args)
    if not args.watch and args.samples is None:
        raise CliError("give --samples N (how many sub-networks to measure), or --watch to continue an earlier "
                       "calibration", 2)
    if args.watch and args.samples is None and stopping:
        raise CliError("the stopping rule belongs to a calibration: --watch alone reuses the latest one's; give "
                       "--samples N to calibrate anew with these flags", 2)
    watch_only = [f"--{name}" for name, default in (("interval", 600.0), ("rounds", None), ("threshold", 0.10),
                                                      ("alpha", 0.01)) if getattr(args, name) != default]
    if watch_only and not args.watch:
        raise CliError(f"{watch_only[0]} only applies with --watch", 2)
    models = model_families(args.models)
    if args.watch:
        _check_alpha(args.alpha)
    if args.watch and args.interval == 0 and args.rounds is None:
        # Back to back and without end: the devices would do nothing but measure the reference set.
        raise CliError("--interval 0 needs --rounds N: without it the watch would measure back to back forever", 2)
    if args.out_dir is not None and args.out_dir.exists() and not args.out_dir.is_dir():
        raise CliError(f"--out-dir {args.out_dir} is a file; give a folder", 2)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, datefmt="%Y-%m-%d %H:%M:%S",
                        format="%(asctime)s %(message)s" if args.watch else "fleetnas: %(message)s")
    # Watching, every round's verdict is news (INFO); a one-off calibration only says what went wrong.
    logging.getLogger("fleetnas.calibrate").setLevel(logging.INFO if args.watch else logging.WARNING)
    with no_empty_store_if_refused(args.db), _no_empty_folder_if_refused(args.out_dir, "--out-dir"):
        try:
            inventory = Inventory.load(args.inventory)
            inventory.of_kind(args.device_kind)
            store = open_store(args.db)
        except (InventoryError, StoreError) as exc:
            raise CliError(str(exc)) from None
        default_folder = default_out_dir(store) if args.out_dir is None else None
        with store, _no_empty_folder_if_refused(default_folder, "the predictors' folder (--out-dir)"):
            farm = Farm(inventory, store, give_up_s=args.give_up, progress=sys.stderr.isatty() and not args.json)
            try:
                # A watch holds its lock from the start: the calibration it may begin with takes its drift baseline.
                with farm, watch_lock(farm.store, args.space, args.device_kind) if args.watch else nullcontext():
                    if args.samples is not None:
                        _calibrate(farm, args, stopping, models)
                    if args.watch:
                        _watch(farm, args, models)
            except (CalibrationError, FarmError, StoreError, JobError, InventoryError) as exc:
                raise CliError(str(exc)) from None
    return 0


@contextmanager
def _no_empty_folder_if_refused(folder: Path | None, what: str):
    """Makes the predictors' folder now, so that one that cannot be written is refused before the measuring,
    and removes it again if the command is refused and the folder is still empty."""
    if folder is None:
        yield
        return
    made = missing_folders(folder)
    try:
        writable_folder(folder, what)
        yield
    except BaseException:
        remove_empty(made)  # a folder something was written to after all stays
        raise


def _check_alpha(alpha: float) -> None:
    from fleetnas.calibrate import REFERENCE_SIZE
    from fleetnas.calibrate.drift import check_alpha_reachable

    try:
        check_alpha_reachable(alpha, REFERENCE_SIZE)
    except ValueError as exc:
        raise CliError(f"--alpha: {exc}", 2) from None


def writable_folder(folder: Path, what: str) -> None:
    """Refuses a folder the predictors cannot be written to now, rather than after all the measuring."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise CliError(f"{what} {folder} cannot be written to: {exc.strerror or exc}", 2) from None


def _calibrate(farm, args: argparse.Namespace, stopping: dict, models) -> None:
    from fleetnas.calibrate import calibrate
    from fleetnas.calibrate.calibration import buildable_supernet

    buildable_supernet(args.space)  # a bad space is named before the agents are
    # Every agent of the kind down: refuse now, as `search` does, instead of waiting --give-up per batch.
    farm.require_answering({args.device_kind})
    result = calibrate(farm, farm.store, args.space, args.device_kind, args.samples, seed=args.seed,
                       stopping=stopping, out_dir=args.out_dir, include_throttled=args.include_throttled,
                       models=models)
    print_calibration(result, args)


def print_calibration(result, args: argparse.Namespace) -> None:
    if args.json and args.watch:  # the first of the watch's JSON Lines
        print(json.dumps(result.to_dict()))
    elif args.json:
        print_json(result.to_dict())
    else:
        print(format_calibration(result, args.samples))
    sys.stdout.flush()


def _watch(farm, args: argparse.Namespace, models) -> None:
    from fleetnas.calibrate import watch

    logging.getLogger("fleetnas.calibrate").info(
        "watching %s on %s: reference round every %g s%s; drift = median change ≥ %g %% at p ≤ %g", args.space,
        args.device_kind, args.interval, f", {args.rounds} round(s)" if args.rounds else "",
        args.threshold * 100, args.alpha)
    reached, why = False, ""
    for report in watch(farm, farm.store, args.space, args.device_kind, interval_s=args.interval,
                        rounds=args.rounds, threshold=args.threshold, alpha=args.alpha, out_dir=args.out_dir,
                        include_throttled=args.include_throttled, models=models, lock=False):
        if args.json:  # JSON Lines: one object per round, so a reader can follow the rounds as they come
            print(json.dumps(report.to_dict()), flush=True)
        reached = reached or len(report.unreached) < len(farm.agents_of(args.device_kind))
        why = why or next(iter(report.unreached.values()), "")
    if not reached:  # a watch that could not watch failed, as a calibration that could not measure does
        raise CliError(f"no round of the watch reached an agent of {args.device_kind}: {why}")


def format_calibration(result, samples: int) -> str:
    from fleetnas.predictors.metrics import figure

    baselines = f"; drift baseline of {', '.join(result.baselines)}" if result.baselines else ""
    lines = [f"calibrated {result.space} on {result.device_kind} ({result.runtime}, {result.reason}): {samples} "
             f"sampled sub-networks + the reference set, {result.measured} measured, {result.from_store} from the "
             f"database, {len(result.failed)} failed, {result.elapsed_s:.1f} s{baselines}"]
    for metric, fit in result.fits.items():
        cv = fit.cv_metrics
        throttled = f" ({fit.excluded_throttled} throttled left out)" if fit.excluded_throttled else ""
        lines.append(f"  {metric:<11} {fit.model}{' on log(y)' if fit.log_target else ''}, {fit.rows} rows{throttled}:"
                     f" CV MAPE {figure(cv.get('mape'))} %, within ±10 % {figure(cv.get('within_10'), '.0%')},"
                     f" Kendall τ {figure(cv.get('kendall_tau'))}"
                     f"  → {fit.predictor_path}")
    lines.append(f"  parity plot → {result.plot_path}")
    lines += [f"  failed: {error}" for error in result.failed[:5]]
    return "\n".join(lines)
