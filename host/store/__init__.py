"""The measurement store: devices, artifacts, measurements, evaluations and search runs.

`open_store(location)` is the one way in: a file path (or `sqlite:///path`) opens a SqliteStore; other
schemes are where a server database would plug in, behind the same `Store` interface.
"""
from __future__ import annotations

import os
from pathlib import Path

from .base import (ArtifactRecord, CalibrationRecord, DeviceRecord, EvaluationRecord, MeasurementKey,
                   MeasurementRecord, MetricValue, NewMeasurement, NewReferenceRound, ReferenceRound, RunEvent,
                   RunMember, RunRecord, Store, StoreError, StoreGone, StoreLocked, canonical_json, parse_metric,
                   settings_hash)
from .migrations import MIGRATIONS, Migration
from .sqlite import SqliteStore

#: Where the CLI keeps its database unless told otherwise (--db, or the FLEETNAS_DB variable).
DEFAULT_DB = "fleetnas.db"


def default_location() -> str:
    return os.environ.get("FLEETNAS_DB") or DEFAULT_DB


def store_file(location: str | Path | None = None) -> Path:
    """The database file a location names (a path, `sqlite:///PATH`, or None: the default)."""
    location = str(location or default_location())
    return Path(location.partition("://")[2] if location.startswith("sqlite://") else location)


def open_store(location: str | Path | None = None, busy_timeout_s: float = 30.0, existing: bool = False,
               read_only: bool = False) -> Store:
    """The store at `location`; `existing=True` for readers (a report, a resume): a mistyped path is then an
    error instead of a new, empty database. `read_only` (which implies `existing`) for what only reads (a
    report, a listing): it also reads a store on read-only media."""
    existing = existing or read_only
    if location is not None and not str(location).strip():  # "" would quietly be the default store
        raise StoreError("the store's path is empty: give --db PATH, or leave it out for the default")
    location = str(location or default_location())
    if "://" in location:
        scheme, _, rest = location.partition("://")
        if scheme != "sqlite":
            raise StoreError(f"unsupported store {location!r}: only sqlite:///PATH or a file path")
        location = rest
    if location.endswith(("/", os.sep)):  # SQLite would make a file named as the folder
        raise StoreError(f"{location} names a folder, not a store: give the database file's path")
    found = _is_file(location)  # also for a new store: the OS's reason beats SQLite's "unable to open"
    if not found and Path(location).is_dir():
        raise StoreError(f"{location} is a folder, not a store: give the database file's path")
    if not found and Path(location).exists():  # SQLite would write its journal beside a device, and block on a pipe
        raise StoreError(f"{location} is not a regular file (a device or a pipe), not a store: give the database "
                         "file's path")
    if existing and not found:
        raise StoreError(f"no store at {location} (give --db PATH, or set FLEETNAS_DB)")
    try:
        return SqliteStore(Path(location), busy_timeout_s=busy_timeout_s, read_only=read_only)
    except OSError as exc:  # a look-up beside the database (its -wal file, its real path) that the OS refused
        raise _unusable(location, exc) from None


def _is_file(location: str) -> bool:
    """Whether a file is at `location`. Path.is_file answers False only for a path that is not there; one the
    OS cannot look up at all (a name too long, a folder this user may not search) raises, and that is the
    user's --db to name, with the reason, rather than a traceback."""
    try:
        return Path(location).is_file()
    except OSError as exc:
        raise _unusable(location, exc) from None


def _unusable(location: str, exc: OSError) -> StoreError:
    return StoreError(f"cannot open store {location}: {exc.strerror or exc} (check --db or FLEETNAS_DB)")


__all__ = ["DEFAULT_DB", "MIGRATIONS", "ArtifactRecord", "CalibrationRecord", "DeviceRecord", "EvaluationRecord",
           "MeasurementKey", "MeasurementRecord", "MetricValue", "Migration", "NewMeasurement", "NewReferenceRound",
           "ReferenceRound", "RunEvent", "RunMember", "RunRecord", "SqliteStore", "Store", "StoreError", "StoreGone",
           "StoreLocked", "canonical_json", "default_location", "open_store", "parse_metric", "settings_hash",
           "store_file"]
