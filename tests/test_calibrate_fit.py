"""Fitting from the store (throttled rows left out), calibration records, and the command's usage errors.

The measurements here are written through the store's API (no agents): what is tested is what the
calibration does with them. tests/test_calibrate_live.py measures for real.
"""
import dataclasses
import hashlib
import json
import shutil

import numpy as np
import pytest

from fleetnas.calibrate import CalibrationError, latest_predictor, refit, training_set, watch
from fleetnas.calibrate.watch import watch_lock
from fleetnas.cli import main
from fleetnas.cli.calibrate import duration_s
from fleetnas.farm import AgentEntry, Farm, Inventory
from fleetnas.predictors import load_predictor
from fleetnas.predictors.features import config_features
from fleetnas.store import NewMeasurement, NewReferenceRound, SqliteStore, StoreError, settings_hash
from fleetnas.supernets import get_supernet

KIND = "cpu-synthetic"
SETTINGS = {"runtime": "onnxruntime", "threads": 1, "stopping": {"min_runs": 5}, "seed": 0}
SUPERNET = get_supernet("demo")


def true_latency_ms(config: dict) -> float:
    """A cost that grows with resolution and depth, as a real sub-network's does."""
    return 0.01 * config["resolution"] + 0.02 * sum(config[f"depth_s{s}"] for s in (1, 2, 3))


def record(store, config, latency_ms, throttled=False, agent="a0", settings=SETTINGS):
    sha = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    store.put_artifact(sha, "onnx", 1000, "demo", config)
    store.record_measurement(NewMeasurement(
        device_id="dev-1", device_kind=KIND, artifact=sha, runtime=settings["runtime"], settings=settings, ok=True,
        stats={"median": latency_ms, "rel_ci_half_width": 0.01},
        memory={"peak_bytes": int(2**20 * (4 + latency_ms)), "measured": True},
        env={"throttled": throttled}, detail={"runtime_version": "1.32.0"}, agent=agent))


@pytest.fixture
def store(tmp_path):
    """32 measurements of demo sub-networks, 8 of them taken while throttled (3x slower)."""
    with SqliteStore(tmp_path / "fleet.db") as s:
        for i, config in enumerate(SUPERNET.space.latin_hypercube(32, 5)):
            throttled = i % 4 == 0
            record(s, config, true_latency_ms(config) * (3.0 if throttled else 1.0), throttled)
        yield s


def test_throttled_measurements_are_left_out_of_fitting_unless_asked(store, tmp_path):
    configs, y, throttled = training_set(store, "demo", KIND, "onnxruntime", settings_hash(SETTINGS), "latency_ms")
    assert len(y) == 24 and throttled == 8
    assert np.allclose(y, [true_latency_ms(c) for c in configs])  # only the honest rows
    result = refit(store, "demo", KIND, SETTINGS, reason="requested", sample={"n": 32, "seed": 5},
                   out_dir=tmp_path / "p", models="ridge")
    fit = result.fits["latency_ms"]
    assert fit.rows == 24 and fit.excluded_throttled == 8 and fit.model == "ridge"
    assert load_predictor(fit.predictor_path).training["rows"] == 24
    everything = refit(store, "demo", KIND, SETTINGS, reason="requested", sample={"n": 32, "seed": 5},
                       out_dir=tmp_path / "q", models="ridge", include_throttled=True)
    assert everything.fits["latency_ms"].rows == 32 and everything.fits["latency_ms"].excluded_throttled == 0
    # the throttled rows are 3x off: fitting on them makes the predictor worse at what the device really does
    assert everything.fits["latency_ms"].cv_metrics["mape"] > fit.cv_metrics["mape"]


