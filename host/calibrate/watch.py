"""Continuous calibration: re-measure the reference set now and then; refit when a device has changed.

    for report in watch(farm, store, "demo", "rpi4-ort-1t", interval_s=600, rounds=None):
        ...   # one RoundReport per round; the log says the same in words

Each round measures the reference set on every agent of the kind and judges each agent against its
baseline (fleetnas.calibrate.drift). Every round is recorded, so within SWING_MIN_STEPS rounds the watch
learns how far an agent's speed swings by itself between rounds, and no longer calls that drift.
One that looks drifted or changed is measured again at once and judged on the lesser of each config's two
medians (a passing disturbance does not survive that). When the change holds: its older measurements are
marked stale, the two rounds become its new baseline, the calibration's sample is measured again (the stale
rows are what gets re-measured) and the predictors are refitted with reason drift or version.
A change recorded but not yet refitted (the refit failed, the host stopped) is refitted next round.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from fleetnas.store import Store

from ..locks import beside_store, lease
from ..predictors.metrics import figure
from .calibration import (CalibrationError, CalibrationResult, MeasuredRound, buildable_supernet,
                          enough_for_baseline, least_of, measure_reference_rounds, measure_sample,
                          measurement_settings, record_round, refit, space_reference)
from .drift import (DEFAULT_ALPHA, DEFAULT_THRESHOLD, SWING_WINDOW, DriftVerdict, RoundEntry, check_alpha_reachable,
                    check_parameters, compare_rounds)
from .reference import REFERENCE_SIZE, ReferenceSet

log = logging.getLogger("fleetnas.calibrate")
CAUSE_WORDS = {"drift": "drift", "version": "version change"}


@dataclass
class RoundReport:
    round: int                                           # 1, 2, ...
    verdicts: dict = field(default_factory=dict)         # agent -> DriftVerdict (absent: no baseline yet)
    new_baselines: list = field(default_factory=list)    # agents whose round became their baseline
    stale_marked: dict = field(default_factory=dict)     # agent -> measurements marked stale
    refit: CalibrationResult | None = None
    refit_error: str = ""
    unreached: dict = field(default_factory=dict)        # agent -> why it measured none of the reference set

    @property
    def changed(self) -> list[str]:
        return [agent for agent, v in self.verdicts.items() if v.changed]

    def to_dict(self) -> dict:
        return {"round": self.round, "verdicts": {a: v.to_dict() for a, v in self.verdicts.items()},
                "new_baselines": self.new_baselines, "stale_marked": self.stale_marked,
                "refit": self.refit.to_dict() if self.refit else None, "refit_error": self.refit_error,
                "unreached": self.unreached}


def watch(farm, store: Store, space_id: str, device_kind: str, *, interval_s: float = 600.0, rounds: int | None = None,
          threshold: float = DEFAULT_THRESHOLD, alpha: float = DEFAULT_ALPHA, out_dir=None,
          include_throttled: bool = False, models: str | Sequence[str] = "auto",
          stop: threading.Event | None = None, lock: bool = True) -> Iterator[RoundReport]:
    """Yields a report per round, `rounds` of them (None: until `stop` is set), `interval_s` apart (start to
    start). Needs an earlier calibration of the space on the kind: its settings, sample and seed are reused.
    One watch per space, kind and store at a time (`watch_lock`): a second would measure the same reference
    set in parallel, loading the devices it judges, and mark stale and refit what the first refits. `lock`
    False: the caller holds that lock already (the CLI, around the calibration a watch starts with)."""
    if rounds is not None and (isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1):
        raise CalibrationError(f"rounds must be a positive integer (or None: until stopped), got {rounds!r}")
    if interval_s < 0:
        raise CalibrationError(f"the interval must not be negative, got {interval_s!r} s")
    check_parameters(threshold, alpha)
    try:
        check_alpha_reachable(alpha, REFERENCE_SIZE)
    except ValueError as exc:
        raise CalibrationError(str(exc)) from None
    stop = stop or threading.Event()
    with watch_lock(store, space_id, device_kind) if lock else nullcontext():
        yield from _rounds(farm, store, space_id, device_kind, interval_s, rounds, stop, threshold=threshold,
                           alpha=alpha, out_dir=out_dir, include_throttled=include_throttled, models=models)


@contextmanager
def watch_lock(store: Store, space_id: str, device_kind: str):
    """Holds `<database>.watch-KIND-SPACE.lock` (`fleetnas.locks.exclusive`); CalibrationError naming the process
    that already watches. A store that is no file on this machine is the caller's to keep to one watch."""
    # Readable, and unique by the digest: "a-b" on "c" and "a" on "b-c" must not share a file.
    pair = json.dumps([device_kind, space_id])
    name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{device_kind}-{space_id}")[:64]
    with lease(beside_store(store, f"watch-{name}-{hashlib.sha256(pair.encode()).hexdigest()[:12]}"), f"a watch of {space_id} on {device_kind}",
               lambda busy: CalibrationError(f"{busy}; stop that one first, or let it keep watching")):
        yield


