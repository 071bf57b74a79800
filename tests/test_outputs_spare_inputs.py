"""An output path that names one of the command's own inputs is refused before any work: writing it would
replace the store a run lives in, or the table a benchmark reads."""
import json
import os
import sqlite3

import pytest

from fleetnas.cli import main
from fleetnas.search.live import LiveEvaluator
from fleetnas.search.run import RunSpec, execute_run, start_run
from fleetnas.store import open_store
from fleetnas.supernets import get_supernet


def _finished_run(db) -> None:
    spec = RunSpec(space="demo", objectives=["macs:min", "params:max"], tactic="random", budget=3)
    with open_store(db) as store:
        execute_run(store, start_run(store, spec), LiveEvaluator("demo", spec.parsed_objectives()))


def _runs(db) -> int:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT COUNT(*) FROM runs").fetchone()[0]


def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own refusals
        return exc.code


@pytest.mark.parametrize("out", ["c.db", "c.db-wal", "./sub/../c.db", "link.db"])
def test_export_of_a_run_never_writes_over_the_runs_store(tmp_path, monkeypatch, capsys, out):
    monkeypatch.chdir(tmp_path)
    _finished_run("c.db")
    (tmp_path / "sub").mkdir()
    os.symlink("c.db", "link.db")
    before = (tmp_path / "c.db").read_bytes()
    code = _exit_code(["export", "--run", "1", "--db", "c.db", "--format", "spec", "--out", out])
    assert code == 2 and "is the run's store (c.db): writing there would replace it" in capsys.readouterr().err
    assert (tmp_path / "c.db").read_bytes() == before and _runs("c.db") == 1
    assert main(["export", "--run", "1", "--db", "c.db", "--format", "spec", "--out", "member.json"]) == 0


def test_export_never_writes_over_its_config_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = get_supernet("demo").space.sample(1, 0)[0]
    (tmp_path / "config.json").write_text(json.dumps(config))
    code = _exit_code(["export", "--space", "demo", "--config", "@config.json", "--format", "spec", "--out",
                       "config.json"])
    assert code == 2 and "is the --config file (config.json)" in capsys.readouterr().err
    assert json.loads((tmp_path / "config.json").read_text()) == config


@pytest.mark.parametrize("bench", [
    ["bench", "search", "--space", "nb201", "--key", "cellstr", "--objective", "acc:max", "--objective",
     "lat:min", "--tactic", "random", "--budget", "3", "--seeds", "1"],
    ["bench", "predictor", "--space", "nb201", "--key", "cellstr", "--target", "lat", "--train-size", "8",
     "--seeds", "1", "--models", "ridge"],
])
def test_a_benchmark_never_writes_its_json_over_its_table(tmp_path, monkeypatch, capsys, bench):
    monkeypatch.chdir(tmp_path)
    space = get_supernet("nb201").space
    rows = [f"{space.key(c)},{i / 20:.3f},{1 + i % 7}" for i, c in enumerate(space.sample(20, rng=1))]
    table = tmp_path / "t.csv"
    table.write_text("cellstr,acc,lat\n" + "\n".join(rows) + "\n")
    before = table.read_text()
    code = _exit_code(bench + ["--table", "t.csv", "--json", str(table)])
    assert code == 2 and "--json" in (err := capsys.readouterr().err) and "is the --table (t.csv)" in err
    assert table.read_text() == before
    assert main(bench + ["--table", "t.csv", "--json", "out.json"]) == 0 and (tmp_path / "out.json").exists()


def test_a_benchmark_whose_json_cannot_be_written_still_prints_its_figures(tmp_path, monkeypatch, capsys):
    import errno

    import fleetnas.export.artifact as artifact

    def full_disk(path, data, durable=False):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.chdir(tmp_path)
    table = tmp_path / "t.csv"
    space = get_supernet("nb201").space
    table.write_text("cellstr,acc,lat\n" + "".join(f"{space.key(c)},{i / 20:.3f},{1 + i % 7}\n"
                                                   for i, c in enumerate(space.sample(20, rng=1))))
    monkeypatch.setattr(artifact, "atomic_write", full_disk)  # a disk that fills while the benchmark runs
    code = main(["bench", "search", "--table", "t.csv", "--space", "nb201", "--key", "cellstr", "--objective",
                 "acc:max", "--objective", "lat:min", "--tactic", "random", "--budget", "3", "--seeds", "1",
                 "--json", "out.json"])
    out, err = capsys.readouterr()
    assert code == 1 and "evals to 95%" in out
    assert "cannot write --json out.json: No space left on device; the figures above are all" in err
