"""The README's main job, end to end at a reduced budget: `fleetnas demo` on a fresh output folder."""
import json
import sqlite3
import subprocess
import sys

import pytest


def demo(out, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleetnas.cli", "demo", "--out", str(out), "--budget", "12",
                           "--samples", "6", *extra], capture_output=True, text=True, timeout=900)


def count(db, sql: str) -> int:
    with sqlite3.connect(db) as c:
        return c.execute(sql).fetchone()[0]


def test_demo_runs_the_whole_loop_and_a_second_run_measures_nothing_again(tmp_path):
    out = tmp_path / "demo"
    first = demo(out)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "best trade-offs" in first.stdout and "report:" in first.stdout
    db = out / "fleetnas.db"
    assert count(db, "SELECT COUNT(*) FROM run_members WHERE source = 'measured'") == 12
    assert count(db, "SELECT COUNT(*) FROM runs WHERE state = 'finished'") == 1
    assert count(db, "SELECT COUNT(*) FROM calibrations") >= 1
    measured = count(db, "SELECT COUNT(*) FROM measurements WHERE ok = 1")
    assert measured >= 12  # every search evaluation and the calibration sample were measured on the agent
    # The search learned latency and memory from the calibration's measurements too (6 sampled + 10 reference).
    with sqlite3.connect(db) as c:
        [(known,)] = c.execute("SELECT payload FROM run_events WHERE kind = 'known'").fetchall()
    assert {k.split("@")[0]: n for k, n in json.loads(known).items()} == {"latency": 16, "memory": 16}
    assert "also learned from what the store held before the run" in first.stderr
    with sqlite3.connect(db) as c:  # how it measured, which a resume on another inventory must match
        [(settings,)] = c.execute("SELECT settings FROM runs").fetchall()
    assert json.loads(settings)["measured_with"] == {"local-onnx-1t": {"runtime": "onnxruntime", "threads": 1}}
    report = out / "report-1"
    page = (report / "index.html").read_text()
    assert page.count("data:image/png;base64") >= 3 and "16 values of <b>latency@" in page
    assert (report / "front.csv").read_text().startswith("rank,accuracy,")
    again = demo(out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert count(db, "SELECT COUNT(*) FROM measurements WHERE ok = 1") == measured  # all from the store


def test_the_demo_never_overwrites_a_farm_inventory_nor_starts_what_it_cannot_finish(tmp_path):
    from fleetnas.demo import run_demo

    farm = tmp_path / "farm"
    farm.mkdir()
    (farm / "fleetnas.toml").write_text('[agents.pi]\naddress = "10.0.0.5:50051"\nkind = "rpi4"\n')
    with pytest.raises(ValueError, match="is not the demo's own inventory"):
        run_demo(farm, budget=5, calibration_samples=2, say=lambda _: None)
    assert "10.0.0.5" in (farm / "fleetnas.toml").read_text() and not (farm / "fleetnas.db").exists()
    with pytest.raises(ValueError, match="more than the"):  # refused before the agent starts and measures
        run_demo(tmp_path / "big", budget=10 ** 20, calibration_samples=2, say=lambda _: None)
    assert not (tmp_path / "big").exists()


def test_a_demo_out_that_is_a_file_is_refused_by_name(tmp_path, capsys):
    from fleetnas.cli import main

    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--out", str(tmp_path / "notes.txt")])
    assert exit_.value.code == 2 and "notes.txt is a file; give a folder" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_a_second_demo_in_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    from fleetnas.demo import run_demo
    from fleetnas.locks import Busy, exclusive

    (tmp_path / "out").mkdir()
    with exclusive(tmp_path / "out" / "demo.lock", "the first demo"):  # as the first demo's process holds it
        with pytest.raises(Busy, match="is being driven by process"):
            run_demo(tmp_path / "out", budget=5, calibration_samples=2, say=lambda _: None)
    assert not (tmp_path / "out" / "fleetnas.db").exists()


def test_a_demo_replays_a_run_stored_before_a_setting_existed(tmp_path):
    """A store from an earlier version lacks newer settings (measured_with): its demo run is still the one."""
    from fleetnas.demo import _resumable_run
    from fleetnas.search.run import RunSpec
    from fleetnas.store import open_store

    spec = RunSpec(space="demo", objectives=["accuracy:max", "macs:min"], budget=5,
                   measured_with={"local-onnx-1t": {"runtime": "onnxruntime", "threads": 1}})
    with open_store(tmp_path / "old.db") as store:
        older = {k: v for k, v in spec.__dict__.items() if k != "measured_with"}
        old_run = store.create_run(spec.tactic, older).id
        assert _resumable_run(store, spec) == old_run
        other = RunSpec(**{**spec.__dict__, "measured_with": {"local-onnx-1t": {"runtime": "onnxruntime",
                                                                                 "threads": 2}}})
        store.create_run(other.tactic, other.__dict__)
        assert _resumable_run(store, spec) == old_run  # a run measured otherwise is not this one
