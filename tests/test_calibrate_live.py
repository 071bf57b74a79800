"""Calibration against a real agent process on 127.0.0.1: the command end to end, quiet rounds, a version
change, and a real slowdown to four times the latency (the agent restarted with --test-slowdown 3.0).

One calibration (4 sampled demo sub-networks + the 10 reference configs, measured twice for the baseline)
is made once for the module; each test works on its own copy of that database. Every measurement spawns
a child on the agent (~1 s on two cores), so the stopping rule is short and the sample small.
"""
import io
import json
import logging
import sqlite3
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from agents import AgentProcess
from fleetnas.calibrate import RoundEntry, compare_rounds, latest_predictor, least_per_config, watch
from fleetnas.calibrate.drift import SWING_WINDOW
from fleetnas.cli import main
from fleetnas.cli.calibrate import format_calibration
from fleetnas.farm import AgentEntry, Farm, Inventory
from fleetnas.predictors.features import config_features
from fleetnas.store import NewReferenceRound, SqliteStore
from fleetnas.supernets import get_supernet

pytestmark = pytest.mark.slow

KIND, AGENT, SAMPLES = "cpu-demo-1t", "cal-a", 4
#: A quiet round here is one within twice the baseline's latency (see the quiet-rounds test).
QUIET_THRESHOLD = 1.0
FLAGS = ["--warmup-runs", "2", "--warmup-seconds", "0.01", "--min-runs", "5", "--min-seconds", "0.05",
         "--max-seconds", "0.3"]


@dataclass
class Calibrated:
    root: Path
    agent: AgentProcess
    inventory: Path
    db: Path
    output: dict

    def restart(self, slowdown: float = 0.0) -> None:
        """The same agent (cache, port, label) again, its timed runs stretched by `slowdown`."""
        self.agent.stop()
        args = ["--label", AGENT] + (["--test-slowdown", str(slowdown)] if slowdown else [])
        self.agent = AgentProcess(self.agent.cache_dir, port=self.agent.port, args=args).start()

    def copy_db(self, folder: Path) -> Path:
        target = folder / "copy.db"
        with sqlite3.connect(self.db) as source, sqlite3.connect(target) as copy:
            source.backup(copy)
        return target

    def argv(self, db: Path, predictors: Path, *more) -> list[str]:
        return ["calibrate", "--space", "demo", "--device-kind", KIND, "--inventory", str(self.inventory),
                "--db", str(db), "--out-dir", str(predictors), *more]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FLEETNAS_CACHE_DIR", str(root / "cache"))  # exported sub-networks
        agent = AgentProcess(root / "agent-cache", args=["--label", AGENT]).start()
        inventory = root / "farm.toml"
        Inventory(inventory, [AgentEntry(AGENT, agent.address, KIND)]).save()
        bench = Calibrated(root, agent, inventory, root / "calibrated.db", {})
        out = io.StringIO()
        with redirect_stdout(out):
            code = main(bench.argv(bench.db, root / "predictors", "--samples", str(SAMPLES), "--json", *FLAGS))
        assert code == 0, out.getvalue()
        bench.output = json.loads(out.getvalue())
        yield bench
        bench.agent.stop()


