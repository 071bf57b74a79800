"""The storage seam: records, and the `Store` interface that SQLite (and later a server database) implement.

Every write is one transaction, committed before the method returns: a caller that gets a record back
may report the work that produced it as done.
"""
from __future__ import annotations

import abc
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

RUN_STATES = ("running", "finished", "failed")
MEMBER_SOURCES = ("measured", "predicted")
CALIBRATION_REASONS = ("requested", "drift", "version")
ROUND_ROLES = ("baseline", "check")
LATENCY_FIELDS = ("n", "mean", "median", "p90", "p99", "std", "min", "max", "median_ci_low", "median_ci_high",
                  "rel_ci_half_width")
MEMORY_FIELDS = ("peak_bytes", "baseline_rss_bytes", "peak_rss_bytes", "model_bytes", "runtime_arena_bytes")


class StoreError(Exception):
    """The store cannot do what was asked; the message says why."""


class StoreLocked(StoreError):
    """Another process held the database's write lock for longer than the busy timeout."""


class StoreGone(StoreError):
    """The database file was removed or replaced while this process wrote to it."""


def canonical_json(value: Any) -> str:
    """One spelling per value (sorted keys, no spaces): equal configs and settings give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()


def parse_metric(metric: str) -> tuple[str, str]:
    """('stats'|'memory', field) for a metric name.

    `latency_ms` is the median latency, `latency_ms.p90` (or any of LATENCY_FIELDS) another statistic;
    `peak_bytes` is the peak memory, `memory.<field>` any of MEMORY_FIELDS.
    """
    if metric == "latency_ms":
        return "stats", "median"
    if metric == "peak_bytes":
        return "memory", "peak_bytes"
    group, _, name = metric.partition(".")
    if group == "latency_ms" and name in LATENCY_FIELDS:
        return "stats", name
    if group == "memory" and name in MEMORY_FIELDS:
        return "memory", name
    raise StoreError(f"unknown metric {metric!r}; use latency_ms, latency_ms.<{'|'.join(LATENCY_FIELDS)}>, "
                     f"peak_bytes or memory.<{'|'.join(MEMORY_FIELDS)}>")


# ----- records ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceRecord:
    id: str
    label: str
    kind: str
    description: dict
    first_seen: float
    last_seen: float


@dataclass(frozen=True)
class ArtifactRecord:
    sha256: str
    format: str
    supernet: str | None
    config: dict | None
    size: int
    created_at: float


@dataclass(frozen=True)
class NewMeasurement:
    """A measurement to record. `settings` (runtime, threads, stopping rule, seed) is part of the dedup key."""
    device_id: str
    device_kind: str
    artifact: str
    runtime: str
    settings: dict
    ok: bool
    stats: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    detail: dict = field(default_factory=dict)
    error: str | None = None
    agent: str = ""
    device_label: str = ""

    @property
    def settings_hash(self) -> str:
        return settings_hash(self.settings)


@dataclass(frozen=True)
class MeasurementRecord:
    id: int
    device_id: str
    device_kind: str
    agent: str
    artifact: str
    runtime: str
    settings: dict
    settings_hash: str
    stats: dict
    memory: dict
    env: dict
    detail: dict
    ok: bool
    error: str | None
    stale: bool
    created_at: float

    @property
    def latency_ms(self) -> dict:
        return self.stats

    @property
    def key(self) -> tuple[str, str, str, str]:
        """The dedup key: same artifact, device kind, runtime and settings means the same measurement."""
        return self.artifact, self.device_kind, self.runtime, self.settings_hash


@dataclass(frozen=True)
class MetricValue:
    """One measured value of one metric for one sub-network."""
    config: dict
    value: float
    measurement_id: int
    device_id: str
    artifact: str
    created_at: float


@dataclass(frozen=True)
class EvaluationRecord:
    id: int
    supernet: str
    config: dict
    metric: str
    value: float
    created_at: float


@dataclass(frozen=True)
class RunRecord:
    id: int
    name: str | None
    tactic: str
    settings: dict
    state: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class RunMember:
    id: int
    run_id: int
    config: dict
    objectives: dict
    source: str
    created_at: float


@dataclass(frozen=True)
class RunEvent:
    id: int
    run_id: int
    kind: str
    payload: dict
    created_at: float


@dataclass(frozen=True)
class CalibrationRecord:
    """One predictor fit of a space on a device kind (see fleetnas.calibrate)."""
    id: int
    space: str
    device_kind: str
    runtime: str
    settings: dict
    settings_hash: str
    reason: str          # requested | drift | version
    result: dict
    created_at: float


@dataclass(frozen=True)
class NewReferenceRound:
    """The reference set of a space measured on one agent (see fleetnas.calibrate.drift)."""
    space: str
    device_kind: str
    agent: str
    device_id: str
    runtime: str
    settings_hash: str
    reference: str       # digest of the reference set
    role: str            # baseline | check
    entries: list
    platform: dict = field(default_factory=dict)
    verdict: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ReferenceRound:
    id: int
    space: str
    device_kind: str
    agent: str
    device_id: str
    runtime: str
    settings_hash: str
    reference: str
    role: str
    entries: list
    platform: dict
    verdict: dict
    created_at: float


MeasurementKey = tuple[str, str, str, str]  # artifact sha256, device kind, runtime, settings hash


# ----- the interface ------------------------------------------------------------------------------
class Store(abc.ABC):
    """Where measurements, evaluations and search runs live. Thread-safe; every write commits before returning."""

    # devices
    @abc.abstractmethod
    def upsert_device(self, device_id: str, label: str, kind: str, description: dict,
                      seen_at: float | None = None) -> DeviceRecord: ...

    @abc.abstractmethod
    def device(self, device_id: str) -> DeviceRecord | None: ...

    @abc.abstractmethod
    def latest_device(self, kind: str) -> DeviceRecord | None:
        """The device of this kind seen most recently, with its latest description."""

    @abc.abstractmethod
    def devices(self, kind: str | None = None) -> list[DeviceRecord]: ...

    # artifacts
    @abc.abstractmethod
    def put_artifact(self, sha256: str, format: str, size: int, supernet: str | None = None,
                     config: dict | None = None) -> ArtifactRecord:
        """Records an artifact (idempotent: a known sha256 keeps its first record)."""

    @abc.abstractmethod
    def artifact(self, sha256: str) -> ArtifactRecord | None: ...

    # measurements
    @abc.abstractmethod
    def record_measurement(self, m: NewMeasurement, supersede: bool = False) -> tuple[MeasurementRecord, bool]:
        """Stores a measurement; returns (the current record for its key, whether this call inserted it).

        A successful measurement whose key already has a current row is not inserted again (the existing
        row is returned), unless `supersede`: then the old row is marked stale and the new one is current.
        Failed measurements are always inserted, as history.
        """

    @abc.abstractmethod
    def find_measurements(self, keys: Iterable[MeasurementKey]) -> dict[MeasurementKey, MeasurementRecord]:
        """The current successful measurement for each key that has one."""

    def find_measurement(self, artifact: str, device_kind: str, runtime: str,
                         settings_hash: str) -> MeasurementRecord | None:
        key = (artifact, device_kind, runtime, settings_hash)
        return self.find_measurements([key]).get(key)

    @abc.abstractmethod
    def measurements(self, *, space: str | None = None, device_kind: str | None = None, runtime: str | None = None,
                     device_id: str | None = None, ok: bool | None = True, include_stale: bool = False,
                     settings_hash: str | None = None) -> list[MeasurementRecord]: ...

    @abc.abstractmethod
    def count_measurements(self, ok: bool | None = True, include_stale: bool = False) -> int: ...

    @abc.abstractmethod
    def metric_values(self, space: str, device_kind: str, runtime: str, metric: str = "latency_ms", *,
                      include_stale: bool = False, settings_hash: str | None = None) -> list[MetricValue]:
        """Every current measured value of `metric` (see parse_metric) for sub-networks of `space`."""

    @abc.abstractmethod
    def mark_stale(self, device_kind: str, *, device_id: str | None = None, before: float | None = None,
                   runtime: str | None = None, agent: str | None = None) -> int:
        """Marks current measurements of a kind (optionally one device's or agent's, or older than `before`) stale."""

    # evaluations
    @abc.abstractmethod
    def add_evaluation(self, supernet: str, config: dict, metric: str, value: float) -> EvaluationRecord:
        """Stores a config's value of a metric, unless one is stored already: then that one is returned, and
        `value` dropped. Two runs evaluating one config at once keep one value, which both then use."""

    @abc.abstractmethod
    def evaluations(self, supernet: str, metric: str | None = None,
                    config: dict | None = None) -> list[EvaluationRecord]: ...

    # runs
    @abc.abstractmethod
    def create_run(self, tactic: str, settings: dict, name: str | None = None) -> RunRecord: ...

    @abc.abstractmethod
    def run(self, run_id: int) -> RunRecord | None: ...

    @abc.abstractmethod
    def run_by_name(self, name: str) -> RunRecord | None: ...

    @abc.abstractmethod
    def runs(self, state: str | None = None) -> list[RunRecord]: ...

    @abc.abstractmethod
    def set_run_state(self, run_id: int, state: str) -> RunRecord: ...

    @abc.abstractmethod
    def add_run_members(self, run_id: int, members: Sequence[tuple[dict, dict, str]]) -> list[RunMember]:
        """Appends (config, objectives, source) members in one transaction."""

    @abc.abstractmethod
    def run_members(self, run_id: int, source: str | None = None) -> list[RunMember]: ...

    @abc.abstractmethod
    def add_run_event(self, run_id: int, kind: str, payload: dict) -> RunEvent: ...

    @abc.abstractmethod
    def run_events(self, run_id: int, kind: str | None = None) -> list[RunEvent]: ...

    # calibrations
    @abc.abstractmethod
    def add_calibration(self, space: str, device_kind: str, runtime: str, settings: dict, reason: str,
                        result: dict) -> CalibrationRecord: ...

    @abc.abstractmethod
    def calibrations(self, space: str | None = None, device_kind: str | None = None) -> list[CalibrationRecord]:
        """Oldest first."""

    def latest_calibration(self, space: str, device_kind: str) -> CalibrationRecord | None:
        found = self.calibrations(space, device_kind)
        return found[-1] if found else None

    @abc.abstractmethod
    def add_reference_round(self, r: NewReferenceRound) -> ReferenceRound: ...

    @abc.abstractmethod
    def reference_rounds(self, space: str, device_kind: str, *, agent: str | None = None, role: str | None = None,
                         settings_hash: str | None = None, reference: str | None = None,
                         latest: int | None = None) -> list[ReferenceRound]:
        """Oldest first; only the `latest` ones (a positive number) where given: a watch records a round every few
        minutes for months, and what it judges by are the last few."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
