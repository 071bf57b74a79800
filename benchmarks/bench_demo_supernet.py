"""The demo super-network's figures: training time, accuracy range, MACs and ONNX Runtime latency.

    .venv/bin/python benchmarks/bench_demo_supernet.py            # trains afresh in a temporary cache
    .venv/bin/python benchmarks/bench_demo_supernet.py --cached   # uses (or fills) the usual cache

Latency is ONNX Runtime on this machine's CPU with 1 thread: the median (and p90) of many runs after
a warm-up. Load from other processes inflates every timing: the load average is printed beside them.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from fleetnas.supernets import demo


def macs(config) -> int:
    module = demo.SUPERNET.build(config)
    (spec,) = demo.SUPERNET.input_specs(config)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(torch.zeros(spec["shape"]))
    return counter.get_total_flops() // 2  # one multiply-accumulate is two FLOPs


def ort_latency_ms(config, seconds: float = 2.0) -> tuple[float, float, int]:
    """(median, p90, runs) of one-thread ONNX Runtime latency of the built sub-network."""
    import onnxruntime as ort

    module = demo.SUPERNET.build(config)
    (spec,) = demo.SUPERNET.input_specs(config)
    x = torch.randn(spec["shape"])
    buffer = io.BytesIO()
    torch.onnx.export(module, (x,), buffer, dynamo=False, input_names=["image"], output_names=["logits"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    feed = {"image": x.numpy()}
    for _ in range(100):
        session.run(None, feed)
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 200:
        started = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times), float(np.percentile(times, 90)), len(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cached", action="store_true", help="use the usual cache instead of training afresh")
    p.add_argument("--epochs", type=int, default=demo.EPOCHS)
    p.add_argument("--random", type=int, default=20, help="how many random sub-networks to evaluate")
    args = p.parse_args()

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as scratch:
        cache = None if args.cached else scratch
        wall, cpu = time.perf_counter(), time.process_time()
        state = demo.train_supernet(seed=0, epochs=args.epochs, cache_dir=cache, log=print)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"training: {wall:.1f} s wall, {cpu:.1f} s CPU ({args.epochs} epochs, "
          f"{demo.TRAIN_THREADS} thread(s){', from the cache' if args.cached else ''})")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    torch.set_num_threads(1)
    evaluator = demo.DemoEvaluator(state)
    configs = demo.SPACE.sample(args.random, rng=1)
    seconds = []
    for config in configs:
        started = time.perf_counter()
        evaluator(config)
        seconds.append(time.perf_counter() - started)
    accuracies = sorted(evaluator(c) for c in configs)
    print(f"evaluation: median {statistics.median(seconds) * 1e3:.0f} ms per sub-network (1 thread, "
          f"BN recalibration on {demo.CALIBRATION_IMAGES} images + {len(demo.digits_split()[3])} validation images)")
    print(f"{args.random} random sub-networks: top-1 min {accuracies[0]:.3f}, median "
          f"{statistics.median(accuracies):.3f}, max {accuracies[-1]:.3f}")
    print("  sorted: " + " ".join(f"{a:.3f}" for a in accuracies))

    print(f"{'sub-network':<12} {'top-1':>6} {'MACs':>10} {'params':>8} {'ORT median ms':>14} {'p90 ms':>7} {'runs':>6}")
    rows = {}
    for name, config in (("smallest", demo.SMALLEST), ("largest", demo.LARGEST)):
        median, p90, runs = ort_latency_ms(config)
        params = sum(t.numel() for t in demo.SUPERNET.build(config).parameters())
        rows[name] = (macs(config), median)
        print(f"{name:<12} {evaluator(config):>6.3f} {rows[name][0]:>10,} {params:>8,} {median:>14.4f} {p90:>7.4f} {runs:>6}")
    print(f"largest / smallest: {rows['largest'][0] / rows['smallest'][0]:.0f}× MACs, "
          f"{rows['largest'][1] / rows['smallest'][1]:.1f}× ORT latency")


if __name__ == "__main__":
    main()