def test_a_refit_writes_predictors_and_a_parity_png_and_records_the_calibration(store, tmp_path):
    result = refit(store, "demo", KIND, SETTINGS, reason="drift", sample={"n": 32, "seed": 5},
                   out_dir=tmp_path / "p", models="ridge", evidence={"a0": {"median_change": 0.2}})
    assert result.plot_path.parent == tmp_path / "p" / "demo" / KIND
    assert result.plot_path.name.startswith("parity-") and result.plot_path.suffix == ".png"
    assert store.calibrations("demo", KIND)[0].result["plot"] == str(result.plot_path)
    assert result.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(result.fits) == {"latency_ms", "peak_bytes"}
    [calibration] = store.calibrations("demo", KIND)
    assert calibration.id == result.calibration_id and calibration.reason == "drift"
    assert calibration.settings == SETTINGS and calibration.settings_hash == settings_hash(SETTINGS)
    assert calibration.result["sample"] == {"n": 32, "seed": 5}
    assert calibration.result["evidence"] == {"a0": {"median_change": 0.2}}
    assert calibration.result["metrics"]["latency_ms"]["cv"]["mape"] == pytest.approx(
        result.fits["latency_ms"].cv_metrics["mape"])
    predictor = latest_predictor(store, "demo", KIND, "latency_ms")
    unseen = SUPERNET.space.latin_hypercube(10, 99)
    X, names = config_features(SUPERNET, unseen)
    assert predictor.feature_spec["columns"] == names and predictor.feature_spec["device_kind"] == KIND
    truth = np.array([true_latency_ms(c) for c in unseen])
    assert np.mean(np.abs(predictor.predict(X) / truth - 1)) < 0.2
    with pytest.raises(CalibrationError, match="demo has not been calibrated on other-kind"):
        latest_predictor(store, "demo", "other-kind")


def test_too_few_usable_measurements_is_a_clear_error(tmp_path):
    with SqliteStore(tmp_path / "few.db") as s:
        for i, config in enumerate(SUPERNET.space.latin_hypercube(5, 1)):
            record(s, config, true_latency_ms(config), throttled=i < 2)
        with pytest.raises(CalibrationError, match=r"only 3 usable latency_ms measurements of demo on "
                                                   r"cpu-synthetic \(2 more left out as throttled\)"):
            refit(s, "demo", KIND, SETTINGS, reason="requested", sample={"n": 5, "seed": 1},
                  out_dir=tmp_path / "p")


def test_stale_marking_by_agent_and_the_calibration_tables(store):
    for config in SUPERNET.space.latin_hypercube(3, 77):
        record(store, config, 1.0, agent="a1")
    assert store.mark_stale(KIND, agent="a1") == 3
    assert all(m.agent == "a0" for m in store.measurements(device_kind=KIND))
    new = NewReferenceRound("demo", KIND, "a0", "dev-1", "onnxruntime", "h" * 64, "digest", "baseline",
                            [{"key": "k", "ok": True, "median_ms": 1.0}], {"runtime_version": "1.32.0"})
    first = store.add_reference_round(new)
    store.add_reference_round(NewReferenceRound(**{**new.__dict__, "role": "check", "verdict": {"drift": False}}))
    assert [r.role for r in store.reference_rounds("demo", KIND, agent="a0")] == ["baseline", "check"]
    [baseline] = store.reference_rounds("demo", KIND, role="baseline", reference="digest")
    assert baseline == first and baseline.entries[0]["median_ms"] == 1.0 and baseline.created_at > 0
    assert store.reference_rounds("demo", KIND, agent="a1") == []
    third = store.add_reference_round(NewReferenceRound(**{**new.__dict__, "role": "check"}))
    assert [r.id for r in store.reference_rounds("demo", KIND, latest=2)] == [third.id - 1, third.id]  # oldest first
    assert store.reference_rounds("demo", KIND, role="baseline", latest=1) == [first]
    with pytest.raises(StoreError, match="role must be one of baseline, check, got 'spare'"):
        store.add_reference_round(NewReferenceRound(**{**new.__dict__, "role": "spare"}))
    with pytest.raises(StoreError, match="reason must be one of requested, drift, version, got 'whim'"):
        store.add_calibration("demo", KIND, "onnxruntime", SETTINGS, "whim", {})


def test_watching_needs_a_calibration_first(store, tmp_path):
    farm = Farm(Inventory(tmp_path / "f.toml", [AgentEntry("a0", "127.0.0.1:9", KIND)]), store)
    with pytest.raises(CalibrationError, match="demo has not been calibrated on cpu-synthetic yet: run "
                                               "`fleetnas calibrate --space demo"):
        next(watch(farm, farm.store, "demo", KIND, interval_s=0, rounds=1))


