"""The measurement store: devices, artifacts, measurements, evaluations and search runs.

`open_store(location)` is the one way in: a file path (or `sqlite:///path`) opens a SqliteStore; other
schemes are where a server database would plug in, behind the same `Store` interface.
"""
from __future__ import annotations

import os
from pathlib import Path

from .base import (ArtifactRecord, CalibrationRecord, DeviceRecord, EvaluationRecord, MeasurementKey,
                   MeasurementRecord, MetricValue, NewMeasurement, NewReferenceRound, ReferenceRound, RunEvent,
                   RunMember, RunRecord, Store, StoreError, StoreLocked, canonical_json, parse_metric, settings_hash)
from .migrations import MIGRATIONS, Migration
from .sqlite import SqliteStore

#: Where the CLI keeps its database unless told otherwise (--db, or the FLEETNAS_DB variable).
DEFAULT_DB = "fleetnas.db"


def default_location() -> str:
    return os.environ.get("FLEETNAS_DB") or DEFAULT_DB


def open_store(location: str | Path | None = None, busy_timeout_s: float = 30.0, existing: bool = False,
               read_only: bool = False) -> Store:
    """The store at `location`; `existing=True` for readers (a report, a resume): a mistyped path is then an
    error instead of a new, empty database. `read_only` (which implies `existing`) for what only reads (a
    report, a listing): it also reads a store on read-only media."""
    existing = existing or read_only
    location = str(location or default_location())
    if "://" in location:
        scheme, _, rest = location.partition("://")
        if scheme != "sqlite":
            raise StoreError(f"unsupported store {location!r}: only sqlite:///PATH or a file path")
        location = rest
    if existing and not Path(location).is_file():
        raise StoreError(f"no store at {location} (give --db PATH, or set FLEETNAS_DB)")
    return SqliteStore(Path(location), busy_timeout_s=busy_timeout_s, read_only=read_only)


__all__ = ["DEFAULT_DB", "MIGRATIONS", "ArtifactRecord", "CalibrationRecord", "DeviceRecord", "EvaluationRecord",
           "MeasurementKey", "MeasurementRecord", "MetricValue", "Migration", "NewMeasurement", "NewReferenceRound",
           "ReferenceRound", "RunEvent", "RunMember", "RunRecord", "SqliteStore", "Store", "StoreError", "StoreLocked",
           "canonical_json", "default_location", "open_store", "parse_metric", "settings_hash"]
