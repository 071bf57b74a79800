"""What the farm measures: an artifact, on a device kind, with explicit settings; and what comes back.

A job is generic (any artifact), so calibration and search submit the same thing whether the artifact
came from a super-network's export or from a file. The dedup key is (artifact sha256, device kind,
runtime, settings hash): two jobs with the same key are the same measurement.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from fleetnas.store import MeasurementRecord, canonical_json, parse_metric, settings_hash

FORMAT_RUNTIME = {"onnx": "onnxruntime", "tflite": "litert", "spec": "torch"}
RUNTIME_FORMAT = {runtime: fmt for fmt, runtime in FORMAT_RUNTIME.items()}
STOPPING_FIELDS = {"warmup_min_runs": int, "warmup_min_s": float, "min_runs": int, "max_runs": int,
                   "min_s": float, "max_s": float, "target_rel_ci": float}
DEFAULT_MAX_S = 30.0  # the agent's default time cap of the timed phase


class JobError(ValueError):
    """A job that cannot be built; the message names the bad value."""


def normalize_stopping(stopping: Mapping[str, Any] | Any | None) -> dict:
    """A stopping rule as a plain dict with the proto's types; zero (the agent's default) fields dropped."""
    if stopping is None:
        return {}
    if hasattr(stopping, "ListFields"):  # a pb.StoppingRule
        stopping = {f.name: v for f, v in stopping.ListFields()}
    rule = {}
    for name, value in dict(stopping).items():
        if name not in STOPPING_FIELDS:
            raise JobError(f"unknown stopping rule field {name!r}; known: {', '.join(STOPPING_FIELDS)}")
        kind = STOPPING_FIELDS[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise JobError(f"stopping rule {name} must be a non-negative number, got {value!r}")
        if kind is int and value != int(value):
            raise JobError(f"stopping rule {name} must be a whole number, got {value!r}")
        if value:
            rule[name] = kind(value)
    if rule.get("target_rel_ci", 0) >= 1:
        raise JobError(f"stopping rule target_rel_ci must be below 1, got {rule['target_rel_ci']}")
    return rule


@dataclass(frozen=True)
class Settings:
    """How a measurement is taken; all of it is part of the dedup key."""
    runtime: str
    threads: int = 1
    stopping: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self):
        if self.runtime not in RUNTIME_FORMAT:
            raise JobError(f"runtime must be one of {', '.join(RUNTIME_FORMAT)}, got {self.runtime!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or not 1 <= self.threads <= 256:
            raise JobError(f"threads must be an integer from 1 to 256, got {self.threads!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise JobError(f"seed must be a non-negative integer, got {self.seed!r}")
        object.__setattr__(self, "stopping", normalize_stopping(self.stopping))

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "threads": self.threads, "stopping": dict(self.stopping), "seed": self.seed}

    @property
    def hash(self) -> str:
        return settings_hash(self.to_dict())

    def stopping_rule(self):
        from fleetnas_agent.proto import agent_pb2 as pb

        return pb.StoppingRule(**self.stopping)

    def deadline_s(self) -> float:
        """A generous bound on one measurement: twice the timed phase's cap, plus load and warm-up."""
        return deadline_for(self.stopping)


def deadline_for(stopping: Mapping[str, Any]) -> float:
    """A generous bound on one measurement under a stopping rule (StoppingRule fields; absent ones at the
    agent's defaults): twice the timed phase's cap, plus load and warm-up."""
    return 2 * stopping.get("max_s", DEFAULT_MAX_S) + stopping.get("warmup_min_s", 0.5) + 60.0


@dataclass(frozen=True)
class ArtifactSource:
    """An artifact to measure: its bytes (in memory or in a file) and what it was built from."""
    sha256: str
    format: str
    size_bytes: int
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)
    supernet: str | None = None
    config: dict | None = None

    def __post_init__(self):
        if self.format not in FORMAT_RUNTIME:
            raise JobError(f"artifact format must be one of {', '.join(FORMAT_RUNTIME)}, got {self.format!r}")
        if (self.path is None) == (self.data is None):
            raise JobError("an artifact needs exactly one of path or data")

    @classmethod
    def from_bytes(cls, data: bytes, format: str | None = None, supernet: str | None = None,
                   config: dict | None = None) -> "ArtifactSource":
        return cls(hashlib.sha256(data).hexdigest(), format or sniff(data), len(data), data=data, supernet=supernet,
                   config=config)

    @classmethod
    def from_file(cls, path: str | Path, format: str | None = None, supernet: str | None = None,
                  config: dict | None = None) -> "ArtifactSource":
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise JobError(f"cannot read model {path}: {exc.strerror}") from None
        return cls(hashlib.sha256(data).hexdigest(), format or sniff(data, path), len(data), path=path,
                   supernet=supernet, config=config)

    @classmethod
    def from_export(cls, artifact) -> "ArtifactSource":
        """From `fleetnas.export.export_artifact(...)`'s Artifact (path, sha256, format, space, config, size_bytes)."""
        return cls(artifact.sha256, artifact.format, artifact.size_bytes, path=Path(artifact.path),
                   supernet=artifact.space, config=dict(artifact.config))

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        data = self.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise JobError(f"artifact {self.path} changed since it was queued (sha256 differs)")
        return data