def test_one_watch_at_a_time_per_space_kind_and_store(store, tmp_path):
    farm = Farm(Inventory(tmp_path / "f.toml", [AgentEntry("a0", "127.0.0.1:9", KIND)]), store)
    with watch_lock(store, "demo", KIND):  # another watch of the same, as a second process would hold it
        with pytest.raises(CalibrationError, match=r"a watch of demo on cpu-synthetic is being driven by process "
                                                   r"\d+; stop that one first"):
            next(watch(farm, farm.store, "demo", KIND, interval_s=0, rounds=1))
    # A watch of another kind does not stand in the way, nor does a finished one: this one gets to its checks.
    with watch_lock(store, "demo", "another-kind"):
        with pytest.raises(CalibrationError, match="demo has not been calibrated on cpu-synthetic yet"):
            next(watch(farm, farm.store, "demo", KIND, interval_s=0, rounds=1))


def test_a_watch_that_starts_with_a_calibration_is_refused_before_measuring(inventory, tmp_path, capsys):
    with SqliteStore(tmp_path / "x.db") as s, watch_lock(s, "demo", KIND):
        # Nobody answers at 127.0.0.1:9: refused for the watch, not (after trying to measure) for the agent.
        assert cli(inventory, tmp_path, "--samples", "2", "--watch", "--rounds", "1", "--give-up", "1") == 1
    assert "a watch of demo on cpu-synthetic is being driven by process" in capsys.readouterr().err


def test_watch_locks_of_different_pairs_never_share_a_file(store):
    with watch_lock(store, "vit", "rpi4-ort-1t"), watch_lock(store, "ort-1t-vit", "rpi4"):
        pass


@pytest.mark.parametrize("text, seconds", [("90", 90.0), ("30s", 30.0), ("10m", 600.0), ("1.5h", 5400.0),
                                           ("1d", 86400.0), ("0", 0.0)])
def test_durations(text, seconds):
    assert duration_s(text) == seconds


@pytest.fixture
def inventory(tmp_path):
    path = tmp_path / "farm.toml"
    Inventory(path, [AgentEntry("a0", "127.0.0.1:9", KIND)]).save()  # nobody listens there: nothing may be measured
    return path


@pytest.mark.parametrize("args, message", [
    ([], "give --samples N"),
    (["--samples", "5", "--space", "nb201"], "nb201 is a table-only space"),
    (["--samples", "5", "--space", "nosuchspace"], "unknown space 'nosuchspace'"),
    (["--samples", "5", "--device-kind", "gpu"], "no agent of kind 'gpu'"),
    (["--watch", "--min-runs", "3"], "the stopping rule belongs to a calibration"),
    (["--watch"], "demo has not been calibrated on cpu-synthetic yet"),
    (["--samples", "5", "--min-runs", "-1"], "--min-runs must not be negative, got -1"),
    (["--watch", "--interval", "ten minutes"], "'ten minutes' is not a duration"),
    (["--watch", "--threshold", "150%"], "must be between 0 and 1"),
])
def test_usage_errors_name_the_bad_value(inventory, tmp_path, capsys, args, message):
    base = ["calibrate", "--space", "demo", "--device-kind", KIND, "--inventory", str(inventory),
            "--db", str(tmp_path / "x.db")]
    argv = base + args
    for flag in ("--space", "--device-kind"):  # a later flag overrides the base's
        if argv.count(flag) == 2:
            i = argv.index(flag)
            del argv[i:i + 2]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code != 0
    assert message in capsys.readouterr().err


# ----- predictor files stay what their calibration recorded --------------------------------------------
def fit_rows(store, out_dir=None, **options):
    return refit(store, "demo", KIND, SETTINGS, reason="requested", sample={"n": 1, "seed": 0}, out_dir=out_dir,
                 models="ridge", **options)


def filled_store(path, n, seed):
    s = SqliteStore(path)
    for config in SUPERNET.space.latin_hypercube(n, seed):
        record(s, config, true_latency_ms(config))
    return s


