"""Agent measurement quality and footprint.

    .venv/bin/python benchmarks/bench_agent.py [--rounds 3] [--fresh-venvs]

Prints
  (a) agent-measured median latency / in-process loop median, same model, runtime and threads (target <= 1.03)
  (b) repeat-to-repeat coefficient of variation of the agent's median over 5 profiles (target <= 2 %)
  (c) idle agent resident memory (target <= 60 MB); with --fresh-venvs, in two new virtual environments
      holding only LiteRT or only ONNX Runtime, else in this environment (the agent imports no runtime
      until asked, so the figure is the same either way; the fresh venvs prove it).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

import models  # noqa: E402
from agents import AgentProcess  # noqa: E402
from fleetnas_agent import inputs  # noqa: E402
from fleetnas_agent.client import AgentClient  # noqa: E402
from fleetnas_agent.proto import agent_pb2 as pb  # noqa: E402
from fleetnas_agent.runtimes import load_adapter  # noqa: E402

# A model of a few milliseconds: long enough that timer overhead is negligible, short enough to repeat.
WIDTH, LAYERS = 1024, 6
RULE = dict(warmup_min_runs=20, warmup_min_s=1.0, min_runs=200, min_s=3.0, max_s=10.0, target_rel_ci=0.005)


def in_process_median(runtime: str, path: Path, seconds: float = 3.0) -> float:
    """The reference: the same adapter, loaded and timed in this process with a plain loop."""
    model = load_adapter(runtime).load(str(path), 1)
    specs = inputs.resolve(model.input_specs(), [])
    model.set_inputs(inputs.generate(specs, 0))
    end = time.perf_counter() + RULE["warmup_min_s"]
    while time.perf_counter() < end:
        model.run()
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        model.run()
        samples.append((time.perf_counter() - start) * 1000)
    return float(np.median(samples))


def quality(address: str, tmp: Path, rounds: int) -> None:
    cases = {"litert": (models.tflite_mlp(WIDTH, LAYERS), "model.tflite"),
             "onnxruntime": (models.onnx_mlp(WIDTH, LAYERS), "model.onnx")}
    print(f"model: MLP {LAYERS}x{WIDTH}, 1 thread; {rounds} interleaved rounds")
    with AgentClient(address) as client:
        for runtime, (data, name) in cases.items():
            path = tmp / name
            path.write_bytes(data)
            sha = client.put_artifact(data)
            agent, local = [], []
            for _ in range(rounds):  # interleave so that slow drift of the machine hits both alike
                agent.append(client.profile(sha, runtime=runtime, stopping=pb.StoppingRule(**RULE)).latency.median_ms)
                local.append(in_process_median(runtime, path))
            ratio = statistics.median(agent) / statistics.median(local)
            repeats = [client.profile(sha, runtime=runtime, stopping=pb.StoppingRule(**RULE)).latency.median_ms
                       for _ in range(5)]
            cv = statistics.stdev(repeats) / statistics.mean(repeats)
            print(f"{runtime:12s} (a) agent median {statistics.median(agent):.4f} ms / in-process "
                  f"{statistics.median(local):.4f} ms = {ratio:.3f}  (target <= 1.03)")
            print(f"{'':12s} (b) CV of the median over 5 profiles: {cv * 100:.2f} %  (target <= 2 %)  "
                  f"medians {', '.join(f'{m:.4f}' for m in repeats)}")


def idle_rss_mb(python: str, tmp: Path) -> float:
    """Resident memory of an agent that has served a Describe and a profile, then sits idle."""
    proc = subprocess.Popen([python, "-m", "fleetnas_agent.cli", "serve", "--port", "0", "--cache-dir",
                             str(tmp / "idle-cache"), "--log-level", "WARNING"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().rsplit(":", 1)[1])
        with AgentClient(f"127.0.0.1:{port}") as client:
            client.describe()
            sha = client.put_artifact(models.onnx_mlp(64, 1))
            try:
                client.profile(sha, stopping=pb.StoppingRule(max_s=0.2))
            except Exception as exc:  # noqa: BLE001 - the LiteRT-only agent cannot run ONNX: that is fine here
                print(f"    (profile: {exc.code().name if hasattr(exc, 'code') else exc})")
        status = Path(f"/proc/{proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) / 1024
    finally:
        proc.terminate()
        proc.wait()


def fresh_venv(tmp: Path, runtime_package: str) -> str:
    venv = tmp / f"venv-{runtime_package}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run(pip + [str(ROOT), runtime_package], check=True)
    return str(venv / "bin" / "python")


def footprint(tmp: Path, fresh: bool) -> None:
    if fresh:
        for package in ("ai-edge-litert", "onnxruntime"):
            rss = idle_rss_mb(fresh_venv(tmp, package), tmp)
            print(f"(c) idle agent RSS, only {package} installed: {rss:.1f} MB  (target <= 60 MB)")
    else:
        print(f"(c) idle agent RSS in this environment: {idle_rss_mb(sys.executable, tmp):.1f} MB  (target <= 60 MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fresh-venvs", action="store_true", help="measure (c) in new venvs (installs packages)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        with AgentProcess(tmp / "cache") as agent:
            quality(agent.address, tmp, args.rounds)
        footprint(tmp, args.fresh_venvs)


if __name__ == "__main__":
    main()