def sniff(data: bytes, path: Path | None = None) -> str:
    from fleetnas_agent.cache import sniff_format
    from fleetnas_agent.proto import agent_pb2 as pb

    names = {pb.ARTIFACT_FORMAT_TFLITE: "tflite", pb.ARTIFACT_FORMAT_ONNX: "onnx",
             pb.ARTIFACT_FORMAT_TORCH_SPEC: "spec"}
    fmt = names.get(sniff_format(data))
    if fmt is None:
        raise JobError(f"{path or 'artifact'} is not a .tflite, .onnx or torch spec model")
    # ONNX is what is left when nothing else matches: a file named for another format is more likely broken
    # than ONNX, and onnxruntime's "protobuf parsing failed" would not say so.
    named = {".tflite": "tflite", ".onnx": "onnx", ".json": "spec"}.get(path.suffix.lower()) if path else None
    if named is not None and named != fmt:
        what = {"tflite": "a TFLite model", "onnx": "an ONNX model", "spec": "a torch spec"}
        why = " (no TFL3 tag)" if named == "tflite" else ""
        looks = "" if fmt == "onnx" else f": its content looks like {what[fmt]}"
        raise JobError(f"{path} is not {what[named]}{why}{looks}")
    return fmt


@dataclass(frozen=True)
class Job:
    """Measure `artifact` on any healthy agent of `device_kind` with `settings`.

    `agent` pins the job to one agent of the kind (calibration: "this device, now"). A pinned job is
    always measured (never answered from the store), never moved to a peer, and its result becomes the
    current row of its key (the previous one is kept as stale history).
    """
    artifact: ArtifactSource
    device_kind: str
    settings: Settings
    agent: str | None = None

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.artifact.sha256, self.device_kind, self.settings.runtime, self.settings.hash


@dataclass(frozen=True)
class JobResult:
    """One job's outcome. `measurement` is the stored row (None only if the job failed before measuring)."""
    job: Job
    measurement: MeasurementRecord | None
    from_store: bool = False     # the store already had it: nothing was measured
    error: str | None = None
    attempts: int = 0            # agents tried
    elapsed_s: float = 0.0       # host wall time of the successful attempt, upload to commit

    @property
    def ok(self) -> bool:
        return self.measurement is not None and self.measurement.ok

    @property
    def latency_ms(self) -> dict:
        return self.measurement.stats if self.ok else {}

    @property
    def memory(self) -> dict:
        return self.measurement.memory if self.ok else {}

    def value(self, metric: str = "latency_ms") -> float:
        """One number (store metric names: latency_ms = median, latency_ms.p90, peak_bytes, ...); NaN if failed
        or unknown (memory where the device could not measure it)."""
        group, name = parse_metric(metric)
        if not self.ok:
            return float("nan")
        if group == "memory" and name != "model_bytes" and not self.measurement.memory.get("measured", True):
            return float("nan")  # stored by an older host as 0
        value = (self.measurement.stats if group == "stats" else self.measurement.memory).get(name)
        return float("nan") if value is None else float(value)

    def to_dict(self) -> dict:
        """The JSON shape of `fleetnas profile --device-kind`: like the single-model profile, plus where."""
        m = self.measurement
        return {
            "artifact_sha256": self.job.artifact.sha256,
            "ok": self.ok,
            "error": self.error if not self.ok else None,
            "from_store": self.from_store,
            "device": {"agent": m.agent if m else None, "id": m.device_id if m else None,
                       "label": m.detail.get("device_label") if m else None, "kind": self.job.device_kind},
            "runtime": {"name": self.job.settings.runtime, "version": (m.detail.get("runtime_version") if m else None)},
            "settings": self.job.settings.to_dict(),
            "latency_ms": self.latency_ms,
            "memory": self.memory,
            "throttled": bool(m and m.env.get("throttled")),
            "measurement_id": m.id if m else None,
        }


__all__ = ["ArtifactSource", "Job", "JobError", "JobResult", "Settings", "FORMAT_RUNTIME", "RUNTIME_FORMAT",
           "normalize_stopping", "canonical_json"]
