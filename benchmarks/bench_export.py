"""Export and analytic-feature costs: what the farm and the predictors pay per sub-network.

  export s per format      OFA MobileNetV3 at 224 (the largest sub-network: kernel 7, expand 6, depth 4) as
                           ONNX (TorchScript exporter, opset 17), torch spec and, when the tflite-export extra
                           is installed, TFLite; each a cold export into an empty cache, then the cached call
  dynamo ONNX s            (--dynamo) torch.onnx's dynamo exporter on the same module, for comparison
  analytic s per config    analytic_features on random configs of each buildable space, uncached (median, p90)

Torch runs on one thread, as export and counting do. Medians of --repeats runs; machine load is printed,
because on a shared 2-core host the figures move with it.

Run: .venv/bin/python benchmarks/bench_export.py [--repeats 3] [--configs 20] [--dynamo] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fleetnas.export import export_artifact
from fleetnas.supernets import get_supernet, list_supernets
from fleetnas.supernets.analytic import analytic_features


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def export_figures(repeats: int, dynamo: bool) -> dict:
    space = get_supernet("ofa_mbv3").space
    largest = {v.name: max(v.choices) for v in space.variables} | {"w": 1.0}
    formats = ["onnx", "spec"]
    if any(importlib.util.find_spec(m) for m in ("litert_torch", "ai_edge_torch")):
        formats.append("tflite")
    out = {}
    for fmt in formats:
        cold, cached, size = [], [], 0
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as cache:
                cold.append(timed(lambda: export_artifact("ofa_mbv3", largest, fmt, cache_dir=Path(cache))))
                cached.append(timed(lambda: export_artifact("ofa_mbv3", largest, fmt, cache_dir=Path(cache))))
                size = export_artifact("ofa_mbv3", largest, fmt, cache_dir=Path(cache)).size_bytes
        out[fmt] = {"cold_s_median": statistics.median(cold), "cold_s_all": cold,
                    "cached_s_median": statistics.median(cached), "size_bytes": size}
    if "tflite" not in out:
        out["tflite"] = "not measured: the tflite-export extra (litert-torch, 1.2 GB) is not installed here"
    if dynamo:
        torch.manual_seed(0)
        module = get_supernet("ofa_mbv3").build(largest).eval()
        x = torch.randn(1, 3, 224, 224)
        with tempfile.TemporaryDirectory() as tmp:
            seconds = timed(lambda: torch.onnx.export(module, (x,), dynamo=True, opset_version=18).save(
                os.path.join(tmp, "m.onnx"), external_data=False))
        out["onnx_dynamo_s"] = seconds
    return out


def analytic_figures(n_configs: int) -> dict:
    out = {}
    for name in list_supernets():
        try:
            supernet = get_supernet(name)
        except ImportError:
            continue
        if supernet.table_only:
            continue
        configs = supernet.space.sample(n_configs + 1, 0)
        analytic_features(supernet, configs[0], cache=False)  # first use: imports and lazy initialisation
        seconds = [timed(lambda c=c: analytic_features(supernet, c, cache=False)) for c in configs[1:]]
        with tempfile.TemporaryDirectory() as cache:
            analytic_features(supernet, configs[1], cache_dir=Path(cache))
            hit = timed(lambda: analytic_features(supernet, configs[1], cache_dir=Path(cache)))
        out[name] = {"median_s": statistics.median(seconds), "p90_s": float(np.percentile(seconds, 90)),
                     "configs": len(seconds), "cached_hit_s": hit}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--configs", type=int, default=10)
    p.add_argument("--dynamo", action="store_true", help="also time the dynamo ONNX exporter (slow)")
    p.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = p.parse_args()
    torch.set_num_threads(1)

    result = {"machine": {"python": sys.version.split()[0], "torch": torch.__version__, "cpu": platform.processor()
                          or platform.machine(), "cores": os.cpu_count(), "load_1m_before": os.getloadavg()[0]},
              "export_ofa_mbv3_224": export_figures(args.repeats, args.dynamo),
              "analytic_per_config": analytic_figures(args.configs)}
    result["machine"]["load_1m_after"] = os.getloadavg()[0]

    print(f"load average {result['machine']['load_1m_before']:.1f} -> {result['machine']['load_1m_after']:.1f} "
          f"on {result['machine']['cores']} cores; torch {result['machine']['torch']}, 1 thread")
    print("export, OFA MobileNetV3 k7 e6 d4 at 224 (cold = empty cache; cached = second call):")
    for fmt, fig in result["export_ofa_mbv3_224"].items():
        if isinstance(fig, dict):
            print(f"  {fmt:<7} cold {fig['cold_s_median']:7.3f} s (median of {len(fig['cold_s_all'])})  "
                  f"cached {fig['cached_s_median'] * 1000:7.2f} ms  {fig['size_bytes'] / 2**20:7.2f} MiB")
        elif isinstance(fig, float):
            print(f"  {fmt:<7} {fig:7.3f} s (one run)")
        else:
            print(f"  {fmt:<7} {fig}")
    print("analytic features (MACs, params, activation bytes), uncached:")
    for name, fig in result["analytic_per_config"].items():
        print(f"  {name:<13} median {fig['median_s'] * 1000:7.1f} ms  p90 {fig['p90_s'] * 1000:7.1f} ms per config "
              f"({fig['configs']} configs); cache hit {fig['cached_hit_s'] * 1e6:6.1f} µs")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
