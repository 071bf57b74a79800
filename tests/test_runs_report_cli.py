"""`fleetnas runs` and `fleetnas report` at their edges: a --db the OS cannot look up, a run ending while listed."""
import errno
import json
import os
import pathlib

import pytest

from fleetnas.cli import main
from fleetnas.search.run import RunSpec, run_state, start_run
from fleetnas.store import StoreError, open_store

NAME_TOO_LONG = os.strerror(errno.ENAMETOOLONG)
ACCESS_DENIED = os.strerror(errno.EACCES)


def _spec() -> RunSpec:
    return RunSpec(space="nb201", objectives=["accuracy:max", "latency:min"], tactic="random", budget=5)


@pytest.fixture
def too_long(tmp_path):
    return tmp_path / ("x" * 300 + ".db")  # beyond NAME_MAX (255): every look-up fails with ENAMETOOLONG


@pytest.fixture
def unsearchable(tmp_path, monkeypatch):
    """A database in a folder this user may not search: stat fails with EACCES (simulated, since root may
    search any folder)."""
    folder = tmp_path / "private"
    real_stat = pathlib.Path.stat

    def stat(self, *args, **kwargs):
        if folder in self.parents:
            raise PermissionError(errno.EACCES, ACCESS_DENIED, str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "stat", stat)
    return folder / "fleet.db"


@pytest.mark.parametrize("db, reason", [("too_long", NAME_TOO_LONG), ("unsearchable", ACCESS_DENIED)])
def test_a_db_path_the_os_cannot_look_up_is_a_store_error_naming_it_and_the_reason(db, reason, request):
    path = request.getfixturevalue(db)
    for kw in ({"existing": True}, {"read_only": True}, {}):
        with pytest.raises(StoreError) as raised:
            open_store(path, **kw)
        assert str(raised.value).startswith(f"cannot open store {path}: {reason}")


@pytest.mark.parametrize("db, reason", [("too_long", NAME_TOO_LONG), ("unsearchable", ACCESS_DENIED)])
def test_runs_and_report_name_the_db_not_the_output_folder_when_the_os_refuses_it(db, reason, request, capsys):
    path = request.getfixturevalue(db)
    for command in (["runs"], ["report", "1"], ["report", "1", "--out", str(path.parent / "out")]):
        assert main([*command, "--db", str(path)]) == 1
        err = capsys.readouterr().err
        assert f"cannot open store {path}: {reason}" in err
        assert "cannot write the report" not in err


def test_a_run_that_finishes_while_it_is_listed_is_not_called_interrupted(tmp_path, monkeypatch, capsys):
    """`fleetnas runs` reads a run as running; its driver then stores its end and lets go of its lock before
    `runs` looks at the lock. The lock is free, yet the run was not interrupted."""
    db = tmp_path / "race.db"
    with open_store(db) as store:
        run_id = start_run(store, _spec())
        assert store.run(run_id).state == "running"

    def finished_just_now(path):
        with open_store(db) as driver:  # the driver's own connection, as its process has
            driver.set_run_state(run_id, "finished")
        return None  # and its lock is free

    monkeypatch.setattr("fleetnas.search.run.holder", finished_just_now)
    assert main(["runs", "--db", str(db), "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["state"] == "finished"


def test_run_state_reads_the_state_again_once_no_process_holds_the_lock(tmp_path):
    with open_store(tmp_path / "s.db") as store:
        stopped, ended = start_run(store, _spec()), start_run(store, _spec())
        read_before = store.run(ended)
        store.set_run_state(ended, "finished")  # it ended after it was read
        assert run_state(store, read_before) == "finished"
        assert run_state(store, store.run(stopped)) == "interrupted"  # stored as running, nothing drives it


def _damage(db, table: str, column: str, text: str) -> None:
    """Writes `text` into the first row's JSON column, as a hand edit or another tool would."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        conn.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = (SELECT min(rowid) FROM {table})", (text,))
    conn.close()


@pytest.mark.parametrize("table, column, text, problem", [
    ("runs", "settings", "{bad", "run 1: its settings is not valid JSON"),
    ("runs", "settings", "[1]", "run 1: its settings holds a JSON list, not an object"),
    ("run_events", "payload", "{bad", "run event 1: its payload is not valid JSON"),
])
def test_a_damaged_json_column_is_an_error_naming_the_row_in_runs_report_and_resume(
        tmp_path, capsys, table, column, text, problem):
    db = tmp_path / "edited.db"
    with open_store(db) as store:  # a run that resumes without a farm or an evaluator: analytic objectives
        run_id = start_run(store, RunSpec(space="demo", objectives=["macs:min", "params:max"], tactic="random",
                                          budget=5))
        store.add_run_event(run_id, "hypervolume", {"evaluated": 1, "hv": 0.5})
    _damage(db, table, column, text)
    for command in (["runs"], ["report", "1", "--out", str(tmp_path / "out")], ["search", "--resume", "1"]):
        assert main([*command, "--db", str(db)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("fleetnas: error: the store's " + problem) and "edited or damaged" in err
    assert not (tmp_path / "out").exists()


def test_stored_settings_that_are_no_search_run_are_named_on_resume(tmp_path, capsys):
    db = tmp_path / "edited.db"
    with open_store(db) as store:
        start_run(store, _spec())
    _damage(db, "runs", "settings", '{"space": "nb201", "objectives": [], "speed": "fast"}')
    assert main(["search", "--resume", "1", "--db", str(db)]) == 1
    assert "run 1's stored settings do not describe a search run" in capsys.readouterr().err
