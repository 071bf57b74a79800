"""`fleetnas runs` and `fleetnas report` at their edges: a --db the OS cannot look up, a run ending while listed."""
import errno
import json
import os
import pathlib

import numpy as np
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
        # (A resume first says which run it resumed.)
        assert "\nfleetnas: error: the store's " + problem in "\n" + err and "edited or damaged" in err
    assert not (tmp_path / "out").exists()


def test_stored_settings_that_are_no_search_run_are_named_on_resume(tmp_path, capsys):
    db = tmp_path / "edited.db"
    with open_store(db) as store:
        start_run(store, _spec())
    _damage(db, "runs", "settings", '{"space": "nb201", "objectives": [], "speed": "fast"}')
    assert main(["search", "--resume", "1", "--db", str(db)]) == 1
    assert "run 1's stored settings do not describe a search run" in capsys.readouterr().err


# ----- the report's figures, files and words ---------------------------------------------------------------
def _analytic_run(store, budget: int = 12, constraints=(), name=None) -> int:
    """A finished run on analytic objectives: no farm, no evaluator."""
    from fleetnas.search.live import LiveEvaluator
    from fleetnas.search.run import execute_run

    spec = RunSpec(space="demo", objectives=["macs:min", "params:max"], tactic="random", budget=budget,
                   constraints=list(constraints))
    run_id = start_run(store, spec, name=name)
    execute_run(store, run_id, LiveEvaluator("demo", spec.parsed_objectives()))
    return run_id


@pytest.mark.parametrize("x_dir, y_dir, where, corners", [
    ("min", "min", "post", [(2, 3), (3, 2)]),  # each corner worse in both than the points it joins
    ("min", "max", "post", [(2, 1), (3, 2)]),
    ("max", "min", "pre", [(1, 2), (2, 3)]),
    ("max", "max", "pre", [(1, 2), (2, 1)]),
])
def test_the_front_staircase_turns_on_the_dominated_side_for_every_pair_of_directions(x_dir, y_dir, where, corners):
    from fleetnas.report import staircase
    from fleetnas.search.objectives import parse_objective

    y = {"min": [3, 2, 1], "max": [1, 2, 3]}[y_dir] if x_dir == "min" else {"min": [1, 2, 3], "max": [3, 2, 1]}[y_dir]
    x = [1, 2, 3]
    xs, ys, got = staircase(np.array(x, float), np.array(y, float), parse_objective(f"x:{x_dir}"),
                            parse_objective(f"y:{y_dir}"))
    assert got == where and list(xs) == x and list(ys) == y
    # matplotlib's "post" holds y until the next x, "pre" takes the next y at once
    drawn = [(xs[k + 1], ys[k]) if where == "post" else (xs[k], ys[k + 1]) for k in range(2)]
    assert drawn == corners


def test_the_front_figure_draws_its_staircase_from_evaluations_that_meet_the_constraints(tmp_path, monkeypatch):
    import fleetnas.report as report
    from fleetnas.search.run import load_spec

    drawn = []
    real = report.staircase
    monkeypatch.setattr(report, "staircase", lambda x, *rest: drawn.append(x.copy()) or real(x, *rest))
    with open_store(tmp_path / "c.db") as store:
        run_id = _analytic_run(store, budget=16, constraints=["macs <= 400k"])
        report.write_report(store, run_id, tmp_path / "out")
        macs = [m.objectives["macs"] for m in store.run_members(run_id, "measured")]
        assert load_spec(store, run_id).constraints == ["macs <= 400k"]
    assert max(macs) > 4e5 and min(macs) <= 4e5  # some evaluations break it, some meet it
    assert len(drawn) == 1 and drawn[0].max() <= 4e5


@pytest.mark.parametrize("evaluations", [[1], [1, 2, 3], list(range(1, 201))])
def test_the_hypervolume_figure_ticks_whole_evaluations_only(monkeypatch, evaluations):
    from types import SimpleNamespace

    import fleetnas.report as report

    figures = []
    monkeypatch.setattr(report, "_png", figures.append)
    report._hypervolume_figure([SimpleNamespace(payload={"evaluations": n, "hv": n / 300}) for n in evaluations],
                               len(evaluations))
    ticks = figures[0].axes[0].get_xticks()
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks


