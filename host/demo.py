"""The main job on the embedded default: this machine is the device.

    run_demo(out_dir, budget) does, with nothing running beforehand:
      1. starts a FleetNAS agent on 127.0.0.1 (a real gRPC server; measurements run in child processes);
      2. writes a one-agent farm inventory and opens the SQLite store, both under out_dir;
      3. trains (or loads the cached) demo super-network on scikit-learn's digits;
      4. calibrates: measures a Latin-hypercube sample of sub-networks and fits latency and memory predictors;
      5. runs LINAS over (accuracy, measured latency, measured memory), learning from the calibration too;
      6. writes the report and returns the best trade-offs.
Everything lands in out_dir; running it again replays the same search from what is stored there (nothing is
measured twice).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .locks import exclusive

DEVICE_KIND = "local-onnx-1t"
OBJECTIVES = ["accuracy:max", f"latency@{DEVICE_KIND}:min", f"memory@{DEVICE_KIND}:min"]
# Quick but honest: every figure is still a median over at least 20 timed runs with its confidence interval.
STOPPING = {"warmup_min_runs": 5, "warmup_min_s": 0.1, "min_runs": 20, "min_s": 0.2, "max_s": 1.0,
            "target_rel_ci": 0.02}


@dataclass
class DemoResult:
    run_id: int
    report: Path
    db: Path
    front: list[dict]
    calibration: dict


def run_demo(out_dir: str | Path = "fleetnas-demo", budget: int = 60, calibration_samples: int = 16, seed: int = 0,
             say: Callable[[str], None] = print) -> DemoResult:
    from .search.run import RunSpec

    out = Path(out_dir).resolve()
    spec = RunSpec(space="demo", objectives=OBJECTIVES, tactic="linas", budget=budget, seed=seed,
                   inventory=str(out / "fleetnas.toml"), stopping=STOPPING,
                   tactic_settings={"n_init": min(12, budget), "batch": 6})
    spec.validate()  # before the agent starts and the calibration measures
    _refuse_foreign_inventory(out / "fleetnas.toml")
    out.mkdir(parents=True, exist_ok=True)
    # Two demos in one folder would share the agent's cache and the store, and collide mid-calibration.
    with exclusive(out / "demo.lock", f"the demo in {out}"):
        return _run_demo(out, spec, calibration_samples, seed, say)


def _run_demo(out: Path, spec, calibration_samples: int, seed: int, say: Callable[[str], None]) -> DemoResult:
    from fleetnas_agent.profiler import DEFAULT_DEVICE_LOCK
    from fleetnas_agent.server import AgentConfig, build_server

    from .farm import AgentEntry, Farm, Inventory
    from .report import write_report
    from .search.live import LiveEvaluator
    from .search.run import execute_run, known_summary, measured_front, measurement_settings
    from .store import open_store
    from .supernets.demo import DemoEvaluator

    logging.getLogger("fleetnas_agent").setLevel(logging.WARNING)
    # The machine is the device: its lock keeps another agent here (a user's own) from measuring at once.
    server, port = build_server(AgentConfig(port=0, label="this-machine", cache_dir=out / "agent-cache",
                                            device_lock=DEFAULT_DEVICE_LOCK))
    say(f"agent serving on 127.0.0.1:{port} (this machine is the device)")
    try:
        inventory = Inventory(out / "fleetnas.toml", [AgentEntry("local", f"127.0.0.1:{port}", DEVICE_KIND,
                                                                  runtime="onnxruntime", threads=1)])
        inventory.save()
        say("training the demo super-network on scikit-learn's digits (cached after the first time)…")
        accuracy = DemoEvaluator()
        with open_store(out / "fleetnas.db") as store, Farm.open(inventory, db=out / "fleetnas.db",
                                                                 progress=True) as farm:
            calibration = _calibrate(farm, store, calibration_samples, seed, out, say)
            spec.measured_with = measurement_settings(farm, [DEVICE_KIND])
            run_id = _resumable_run(store, spec)
            say(f"searching (LINAS, run {run_id}): {spec.budget} real evaluations of accuracy, latency and memory…")
            evaluator = LiveEvaluator("demo", spec.parsed_objectives(), farm=farm, store=store,
                                      accuracy=accuracy, stopping=STOPPING)
            session = execute_run(store, run_id, evaluator)
            learned = known_summary(session)
            if learned:
                say(learned)
            report = write_report(store, run_id, out / f"report-{run_id}")
            configs, values, objectives = measured_front(store, run_id)
            front = [{"config": c, **{o.name: float(v) for o, v in zip(objectives, row)}}
                     for c, row in zip(configs, values)]
    finally:
        server.stop(grace=None).wait()
    return DemoResult(run_id, report, out / "fleetnas.db", front, calibration)


def _refuse_foreign_inventory(path: Path) -> None:
    """The demo rewrites its own one-agent inventory on every run; a user's farm file in that folder would be lost."""
    from .farm import Inventory

    if not path.exists():
        return
    try:
        agents = Inventory.load(path).agents
    except ValueError:
        agents = None
    if agents is None or any(a.name != "local" or not a.address.startswith("127.0.0.1:") for a in agents):
        raise ValueError(f"{path} is not the demo's own inventory (it would be overwritten); give the demo "
                         "another --out folder")


def _resumable_run(store, spec) -> int:
    """The latest demo run with these settings, or a new one: an interrupted demo picks up where it was, and a
    finished one is replayed from the store (a new run would learn from the first one's measurements, and so
    measure other sub-networks)."""
    from .search.run import start_run

    wanted = spec.__dict__
    for run in reversed(store.runs()):  # a run stored before a setting existed lacks its key
        if run.settings == {k: v for k, v in wanted.items() if k in run.settings}:
            return run.id
    return start_run(store, spec)


def _calibrate(farm, store, samples: int, seed: int, out: Path, say) -> dict:
    """Calibrates the local device kind once; later demo runs reuse the stored calibration."""
    from .calibrate import calibrate

    previous = store.latest_calibration("demo", DEVICE_KIND)
    if previous is not None:
        say(f"reusing calibration {previous.id} of {DEVICE_KIND} (fleetnas calibrate --watch keeps one current)")
        return {metric: {"model": fit["model"], "rows": fit["rows"], "cv_mape_pct": fit["cv"]["mape"],
                         "kendall_tau": fit["cv"]["kendall_tau"]} for metric, fit in previous.result["metrics"].items()}
    say(f"calibrating {DEVICE_KIND}: measuring {samples} sub-networks and a reference set…")
    result = calibrate(farm, store, "demo", DEVICE_KIND, samples=samples, seed=seed, stopping=STOPPING,
                       out_dir=out / "calibration")
    return result.summary()