def test_two_stores_in_one_folder_keep_their_own_predictors(tmp_path):
    # Both calibrate into the default folder, predictors/ beside their databases.
    with filled_store(tmp_path / "one.db", 15, 0) as one, filled_store(tmp_path / "two.db", 14, 1) as two:
        first = fit_rows(one)
        second = fit_rows(two)
        assert first.fits["latency_ms"].predictor_path.parent == second.fits["latency_ms"].predictor_path.parent
        for metric in ("latency_ms", "peak_bytes"):
            assert latest_predictor(one, "demo", KIND, metric).training["rows"] == 15
            assert latest_predictor(two, "demo", KIND, metric).training["rows"] == 14
        assert first.plot_path != second.plot_path and first.plot_path.is_file()


def test_a_calibration_that_fails_after_writing_a_file_leaves_the_recorded_ones_alone(store, tmp_path, monkeypatch):
    fit_rows(store, tmp_path / "p")
    recorded = {p: p.read_bytes() for p in (tmp_path / "p").rglob("*") if p.is_file()}
    for config in SUPERNET.space.latin_hypercube(6, 42):  # new rows: the next fit differs
        record(store, config, true_latency_ms(config))

    def broken_plot(*args, **kwargs):
        raise RuntimeError("killed after the predictors were written")
    monkeypatch.setattr("fleetnas.calibrate.plot.parity_plot", broken_plot)
    with pytest.raises(RuntimeError):
        fit_rows(store, tmp_path / "p")
    assert {p: p.read_bytes() for p in recorded} == recorded
    assert latest_predictor(store, "demo", KIND).training["rows"] == 24


def test_a_predictor_file_changed_since_it_was_recorded_is_refused(store, tmp_path):
    from fleetnas.calibrate.calibration import _recorded_predictor

    fit = fit_rows(store, tmp_path / "p").fits["latency_ms"]
    recorded = store.latest_calibration("demo", KIND).result["metrics"]["latency_ms"]
    assert recorded["sha256"] == hashlib.sha256(fit.predictor_path.read_bytes()).hexdigest()
    other = fit_rows(store, tmp_path / "q", include_throttled=True).fits["latency_ms"].predictor_path
    fit.predictor_path.write_bytes(other.read_bytes())  # what one shared file name used to allow
    with pytest.raises(CalibrationError, match="latency_ms predictor .* has been changed since it was recorded"):
        _recorded_predictor(1, recorded)


def test_a_store_moved_with_its_predictors_folder_keeps_its_calibrations(tmp_path):
    (tmp_path / "farm").mkdir()
    with filled_store(tmp_path / "farm" / "fleet.db", 15, 0) as s:
        rows = fit_rows(s).fits["latency_ms"].rows  # into farm/predictors/, recorded by absolute path
    (tmp_path / "farm").rename(tmp_path / "workstation")
    with SqliteStore(tmp_path / "workstation" / "fleet.db") as s:
        assert latest_predictor(s, "demo", KIND).training["rows"] == rows
        for file in (tmp_path / "workstation" / "predictors").rglob("*.json"):
            file.write_bytes(file.read_bytes().replace(b'"rows"', b'"rows" '))  # same name, other content
        with pytest.raises(CalibrationError, match="has been changed since it was recorded"):
            latest_predictor(s, "demo", KIND)
        shutil.rmtree(tmp_path / "workstation" / "predictors")
        with pytest.raises(CalibrationError, match=r"predictor latency_ms-\w+\.json is not in .*farm/predictors/demo/"
                                                   r"cpu-synthetic nor in .*workstation/predictors/demo/cpu-synthetic "
                                                   r"\(copy the store's predictors/"):
            latest_predictor(s, "demo", KIND)


def test_a_calibration_recorded_before_files_had_digests_still_loads(store, tmp_path):
    result = fit_rows(store, tmp_path / "p")
    old = json.loads(json.dumps(store.latest_calibration("demo", KIND).result))
    for fit in old["metrics"].values():
        del fit["sha256"]
    store.add_calibration("demo", KIND, "onnxruntime", SETTINGS, "requested", old)
    assert latest_predictor(store, "demo", KIND).training["rows"] == result.fits["latency_ms"].rows