def _rounds(farm, store, space_id, device_kind, interval_s, rounds, stop, **settings) -> Iterator[RoundReport]:
    n = 0
    while rounds is None or n < rounds:
        started = time.monotonic()
        n += 1
        yield watch_round(farm, store, space_id, device_kind, n, **settings)
        if (rounds is not None and n >= rounds) or stop.wait(max(0.0, interval_s - (time.monotonic() - started))):
            return


def watch_round(farm, store: Store, space_id: str, device_kind: str, number: int = 1, *,
                threshold: float = DEFAULT_THRESHOLD, alpha: float = DEFAULT_ALPHA, out_dir=None,
                include_throttled: bool = False, models: str | Sequence[str] = "auto") -> RoundReport:
    """One round: measure the reference set on every agent of the kind, judge each, refit if one changed."""
    calibration, settings = _latest_calibration(farm, store, space_id, device_kind)
    reference = space_reference(buildable_supernet(space_id).space)
    report = RoundReport(number)
    first = measure_reference_rounds(farm, reference, device_kind, settings.stopping)
    # An agent that measured nothing (down, out of reach) says nothing about its speed: no record, no verdict.
    for agent in [agent for agent, measured in first.items() if not any(e.ok for e in measured.entries)]:
        report.unreached[agent] = first.pop(agent).errors[0].removeprefix(f"{agent}: ")
        log.warning("%s: measured none of the %d reference configs, trying again next round: %s", agent,
                    len(reference.keys), report.unreached[agent])
    looks = {agent: _first_look(store, reference, device_kind, settings, measured, threshold, alpha)
             for agent, measured in first.items()}
    # An agent's first round, or one that looks changed, is confirmed by a second round at once.
    confirm = [agent for agent, (baseline, _, verdict) in looks.items() if baseline is None or verdict.changed]
    for agent in confirm:
        if looks[agent][2] is not None:
            log.info("%s: looks %s: %s; measuring the reference set again to confirm", agent,
                     "changed" if looks[agent][2].version_change else "drifted", looks[agent][2].reason)
    second = measure_reference_rounds(farm, reference, device_kind, settings.stopping, confirm) if confirm else {}
    for agent, measured in first.items():
        baseline, history, verdict = looks[agent]
        if agent in second:
            measured = least_of(measured, second[agent])
            verdict = None if baseline is None else _verdict(baseline, measured, threshold, alpha, history)
        _settle(store, reference, device_kind, settings, measured, baseline, verdict, report)
    pending = _pending_changes(store, reference, device_kind, settings.hash, calibration)
    if pending:
        _recalibrate(farm, store, space_id, device_kind, calibration, settings, pending, report, out_dir,
                     include_throttled, models)
    return report


def _latest_calibration(farm, store: Store, space_id: str, device_kind: str):
    """(the latest calibration, the Settings to measure with): a watch measures the way it was calibrated."""
    calibration = store.latest_calibration(space_id, device_kind)
    if calibration is None:
        raise CalibrationError(f"{space_id} has not been calibrated on {device_kind} yet: run `fleetnas calibrate "
                               f"--space {space_id} --device-kind {device_kind} --samples N` first")
    settings = measurement_settings(farm, device_kind, calibration.settings["stopping"])
    if settings.hash != calibration.settings_hash:
        raise CalibrationError(f"the inventory now measures {device_kind} with {settings.to_dict()}, but the latest "
                               f"calibration used {calibration.settings}: calibrate again")
    return calibration, settings


def _first_look(store: Store, reference: ReferenceSet, device_kind: str, settings, measured: MeasuredRound,
                threshold: float, alpha: float):
    """(the agent's latest baseline round or None, its earlier rounds' entries, the verdict on this round or None)."""
    mine = dict(space=reference.space_id, device_kind=device_kind, agent=measured.agent, settings_hash=settings.hash,
                reference=reference.digest)
    baselines = store.reference_rounds(**mine, role="baseline", latest=1)
    if not baselines:
        return None, [], None
    # Every recorded round, checks and baselines alike, shows how far the device moves by itself (`swing_floor`).
    # Enough rounds for SWING_WINDOW steps where some had too few usable configs (a throttled device's rounds).
    recent = store.reference_rounds(**mine, latest=3 * (SWING_WINDOW + 1))
    history = [[RoundEntry.from_dict(e) for e in r.entries] for r in recent]
    return baselines[-1], history, _verdict(baselines[-1], measured, threshold, alpha, history)


