"""`fleetnas predict`: a kind's calibrated predictors asked about configs, without a device."""
import json

import pytest

from fleetnas.calibrate import latest_predictor, refit
from fleetnas.cli import main
from fleetnas.predictors.features import config_features
from fleetnas.store import SqliteStore

from test_calibrate_fit import KIND, SETTINGS, SUPERNET, record, true_latency_ms


@pytest.fixture
def calibrated(tmp_path):
    """A store whose demo space was calibrated on KIND from 40 measurements of a known latency."""
    db = tmp_path / "fleet.db"
    with SqliteStore(db) as store:
        for config in SUPERNET.space.latin_hypercube(40, 5):
            record(store, config, true_latency_ms(config))
        refit(store, "demo", KIND, SETTINGS, reason="requested", sample={"n": 40, "seed": 5}, models="ridge")
    return db


def test_predict_gives_each_config_the_calibrated_latency_and_memory(calibrated, tmp_path, capsys):
    small, large = (SUPERNET.space.validate({**SUPERNET.space.sample(1, 1)[0], "resolution": r,
                                             **{f"depth_s{s}": d for s in (1, 2, 3)}}) for r, d in ((8, 1), (16, 3)))
    (tmp_path / "large.json").write_text(json.dumps(large))
    assert main(["predict", "--space", "demo", "--device-kind", KIND, "--db", str(calibrated), "--json",
                 "--config", json.dumps(small), "--config", f"@{tmp_path / 'large.json'}"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["calibration"]["id"] == 1 and out["calibration"]["latency_ms"]["rows"] == 40
    assert [p["config"] for p in out["predictions"]] == [small, large]
    with SqliteStore(calibrated) as store:  # what the calibration's own predictors say, as the API gives them
        X = config_features(SUPERNET, [small, large])[0]
        expected = {m: latest_predictor(store, "demo", KIND, m).predict_dist(X) for m in ("latency_ms", "peak_bytes")}
    for m, (mean, std) in expected.items():
        assert [p[m]["mean"] for p in out["predictions"]] == pytest.approx(mean.tolist())
        assert [p[m]["std"] for p in out["predictions"]] == pytest.approx(std.tolist())
    small_p, large_p = out["predictions"]
    assert small_p["latency_ms"]["mean"] < large_p["latency_ms"]["mean"]  # 0.14 ms against 0.34 ms, measured
    assert main(["predict", "--space", "demo", "--device-kind", KIND, "--db", str(calibrated), "--sample", "2"]) == 0
    table = capsys.readouterr().out
    assert "latency ms" in table and "memory MiB" in table and "from calibration 1 of" in table
    assert "ridge on 40 measurements" in table


@pytest.mark.parametrize("args, message", [
    (["--device-kind", "rpi5"], "demo has not been calibrated on rpi5: run `fleetnas calibrate --space demo "
                                "--device-kind rpi5"),
    (["--config", '{"resolution": 8}'], "bad config for demo: demo config lacks depth_s1"),
    (["--config", "@missing.json"], "cannot read --config file 'missing.json'"),
    (["--space", "resnet9000"], "unknown space 'resnet9000'"),
    (["--db", "elsewhere.db"], "no store at elsewhere.db"),
])
def test_predict_refuses_what_it_cannot_answer_by_name(calibrated, capsys, monkeypatch, tmp_path, args, message):
    monkeypatch.chdir(tmp_path)
    base = {"--space": "demo", "--device-kind": KIND, "--db": str(calibrated), "--sample": "1"}
    given = dict(zip(args[::2], args[1::2]))
    if "--config" in given:
        del base["--sample"]
    argv = ["predict", *[x for k, v in {**base, **given}.items() for x in (k, v)]]
    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_predict_warns_of_a_change_a_watch_found_after_the_calibration_and_did_not_refit(calibrated, capsys):
    # A watch stopped between marking the drift and refitting: the latest calibration predates the change.
    from fleetnas.calibrate.calibration import space_reference
    from fleetnas.store import NewReferenceRound

    argv = ["predict", "--space", "demo", "--device-kind", KIND, "--db", str(calibrated), "--sample", "1", "--json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["calibration"]["changed_since"] == {} and "warning" not in err
    with SqliteStore(calibrated) as store:
        calibration = store.latest_calibration("demo", KIND)
        store.add_reference_round(NewReferenceRound(
            "demo", KIND, "a0", "dev-1", "onnxruntime", calibration.settings_hash,
            space_reference(SUPERNET.space).digest, "baseline", [],
            verdict={"drift": True, "changed": True, "reason": "median +42.0 % over 10 configs"}))
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["calibration"]["changed_since"]["a0"]["reason"] == "median +42.0 % over 10 configs"
    assert ("warning: a0 changed after calibration 1 (median +42.0 % over 10 configs), which has not been refitted "
            "since") in err and f"--device-kind {KIND} --watch --db {calibrated}` refits it" in err