def test_the_command_measures_fits_and_writes_predictors_and_a_parity_png(calibrated):
    out = calibrated.output
    assert out["reason"] == "requested" and out["failed"] == [] and out["from_store"] == 0
    assert out["measured"] == SAMPLES + 2 * 10 and list(out["baselines"]) == [AGENT]
    assert set(out["metrics"]) == {"latency_ms", "peak_bytes"}
    for fit in out["metrics"].values():
        assert fit["rows"] == SAMPLES + 10 and fit["excluded_throttled"] == 0
        assert 0 <= fit["cv"]["mape"] < 100 and Path(fit["predictor"]).is_file()
    assert Path(out["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with SqliteStore(calibrated.db) as store:
        [calibration] = store.calibrations("demo", KIND)
        assert calibration.id == out["calibration_id"] and calibration.result["sample"] == {"n": SAMPLES, "seed": 0}
        assert calibration.settings["stopping"]["min_runs"] == 5
        [baseline] = store.reference_rounds("demo", KIND, agent=AGENT)
        assert baseline.role == "baseline" and len(baseline.entries) == 10 and baseline.verdict["rounds"] == 2
        assert all(e["ok"] and e["median_ms"] > 0 for e in baseline.entries)
        import onnxruntime
        assert baseline.platform["runtime_version"] == onnxruntime.__version__
        assert baseline.platform["agent_version"] and baseline.platform["os"]
        predictor = latest_predictor(store, "demo", KIND, "latency_ms")
    supernet = get_supernet("demo")
    X, _ = config_features(supernet, supernet.space.latin_hypercube(5, 123))
    assert (predictor.predict(X) > 0).all()


def test_a_search_on_the_kind_learns_from_what_its_calibration_measured(calibrated, tmp_path):
    from fleetnas.search.live import LiveEvaluator
    from fleetnas.search.objectives import parse_objective

    db = calibrated.copy_db(tmp_path)
    objectives = [parse_objective(f"latency@{KIND}:min"), parse_objective(f"memory@{KIND}:min")]
    with SqliteStore(db) as store, Farm.open(str(calibrated.inventory), db=db) as farm:
        [calibration] = store.calibrations("demo", KIND)
        stopping = calibration.settings["stopping"]
        evaluator = LiveEvaluator("demo", objectives, farm=farm, store=store, stopping=stopping)
        known = evaluator.known(before=calibration.created_at)
        configs, latencies = known[f"latency@{KIND}"]
        assert len(configs) == SAMPLES + 10 and all(v > 0 for v in latencies)  # the sample and the reference set
        assert 0 < len(known[f"memory@{KIND}"][0]) <= SAMPLES + 10
        first = min(m.created_at for m in store.measurements(space="demo", device_kind=KIND))
        assert evaluator.known(before=first - 1) == {}  # a run started before the calibration knows none of it
        # Measurements taken another way (here, another stopping rule) are not this search's measurements.
        other = LiveEvaluator("demo", objectives, farm=farm, store=store, stopping={**stopping, "min_runs": 9})
        assert other.known(before=calibration.created_at) == {}


def test_quiet_rounds_do_not_fire_live_nor_over_many_rounds_resampled_from_them(calibrated, tmp_path):
    # The live rounds take the path of a round that finds no change, end to end, with a wide threshold: this
    # shared two-core machine's own speed moves by more than the default 10 % for a minute at a time. A pure
    # Python loop takes 0.74 ms in short bursts and 1.24 ms otherwise, and eight back-to-back watch rounds after a
    # calibration (this module's settings, no confirmation) read median shifts from -28 % to +81 %, 4 to 5 rounds
    # in a row at +33 to +74 % in one of three series; the default threshold fired here once in five clean CI
    # runs (+11.7 %, all 10 configs slower). How often noise fires at the default threshold is the resampled
    # half's question; detection is test_calibrate_drift's and the slowdown test's.
    db = calibrated.copy_db(tmp_path)
    with Farm.open(calibrated.inventory, db) as farm:
        reports = list(watch(farm, farm.store, "demo", KIND, interval_s=0, rounds=2, out_dir=tmp_path / "p",
                             threshold=QUIET_THRESHOLD))
        current = farm.store.count_measurements()
        rounds = farm.store.reference_rounds("demo", KIND, agent=AGENT)
        history = farm.store.metric_values("demo", KIND, "onnxruntime", include_stale=True)
    for report in reports:
        verdict = report.verdicts[AGENT]
        assert verdict.pairs == 10 and not verdict.changed, verdict.reason
        assert report.refit is None and report.stale_marked == {}
    assert current == SAMPLES + 10  # nothing marked stale: the reference rows were only superseded
    assert [r.role for r in rounds] == ["baseline", "check", "check"]
    # Many more rounds of this device's own noise: each round draws every reference config's median from
    # the ones it really measured (4 or more each, disturbed ones included), and is judged as watch does.
    # (Drawn independently, a config's disturbed value lands in both baseline rounds far more often than it
    # does live, so this says nothing about detection: test_calibrate_drift and the slowdown test below do.)
    space = get_supernet("demo").space
    measured = {}
    for v in history:
        measured.setdefault(space.key(v.config), []).append(v.value)
    keys = [e["key"] for e in rounds[0].entries]
    assert all(len(measured[k]) >= 4 for k in keys)
    rng = np.random.default_rng(1)

    def draw():
        return [RoundEntry(k, True, float(rng.choice(measured[k])), 0.005) for k in keys]

    def drift_found(baseline):
        now = draw()
        return compare_rounds(baseline, now).drift and compare_rounds(baseline, least_per_config([now, draw()])).drift

    # A rate, not a certainty: the history of a shared 2-core machine can hold values measured while something
    # else ran, and independent draws combine them more often than live rounds do (clean CI runs drew 1 and 6
    # alarms in 400). A detector that fired on noise would go far past 5 %.
    baselines = [least_per_config([draw(), draw()]) for _ in range(10)]
    assert sum(drift_found(b) for b in baselines for _ in range(40)) <= 20  # at most 5 % of 400


def test_a_watch_learns_the_devices_own_swings_from_the_rounds_it_recorded(calibrated, tmp_path):
    # As if the agent had swung between its baseline's speed and twice as slow for 20 recorded rounds: a live
    # round at the default 10 % threshold is judged against those swings, whatever this machine's speed does now.
    db = calibrated.copy_db(tmp_path)
    with Farm.open(calibrated.inventory, db) as farm:
        store = farm.store
        [real] = store.reference_rounds("demo", KIND, agent=AGENT)
        for i in range(SWING_WINDOW):
            entries = [{**e, "median_ms": e["median_ms"] * (2.0 if i % 2 else 1.0)} for e in real.entries]
            store.add_reference_round(NewReferenceRound(
                "demo", KIND, AGENT, real.device_id, real.runtime, real.settings_hash, real.reference, "check",
                entries, real.platform, {"reason": "a recorded swing"}))
        [report] = watch(farm, store, "demo", KIND, interval_s=0, rounds=1, out_dir=tmp_path / "p")
    verdict = report.verdicts[AGENT]
    assert verdict.swing_steps == SWING_WINDOW and verdict.swing > 3.0, verdict.reason  # 2x out and back
    assert not verdict.drift and report.refit is None and "swings ×/÷" in verdict.reason


def test_a_runtime_version_change_marks_old_measurements_stale_and_refits(calibrated, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fleetnas.calibrate")
    db = calibrated.copy_db(tmp_path)
    with Farm.open(calibrated.inventory, db) as farm:
        store = farm.store
        # As if the baseline had been measured before an onnxruntime upgrade.
        [real] = store.reference_rounds("demo", KIND, agent=AGENT)
        old = [{**e, "runtime_version": "1.0.0"} for e in real.entries]
        store.add_reference_round(NewReferenceRound(
            "demo", KIND, AGENT, real.device_id, real.runtime, real.settings_hash, real.reference, "baseline", old,
            {**real.platform, "runtime_version": "1.0.0"}, {"reason": "before the upgrade"}))
        [report] = watch(farm, farm.store, "demo", KIND, interval_s=0, rounds=1, out_dir=tmp_path / "p")
        calibrations = store.calibrations("demo", KIND)
        stale = store.count_measurements(include_stale=True) - store.count_measurements()
    verdict = report.verdicts[AGENT]
    assert verdict.version_change == {"runtime_version": ["1.0.0", real.platform["runtime_version"]]}
    # Named a version change whatever the latency did: a shared CI machine's own speed has moved by 12 % between
    # the calibration and this round, which is drift by the numbers, but the upgrade is the cause a user acts on.
    assert verdict.changed and verdict.cause == "version" and report.new_baselines == [AGENT]
    assert report.stale_marked == {AGENT: SAMPLES}  # the sample's rows; the reference rows were just re-measured
    assert report.refit is not None and report.refit.reason == "version" and report.refit.measured == SAMPLES
    assert [c.reason for c in calibrations] == ["requested", "version"]
    assert calibrations[-1].result["evidence"][AGENT]["version_change"]["runtime_version"][0] == "1.0.0"
    # stale: the calibration's two reference rounds, the first watch round (superseded by its confirmation)
    # and the sample's rows
    assert stale == 3 * 10 + SAMPLES and report.refit.fits["latency_ms"].rows == SAMPLES + 10
    assert f"version change on {AGENT}: runtime_version 1.0.0 → {real.platform['runtime_version']}" in caplog.text
    assert "refit (version)" in caplog.text
    assert "calibrated demo on cpu-demo-1t (onnxruntime, version)" in format_calibration(report.refit, SAMPLES)
    summary = json.loads(json.dumps(report.refit.summary()))
    assert summary["reason"] == "version" and summary["latency_ms"]["rows"] == SAMPLES + 10
    assert summary["latency_ms"]["cv_mape_pct"] == pytest.approx(report.refit.fits["latency_ms"].cv_metrics["mape"],
                                                                 abs=0.01)


def test_a_real_slowdown_to_four_times_the_latency_fires_drift_marks_stale_and_refits(calibrated, tmp_path, capsys,
                                                                                        caplog):
    # Four times the latency, not the 20 % that test_calibrate_drift detects every time: this test is about the
    # whole path, and this shared two-core machine's own speed moves by up to 1.7x between bursts (see the quiet
    # rounds test), so a baseline measured fast and a slowed round measured slow or the other way round read from
    # 4 / 1.7 to 4 x 1.7 times; twice the latency could read +18 %.
    caplog.set_level(logging.INFO, logger="fleetnas.calibrate")
    db = calibrated.copy_db(tmp_path)
    calibrated.restart(slowdown=3.0)
    try:
        code = main(calibrated.argv(db, tmp_path / "p", "--watch", "--interval", "0", "--rounds", "1", "--json"))
    finally:
        calibrated.restart(slowdown=0.0)
    assert code == 0
    [line] = capsys.readouterr().out.splitlines()  # JSON Lines: one object per round
    report = json.loads(line)
    verdict = report["verdicts"][AGENT]
    assert verdict["drift"] and verdict["pairs"] == 10 and verdict["p_value"] < 0.01, verdict["reason"]
    # +300 % by the agent, read from +135 % to +580 % at this machine's swings. The upper bounds here and below
    # catch a wrong unit or a runaway (x1000).
    assert 1.0 < verdict["median_change"] < 20.0
    assert report["stale_marked"] == {AGENT: SAMPLES} and report["refit"]["reason"] == "drift"
    assert f"drift on {AGENT}: +" in caplog.text and f"marked {SAMPLES} measurements stale" in caplog.text
    with SqliteStore(db) as store:
        before, after = store.calibrations("demo", KIND)
        values = store.metric_values("demo", KIND, "onnxruntime")
        old = store.metric_values("demo", KIND, "onnxruntime", include_stale=True)
        [baseline, drifted] = store.reference_rounds("demo", KIND, agent=AGENT, role="baseline")
    assert after.reason == "drift" and after.result["evidence"][AGENT]["drift"]
    assert drifted.verdict["baseline_round"] == baseline.id  # the slow rounds are the device's new normal
    # What the refit learned from is the slowed device: every current row was measured after the change,
    # about four times the least that config measured before it.
    assert min(v.created_at for v in values) > before.created_at and len(values) == SAMPLES + 10
    least_before = {}
    for v in old:
        if v.created_at < before.created_at:
            key = json.dumps(v.config, sort_keys=True)
            least_before[key] = min(v.value, least_before.get(key, np.inf))
    ratios = [v.value / least_before[json.dumps(v.config, sort_keys=True)] for v in values]
    assert 2.0 < float(np.median(ratios)) < 20.0  # against each config's least before


def test_a_watch_whose_rounds_reach_no_agent_fails_and_records_no_round(calibrated, tmp_path, capsys):
    db = calibrated.copy_db(tmp_path)
    down = tmp_path / "down.toml"  # the same agent, as far as the store knows, where nobody listens
    Inventory(down, [AgentEntry(AGENT, "127.0.0.1:9", KIND)]).save()
    with SqliteStore(db) as store:
        rounds_before = len(store.reference_rounds("demo", KIND, agent=AGENT))
    argv = calibrated.argv(db, tmp_path / "p", "--watch", "--interval", "0", "--rounds", "2", "--give-up", "1",
                           "--json")
    argv[argv.index(str(calibrated.inventory))] = str(down)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 1 and f"no round of the watch reached an agent of {KIND}: " in err and "UNAVAILABLE" in err
    reports = [json.loads(line) for line in out.splitlines()]
    assert [sorted(r["unreached"]) for r in reports] == [[AGENT], [AGENT]] and not reports[0]["verdicts"]
    with SqliteStore(db) as store:  # a round that measured nothing says nothing about the device's speed
        assert len(store.reference_rounds("demo", KIND, agent=AGENT)) == rounds_before


@pytest.mark.parametrize("args, message", [
    (["--samples", "2", "--seed", "-1"], "--seed: must be from 0 to 2147483647, got -1"),
    (["--samples", "2", "--give-up", "nan"], "--give-up: must be a positive number of seconds"),
    (["--watch", "--interval", "99999999999d"], "--interval: must be at most a year"),
    (["--watch", "--interval", "0"], "--interval 0 needs --rounds N"),  # back to back, forever
    (["--samples", "2", "--interval", "5s"], "--interval only applies with --watch"),
    (["--samples", "2", "--models", "forest"], "--models: unknown model 'forest'"),
    (["--samples", "2", "--min-runs", "50", "--max-runs", "10"], "--min-runs 50 is above --max-runs 10"),
    (["--samples", "2", "--max-seconds", "inf"], "--max-seconds must be a finite number"),
    (["--samples", "2", "--warmup-seconds", "40"],  # above the agent's default max_s
     "bad stopping rule: --warmup-seconds (40.0) is above --max-seconds (30.0)"),
    (["--samples", "2", "--max-runs", "2000000"], "--max-runs must be at most 1,000,000, got 2000000"),
    (["--samples", "2", "--out-dir", "inv.toml"], "--out-dir inv.toml is a file"),
])
def test_calibrate_refuses_bad_options_before_measuring(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    Path("inv.toml").write_text('[agents.pi]\naddress = "127.0.0.1:9"\nkind = "k"\n')
    try:
        code = main(["calibrate", "--space", "demo", "--device-kind", "k", "--inventory", "inv.toml", "--db",
                     "c.db", *args])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    assert code != 0 and message in capsys.readouterr().err
    assert not Path("c.db").exists()


def test_a_search_resumes_only_on_a_farm_that_measures_its_kinds_the_same_way(calibrated, tmp_path, capsys):
    db = calibrated.copy_db(tmp_path)
    search = ["search", "--space", "demo", "--objective", "macs:min", "--objective", f"latency@{KIND}:min",
              "--tactic", "random", "--budget", "2", "--db", str(db), "--inventory", str(calibrated.inventory), *FLAGS]
    assert main(search) == 0
    with SqliteStore(db) as store:
        [run] = store.runs()
        assert run.settings["measured_with"] == {KIND: {"runtime": "onnxruntime", "threads": 1}}
        # As a search killed after its first evaluation leaves it: a finished one, or one with every evaluation
        # recorded, needs no farm.
        store.set_run_state(run.id, "running")
        store._conn.execute("DELETE FROM run_members WHERE id = (SELECT max(id) FROM run_members WHERE run_id = ?)",
                            (run.id,))
        store._conn.execute("DELETE FROM run_events WHERE run_id = ? AND kind = 'hypervolume'", (run.id,))
        store._conn.commit()
    entry = Inventory.load(calibrated.inventory).get(AGENT)
    moved = tmp_path / "four-threads.toml"
    Inventory(moved, [AgentEntry(AGENT, entry.address, KIND, "onnxruntime", threads=4)]).save()
    capsys.readouterr()
    assert main(["search", "--resume", str(run.id), "--db", str(db), "--inventory", str(moved)]) == 1
    assert f"the inventory now measures {KIND} with onnxruntime, 4 thread(s); the run measured it with " \
           "onnxruntime, 1" in capsys.readouterr().err
    assert main(["search", "--resume", str(run.id), "--db", str(db), "--inventory", str(calibrated.inventory)]) == 0
    # Finished now: its front is shown from the store, whatever the inventory says, with no farm opened.
    capsys.readouterr()
    assert main(["search", "--resume", str(run.id), "--db", str(db), "--inventory", str(tmp_path / "gone.toml")]) == 0
    assert f"search run {run.id} is finished" in capsys.readouterr().err
