"""Calibrating a device kind: measure a sample and the reference set, fit latency and memory predictors.

    with Farm.open("fleetnas.toml", db="fleetnas.db") as farm:
        result = calibrate(farm, farm.store, "demo", "rpi4-ort-1t", samples=40)
        result.fits["latency_ms"].cv_metrics["mape"], result.fits["latency_ms"].predictor_path, result.plot_path

Predictors are JSON files (fleetnas.predictors) at OUT_DIR/SPACE/KIND/METRIC-DIGEST.json, next to a
parity plot (parity-DIGEST.png); `latest_predictor(store, space, kind, metric)` loads the latest
calibration's. Their features are `config_features(get_supernet(space), configs)`.
Every fit is a row of the store's `calibrations` table, with its metrics, its reason (requested, drift,
version), and the name and sha256 of each predictor file. A file is named by its content and never
overwritten: another store's calibration into the same folder, or a calibration that failed before it
was recorded, cannot change the files a recorded calibration names.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from fleetnas.store import NewReferenceRound, Store
from fleetnas.store.base import CALIBRATION_REASONS

from ..predictors.metrics import json_safe
from .drift import DEFAULT_ALPHA, RoundEntry, least_per_config, min_pairs
from .reference import ReferenceSet, reference_set

log = logging.getLogger("fleetnas.calibrate")

#: What is fitted: the store's metric names (median latency, peak memory above the runtime's baseline).
METRICS = ("latency_ms", "peak_bytes")
CV_FIGURES = ("mape", "within_5", "within_10", "rmse", "kendall_tau")


class CalibrationError(RuntimeError):
    """Calibration cannot go on (unknown space, too few usable measurements, ...); the message says why."""


@dataclass(frozen=True)
class MetricFit:
    metric: str
    rows: int                  # measurements fitted on
    excluded_throttled: int    # measurements left out because the device was throttled
    model: str                 # the family cross-validation chose
    log_target: bool
    cv_metrics: dict           # out-of-fold: mape (%), within_5, within_10 (fractions), rmse, kendall_tau
    predictor_path: Path
    sha256: str = ""           # of the predictor file's bytes: latest_predictor checks the file against it

    def to_dict(self) -> dict:
        return {"metric": self.metric, "rows": self.rows, "excluded_throttled": self.excluded_throttled,
                "model": self.model, "log_target": self.log_target, "cv": self.cv_metrics,
                "predictor": str(self.predictor_path), "sha256": self.sha256}


@dataclass(frozen=True)
class CalibrationResult:
    calibration_id: int
    space: str
    device_kind: str
    runtime: str
    settings_hash: str
    reason: str                       # requested | drift | version
    fits: dict                        # metric -> MetricFit
    plot_path: Path
    measured: int = 0                 # measurements taken for this calibration
    from_store: int = 0               # sample configs the store already held
    failed: list = field(default_factory=list)      # errors of jobs that failed
    baselines: dict = field(default_factory=dict)   # agent -> id of the reference round recorded as its baseline
    elapsed_s: float = 0.0

    def summary(self) -> dict:
        """The headline figures, JSON-ready: per metric the model, rows, CV MAPE, ±10 % hit rate and Kendall tau."""
        return {"calibration_id": self.calibration_id, "space": self.space, "device_kind": self.device_kind,
                "reason": self.reason, "measured": self.measured, "elapsed_s": round(self.elapsed_s, 1),
                **{m: {"model": f.model, "rows": f.rows, "cv_mape_pct": _rounded(f.cv_metrics["mape"], 2),
                       "cv_within_10": _rounded(f.cv_metrics["within_10"], 3),
                       "kendall_tau": f.cv_metrics["kendall_tau"],
                       "predictor": str(f.predictor_path)} for m, f in self.fits.items()},
                "plot": str(self.plot_path)}

    def to_dict(self) -> dict:
        return {"calibration_id": self.calibration_id, "space": self.space, "device_kind": self.device_kind,
                "runtime": self.runtime, "settings_hash": self.settings_hash, "reason": self.reason,
                "metrics": {m: f.to_dict() for m, f in self.fits.items()}, "plot": str(self.plot_path),
                "measured": self.measured, "from_store": self.from_store, "failed": list(self.failed),
                "baselines": dict(self.baselines), "elapsed_s": round(self.elapsed_s, 3)}


def _rounded(value, digits: int):
    return None if value is None else round(value, digits)  # None: a figure that could not be computed


@dataclass(frozen=True)
class MeasuredRound:
    """The reference set just measured on one agent."""
    agent: str
    device_id: str
    entries: list                     # RoundEntry per reference config, in the set's order
    platform: dict                    # runtime_version, agent_version, os
    started_at: float                 # unix seconds, before the first job: older rows are "before" it
    errors: list = field(default_factory=list)


# ----- the calibration --------------------------------------------------------------------------------
def calibrate(farm, store: Store, space_id: str, device_kind: str, samples: int, *, seed: int = 0, stopping=None,
              out_dir: str | Path | None = None, include_throttled: bool = False,
              models: str | Sequence[str] = "auto") -> CalibrationResult:
    """Measures a Latin-hypercube sample of `samples` configs (what the store holds is not measured again) and
    the reference set twice on every agent of the kind (always measured: the lesser of each config's two
    medians becomes the agent's drift baseline), then fits and records the predictors.

    `store` is the farm's database (its own store object, or another open on the same database): the fit
    reads what the farm recorded there. `out_dir` gets the predictors and the parity plot (default:
    predictors/ beside the database)."""
    started = time.monotonic()
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise CalibrationError(f"samples must be a positive integer, got {samples!r}")
    supernet = buildable_supernet(space_id)
    settings = measurement_settings(farm, device_kind, stopping)
    sample = supernet.space.latin_hypercube(samples, seed)
    measured_sample = measure_sample(farm, space_id, device_kind, sample, settings.stopping)
    reference = space_reference(supernet.space)
    first = measure_reference_rounds(farm, reference, device_kind, settings.stopping)
    second = measure_reference_rounds(farm, reference, device_kind, settings.stopping)
    baselines = _record_baselines(store, reference, device_kind, settings, first, second)
    rounds = [*first.values(), *second.values()]
    failed = measured_sample["failed"] + [e for r in rounds for e in r.errors]
    measured = measured_sample["measured"] + sum(sum(e.ok for e in r.entries) for r in rounds)
    if len(failed) > measured + measured_sample["from_store"]:
        # Most jobs failed (an agent died, a runtime cannot run the models): a predictor fitted on the rest
        # would be recorded as the kind's latest calibration and reused by every search. What was measured is
        # stored, so a rerun measures only the rest.
        raise CalibrationError(f"{len(failed)} of {len(failed) + measured + measured_sample['from_store']} "
                               f"measurements failed, so no calibration was recorded; first: {failed[0]}")
    return refit(store, space_id, device_kind, settings.to_dict(), reason="requested",
                 sample={"n": samples, "seed": seed}, out_dir=out_dir, include_throttled=include_throttled,
                 models=models, seed=seed, measured=measured, from_store=measured_sample["from_store"], failed=failed,
                 baselines=baselines, started=started)


def _record_baselines(store: Store, reference: ReferenceSet, device_kind: str, settings, first: dict,
                      second: dict) -> dict[str, int]:
    """Each agent's two rounds as its drift baseline; agent -> the baseline round's id."""
    baselines = {}
    for name, r in first.items():
        both = least_of(r, second[name])
        if not enough_for_baseline(both.entries):
            log.warning("%s: too few usable reference measurements for a drift baseline (%s); `watch` will make "
                        "one", name, "; ".join(both.errors[:3]) or "throttled")
            continue
        baselines[name] = record_round(store, reference, device_kind, settings, both, "baseline",
                                       {"reason": "calibration baseline", "rounds": 2}).id
    return baselines


def space_reference(space) -> ReferenceSet:
    try:
        return reference_set(space)
    except ValueError as exc:
        raise CalibrationError(str(exc)) from None


def buildable_supernet(space_id: str):
    from ..supernets import get_supernet

    try:
        supernet = get_supernet(space_id)
    except KeyError as exc:
        raise CalibrationError(exc.args[0]) from None
    if supernet.table_only:
        raise CalibrationError(f"{space_id} is a table-only space: its sub-networks cannot be built, so there is "
                               "nothing to measure on a device")
    return supernet


def measurement_settings(farm, device_kind: str, stopping):
    """The Settings every measurement of this calibration shares (the kind's runtime and threads, the rule)."""
    from ..farm import FarmError, JobError

    try:
        return farm.settings_for(device_kind, farm.export_format(device_kind), stopping)
    except (FarmError, JobError) as exc:
        raise CalibrationError(str(exc)) from None


def measure_sample(farm, space_id: str, device_kind: str, configs: list, stopping) -> dict:
    from ..farm import JobError

    try:
        results = farm.measure(configs, device_kind, space=space_id, stopping=stopping)
    except JobError as exc:
        raise CalibrationError(str(exc)) from None
    failed = [r.error for r in results if not r.ok]
    if len(failed) > len(results) - len(failed):
        # The sample is what a calibration fits: a predictor fitted on the few that worked (or on the reference
        # set alone) would be recorded as the kind's latest and used by every search. What was measured is
        # stored, so a rerun measures only the rest.
        raise CalibrationError(f"{len(failed)} of {len(results)} sampled sub-networks failed, so no calibration "
                               f"was recorded; first: {failed[0]}")
    return {"measured": sum(r.ok and not r.from_store for r in results),
            "from_store": sum(r.from_store for r in results), "failed": failed}


# ----- reference rounds -------------------------------------------------------------------------------
def measure_reference_rounds(farm, reference: ReferenceSet, device_kind: str, stopping,
                             agents: Sequence[str] | None = None) -> dict[str, MeasuredRound]:
    """The reference set measured on each agent of the kind (pinned: "this device, now"), all agents at once."""
    from ..export import ExportError, export_artifact
    from ..farm import ArtifactSource

    fmt = farm.export_format(device_kind)
    try:
        artifacts = [ArtifactSource.from_export(export_artifact(reference.space_id, c, fmt=fmt))
                     for c in reference.configs]
    except (ExportError, ValueError, KeyError) as exc:
        raise CalibrationError(f"cannot export the {reference.space_id} reference set: {exc}") from None
    names = list(agents) if agents is not None else [a.name for a in farm.agents_of(device_kind)]
    jobs = {name: farm.jobs_for(artifacts, device_kind, stopping, agent=name) for name in names}
    started_at = time.time()
    results = farm.run([job for name in names for job in jobs[name]])
    rounds, n = {}, len(artifacts)
    for i, name in enumerate(names):
        mine = results[i * n:(i + 1) * n]
        rounds[name] = _measured_round(farm, name, reference, mine, started_at)
    return rounds


def enough_for_baseline(entries: Sequence[RoundEntry]) -> bool:
    """Whether a round can be a baseline: enough usable entries for the drift test to ever reach its alpha."""
    return sum(e.usable for e in entries) >= min_pairs(DEFAULT_ALPHA)


def least_of(first: MeasuredRound, second: MeasuredRound) -> MeasuredRound:
    """Two back-to-back rounds on one agent as one: each config's lesser median (see drift.least_per_config)."""
    return MeasuredRound(first.agent, second.device_id or first.device_id,
                         least_per_config([first.entries, second.entries]), second.platform or first.platform,
                         first.started_at, first.errors + second.errors)


def _measured_round(farm, agent: str, reference: ReferenceSet, results, started_at: float) -> MeasuredRound:
    entries, errors = [], []
    for key, result in zip(reference.keys, results):
        m = result.measurement if result.ok else None
        if m is None:
            errors.append(f"{agent}: {result.error}")
            entries.append(RoundEntry(key, False))
            continue
        entries.append(RoundEntry(key, True, float(m.stats["median"]), float(m.stats["rel_ci_half_width"]),
                                  bool(m.env.get("throttled")), m.detail.get("runtime_version") or "", m.id))
    device_ids = [r.measurement.device_id for r in results if r.ok]
    device_id = device_ids[0] if device_ids else (farm.agents[agent].device_id or "")
    return MeasuredRound(agent, device_id, entries, _platform(farm.store, device_id, entries), started_at, errors)


def _platform(store: Store, device_id: str, entries: list[RoundEntry]) -> dict:
    """What the device runs: the runtime version its measurements report, and the agent version and OS of its
    latest description (the farm records one each time it checks an agent before a batch)."""
    versions = Counter(e.runtime_version for e in entries if e.ok and e.runtime_version)
    device = store.device(device_id) if device_id else None
    described = device.description if device is not None else {}
    platform = {"runtime_version": versions.most_common(1)[0][0] if versions else "",
                "agent_version": described.get("agent_version", ""), "os": described.get("os", "")}
    return {k: v for k, v in platform.items() if v}


def record_round(store: Store, reference: ReferenceSet, device_kind: str, settings, measured: MeasuredRound,
                 role: str, verdict: dict):
    return store.add_reference_round(NewReferenceRound(
        space=reference.space_id, device_kind=device_kind, agent=measured.agent, device_id=measured.device_id,
        runtime=settings.runtime, settings_hash=settings.hash, reference=reference.digest, role=role,
        entries=[e.to_dict() for e in measured.entries], platform=measured.platform, verdict=verdict))


# ----- fitting ----------------------------------------------------------------------------------------
def training_set(store: Store, space_id: str, device_kind: str, runtime: str, settings_hash: str, metric: str,
                 include_throttled: bool = False, before: float | None = None) -> tuple[list[dict], np.ndarray, int]:
    """(configs, values, throttled rows left out): every current successful measurement of the space on the kind,
    taken with these settings (and, given `before`, stored no later than that time)."""
    records = {m.id: m for m in store.measurements(space=space_id, device_kind=device_kind, runtime=runtime,
                                                   settings_hash=settings_hash)}
    configs, values, throttled = [], [], 0
    for v in store.metric_values(space_id, device_kind, runtime, metric, settings_hash=settings_hash):
        record = records.get(v.measurement_id)
        if record is None or (before is not None and v.created_at > before):
            continue
        if record.env.get("throttled") and not include_throttled:
            throttled += 1
            continue
        if metric == "peak_bytes" and not record.memory.get("measured", True):
            continue  # the runtime could not report memory there: a zero would be a lie, not a measurement
        configs.append(v.config)
        values.append(v.value)
    return configs, np.asarray(values, dtype=np.float64), throttled


def predictor_path(out_dir: str | Path, space_id: str, device_kind: str, metric: str, digest: str = "") -> Path:
    """Where a predictor goes: METRIC-DIGEST.json, named by the sha256 of its content (METRIC.json without
    one: the name calibrations before content names used)."""
    name = f"{metric}-{digest[:16]}.json" if digest else f"{metric}.json"
    return Path(out_dir) / space_id / device_kind / name


def default_out_dir(store: Store) -> Path:
    """`predictors/` beside the store's database file (else in the cache root)."""
    path = getattr(store, "path", None)
    if path is not None:
        return Path(path).resolve().parent / "predictors"
    from ..paths import cache_root

    return cache_root() / "predictors"


def refit(store: Store, space_id: str, device_kind: str, settings: dict, *, reason: str, sample: dict,
          out_dir: str | Path | None = None, include_throttled: bool = False,
          models: str | Sequence[str] = "auto", seed: int = 0, evidence: dict | None = None, measured: int = 0,
          from_store: int = 0, failed: Sequence[str] = (), baselines: dict | None = None,
          started: float | None = None) -> CalibrationResult:
    """Fits every metric on what the store holds now, writes the predictors and the parity plot, and records
    the calibration (with the counts and evidence given). `settings` is Settings.to_dict() of the measurements
    to fit; `sample` ({"n", "seed"}) says which Latin-hypercube sample a re-calibration measures again;
    `started` (time.monotonic()) dates the work that led here, for elapsed_s."""
    from ..store import settings_hash as hash_of
    from .plot import parity_plot

    if reason not in CALIBRATION_REASONS:
        raise CalibrationError(f"reason must be one of {', '.join(CALIBRATION_REASONS)}, got {reason!r}")
    started = time.monotonic() if started is None else started
    supernet = buildable_supernet(space_id)
    # Absolute: the calibration records the files' paths, which must hold from any working folder.
    folder = Path(out_dir).resolve() if out_dir is not None else default_out_dir(store)
    data = _Stored(store, device_kind, settings["runtime"], hash_of(settings), include_throttled)
    fits, panels = {}, []
    try:
        for metric in METRICS:
            fits[metric], out_of_fold = _fit_metric(supernet, metric, data, folder, models, seed)
            panels.append((metric, out_of_fold[0], out_of_fold[1], fits[metric].cv_metrics))
        # Named after the predictors it shows, so that it too stays what its calibration recorded.
        digest = hashlib.sha256("".join(f.sha256 for f in fits.values()).encode()).hexdigest()
        plot = parity_plot(folder / space_id / device_kind / f"parity-{digest[:16]}.png", panels,
                           f"{space_id} on {device_kind} ({settings['runtime']}): cross-validated predictions")
    except OSError as exc:
        raise CalibrationError(f"cannot write the predictors to {folder}: {exc.strerror or exc}") from None
    result = CalibrationResult(0, space_id, device_kind, settings["runtime"], data.settings_hash, reason, fits,
                               plot, measured, from_store, list(failed), dict(baselines or {}),
                               time.monotonic() - started)
    body = {k: v for k, v in result.to_dict().items()
            if k not in ("calibration_id", "space", "device_kind", "runtime", "settings_hash", "reason")}
    record = store.add_calibration(space_id, device_kind, settings["runtime"], settings, reason,
                                   {**body, "sample": sample, "evidence": json_safe(evidence or {})})
    return dataclasses.replace(result, calibration_id=record.id)


class _Stored(NamedTuple):
    """Which stored measurements a fit learns from."""
    store: Store
    device_kind: str
    runtime: str
    settings_hash: str
    include_throttled: bool


def _fit_metric(supernet, metric: str, data: _Stored, folder: Path, models, seed: int):
    """(MetricFit, (measured, out-of-fold predicted)) of one metric; the predictor is saved under `folder`."""
    from ..export.artifact import atomic_write
    from ..predictors import fit_predictor
    from ..predictors.features import config_features, feature_views

    space_id, kind = supernet.id, data.device_kind
    configs, y, throttled = training_set(data.store, space_id, kind, data.runtime, data.settings_hash, metric,
                                         data.include_throttled)
    if len(y) < 4:
        raise CalibrationError(f"only {len(y)} usable {metric} measurements of {space_id} on {kind} "
                               f"({throttled} more left out as throttled): a predictor needs at least 4")
    X, names = config_features(supernet, configs)
    spec = {"space": space_id, "features": "config_features", "columns": names, "metric": metric,
            "device_kind": kind, "runtime": data.runtime, "settings_hash": data.settings_hash}
    try:
        predictor = fit_predictor(X, y, models=models, seed=seed, feature_spec=spec, views=feature_views(names))
    except ValueError as exc:
        raise CalibrationError(f"cannot fit the {metric} predictor: {exc}") from None
    text = json.dumps(predictor.to_dict(), allow_nan=False).encode()
    digest = hashlib.sha256(text).hexdigest()
    # A new name for new content: the files earlier calibrations recorded are never overwritten.
    path = predictor_path(folder, space_id, kind, metric, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text, durable=True)
    cv = json_safe({k: predictor.cv_metrics[k] for k in CV_FIGURES})
    fit = MetricFit(metric, len(y), throttled, predictor.model_name, predictor.log_target, cv, path, digest)
    return fit, (y, predictor.out_of_fold)


def latest_predictor(store: Store, space_id: str, device_kind: str, metric: str = "latency_ms"):
    """The predictor of the latest calibration of `space_id` on `device_kind` (a fleetnas.predictors.Predictor),
    checked against what that calibration recorded of its file."""
    calibration = store.latest_calibration(space_id, device_kind)
    if calibration is None:
        raise CalibrationError(f"{space_id} has not been calibrated on {device_kind}: run "
                               f"`fleetnas calibrate --space {space_id} --device-kind {device_kind} --samples N`")
    fit = calibration.result["metrics"].get(metric)
    if fit is None:
        raise CalibrationError(f"calibration {calibration.id} has no {metric} predictor; it has "
                               f"{', '.join(calibration.result['metrics'])}")
    return _recorded_predictor(calibration.id, fit,
                               predictor_path(default_out_dir(store), space_id, device_kind, metric).parent)


def _recorded_predictor(calibration_id: int, fit: dict, beside_store: Path | None = None):
    """The predictor file a calibration names, refused unless it is what the calibration recorded.

    Where that path is gone, a file of the same name in `beside_store` (the store's own predictors/ folder) is
    taken if it is what was recorded, as the recorded file itself must be: a store copied with its predictors/
    folder to another machine or folder keeps its calibrations."""
    from ..predictors import load_predictor

    path = Path(fit["predictor"])
    moved = beside_store / path.name if beside_store is not None else None
    if not path.exists() and moved is not None and moved.is_file():
        path = moved
    elif not path.exists():
        where = f" nor in {beside_store}" if beside_store is not None and beside_store != path.parent else ""
        raise CalibrationError(f"calibration {calibration_id}'s {fit['metric']} predictor {path.name} is not in "
                               f"{path.parent}{where} (copy the store's predictors/ folder along with it), or "
                               "calibrate again (what the store has measured is not measured again)")
    try:
        predictor = load_predictor(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"calibration {calibration_id}: {exc}; calibrate again") from None
    # A calibration recorded before files carried a digest: its row count is all there is to check.
    changed = digest != fit["sha256"] if fit.get("sha256") else predictor.training.get("rows") != fit.get("rows")
    if changed:
        raise CalibrationError(f"calibration {calibration_id}'s {fit['metric']} predictor {path} has been "
                               "changed since it was recorded (its content is not what the calibration recorded: "
                               "edited, or replaced); calibrate again")
    return predictor