# ----- a true value of 0 (peak memory) -------------------------------------------------------------------
def test_mape_leaves_out_zero_truths_and_is_nan_when_all_are_zero():
    from fleetnas.predictors.metrics import figure, regression_metrics

    m = regression_metrics([0.0, 1.0, 2.0], [0.5, 1.05, 2.0])
    assert m["mape"] == pytest.approx(2.5) and m["within_10"] == pytest.approx(2 / 3)  # the zero still misses
    assert np.isnan(regression_metrics([0.0, 0.0], [0.0, 1.0])["mape"])
    assert figure(None) == "n/a" and figure(float("nan")) == "n/a" and figure(1.234) == "1.23"


def test_a_stored_peak_of_zero_bytes_neither_crashes_the_fit_nor_its_summary(store, tmp_path):
    from fleetnas.cli.calibrate import format_calibration

    config = SUPERNET.space.latin_hypercube(1, 123)[0]
    sha = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    store.put_artifact(sha, "onnx", 1000, "demo", config)
    store.record_measurement(NewMeasurement(
        device_id="dev-1", device_kind=KIND, artifact=sha, runtime="onnxruntime", settings=SETTINGS, ok=True,
        stats={"median": 1.0, "rel_ci_half_width": 0.01}, memory={"peak_bytes": 0, "measured": True},
        env={"throttled": False}, detail={"runtime_version": "1.32.0"}, agent="a0"))
    result = fit_rows(store, tmp_path / "p")
    assert np.isfinite(result.fits["peak_bytes"].cv_metrics["mape"])
    # A figure that cannot be computed (stored as null) reads n/a, in the summary and the plot.
    fits = {m: dataclasses.replace(f, cv_metrics={**f.cv_metrics, "mape": None, "kendall_tau": None})
            for m, f in result.fits.items()}
    text = format_calibration(dataclasses.replace(result, fits=fits), 1)
    assert "CV MAPE n/a %" in text and "Kendall τ n/a" in text
    assert result.summary()["peak_bytes"]["cv_mape_pct"] is not None
    assert dataclasses.replace(result, fits=fits).summary()["peak_bytes"]["cv_mape_pct"] is None
    from fleetnas.calibrate.plot import parity_plot
    panels = [("peak_bytes", np.array([0.0, 1.0]), np.array([0.5, 1.0]), {"mape": None, "within_10": None})]
    assert parity_plot(tmp_path / "n.png", panels, "t").is_file()


# ----- refused up front -------------------------------------------------------------------------------
def test_an_alpha_the_reference_set_cannot_reach_is_refused_naming_the_smallest(store, tmp_path):
    from fleetnas.calibrate import REFERENCE_SIZE, min_pairs
    from fleetnas.calibrate.drift import smallest_alpha

    assert min_pairs(smallest_alpha(REFERENCE_SIZE)) == REFERENCE_SIZE == 10
    farm = Farm(Inventory(tmp_path / "f.toml", [AgentEntry("a0", "127.0.0.1:9", KIND)]), store)
    with pytest.raises(CalibrationError, match=r"the smallest usable alpha is 0\.001953125"):
        next(watch(farm, farm.store, "demo", KIND, interval_s=0, rounds=1, alpha=0.001))


def cli(inventory, tmp_path, *args):
    try:
        return main(["calibrate", "--space", "demo", "--device-kind", KIND, "--inventory", str(inventory),
                     "--db", str(tmp_path / "x.db"), *args])
    except SystemExit as exc:  # argparse's own errors
        return exc.code


@pytest.mark.parametrize("args, message", [
    (["--watch", "--alpha", "0.001"], "--alpha: alpha 0.001 needs 11 reference configs to ever detect drift, but "
                                      "the reference set has 10: the smallest usable alpha is 0.001953125"),
    (["--samples", "1000000000"], "--samples: must be from 1 to 100,000, got 1000000000"),
    (["--samples", "2", "--out-dir", "{file}/sub", "--give-up", "5"],
     "--out-dir {file}/sub cannot be written to: Not a directory"),
], ids=["alpha", "samples", "out-dir"])
def test_calibrate_refuses_before_measuring_or_opening_the_database(inventory, tmp_path, capsys, args, message):
    args = [a.replace("{file}", str(inventory)) for a in args]
    assert cli(inventory, tmp_path, *args) == 2
    assert message.replace("{file}", str(inventory)) in capsys.readouterr().err
    assert not (tmp_path / "x.db").exists()