def test_a_report_of_a_run_whose_every_evaluation_failed_says_so_in_its_figures(tmp_path, monkeypatch):
    """Empty axes around 0 would read as data, and "no hypervolume yet" as a run still going."""
    import fleetnas.report as report
    from fleetnas.search.objectives import parse_objective
    from fleetnas.search.run import StoreRecorder
    from fleetnas.supernets import get_supernet

    notes = []
    note_figure = report._note_figure
    monkeypatch.setattr(report, "_note_figure", lambda text: notes.append(text) or note_figure(text))
    with open_store(tmp_path / "f.db") as store:
        run_id = start_run(store, RunSpec(space="demo", objectives=["accuracy:max", "macs:min"], budget=2))
        recorder = StoreRecorder(store, run_id, [parse_objective("accuracy:max"), parse_objective("macs:min")])
        recorder.load()
        for i, config in enumerate(get_supernet("demo").space.sample(2, 0)):
            recorder.record_failure(i, config, "CUDA out of memory")
        recorder.finish()
        report.write_report(store, run_id, tmp_path / "out")
    assert notes == ["no evaluation gave values (2 failed): nothing to draw", "no hypervolume: no evaluation gave values"]
    assert (tmp_path / "out" / "front_0_1.png").is_file()


def test_reading_a_store_leaves_no_log_files_beside_it_but_keeps_those_another_process_uses(tmp_path, capsys):
    db = tmp_path / "s.db"
    with open_store(db) as store:
        _analytic_run(store, budget=4)
    logs = [tmp_path / "s.db-wal", tmp_path / "s.db-shm"]
    assert not any(log.exists() for log in logs)
    assert main(["runs", "--db", str(db)]) == 0 and "finished" in capsys.readouterr().out
    assert main(["report", "1", "--db", str(db), "--out", str(tmp_path / "r")]) == 0
    assert not any(log.exists() for log in logs)
    with open_store(db) as writer:  # another process's open store: its log files stay while it writes
        assert main(["runs", "--db", str(db)]) == 0
        assert all(log.exists() for log in logs)
        writer.add_run_event(1, "note", {"after": "a reader came and went"})
    with open_store(db, read_only=True) as reader:
        assert reader.run_events(1, "note")[0].payload == {"after": "a reader came and went"}