def _verdict(baseline, measured: MeasuredRound, threshold: float, alpha: float, history) -> DriftVerdict:
    return compare_rounds([RoundEntry.from_dict(e) for e in baseline.entries], measured.entries,
                          baseline_platform=baseline.platform, current_platform=measured.platform,
                          threshold=threshold, alpha=alpha, history=history)


def _settle(store: Store, reference: ReferenceSet, device_kind: str, settings, measured: MeasuredRound, baseline,
            verdict: DriftVerdict | None, report: RoundReport) -> None:
    """Records the round: a check, or the agent's new baseline (its first, or after a confirmed change)."""
    agent = measured.agent
    if baseline is None:
        if not enough_for_baseline(measured.entries):
            log.warning("%s: too few usable reference measurements for a baseline (%s); trying again next round",
                        agent, "; ".join(measured.errors[:3]) or "throttled")
            record_round(store, reference, device_kind, settings, measured, "check",
                         {"reason": "too few usable measurements for a baseline"})
            return
        record_round(store, reference, device_kind, settings, measured, "baseline",
                     {"reason": "first rounds", "rounds": 2})
        report.new_baselines.append(agent)
        log.info("%s: first reference rounds of %s on %s recorded as its baseline", agent, reference.space_id,
                 device_kind)
        return
    report.verdicts[agent] = verdict
    record_round(store, reference, device_kind, settings, measured, "baseline" if verdict.changed else "check",
                 {**verdict.to_dict(), "baseline_round": baseline.id})
    if not verdict.changed:
        log.info("%s: %s", agent, verdict.reason)
        return
    # The device is not what the predictors describe: what it measured before this round no longer counts.
    stale = store.mark_stale(device_kind, agent=agent, before=measured.started_at, runtime=settings.runtime)
    report.new_baselines.append(agent)
    report.stale_marked[agent] = stale
    log.warning("%s on %s: %s; marked %d measurements stale", CAUSE_WORDS[verdict.cause], agent, verdict.reason,
                stale)


def changes_since(store: Store, calibration) -> dict[str, dict]:
    """agent -> verdict of each change (drift, a runtime or firmware version) that a watch recorded after
    `calibration` on its space, kind and settings: what its predictors do not know yet."""
    reference = space_reference(buildable_supernet(calibration.space).space)
    return _pending_changes(store, reference, calibration.device_kind, calibration.settings_hash, calibration)


def _pending_changes(store: Store, reference: ReferenceSet, device_kind: str, settings_hash: str,
                     calibration) -> dict[str, dict]:
    """agent -> verdict of each change recorded after the latest calibration (so not yet refitted)."""
    rounds = store.reference_rounds(reference.space_id, device_kind, role="baseline", settings_hash=settings_hash,
                                    reference=reference.digest)
    return {r.agent: r.verdict for r in rounds if r.created_at > calibration.created_at and r.verdict.get("changed")}


def _recalibrate(farm, store: Store, space_id: str, device_kind: str, calibration, settings, pending: dict,
                 report: RoundReport, out_dir, include_throttled: bool, models) -> None:
    started = time.monotonic()
    sample = calibration.result["sample"]
    space = buildable_supernet(space_id).space
    reason = "version" if any(v.get("version_change") for v in pending.values()) else "drift"
    try:
        measured = measure_sample(farm, space_id, device_kind, space.latin_hypercube(sample["n"], sample["seed"]),
                                   settings.stopping)
        report.refit = refit(store, space_id, device_kind, settings.to_dict(), reason=reason, sample=sample,
                             out_dir=out_dir, include_throttled=include_throttled, models=models,
                             seed=sample["seed"], evidence=pending, measured=measured["measured"],
                             from_store=measured["from_store"], failed=measured["failed"], started=started)
    except CalibrationError as exc:
        report.refit_error = str(exc)
        log.error("refit of %s on %s after %s on %s failed: %s; trying again next round", space_id, device_kind,
                  reason, ", ".join(pending), exc)
        return
    fits = ", ".join(f"{m} MAPE {figure(f.cv_metrics['mape'], '.1f')} %" for m, f in report.refit.fits.items())
    log.warning("re-measured %d of %d sampled sub-networks of %s on %s; refit (%s): %s; calibration %d",
                measured["measured"], sample["n"], space_id, device_kind, reason, fits,
                report.refit.calibration_id)
