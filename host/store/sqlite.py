"""`SqliteStore`: the default store, one SQLite file in WAL mode.

One connection per store object, guarded by a lock, so worker threads can share it. Writes take the
database's write lock up front (BEGIN IMMEDIATE) and wait up to `busy_timeout_s` for another process to
release it; past that they raise StoreLocked and nothing is half-written. synchronous=FULL makes a
commit durable across a power cut, not only a crash: a measurement costs seconds, an fsync milliseconds.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .base import (CALIBRATION_REASONS, MEMBER_SOURCES, ROUND_ROLES, RUN_STATES, ArtifactRecord, CalibrationRecord,
                   DeviceRecord, EvaluationRecord, MeasurementKey, MeasurementRecord, MetricValue, NewMeasurement,
                   NewReferenceRound, ReferenceRound, RunEvent, RunMember, RunRecord, Store, StoreError, StoreGone,
                   StoreLocked, canonical_json, parse_metric, settings_hash)
from .migrations import MIGRATIONS, Migration

MEASUREMENT_COLUMNS = ("id, device_id, device_kind, agent, artifact, runtime, settings, settings_hash, stats, memory, "
                       "env, detail, ok, error, stale, created_at")


class SqliteStore(Store):
    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0,
                 migrations: Sequence[Migration] = MIGRATIONS, read_only: bool = False):
        """`read_only` opens an existing database for reading (a report, a listing), which also works where
        nothing can be written, such as a store archived on read-only media."""
        self.path = Path(path)
        self._absolute = self.path.absolute()
        self.busy_timeout_s = busy_timeout_s
        self.read_only = read_only
        self._lock = threading.RLock()
        if read_only:
            self._logs_were_there = any(log.exists() for log in self._log_files())
            self._conn = self._open_read_only(migrations)
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot make the folder of database {self.path}: {exc.strerror}") from None
        self._check_writable()
        self._conn = self._connect(str(self.path))
        self._identity = self._file_identity()  # SQLite made the file, if new, as it opened it
        try:
            self._refuse_foreign()
            self._pragmas()
            self._migrate(migrations)
        except BaseException:
            self._conn.close()
            raise

    # ----- plumbing -------------------------------------------------------------------------------
    def _connect(self, target: str, uri: bool = False) -> sqlite3.Connection:
        try:
            return sqlite3.connect(target, timeout=self.busy_timeout_s, isolation_level=None,
                                   check_same_thread=False, uri=uri)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from None

    def _check_writable(self) -> None:
        """SQLite says only "unable to open database file" where the database, or the folder its log files go in,
        cannot be written (read-only media, another user's folder), or where a link leads nowhere."""
        real = self.path.resolve()
        if not real.parent.is_dir():
            raise StoreError(f"cannot open database {self.path}: the folder it leads to, {real.parent}, does not exist")
        logs = self._log_files()
        # The folder need not be writable where the log files are there already and writable (another process
        # has the database open): SQLite then writes only those.
        places = [real] if real.exists() else []
        if not all(log.exists() and os.access(log, os.W_OK) for log in logs):
            places.append(real.parent)
        for place in places:
            if not os.access(place, os.W_OK):
                readers = (": what only reads it (runs, report, export, a finished run's --resume) works as it is; "
                           "to write to it, copy it to a folder that can be written") if real.exists() else ""
                raise StoreError(f"database {self.path} cannot be {'written' if real.exists() else 'made'} here "
                                 f"({place} is read-only to this user){readers}")

    def _open_read_only(self, migrations: Sequence[Migration]) -> sqlite3.Connection:
        """A read-only connection, on a store at this FleetNAS's schema version: one older is upgraded first
        where it can be written (as any command that opens it for writing would), else refused."""
        real = self.path.resolve()  # SQLite follows a link: the files beside its target are the ones that count
        latest = max((m.version for m in migrations), default=0)
        current = self._read_only_version(real)
        if current == 0:  # an empty file, or another program's database without tables: not to be written
            self._conn.close()
            raise StoreError(f"{self.path} is not a FleetNAS store (it has no schema_version table); "
                             "give --db a store that a FleetNAS command created")
        if current < latest and os.access(real, os.W_OK) and os.access(real.parent, os.W_OK):
            self._conn.close()
            SqliteStore(real, self.busy_timeout_s, migrations).close()  # upgrades it
            current = self._read_only_version(real)
        if current == latest:
            return self._conn
        self._conn.close()
        if current > latest:
            raise self._newer(current, latest)
        raise StoreError(f"database {self.path} has schema version {current}, older than this FleetNAS reads "
                         f"({latest}), and cannot be upgraded where it is: copy it to a folder that can be written "
                         "and open it there")

    def _read_only_version(self, real: Path) -> int:
        """Opens `self._conn` read-only on a FleetNAS store and returns its schema version."""
        self._conn = self._connect_read_only(real)
        try:
            self._refuse_foreign()
            return self.schema_version
        except BaseException:
            self._conn.close()
            raise

    def _connect_read_only(self, real: Path) -> sqlite3.Connection:
        """Reading a database in write-ahead-log mode needs its shared-memory file, which SQLite makes beside
        it. Where that cannot be made (read-only media) and no log waits to be merged, nothing can change the
        file, and SQLite may read it as immutable, without one."""
        conn = self._connect(real.as_uri() + "?mode=ro", uri=True)  # as_uri percent-encodes any file name
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.Error as exc:
            conn.close()
            wal = Path(f"{real}-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise StoreError(f"database {self.path} has changes in its write-ahead log {wal} that cannot be "
                                 f"read here ({exc}): copy the database with its -wal file to a folder that can "
                                 "be written") from None
        return self._connect(real.as_uri() + "?mode=ro&immutable=1", uri=True)

    def _error(self, exc: sqlite3.Error, waited_s: float | None = None) -> StoreError:
        """`waited_s`: how long the failed step waited for the lock, where that is not the busy timeout."""
        text = str(exc)
        if _is_busy(exc):
            waited = self.busy_timeout_s if waited_s is None else waited_s
            return StoreLocked(f"database {self.path} is locked by another process; gave up after "
                               f"{waited:g} s (busy timeout {self.busy_timeout_s:g} s). Nothing was written.")
        if "not a database" in text or "malformed" in text:
            return StoreError(f"{self.path} is not a usable FleetNAS database: {text}")
        return StoreError(f"database {self.path}: {text}")

    def _refuse_foreign(self) -> None:
        """Another program's SQLite database (tables of its own, no schema_version) is left as it is: turning it
        to write-ahead logging and adding FleetNAS's tables would change a file that is not ours."""
        tables = {name for (name,) in self._read("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "schema_version" not in tables:
            raise StoreError(f"{self.path} is a database of another program (tables {', '.join(sorted(tables)[:5])}),"
                             " not a FleetNAS store; give --db another file")

    def _pragmas(self) -> None:
        try:
            self._set_busy_timeout(self.busy_timeout_s)
            mode = self._journal_mode_wal()
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        if mode.lower() != "wal":
            raise StoreError(f"database {self.path} cannot use write-ahead logging (journal mode {mode})")

    def _set_busy_timeout(self, seconds: float) -> None:
        self._conn.execute(f"PRAGMA busy_timeout = {max(int(seconds * 1000), 0)}")

    def _journal_mode_wal(self) -> str:
        """Turns a new database to write-ahead logging, waiting up to the busy timeout for other processes.

        SQLite's busy handler does not always apply here: while another connection holds the write lock of a
        database still in rollback mode (another process creating the same new store), the switch fails with
        SQLITE_BUSY at once, since waiting could deadlock inside SQLite. So the switch is retried until the busy
        timeout runs out, each try's own busy wait limited to what is left of it."""
        start = time.monotonic()
        deadline = start + self.busy_timeout_s
        pause = 0.005
        try:
            while True:
                try:
                    return self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                except sqlite3.OperationalError as exc:
                    left = deadline - time.monotonic()
                    if not _is_busy(exc) or left <= 0:
                        raise self._error(exc, waited_s=round(time.monotonic() - start, 3)) from None
                time.sleep(min(pause, left))  # a back-off between tries, not a synchronisation
                pause = min(pause * 2, 0.1)
                self._set_busy_timeout(deadline - time.monotonic())
        finally:
            self._set_busy_timeout(self.busy_timeout_s)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction holding the write lock; committed when the block ends, rolled back on error."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error(exc) from None
            try:
                yield self._conn
                self._conn.execute("COMMIT")
                self._check_in_place()
            except BaseException as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.IntegrityError):
                    raise StoreError(f"database {self.path}: {exc}") from None
                if isinstance(exc, sqlite3.Error):
                    raise self._error(exc) from None
                raise

    def _file_identity(self) -> tuple[int, int] | None:
        """(device, inode) of the file the path leads to; None where nothing is there. The path is made absolute
        at open, as SQLite's own is: a process that changes its working folder still names the same file."""
        try:
            found = os.stat(self._absolute)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return found.st_dev, found.st_ino

    def _check_in_place(self) -> None:
        """SQLite goes on writing to a database file removed (or replaced) under it, and every commit succeeds
        into a file no path leads to: a search would run to its end and lose all it measured. Checked after
        each commit, so that no write is taken as stored once the file is gone."""
        try:
            now = self._file_identity()
        except OSError:  # cannot tell (a passing error of a network file system): no verdict, and no alarm
            return
        if now != self._identity:
            raise StoreGone(f"database {self.path} was removed or replaced while this process wrote to it: what "
                            "it wrote went with the old file, and nothing more is written")

    def _read(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._error(exc) from None

    def _migrate(self, migrations: Sequence[Migration]) -> None:
        """Applies the migrations this database lacks; an up-to-date database is opened without a write lock."""
        latest = max((m.version for m in migrations), default=0)
        current = self.schema_version
        if current > latest:
            raise self._newer(current, latest)
        if current == latest:
            return
        with self._write() as c:
            c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                      "description TEXT NOT NULL, applied_at REAL NOT NULL)")
        for migration in sorted(migrations, key=lambda m: m.version):
            with self._write() as c:  # re-read under the lock: another process may be migrating too
                current = c.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
                if current > latest:
                    raise self._newer(current, latest)
                if migration.version <= current:
                    continue
                for statement in migration.statements:
                    c.execute(statement)
                c.execute("INSERT INTO schema_version VALUES (?, ?, ?)",
                          (migration.version, migration.description, time.time()))

    def _newer(self, current: int, latest: int) -> StoreError:
        return StoreError(f"database {self.path} has schema version {current}, newer than this FleetNAS knows "
                          f"({latest}): upgrade FleetNAS")

    @property
    def schema_version(self) -> int:
        if not self._read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"):
            return 0
        return self._read("SELECT coalesce(max(version), 0) FROM schema_version")[0][0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            if self.read_only and not self._logs_were_there:
                self._remove_logs_made_for_reading()

    def _log_files(self) -> list[Path]:
        real = self.path.resolve()
        return [Path(f"{real}-wal"), Path(f"{real}-shm")]

    def _remove_logs_made_for_reading(self) -> None:
        """SQLite makes the -wal and -shm files beside a database that a read-only connection reads, and only a
        connection that can write removes them, when it closes last (it keeps them while another process has
        the database open). Without this, `runs` or `report` would leave them behind."""
        real = self.path.resolve()
        if not (any(log.exists() for log in self._log_files()) and os.access(real, os.W_OK)
                and os.access(real.parent, os.W_OK)):
            return  # nothing was made (an immutable read), or it cannot be undone here: the files are harmless
        try:
            conn = sqlite3.connect(str(real), timeout=0, isolation_level=None)
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # joins the log, so closing ends it
            finally:
                conn.close()
        except sqlite3.Error:
            pass  # SQLite's files to manage: leaving them loses nothing

    # ----- devices --------------------------------------------------------------------------------
    def upsert_device(self, device_id: str, label: str, kind: str, description: dict,
                      seen_at: float | None = None) -> DeviceRecord:
        now = time.time() if seen_at is None else seen_at
        with self._write() as c:
            c.execute("""INSERT INTO devices (id, label, kind, description, first_seen, last_seen)
                         VALUES (?, ?, ?, ?, ?, ?)
                         ON CONFLICT (id) DO UPDATE SET label = excluded.label, kind = excluded.kind,
                             description = excluded.description, last_seen = max(last_seen, excluded.last_seen)""",
                      (device_id, label, kind, canonical_json(description), now, now))
        return self.device(device_id)

    def device(self, device_id: str) -> DeviceRecord | None:
        rows = self._read("SELECT * FROM devices WHERE id = ?", (device_id,))
        return _device(rows[0]) if rows else None

    def latest_device(self, kind: str) -> DeviceRecord | None:
        rows = self._read("SELECT * FROM devices WHERE kind = ? ORDER BY last_seen DESC LIMIT 1", (kind,))
        return _device(rows[0]) if rows else None

    def devices(self, kind: str | None = None) -> list[DeviceRecord]:
        if kind is None:
            return [_device(r) for r in self._read("SELECT * FROM devices ORDER BY kind, id")]
        return [_device(r) for r in self._read("SELECT * FROM devices WHERE kind = ? ORDER BY id", (kind,))]

    # ----- artifacts ------------------------------------------------------------------------------
    def put_artifact(self, sha256: str, format: str, size: int, supernet: str | None = None,
                     config: dict | None = None) -> ArtifactRecord:
        with self._write() as c:
            c.execute("INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING",
                      (sha256, format, supernet, None if config is None else canonical_json(config), size,
                       time.time()))
        return self.artifact(sha256)

    def artifact(self, sha256: str) -> ArtifactRecord | None:
        rows = self._read("SELECT * FROM artifacts WHERE sha256 = ?", (sha256,))
        if not rows:
            return None
        sha, fmt, supernet, config, size, created = rows[0]
        return ArtifactRecord(sha, fmt, supernet, None if config is None else _json(config, "artifact", sha, "config"),
                              size, created)

    # ----- measurements ---------------------------------------------------------------------------
    def record_measurement(self, m: NewMeasurement, supersede: bool = False) -> tuple[MeasurementRecord, bool]:
        now = time.time()
        key = (m.artifact, m.device_kind, m.runtime, m.settings_hash)
        with self._write() as c:
            if c.execute("SELECT 1 FROM artifacts WHERE sha256 = ?", (m.artifact,)).fetchone() is None:
                raise StoreError(f"artifact {m.artifact[:12]}… is not recorded: put_artifact() before measuring it")
            c.execute("""INSERT INTO devices (id, label, kind, description, first_seen, last_seen)
                         VALUES (?, ?, ?, '{}', ?, ?)
                         ON CONFLICT (id) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)""",
                      (m.device_id, m.device_label, m.device_kind, now, now))
            if m.ok:
                current = c.execute(f"SELECT {MEASUREMENT_COLUMNS} FROM measurements WHERE artifact = ? AND "
                                    "device_kind = ? AND runtime = ? AND settings_hash = ? AND ok = 1 AND stale = 0",
                                    key).fetchone()
                if current is not None and not supersede:
                    return _measurement(current), False
                if current is not None:
                    c.execute("UPDATE measurements SET stale = 1 WHERE id = ?", (current[0],))
            cursor = c.execute(
                """INSERT INTO measurements (device_id, device_kind, agent, artifact, runtime, settings, settings_hash,
                       stats, memory, env, detail, ok, error, stale, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)""",
                (m.device_id, m.device_kind, m.agent, m.artifact, m.runtime, canonical_json(m.settings),
                 m.settings_hash, canonical_json(m.stats), canonical_json(m.memory), canonical_json(m.env),
                 canonical_json(m.detail), int(m.ok), m.error, now))
            row = c.execute(f"SELECT {MEASUREMENT_COLUMNS} FROM measurements WHERE id = ?",
                            (cursor.lastrowid,)).fetchone()
        return _measurement(row), True

    def find_measurements(self, keys: Iterable[MeasurementKey]) -> dict[MeasurementKey, MeasurementRecord]:
        found = {}
        with self._lock:
            for key in dict.fromkeys(keys):
                rows = self._read(f"SELECT {MEASUREMENT_COLUMNS} FROM measurements WHERE artifact = ? AND "
                                  "device_kind = ? AND runtime = ? AND settings_hash = ? AND ok = 1 AND stale = 0",
                                  key)
                if rows:
                    found[key] = _measurement(rows[0])
        return found

    def measurements(self, *, space: str | None = None, device_kind: str | None = None, runtime: str | None = None,
                     device_id: str | None = None, ok: bool | None = True, include_stale: bool = False,
                     settings_hash: str | None = None) -> list[MeasurementRecord]:
        where, params = _filters(device_kind=device_kind, runtime=runtime, device_id=device_id,
                                 settings_hash=settings_hash, ok=None if ok is None else int(ok),
                                 stale=None if include_stale else 0)
        join = ""
        if space is not None:
            join = "JOIN artifacts a ON a.sha256 = m.artifact"
            where.append("a.supernet = ?")
            params.append(space)
        columns = ", ".join(f"m.{c.strip()}" for c in MEASUREMENT_COLUMNS.split(","))
        sql = f"SELECT {columns} FROM measurements m {join} {_where(where)} ORDER BY m.id"
        return [_measurement(r) for r in self._read(sql, params)]

    def count_measurements(self, ok: bool | None = True, include_stale: bool = False) -> int:
        where, params = _filters(ok=None if ok is None else int(ok), stale=None if include_stale else 0)
        return self._read(f"SELECT count(*) FROM measurements m {_where(where)}", params)[0][0]

    def metric_values(self, space: str, device_kind: str, runtime: str, metric: str = "latency_ms", *,
                      include_stale: bool = False, settings_hash: str | None = None) -> list[MetricValue]:
        column, name = parse_metric(metric)  # both come from fixed lists: safe to put into the SQL text
        where, params = _filters(device_kind=device_kind, runtime=runtime, settings_hash=settings_hash, ok=1,
                                 stale=None if include_stale else 0)
        where.append("a.supernet = ?")
        params.append(space)
        rows = self._read(f"""SELECT a.config, json_extract(m.{column}, '$.{name}'), m.id, m.device_id, m.artifact,
                                     m.created_at
                              FROM measurements m JOIN artifacts a ON a.sha256 = m.artifact
                              {_where(where)} ORDER BY m.id""", params)
        return [MetricValue(_json(config, "artifact", artifact, "config") if config else {}, float(value), mid, device,
                            artifact, created)
                for config, value, mid, device, artifact, created in rows if value is not None]

    def mark_stale(self, device_kind: str, *, device_id: str | None = None, before: float | None = None,
                   runtime: str | None = None, agent: str | None = None) -> int:
        where, params = _filters(device_kind=device_kind, device_id=device_id, runtime=runtime, agent=agent, stale=0)
        if before is not None:
            where.append("m.created_at < ?")
            params.append(before)
        with self._write() as c:
            return c.execute(f"UPDATE measurements AS m SET stale = 1 {_where(where)}", params).rowcount

    # ----- evaluations ----------------------------------------------------------------------------
    def add_evaluation(self, supernet: str, config: dict, metric: str, value: float) -> EvaluationRecord:
        now, key = time.time(), canonical_json(config)
        with self._write() as c:  # looked up and inserted under one write lock: another process cannot interleave
            first = c.execute("SELECT * FROM evaluations WHERE supernet = ? AND metric = ? AND config = ? "
                              "ORDER BY id LIMIT 1", (supernet, metric, key)).fetchone()
            if first is None:
                cursor = c.execute("INSERT INTO evaluations (supernet, config, metric, value, created_at) "
                                   "VALUES (?, ?, ?, ?, ?)", (supernet, key, metric, float(value), now))
                first = (cursor.lastrowid, supernet, key, metric, float(value), now)
        return _evaluation(first)

    def evaluations(self, supernet: str, metric: str | None = None,
                    config: dict | None = None) -> list[EvaluationRecord]:
        where, params = ["supernet = ?"], [supernet]
        if metric is not None:
            where.append("metric = ?")
            params.append(metric)
        if config is not None:
            where.append("config = ?")
            params.append(canonical_json(config))
        rows = self._read(f"SELECT * FROM evaluations {_where(where)} ORDER BY id", params)
        return [_evaluation(row) for row in rows]

    # ----- runs -----------------------------------------------------------------------------------
    def create_run(self, tactic: str, settings: dict, name: str | None = None) -> RunRecord:
        now = time.time()
        with self._write() as c:
            if name is not None and c.execute("SELECT 1 FROM runs WHERE name = ?", (name,)).fetchone():
                raise StoreError(f"a run named {name!r} already exists in {self.path}")
            cursor = c.execute("INSERT INTO runs (name, tactic, settings, state, created_at, updated_at) "
                               "VALUES (?, ?, ?, 'running', ?, ?)", (name, tactic, canonical_json(settings), now, now))
        return self.run(cursor.lastrowid)

    def run(self, run_id: int) -> RunRecord | None:
        rows = self._read("SELECT * FROM runs WHERE id = ?", (run_id,))
        return _run(rows[0]) if rows else None

    def run_by_name(self, name: str) -> RunRecord | None:
        rows = self._read("SELECT * FROM runs WHERE name = ?", (name,))
        return _run(rows[0]) if rows else None

    def runs(self, state: str | None = None) -> list[RunRecord]:
        if state is None:
            return [_run(r) for r in self._read("SELECT * FROM runs ORDER BY id")]
        return [_run(r) for r in self._read("SELECT * FROM runs WHERE state = ? ORDER BY id", (state,))]

    def set_run_state(self, run_id: int, state: str) -> RunRecord:
        if state not in RUN_STATES:
            raise StoreError(f"run state must be one of {', '.join(RUN_STATES)}, got {state!r}")
        with self._write() as c:
            if c.execute("UPDATE runs SET state = ?, updated_at = ? WHERE id = ?",
                         (state, time.time(), run_id)).rowcount == 0:
                raise StoreError(f"no run with id {run_id} in {self.path}")
        return self.run(run_id)

    def add_run_members(self, run_id: int, members: Sequence[tuple[dict, dict, str]]) -> list[RunMember]:
        for _, _, source in members:
            if source not in MEMBER_SOURCES:
                raise StoreError(f"a run member's source must be one of {', '.join(MEMBER_SOURCES)}, got {source!r}")
        now = time.time()
        ids = []
        with self._write() as c:
            self._touch_run(c, run_id, now)
            for config, objectives, source in members:
                ids.append(c.execute("INSERT INTO run_members (run_id, config, objectives, source, created_at) "
                                     "VALUES (?, ?, ?, ?, ?)",
                                     (run_id, canonical_json(config), canonical_json(objectives), source,
                                      now)).lastrowid)
        return [RunMember(i, run_id, json.loads(canonical_json(cfg)), json.loads(canonical_json(obj)), src, now)
                for i, (cfg, obj, src) in zip(ids, members)]

    def _touch_run(self, c: sqlite3.Connection, run_id: int, now: float) -> None:
        """A run's updated_at is its last activity (a member, an event, a state), which `fleetnas runs` shows."""
        if c.execute("UPDATE runs SET updated_at = ? WHERE id = ?", (now, run_id)).rowcount == 0:
            raise StoreError(f"no run with id {run_id} in {self.path}")

    def run_members(self, run_id: int, source: str | None = None) -> list[RunMember]:
        where, params = ["run_id = ?"], [run_id]
        if source is not None:
            where.append("source = ?")
            params.append(source)
        rows = self._read(f"SELECT * FROM run_members {_where(where)} ORDER BY id", params)
        return [RunMember(i, r, _json(c, "run member", i, "config"), _json(o, "run member", i, "objectives"), s, t)
                for i, r, c, o, s, t in rows]

    def add_run_event(self, run_id: int, kind: str, payload: dict) -> RunEvent:
        now = time.time()
        with self._write() as c:
            self._touch_run(c, run_id, now)
            cursor = c.execute("INSERT INTO run_events (run_id, kind, payload, created_at) VALUES (?, ?, ?, ?)",
                               (run_id, kind, canonical_json(payload), now))
        return RunEvent(cursor.lastrowid, run_id, kind, json.loads(canonical_json(payload)), now)

    def run_events(self, run_id: int, kind: str | None = None) -> list[RunEvent]:
        where, params = ["run_id = ?"], [run_id]
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        rows = self._read(f"SELECT * FROM run_events {_where(where)} ORDER BY id", params)
        return [RunEvent(i, r, k, _json(p, "run event", i, "payload"), t) for i, r, k, p, t in rows]


    # ----- calibrations ---------------------------------------------------------------------------
    def add_calibration(self, space: str, device_kind: str, runtime: str, settings: dict, reason: str,
                        result: dict) -> CalibrationRecord:
        if reason not in CALIBRATION_REASONS:
            raise StoreError(f"a calibration's reason must be one of {', '.join(CALIBRATION_REASONS)}, "
                             f"got {reason!r}")
        with self._write() as c:
            cursor = c.execute("INSERT INTO calibrations (space, device_kind, runtime, settings, settings_hash, "
                               "reason, result, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               (space, device_kind, runtime, canonical_json(settings), settings_hash(settings), reason,
                                canonical_json(result), time.time()))
        return _calibration(self._read("SELECT * FROM calibrations WHERE id = ?", (cursor.lastrowid,))[0])

    def calibrations(self, space: str | None = None, device_kind: str | None = None) -> list[CalibrationRecord]:
        where, params = _filters(space=space, device_kind=device_kind)
        return [_calibration(r) for r in self._read(f"SELECT * FROM calibrations m {_where(where)} ORDER BY id",
                                                    params)]

    def add_reference_round(self, r: NewReferenceRound) -> ReferenceRound:
        if r.role not in ROUND_ROLES:
            raise StoreError(f"a reference round's role must be one of {', '.join(ROUND_ROLES)}, got {r.role!r}")
        with self._write() as c:
            cursor = c.execute(
                """INSERT INTO reference_rounds (space, device_kind, agent, device_id, runtime, settings_hash,
                       reference, role, entries, platform, verdict, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (r.space, r.device_kind, r.agent, r.device_id, r.runtime, r.settings_hash, r.reference, r.role,
                 canonical_json(r.entries), canonical_json(r.platform), canonical_json(r.verdict), time.time()))
        return _round(self._read("SELECT * FROM reference_rounds WHERE id = ?", (cursor.lastrowid,))[0])

    def reference_rounds(self, space: str, device_kind: str, *, agent: str | None = None, role: str | None = None,
                         settings_hash: str | None = None, reference: str | None = None,
                         latest: int | None = None) -> list[ReferenceRound]:
        where, params = _filters(space=space, device_kind=device_kind, agent=agent, role=role,
                                 settings_hash=settings_hash, reference=reference)
        query = f"SELECT * FROM reference_rounds m {_where(where)} ORDER BY id DESC"
        if latest is not None:
            if isinstance(latest, bool) or not isinstance(latest, int) or latest < 1:
                raise StoreError(f"latest must be a positive number of rounds, got {latest!r}")
            query += " LIMIT ?"
            params.append(latest)
        return [_round(r) for r in reversed(self._read(query, params))]


# ----- row helpers --------------------------------------------------------------------------------
def remove_if_empty(path: Path) -> bool:
    """Removes a database file (and its -wal/-shm) that holds no row beyond its schema, under an exclusive lock
    so that no other process writes to it meanwhile (one that opened it carries on into a removed file, which
    its next commit reports: `StoreGone`). For a command that made a store and was then refused: it leaves no
    empty store behind. True where it was removed; a link is never followed or removed."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    except sqlite3.Error:
        return False
    try:
        conn.execute("BEGIN EXCLUSIVE")
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN "
                                             "('schema_version', 'sqlite_sequence')")]
        if any(conn.execute(f'SELECT EXISTS (SELECT 1 FROM "{t}")').fetchone()[0] for t in tables):
            return False
        for leftover in (path, *(path.with_name(path.name + end) for end in ("-wal", "-shm", "-journal"))):
            leftover.unlink(missing_ok=True)
        return True
    except sqlite3.Error:
        return False
    finally:
        conn.close()


def _filters(**equal) -> tuple[list[str], list]:
    where, params = [], []
    for column, value in equal.items():
        if value is not None:
            where.append(f"m.{column} = ?")
            params.append(value)
    return where, params


def _where(conditions: list[str]) -> str:
    return "WHERE " + " AND ".join(conditions) if conditions else ""


def _json(text, record: str, key, column: str):
    """A JSON column's value: an object, or a list for reference rounds' entries. FleetNAS writes only those
    (`canonical_json`), so anything else is a row edited or damaged outside it: a StoreError that names the
    row, not a traceback in a listing."""
    expected = list if column == "entries" else dict
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        problem = f"is not valid JSON ({exc})"
    else:
        if isinstance(value, expected):
            return value
        problem = f"holds a JSON {type(value).__name__}, not {'a list' if expected is list else 'an object'}"
    raise StoreError(f"the store's {record} {key}: its {column} {problem}; the database was edited or damaged "
                     "outside FleetNAS")


def _device(row) -> DeviceRecord:
    device_id, label, kind, description, first_seen, last_seen = row
    return DeviceRecord(device_id, label, kind, _json(description, "device", device_id, "description"), first_seen,
                        last_seen)


def _measurement(row) -> MeasurementRecord:
    (mid, device_id, kind, agent, artifact, runtime, settings, shash, stats, memory, env, detail, ok, error, stale,
     created) = row
    settings, stats, memory, env, detail = (_json(text, "measurement", mid, column) for text, column in (
        (settings, "settings"), (stats, "stats"), (memory, "memory"), (env, "env"), (detail, "detail")))
    return MeasurementRecord(mid, device_id, kind, agent, artifact, runtime, settings, shash, stats, memory, env,
                             detail, bool(ok), error, bool(stale), created)


def _evaluation(row) -> EvaluationRecord:
    i, supernet, config, metric, value, created_at = row
    return EvaluationRecord(i, supernet, _json(config, 'evaluation', i, 'config'), metric, value, created_at)


def _run(row) -> RunRecord:
    run_id, name, tactic, settings, state, created, updated = row
    return RunRecord(run_id, name, tactic, _json(settings, 'run', run_id, 'settings'), state, created, updated)


def _calibration(row) -> CalibrationRecord:
    cid, space, kind, runtime, settings, shash, reason, result, created = row
    return CalibrationRecord(cid, space, kind, runtime, _json(settings, "calibration", cid, "settings"), shash,
                             reason, _json(result, "calibration", cid, "result"), created)


def _round(row) -> ReferenceRound:
    (rid, space, kind, agent, device_id, runtime, shash, reference, role, entries, platform, verdict, created) = row
    return ReferenceRound(rid, space, kind, agent, device_id, runtime, shash, reference, role,
                          _json(entries, "reference round", rid, "entries"),
                          _json(platform, "reference round", rid, "platform"),
                          _json(verdict, "reference round", rid, "verdict"), created)


def _is_busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED: another connection holds a lock this one needs."""
    text = str(exc)
    return "locked" in text or "busy" in text