def test_the_report_is_utf8_and_whole_whatever_the_locale(tmp_path):
    import subprocess
    import sys

    db = tmp_path / "u.db"
    with open_store(db) as store:
        _analytic_run(store, name="τ-run é 实验")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = subprocess.run([sys.executable, "-m", "fleetnas.cli", "report", "1", "--db", str(db), "--out",
                           str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "τ-run é 实验" in (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert (tmp_path / "out" / "front.csv").read_text(encoding="utf-8").startswith("rank,macs,params,config")


def test_runs_shows_paths_and_names_as_they_are(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "300")
    for folder in ("exp [old]", "exp[/b]"):  # the second is "exp[" holding "b]": a closing tag in Rich markup
        (tmp_path / folder).mkdir(parents=True)
        with open_store(tmp_path / folder / "f.db") as store:
            start_run(store, _spec(), name="trail\\")
        assert main(["runs", "--db", str(tmp_path / folder / "f.db")]) == 0
        out = capsys.readouterr().out
        assert f"{folder}/f.db" in out and " trail\\ " in out and "trail\\\\" not in out


def test_a_run_is_updated_whenever_it_records_something(tmp_path):
    with open_store(tmp_path / "s.db") as store:
        run_id = start_run(store, _spec())
        [member] = store.add_run_members(run_id, [({"edge_1_0": "none"}, {"accuracy": 1.0, "latency": 2.0},
                                                   "measured")])
        assert store.run(run_id).updated_at == member.created_at
        event = store.add_run_event(run_id, "hypervolume", {"evaluations": 1, "hv": 0.0})
        assert store.run(run_id).updated_at == event.created_at


@pytest.mark.parametrize("objectives, problem", [
    ('{"macs": 3.0}', "has no value for 'params'"),
    ('{"macs": 3.0, "params": "big"}', "has 'big', not a finite number, for 'params'"),
    ('{"macs": 3.0, "params": NaN}', "has nan, not a finite number, for 'params'"),
])
def test_a_member_without_a_finite_value_is_named_by_report(tmp_path, capsys, objectives, problem):
    db = tmp_path / "m.db"
    with open_store(db) as store:
        _analytic_run(store)
    _damage(db, "run_members", "objectives", objectives)
    assert main(["report", "1", "--db", str(db), "--out", str(tmp_path / "out")]) == 1
    assert f"the store's run member 1 (run 1) {problem}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_report_with_an_empty_front_says_which_constraint_nothing_met(tmp_path):
    from fleetnas.report import write_report

    with open_store(tmp_path / "c.db") as store:
        run_id = _analytic_run(store, budget=6, constraints=["macs <= 1"])
        page = write_report(store, run_id, tmp_path / "out").read_text(encoding="utf-8")
    assert "<p>none</p>" in page and "none of 6 evaluations meets macs &lt;= 1" in page


def test_a_folder_the_report_cannot_use_is_refused_before_any_figure_is_drawn(tmp_path, monkeypatch):
    import fleetnas.report as report

    with open_store(tmp_path / "f.db") as store:
        run_id = _analytic_run(store, budget=4)
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("mine")
        monkeypatch.setattr(report, "_front_figure", lambda *a: pytest.fail("drew a figure for a folder it refuses"))
        with pytest.raises(report.ForeignFolder, match="notes.txt"):
            report.write_report(store, run_id, tmp_path / "mine")


def test_an_objective_alike_in_the_first_evaluations_is_scaled_by_its_magnitude():
    from fleetnas.search.hypervolume import Normaliser

    normaliser = Normaliser(np.array([5e6, 0.0, -2.0]), np.array([5e6, 0.0, 1.0]))
    assert list(normaliser.span) == [5e6, 1.0, 3.0]
    assert normaliser(np.array([2.5e6, 1.0, 1.0])).tolist() == [[-0.5, 1.0, 1.0]]


def test_a_report_shows_each_objective_in_a_unit_a_reader_knows():
    """Figures and the page's table show memory in MiB and latency in ms, each axis saying which way is
    better; front.csv keeps the stored units (bytes)."""
    from fleetnas.report import _shown_rows
    from fleetnas.search.objectives import parse_objective, shown

    objectives = [parse_objective(t) for t in ("accuracy:max", "latency@rpi4:min", "memory@rpi4:min", "macs:min")]
    assert [shown(o) for o in objectives] == [("accuracy, higher is better", 1.0),
                                              ("latency on rpi4 (ms), lower is better", 1.0),
                                              ("memory on rpi4 (MiB), lower is better", 2.0 ** -20),
                                              ("macs (M), lower is better", 1e-6)]
    row = {"rank": 1, "accuracy": 0.9, "latency@rpi4": 12.5, "memory@rpi4": 3 * 2 ** 20, "macs": 2.5e6,
           "config": "{}"}
    assert _shown_rows([row], objectives) == [{"rank": 1, "accuracy": 0.9, "latency@rpi4 (ms)": 12.5,
                                               "memory@rpi4 (MiB)": 3.0, "macs (M)": 2.5, "config": "{}"}]


def test_front_csv_and_json_name_the_unit_of_what_was_measured(tmp_path):
    import fleetnas.report as report
    from fleetnas.search.objectives import parse_objective
    from fleetnas.search.run import StoreRecorder
    from fleetnas.supernets import get_supernet

    names = ["accuracy:max", "latency@pi:min", "memory@pi:min", "macs:min"]
    with open_store(tmp_path / "u.db") as store:
        run_id = start_run(store, RunSpec(space="demo", objectives=names, budget=2))
        recorder = StoreRecorder(store, run_id, [parse_objective(n) for n in names])
        recorder.load()
        for i, config in enumerate(get_supernet("demo").space.sample(2, 0)):
            recorder.record(i, config, np.array([0.9 - i / 10, 2.0 + i, 3e6 - i, 1e5]))
        report.write_report(store, run_id, tmp_path / "out")
    head = (tmp_path / "out" / "front.csv").read_text(encoding="utf-8").splitlines()[0]
    assert head == "rank,accuracy,latency@pi (ms),memory@pi (bytes),macs,config"
    assert json.loads((tmp_path / "out" / "front.json").read_text())["units"] == {"latency@pi": "ms",
                                                                                "memory@pi": "bytes"}
