"""The SQLite store: schema and migrations, dedup, queries, runs, and behaviour under locks and concurrency."""
import re
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from faults import on_read_only_mount
from fleetnas.search.run import RunSpec
from fleetnas.store import (MIGRATIONS, Migration, NewMeasurement, SqliteStore, StoreError, StoreLocked, open_store,
                            settings_hash)

SHA_A, SHA_B = "a" * 64, "b" * 64
SETTINGS = {"runtime": "onnxruntime", "threads": 1, "stopping": {}, "seed": 0}


@pytest.fixture
def store(tmp_path):
    with SqliteStore(tmp_path / "fleet.db") as s:
        s.put_artifact(SHA_A, "onnx", 100, "demo", {"depth": 2, "width": 16})
        s.put_artifact(SHA_B, "onnx", 120, "demo", {"depth": 3, "width": 16})
        yield s


def measurement(artifact=SHA_A, kind="cpu-ort-1t", median=1.0, settings=SETTINGS, ok=True, device="dev-1", **kw):
    return NewMeasurement(device_id=device, device_kind=kind, artifact=artifact, runtime=settings["runtime"],
                          settings=settings, ok=ok, stats={"median": median, "p90": median * 1.2, "n": 10},
                          memory={"peak_bytes": 1000, "measured": True}, agent="a1", **kw)


