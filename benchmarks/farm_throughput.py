"""Farm throughput: jobs per minute with 1, 2 and 4 agents on a tiny model, and the scheduler's overhead per job.

Each agent is a real `fleetnas-agent serve` process on 127.0.0.1 and every job a real measurement (the
agent spawns a measuring child per job), so on a 2-core machine the jobs-per-minute figure is bounded by
CPU, not by the scheduler; the overhead figures are what this benchmark is for:

  host overhead per job   the host's wall time of a job (upload check, Profile call, result, store commit)
                          minus the agent's own time for it (device lock taken -> released)
  idle gap per job        agent time left unused between jobs: (wall x agents - sum of job times) / jobs
  dedup lookup per job    a rerun of the same batch, answered from the store

Run: .venv/bin/python benchmarks/farm_throughput.py [--jobs 40] [--out benchmarks/results/farm_throughput.json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fleetnas.farm import AgentEntry, ArtifactSource, Farm, Inventory
from fleetnas.store import SqliteStore

KIND = "bench-ort-1t"
FAST = {"warmup_min_runs": 1, "warmup_min_s": 0.001, "min_runs": 3, "min_s": 0.001, "max_s": 0.05}


def tiny_model(seed: int, width: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array((rng.standard_normal((width, width)) / 4).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
                              "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class Agent:
    def __init__(self, cache_dir: Path):
        # Each agent stands for a device of its own: its own device lock, or the agents would take turns.
        self.proc = subprocess.Popen([sys.executable, "-m", "fleetnas_agent.cli", "serve", "--port", "0",
                                      "--cache-dir", str(cache_dir), "--log-level", "WARNING",
                                      "--device-lock", f"{cache_dir}.device.lock"],
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(60):
                raise RuntimeError("agent did not start")
        line = self.proc.stdout.readline().strip()
        self.address = "127.0.0.1:" + line.rsplit(":", 1)[1]

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)


def run(agents: list[Agent], n_jobs: int, seed0: int, root: Path) -> dict:
    inv = Inventory(root / f"inv{len(agents)}.toml",
                    [AgentEntry(f"a{i}", a.address, KIND) for i, a in enumerate(agents)])
    artifacts = [ArtifactSource.from_bytes(tiny_model(seed0 + i)) for i in range(n_jobs)]
    with Farm(inv, SqliteStore(root / f"bench{len(agents)}.db")) as farm:
        started = time.perf_counter()
        results = farm.measure_artifacts(artifacts, KIND, stopping=FAST)
        wall_s = time.perf_counter() - started
        started = time.perf_counter()
        again = farm.measure_artifacts(artifacts, KIND, stopping=FAST)
        dedup_s = time.perf_counter() - started
    assert all(r.ok for r in results) and all(r.from_store for r in again)
    agent_s = [r.measurement.detail["finished_unix_s"] - r.measurement.detail["started_unix_s"] for r in results]
    host_overhead_ms = [(r.elapsed_s - a) * 1000 for r, a in zip(results, agent_s)]
    idle_gap_ms = (wall_s * len(agents) - sum(r.elapsed_s for r in results)) / n_jobs * 1000
    return {
        "agents": len(agents), "jobs": n_jobs, "wall_s": round(wall_s, 2),
        "jobs_per_minute": round(n_jobs / wall_s * 60, 1),
        "agent_time_per_job_ms_median": round(statistics.median(agent_s) * 1000, 1),
        "host_overhead_per_job_ms_median": round(statistics.median(host_overhead_ms), 1),
        "host_overhead_per_job_ms_p90": round(float(np.percentile(host_overhead_ms, 90)), 1),
        "idle_gap_per_job_ms": round(idle_gap_ms, 1),
        "dedup_lookup_per_job_ms": round(dedup_s / n_jobs * 1000, 2),
        "agents_used": sorted({r.measurement.agent for r in results}),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=40, help="jobs per configuration (default 40)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "farm_throughput.json")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        agents = [Agent(root / f"cache{i}") for i in range(4)]
        try:
            for n, seed0 in ((1, 0), (2, 100_000), (4, 200_000)):
                rows.append(run(agents[:n], args.jobs, seed0, root))
                print(json.dumps(rows[-1]), flush=True)
        finally:
            for agent in agents:
                agent.stop()
    report = {"benchmark": "farm_throughput", "model": "onnx MatMul+Relu 16x16", "stopping": FAST,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
              "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12], "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'agents':>6} {'jobs/min':>9} {'agent ms/job':>13} {'host overhead ms':>17} {'idle gap ms':>12} "
          f"{'dedup ms/job':>13}")
    for r in rows:
        print(f"{r['agents']:>6} {r['jobs_per_minute']:>9} {r['agent_time_per_job_ms_median']:>13} "
              f"{r['host_overhead_per_job_ms_median']:>17} {r['idle_gap_per_job_ms']:>12} "
              f"{r['dedup_lookup_per_job_ms']:>13}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