def test_the_smallest_usable_alpha_is_accepted(inventory, tmp_path, capsys):
    assert cli(inventory, tmp_path, "--watch", "--alpha", "0.001953125") == 1
    assert "demo has not been calibrated on cpu-synthetic yet" in capsys.readouterr().err


def test_an_unwritable_default_predictors_folder_is_refused_before_measuring(inventory, tmp_path, capsys):
    (tmp_path / "predictors").write_text("a file where the folder goes\n")
    assert cli(inventory, tmp_path, "--samples", "2", "--give-up", "5") == 2
    assert "the predictors' folder (--out-dir)" in capsys.readouterr().err


def test_a_failure_to_write_the_predictors_is_a_calibration_error(store, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CalibrationError, match="cannot write the predictors to .*file/p: Not a directory"):
        fit_rows(store, tmp_path / "file" / "p")


def test_calibrate_refuses_at_once_when_no_agent_of_the_kind_answers(inventory, tmp_path, capsys):
    # Nobody listens on 127.0.0.1:9. Without the check each batch would wait --give-up for an agent.
    assert cli(inventory, tmp_path, "--samples", "2", "--give-up", "5") == 1
    assert f"no agent of kind '{KIND}' answers: a0 at 127.0.0.1:9: UNAVAILABLE" in capsys.readouterr().err
    # What it made for the calibration it could not make, the store and the predictors' folder, is gone.
    assert not list(tmp_path.glob("x.db*")) and not (tmp_path / "predictors").exists()
    (tmp_path / "predictors").mkdir()
    assert cli(inventory, tmp_path, "--samples", "2", "--give-up", "5") == 1
    assert (tmp_path / "predictors").is_dir()  # a folder that was there stays
    # Folders made on the way to the store and to --out-dir go too.
    assert main(["calibrate", "--space", "demo", "--device-kind", KIND, "--inventory", str(inventory), "--samples",
                 "2", "--give-up", "5", "--db", str(tmp_path / "new" / "deep" / "x.db"),
                 "--out-dir", str(tmp_path / "out" / "deep" / "p")]) == 1
    assert not (tmp_path / "new").exists() and not (tmp_path / "out").exists()


def test_a_watch_keeps_going_while_every_agent_of_its_kind_is_down(inventory, tmp_path, caplog, capsys):
    # A watcher started while the device reboots (by systemd, say) waits for it round after round; only once
    # its last round has passed without reaching one does it fail, as a calibration that measured nothing does.
    with filled_store(tmp_path / "x.db", 16, 5) as s:
        fit_rows(s, tmp_path / "p")
    caplog.set_level("INFO", logger="fleetnas.calibrate")
    assert cli(inventory, tmp_path, "--watch", "--rounds", "2", "--interval", "0", "--give-up", "1", "--json") == 1
    assert caplog.text.count("trying again next round") == 2 and len(capsys.readouterr().out.splitlines()) == 2


def test_a_sample_that_mostly_failed_is_an_error_and_records_no_calibration(store, tmp_path):
    # A calibration (or a watch's refit) whose sample could not be measured would otherwise be fitted on the
    # reference set alone and become the kind's latest, used by every search.
    from fleetnas.calibrate.calibration import measure_sample

    farm = Farm(Inventory(tmp_path / "f.toml", [AgentEntry("a0", "127.0.0.1:9", KIND)]), store, give_up_s=0.5)
    with farm:
        with pytest.raises(CalibrationError, match="^3 of 3 sampled sub-networks failed, so no calibration was "
                                                   "recorded; first: .*a0"):
            measure_sample(farm, "demo", KIND, SUPERNET.space.latin_hypercube(3, 0), None)
        assert store.latest_calibration("demo", KIND) is None


def test_a_calibration_that_a_watch_follows_prints_the_first_of_its_json_lines(store, tmp_path, capsys):
    import argparse

    from fleetnas.cli.calibrate import print_calibration

    result = fit_rows(store, tmp_path / "p")
    print_calibration(result, argparse.Namespace(json=True, watch=True, samples=1))
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1 and json.loads(out)["calibration_id"] == result.calibration_id
    print_calibration(result, argparse.Namespace(json=True, watch=False, samples=1))  # alone: one indented document
    assert json.loads(capsys.readouterr().out)["calibration_id"] == result.calibration_id