def test_a_new_database_gets_every_table_in_wal_mode(tmp_path):
    with SqliteStore(tmp_path / "new.db") as s:
        assert s.schema_version == MIGRATIONS[-1].version
    conn = sqlite3.connect(tmp_path / "new.db")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"devices", "artifacts", "measurements", "evaluations", "runs", "run_members", "run_events",
            "schema_version"} <= tables
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_migrations_apply_in_order_once_and_a_newer_database_is_refused(tmp_path):
    path = tmp_path / "m.db"
    SqliteStore(path).close()
    extra = Migration(MIGRATIONS[-1].version + 1, "a later column",
                      ("ALTER TABLE runs ADD COLUMN note TEXT NOT NULL DEFAULT ''",))
    with SqliteStore(path, migrations=(*MIGRATIONS, extra)) as s:
        assert s.schema_version == extra.version
    with SqliteStore(path, migrations=(*MIGRATIONS, extra)) as s:  # reopening applies nothing twice
        assert s.schema_version == extra.version
    columns = [r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(runs)")]
    assert columns.count("note") == 1
    with pytest.raises(StoreError, match=rf"schema version {extra.version}, newer than this FleetNAS knows "
                                         rf"\({MIGRATIONS[-1].version}\)"):
        SqliteStore(path)


def test_a_file_that_is_not_a_database_gets_a_clear_error(tmp_path):
    bad = tmp_path / "notes.db"
    bad.write_text("these are not the tables you are looking for\n" * 100)
    with pytest.raises(StoreError, match="not a usable FleetNAS database"):
        SqliteStore(bad)
    with pytest.raises(StoreError, match="unsupported store"):
        open_store("postgres://somewhere/db")
    with open_store(f"sqlite:///{tmp_path / 'url.db'}") as s:
        assert s.schema_version >= 1


def test_a_store_opened_for_reading_writes_nothing_and_upgrades_an_older_schema_where_it_can(tmp_path):
    path = tmp_path / "old.db"
    with SqliteStore(path, migrations=MIGRATIONS[:-1]) as s:
        s.upsert_device("d1", "pi", "rpi4", {})
    with SqliteStore(path, read_only=True) as s:  # upgraded first, as any command that writes would
        assert s.schema_version == MIGRATIONS[-1].version and s.device("d1").kind == "rpi4"
        with pytest.raises(StoreError, match="readonly"):
            s.upsert_device("d2", "pi", "rpi4", {})
    with pytest.raises(StoreError, match=f"newer than this FleetNAS knows \\({MIGRATIONS[-2].version}\\): upgrade"):
        SqliteStore(path, read_only=True, migrations=MIGRATIONS[:-1])
    with pytest.raises(StoreError, match="no store at"):
        open_store(tmp_path / "typo.db", read_only=True)
    (tmp_path / "empty.db").touch()
    with sqlite3.connect(tmp_path / "bare.db") as bare:  # another program's database, no tables yet
        bare.execute("PRAGMA user_version = 7")
    for name in ("empty.db", "bare.db"):
        before = (tmp_path / name).read_bytes()
        with pytest.raises(StoreError, match="is not a FleetNAS store"):
            open_store(tmp_path / name, read_only=True)
        assert (tmp_path / name).read_bytes() == before and not (tmp_path / f"{name}-wal").exists()
    assert not (tmp_path / "typo.db").exists()
    odd = tmp_path / "a b?c#d%e\udcff.db"  # a name that is no valid UTF-8 too
    SqliteStore(odd).close()
    (tmp_path / "link.db").symlink_to(odd)
    with SqliteStore(tmp_path / "link.db", read_only=True) as s:
        assert s.schema_version == MIGRATIONS[-1].version


def test_one_current_row_per_dedup_key(store):
    first, inserted = store.record_measurement(measurement(median=1.0))
    again, inserted_again = store.record_measurement(measurement(median=2.0))
    assert inserted and not inserted_again and again.id == first.id and again.stats["median"] == 1.0
    other_settings = {**SETTINGS, "stopping": {"max_s": 0.05}}
    _, inserted_other = store.record_measurement(measurement(settings=other_settings))
    _, inserted_kind = store.record_measurement(measurement(kind="rpi4-ort-1t"))
    assert inserted_other and inserted_kind
    assert store.find_measurement(SHA_A, "cpu-ort-1t", "onnxruntime", settings_hash(SETTINGS)).id == first.id
    assert store.find_measurement(SHA_B, "cpu-ort-1t", "onnxruntime", settings_hash(SETTINGS)) is None


def test_superseding_keeps_history_and_failures_are_always_kept(store):
    old, _ = store.record_measurement(measurement(median=1.0))
    new, inserted = store.record_measurement(measurement(median=1.5), supersede=True)
    assert inserted and new.id != old.id
    current = store.measurements(device_kind="cpu-ort-1t")
    assert [m.id for m in current] == [new.id]
    history = store.measurements(device_kind="cpu-ort-1t", include_stale=True)
    assert {m.id: m.stale for m in history} == {old.id: True, new.id: False}
    for _ in range(2):
        store.record_measurement(measurement(artifact=SHA_B, ok=False, error="the model crashed its runtime"))
    failed = store.measurements(ok=False)
    assert len(failed) == 2 and failed[0].error == "the model crashed its runtime"


def test_the_unique_index_is_a_backstop_even_for_raw_sql(store, tmp_path):
    store.record_measurement(measurement())
    conn = sqlite3.connect(store.path)
    row = conn.execute("SELECT device_id, device_kind, agent, artifact, runtime, settings, settings_hash, stats, "
                       "memory, env, detail, ok, error, stale, created_at FROM measurements").fetchone()
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        conn.execute("INSERT INTO measurements (device_id, device_kind, agent, artifact, runtime, settings, "
                     "settings_hash, stats, memory, env, detail, ok, error, stale, created_at) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)


def test_a_measurement_of_an_unknown_artifact_is_refused(store):
    with pytest.raises(StoreError, match="is not recorded"):
        store.record_measurement(measurement(artifact="c" * 64))


def test_metric_values_of_a_space_kind_runtime_and_metric(store):
    store.record_measurement(measurement(SHA_A, median=1.0))
    store.record_measurement(measurement(SHA_B, median=3.0))
    store.record_measurement(measurement(SHA_B, kind="rpi4-ort-1t", median=9.0))
    values = store.metric_values("demo", "cpu-ort-1t", "onnxruntime", "latency_ms")
    assert [(v.config["depth"], v.value) for v in values] == [(2, 1.0), (3, 3.0)]
    p90 = store.metric_values("demo", "cpu-ort-1t", "onnxruntime", "latency_ms.p90")
    assert [v.value for v in p90] == pytest.approx([1.2, 3.6])
    assert [v.value for v in store.metric_values("demo", "cpu-ort-1t", "onnxruntime", "peak_bytes")] == [1000, 1000]
    assert store.metric_values("demo", "cpu-ort-1t", "litert") == []
    assert store.metric_values("other", "cpu-ort-1t", "onnxruntime") == []
    with pytest.raises(StoreError, match="unknown metric 'latency'"):
        store.metric_values("demo", "cpu-ort-1t", "onnxruntime", "latency")
    assert store.mark_stale("cpu-ort-1t") == 2  # e.g. calibration saw the device drift
    assert store.metric_values("demo", "cpu-ort-1t", "onnxruntime") == []
    assert len(store.metric_values("demo", "cpu-ort-1t", "onnxruntime", include_stale=True)) == 2
    assert [v.value for v in store.metric_values("demo", "rpi4-ort-1t", "onnxruntime")] == [9.0]


def test_latest_device_description_per_kind(store):
    store.upsert_device("dev-1", "pi-a", "rpi4", {"cpu_model": "Cortex-A72", "agent_version": "0.1"}, seen_at=100.0)
    store.upsert_device("dev-2", "pi-b", "rpi4", {"cpu_model": "Cortex-A72"}, seen_at=200.0)
    store.upsert_device("dev-1", "pi-a", "rpi4", {"cpu_model": "Cortex-A72", "agent_version": "0.2"}, seen_at=300.0)
    latest = store.latest_device("rpi4")
    assert latest.id == "dev-1" and latest.description["agent_version"] == "0.2"
    assert latest.first_seen == 100.0 and latest.last_seen == 300.0
    assert store.latest_device("jetson") is None
    assert [d.id for d in store.devices("rpi4")] == ["dev-1", "dev-2"]


def test_runs_members_and_events(store):
    run = store.create_run("linas", {"space": "demo", "budget": 20}, name="first")
    assert run.state == "running" and store.run_by_name("first").id == run.id
    with pytest.raises(StoreError, match="already exists"):
        store.create_run("linas", {}, name="first")
    store.add_run_members(run.id, [({"depth": 2}, {"latency_ms": 1.0, "top1": 0.7}, "measured"),
                                   ({"depth": 3}, {"latency_ms": 2.0, "top1": 0.75}, "predicted")])
    assert [m.config for m in store.run_members(run.id, source="measured")] == [{"depth": 2}]
    assert len(store.run_members(run.id)) == 2
    with pytest.raises(StoreError, match="source must be one of measured, predicted"):
        store.add_run_members(run.id, [({}, {}, "guessed")])
    store.add_run_event(run.id, "hypervolume", {"n_real": 1, "value": 0.2})
    store.add_run_event(run.id, "hypervolume", {"n_real": 2, "value": 0.3})
    assert [e.payload["value"] for e in store.run_events(run.id, "hypervolume")] == [0.2, 0.3]
    assert store.set_run_state(run.id, "finished").state == "finished"
    assert [r.id for r in store.runs(state="finished")] == [run.id]
    with pytest.raises(StoreError, match="run state must be one of"):
        store.set_run_state(run.id, "paused")
    with pytest.raises(StoreError, match="no run with id 999"):
        store.add_run_event(999, "hypervolume", {})


def test_evaluations_by_space_metric_and_config(store):
    store.add_evaluation("demo", {"width": 16, "depth": 2}, "top1", 0.71)
    again = store.add_evaluation("demo", {"depth": 2, "width": 16}, "top1", 0.72)  # same config, other key order
    store.add_evaluation("demo", {"depth": 3, "width": 16}, "top1", 0.75)
    same = store.evaluations("demo", "top1", config={"depth": 2, "width": 16})
    assert [e.value for e in same] == [0.71] and again.value == 0.71  # the first value stays, and is returned
    assert len(store.evaluations("demo")) == 2 and store.evaluations("demo", "top5") == []


def test_runs_evaluating_one_config_at_once_keep_one_value(tmp_path):
    """Eight writers, each with its own connection (as separate processes have), store one config's value."""
    path = tmp_path / "shared.db"
    SqliteStore(path).close()
    returned, start = [], threading.Barrier(8)

    def evaluate(value: float) -> None:
        with SqliteStore(path) as own:
            start.wait()
            returned.append(own.add_evaluation("demo", {"depth": 2}, "accuracy", value).value)

    writers = [threading.Thread(target=evaluate, args=(0.5 + i / 100,)) for i in range(8)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    with SqliteStore(path) as store:
        [stored] = store.evaluations("demo", "accuracy")
    assert returned == [stored.value] * 8


def test_a_locked_database_fails_clearly_after_the_busy_timeout_and_loses_nothing(tmp_path):
    path = tmp_path / "locked.db"
    with SqliteStore(path) as first:
        first.put_artifact(SHA_A, "onnx", 1)
        first.record_measurement(measurement())
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    with SqliteStore(path, busy_timeout_s=0.2) as s:
        with pytest.raises(StoreLocked, match=r"locked by another process; gave up after 0.2 s"):
            s.record_measurement(measurement(artifact=SHA_A, kind="other-kind"))
        assert len(s.measurements()) == 1  # reads still work under WAL
        other.execute("COMMIT")
        _, inserted = s.record_measurement(measurement(artifact=SHA_A, kind="other-kind"))
        assert inserted and len(s.measurements()) == 2


class _NotingWalTries(SqliteStore):
    """A store that calls `on_wal_try(n)` as its connection starts its n-th `PRAGMA journal_mode = WAL`."""

    def __init__(self, path, on_wal_try, **kw):
        self._on_wal_try, self._wal_tries = on_wal_try, 0
        super().__init__(path, **kw)

    def _connect(self, target, uri=False):
        conn = super()._connect(target, uri)
        conn.set_trace_callback(self._traced)
        return conn

    def _traced(self, statement: str) -> None:
        if statement.startswith("PRAGMA journal_mode"):
            self._wal_tries += 1
            self._on_wal_try(self._wal_tries)


def test_a_new_store_waits_for_another_process_creating_it_to_let_go_of_the_write_lock(tmp_path):
    """Another process holds the write lock of the new, still rollback-journal database: SQLite fails the switch
    to WAL at once (no busy handler), so the store tries again within its busy timeout."""
    path = tmp_path / "new.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE placeholder (x)")  # what the other process is writing

    def let_go_on_the_second_try(n: int) -> None:
        if n == 2:  # the first try failed while the lock was held: this one is a retry
            other.execute("ROLLBACK")

    with _NotingWalTries(path, let_go_on_the_second_try, busy_timeout_s=30) as store:
        assert store._wal_tries >= 2
        assert store._read("PRAGMA journal_mode")[0][0] == "wal" and store.schema_version == MIGRATIONS[-1].version
    other.close()


def test_a_new_store_whose_write_lock_stays_held_gives_up_after_its_busy_timeout_and_says_so(tmp_path):
    path = tmp_path / "held.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE placeholder (x)")
    start = time.monotonic()
    message = r"locked by another process; gave up after ([\d.]+) s \(busy timeout 0\.2 s\)"
    with pytest.raises(StoreLocked, match=message) as raised:
        SqliteStore(path, busy_timeout_s=0.2)
    elapsed = time.monotonic() - start
    said = float(re.search(r"gave up after ([\d.]+) s", str(raised.value)).group(1))
    assert 0.2 <= said <= elapsed < 5  # it waited out its timeout, no longer, and says how long it waited
    other.execute("ROLLBACK")
    other.close()


def test_threads_share_one_store(store):
    shas = [f"{i:064x}" for i in range(40)]
    for sha in shas:
        store.put_artifact(sha, "onnx", 1)

    def write(part):
        for sha in part:
            store.record_measurement(measurement(artifact=sha))

    threads = [threading.Thread(target=write, args=(shas[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.measurements()) == 40


WRITER = """
import sys
from fleetnas.store import SqliteStore, NewMeasurement
s = SqliteStore(sys.argv[1])
inserted = 0
for i in range(30):
    sha = f"{i:064x}"
    s.put_artifact(sha, "onnx", 1)
    m = NewMeasurement("dev", "k", sha, "onnxruntime", {"seed": 0}, True, stats={"median": float(i)})
    inserted += s.record_measurement(m)[1]
print(inserted)
"""


def test_two_processes_recording_the_same_jobs_leave_one_row_each(tmp_path):
    path = tmp_path / "shared.db"
    SqliteStore(path).close()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    inserted = [int(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(inserted) == 30  # between them, each job was recorded exactly once
    with SqliteStore(path) as s:
        assert len(s.measurements()) == 30


def test_created_at_is_wall_clock_seconds(store):
    before = time.time()
    record, _ = store.record_measurement(measurement())
    assert before <= record.created_at <= time.time()


def test_a_store_that_cannot_be_made_or_is_not_there_is_a_store_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot make the folder of database"):
        open_store(blocker / "x.db")
    with pytest.raises(StoreError, match="no store at"):
        open_store(tmp_path / "typo.db", existing=True)
    assert not (tmp_path / "typo.db").exists()
    (tmp_path / "link.db").symlink_to(tmp_path / "nowhere" / "real.db")
    with pytest.raises(StoreError, match=r"the folder it leads to, .*nowhere, does not exist"):
        open_store(tmp_path / "link.db")


def test_a_store_on_read_only_media_says_it_cannot_be_written_or_made_there(tmp_path):
    archive, mounted = tmp_path / "archive", tmp_path / "mounted"
    with open_store(archive / "kept.db"):
        pass
    probe = tmp_path / "probe.py"
    probe.write_text("import sys\nfrom fleetnas.store import StoreError, open_store\n"
                     "for name, kw in (('kept.db', {}), ('new.db', {}), ('kept.db', {'read_only': True})):\n"
                     "    try:\n        open_store(sys.argv[1] + '/' + name, **kw).close(); print('opened', name)\n"
                     "    except StoreError as exc:\n        print(exc)\n")
    done = on_read_only_mount(archive, mounted, f"{sys.executable} {probe} {mounted}", timeout_s=120)
    kept, new, read = done.stdout.splitlines()
    assert kept.startswith(f"database {mounted / 'kept.db'} cannot be written here ({mounted / 'kept.db'} is "
                           "read-only to this user): what only reads it")
    assert new == f"database {mounted / 'new.db'} cannot be made here ({mounted} is read-only to this user)"
    assert read == "opened kept.db"


def test_latest_reference_rounds_must_be_a_positive_count(store):
    for bad in (0, -1, True, 1.5):
        with pytest.raises(StoreError, match=f"latest must be a positive number of rounds, got {bad!r}"):
            store.reference_rounds("demo", "k", latest=bad)


def test_another_programs_database_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "contacts.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE people (name TEXT)")
    before = path.read_bytes()
    for existing in (True, False):
        with pytest.raises(StoreError, match="database of another program .*people"):
            open_store(path, existing=existing)
    assert path.read_bytes() == before and not (tmp_path / "contacts.sqlite-wal").exists()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


#: A run that has not noted how it measured: its device table is not narrowed by settings.
DEMO_RUN = RunSpec(space="demo", objectives=[])


def test_a_report_lists_every_device_that_measured_each_of_its_kinds(store):
    """One machine (one device id) serving two kinds, one agent per thread count: both kinds list it."""
    from fleetnas.report import _device_rows
    from fleetnas.search.objectives import parse_objective

    store.upsert_device("dev-1", "box", "cpu-ort-1t", {"cpu_model": "Xeon"})
    store.upsert_device("dev-1", "box", "cpu-ort-2t", {"cpu_model": "Xeon"})  # the table keeps the latest kind
    store.record_measurement(measurement(kind="cpu-ort-1t"))
    store.record_measurement(measurement(kind="cpu-ort-2t", settings={**SETTINGS, "threads": 2}))
    objectives = [parse_objective("latency@cpu-ort-1t:min"), parse_objective("latency@cpu-ort-2t:min")]
    rows = _device_rows(store, DEMO_RUN, objectives, [{"depth": 2, "width": 16}])
    assert [(r["kind"], r["id"], r["cpu"]) for r in rows] == [("cpu-ort-1t", "dev-1", "Xeon"),
                                                              ("cpu-ort-2t", "dev-1", "Xeon")]


def test_a_report_lists_only_the_devices_that_measured_its_own_configs(store):
    """A second device of the kind that measured only another run's config (or a calibration's) is not one of
    this run's devices."""
    from fleetnas.report import _device_rows
    from fleetnas.search.objectives import parse_objective

    store.upsert_device("dev-1", "pi-a", "rpi4", {"cpu_model": "Cortex-A72"})
    store.upsert_device("dev-2", "pi-b", "rpi4", {"cpu_model": "Cortex-A76"})
    store.record_measurement(measurement(SHA_A, kind="rpi4", device="dev-1"))
    store.record_measurement(measurement(SHA_B, kind="rpi4", device="dev-2"))
    objectives = [parse_objective("accuracy:max"), parse_objective("latency@rpi4:min")]
    assert [r["id"] for r in _device_rows(store, DEMO_RUN, objectives, [{"width": 16, "depth": 2}])] == ["dev-1"]
    assert [r["id"] for r in _device_rows(store, RunSpec(space="demo", objectives=[]), objectives,
                                          [{"depth": 3, "width": 16}])] == ["dev-2"]


def test_a_report_lists_only_the_devices_that_measured_as_its_run_measures(store):
    """dev-2 measured the run's config with two threads; the run measured with one."""
    from fleetnas.report import _device_rows
    from fleetnas.search.objectives import parse_objective

    store.upsert_device("dev-1", "pi-a", "rpi4", {})
    store.upsert_device("dev-2", "pi-b", "rpi4", {})
    store.record_measurement(measurement(SHA_A, kind="rpi4", device="dev-1"))
    store.record_measurement(measurement(SHA_A, kind="rpi4", device="dev-2", settings={**SETTINGS, "threads": 2}))
    objectives = [parse_objective("accuracy:max"), parse_objective("latency@rpi4:min")]
    spec = RunSpec(space="demo", objectives=[], measured_with={"rpi4": {"runtime": "onnxruntime", "threads": 1}})
    assert [r["id"] for r in _device_rows(store, spec, objectives, [{"depth": 2, "width": 16}])] == ["dev-1"]


def test_a_report_finds_its_device_through_another_config_of_the_same_network(store):
    """An artifact is stored under the first config of its network that was exported; a run's config that
    differs only in a block its network does not build measured on the same device."""
    from fleetnas.report import _device_rows
    from fleetnas.search.objectives import parse_objective
    from fleetnas.supernets import get_supernet

    supernet = get_supernet("demo")
    exported = supernet.space.sample(1, 1)[0]
    unused = sorted(supernet.unused(exported))[0]
    other = {**exported, unused: next(v for v in supernet.space.variable(unused).choices if v != exported[unused])}
    store.put_artifact("c" * 64, "onnx", 100, "demo", exported)
    store.upsert_device("dev-1", "pi-a", "rpi4", {})
    store.record_measurement(measurement("c" * 64, kind="rpi4"))
    objectives = [parse_objective("accuracy:max"), parse_objective("latency@rpi4:min")]
    assert [r["id"] for r in _device_rows(store, DEMO_RUN, objectives, [other])] == ["dev-1"]


def test_old_accuracy_rows_go_to_the_one_evaluator_their_space_was_searched_with(tmp_path):
    """Before each evaluator kept its own values, all were "accuracy": the upgrade credits each space's rows to
    the evaluator its accuracy searches used, and sets aside those of a space searched with several."""
    path = tmp_path / "old.db"
    with SqliteStore(path, migrations=MIGRATIONS[:2]) as old:
        for space, accuracy, objectives in (("ofa_mbv3", "my:acc", ["accuracy:max", "latency@k:min"]),
                                            ("demo", None, ["accuracy:max", "macs:min"]),
                                            ("demo", "x:y", ["macs:min", "params:max"]),  # no accuracy objective
                                            ("vit", "a:b", ["accuracy:max", "macs:min"]),
                                            ("vit", "c:d", ["accuracy:max", "macs:min"])):
            old.create_run("random", {"space": space, "objectives": objectives, "accuracy": accuracy})
        for space in ("ofa_mbv3", "demo", "vit", "hat"):
            old.add_evaluation(space, {"depth": 2}, "accuracy", 0.5)
        old.add_evaluation("demo", {"depth": 2}, "top1", 0.4)
    with SqliteStore(path) as store:
        metrics = {(e.supernet, e.metric) for space in ("ofa_mbv3", "demo", "vit", "hat")
                   for e in store.evaluations(space)}
    assert metrics == {("ofa_mbv3", "accuracy:my:acc"), ("demo", "accuracy"), ("demo", "top1"),
                       ("vit", "accuracy:unattributed"), ("hat", "accuracy:unattributed")}


@pytest.mark.parametrize("read_only", [False, True])
def test_a_store_path_that_is_a_pipe_is_refused(tmp_path, read_only):
    """SQLite would answer "disk I/O error" and leave a journal beside a device (/dev/null-journal), or wait on a pipe."""
    import os
    pipe = tmp_path / "fleetnas.db"
    os.mkfifo(pipe)
    with pytest.raises(StoreError, match="is not a regular file"):
        open_store(pipe, read_only=read_only)
    assert [p.name for p in tmp_path.iterdir()] == ["fleetnas.db"]


def test_a_write_after_the_file_was_removed_under_the_store_is_refused_not_taken_as_stored(tmp_path):
    with SqliteStore(tmp_path / "s.db") as s:
        s.upsert_device("d1", "pi", "rpi4", {})
        for f in tmp_path.glob("s.db*"):  # `rm -rf` of its folder, say; SQLite keeps writing to the open file
            f.unlink()
        with pytest.raises(StoreError, match="s.db was removed or replaced while this process wrote to it"):
            s.upsert_device("d2", "pi", "rpi4", {})
    assert not list(tmp_path.glob("s.db*"))


def test_a_store_opened_by_a_relative_path_keeps_writing_after_the_process_changes_folder(tmp_path, monkeypatch):
    # An accuracy evaluator that changes into its data folder must not make the store look removed.
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    with SqliteStore("s.db") as s:
        s.upsert_device("d1", "pi", "rpi4", {})
        monkeypatch.chdir(tmp_path / "elsewhere")
        s.upsert_device("d2", "pi", "rpi4", {})
        assert s.device("d2") is not None
