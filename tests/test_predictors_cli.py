"""`fleetnas bench predictor` on small hand-made tables."""
import csv
import json

import numpy as np
import pytest

from fleetnas.cli import main
from fleetnas.supernets import get_supernet


@pytest.fixture
def nb201_table(tmp_path):
    """60 NB201 cells with a made-up latency: a cost per convolution plus a fixed part."""
    space = get_supernet("nb201").space
    path = tmp_path / "nb201.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cellstr", "lat_ms", "mem_mb"])
        for config in space.sample(60, rng=3):
            convs = sum(v.startswith("nor_conv") for v in config.values())
            w.writerow([space.key(config), 2.0 + 1.5 * convs, 10 + convs])
    return path


@pytest.fixture
def numeric_table(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "t.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "enc", "dec"])
        for a, b in rng.uniform(1, 2, (50, 2)):
            w.writerow([a, b, 3 * a + b, a * b])
    return path


def test_space_table_writes_every_test_row(nb201_table, tmp_path, capsys):
    out = tmp_path / "runs.json"
    assert main(["bench", "predictor", "--table", str(nb201_table), "--space", "nb201", "--key", "cellstr",
                 "--target", "lat_ms", "--train-size", "20", "--train-size", "40", "--seeds", "2",
                 "--models", "ridge", "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [(r["train_size"], r["seed"]) for r in runs] == [(20, 0), (20, 1), (40, 0), (40, 1)]
    first = runs[0]
    assert len(first["keys"]) == len(first["y_true"]) == len(first["y_pred"]) == 40
    assert first["keys"][0].startswith("|") and first["model"] == "ridge"
    assert set(first["metrics"]) == {"mape", "within_5", "within_10", "rmse", "kendall_tau"}
    # The latency is linear in the one-hot encoding: ridge recovers it.
    assert runs[-1]["metrics"]["within_10"] == 1.0
    assert "±10 %" in capsys.readouterr().out


def test_numeric_features_and_summed_target(numeric_table, tmp_path):
    out = tmp_path / "runs.json"
    assert main(["bench", "predictor", "--table", str(numeric_table), "--features", "a,b", "--target", "enc",
                 "--target-sum", "enc+dec", "--train-size", "30", "--seeds", "1", "--models", "ridge,svr",
                 "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["target"] for r in runs] == ["enc", "enc+dec"]
    rows = list(csv.DictReader(numeric_table.open()))
    summed = runs[1]
    k = summed["keys"][0]
    assert summed["y_true"][0] == pytest.approx(float(rows[k]["enc"]) + float(rows[k]["dec"]))


@pytest.mark.parametrize("args, message", [
    (["--features", ",", "--target", "enc"], "--features ',' names no column"),
    (["--features", "", "--target", "enc"], "--features '' names no column"),
    (["--space", "", "--target", "enc"], "--space is empty"),
    (["--features", "a,zz", "--target", "enc"], "no column 'zz'"),
    (["--features", "a", "--target", "nope"], "no column 'nope'"),
    (["--space", "nb201", "--target", "enc"], "--space needs --key"),
    (["--space", "nb201", "--key", "a", "--target", "enc"], "not an nb201 cellstr"),
    (["--features", "a", "--target", "enc", "--models", "forest"], "unknown model 'forest'"),
    (["--features", "a", "--target", "enc", "--models", ","], "--models ',' names no model"),
    (["--features", "a"], "at least one --target"),
])
def test_bad_arguments_are_named(numeric_table, capsys, args, message):
    code = main(["bench", "predictor", "--table", str(numeric_table), "--train-size", "10", *args])
    assert code != 0
    assert message in capsys.readouterr().err


def test_train_size_must_leave_test_rows(numeric_table, capsys):
    assert main(["bench", "predictor", "--table", str(numeric_table), "--features", "a", "--target", "enc",
                 "--train-size", "50"]) != 0
    assert "leaves no test rows" in capsys.readouterr().err


def test_targets_are_checked_before_any_fit(numeric_table, tmp_path, capsys):
    """A leaked target, a value that is not a number, an output that is a folder: refused before fitting."""
    base = ["bench", "predictor", "--table", str(numeric_table), "--train-size", "10", "--models", "ridge"]
    assert main([*base, "--features", "a,enc", "--target", "enc"]) != 0
    assert "--target enc is also a --features column" in capsys.readouterr().err
    rows = numeric_table.read_text().splitlines()
    rows[40] = rows[40].rsplit(",", 1)[0] + ",nan"
    poisoned = tmp_path / "poisoned.csv"
    poisoned.write_text("\n".join(rows) + "\n")
    assert main([*base[:2], "--table", str(poisoned), *base[4:], "--features", "a", "--target", "enc",
                 "--target", "dec"]) != 0
    err = capsys.readouterr().err
    assert "poisoned.csv line 41, column 'dec': 'nan' is not a finite number" in err and "seed 0" not in err
    with pytest.raises(SystemExit):  # refused by argparse, as every bad option value is
        main([*base, "--features", "a", "--target", "enc", "--json", str(tmp_path)])
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("column, factor, message", [
    ("enc", 1e306, "enc, 20 rows, seed 0: the target holds 7.9"),
    ("a", 1e160, "feature column 0 holds 1.9"),
])
def test_values_whose_squares_overflow_are_refused_by_name(numeric_table, tmp_path, capsys, column, factor, message):
    """Fitted as they were, the predictions came out infinite: a traceback from the metrics, or RMSE inf."""
    rows = list(csv.DictReader(numeric_table.open()))
    for row in rows:
        row[column] = repr(float(row[column]) * factor)
    huge = tmp_path / "huge.csv"
    with huge.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    code = main(["bench", "predictor", "--table", str(huge), "--features", "a,b", "--target", "enc",
                 "--train-size", "20", "--seeds", "1", "--models", "ridge"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert message in err and "beyond ±1e+150, where squares overflow a float; rescale it" in err


def test_a_metric_that_cannot_be_computed_is_null_in_the_json(tmp_path):
    """Kendall's tau of a constant truth is NaN, which json.dumps wrote as NaN: not JSON."""
    path = tmp_path / "flat.csv"
    path.write_text("a,flat\n" + "".join(f"{i},5\n" for i in range(30)))
    out = tmp_path / "runs.json"
    assert main(["bench", "predictor", "--table", str(path), "--features", "a", "--target", "flat",
                 "--train-size", "10", "--seeds", "1", "--models", "ridge", "--json", str(out)]) == 0
    text = out.read_text()
    assert "NaN" not in text and json.loads(text)["runs"][0]["metrics"]["kendall_tau"] is None
