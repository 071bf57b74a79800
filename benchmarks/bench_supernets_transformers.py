"""Cost of building, running and exporting the transformer sub-networks at their real sizes.

    .venv/bin/python benchmarks/bench_supernets_transformers.py [--spaces hat bert vit]
        [--configs sampled smallest largest] [--exporter dynamo|legacy] [--runs 5]

For each space and config (a seeded sample, or the smallest / largest sub-network), at the registered
super-network's real sizes (HAT: 32768-token vocabulary, 30-token source, 5 beams × 30-token prefix;
BERT: 30522-token vocabulary, 128 tokens; ViT: 224×224), prints: parameters (M), build time (random
weights), torch forward median (ms, 1 thread), ONNX export time (s) and size (MB), ONNX Runtime forward
median (ms, 1 thread) and the largest |ORT − torch| difference of the outputs.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from fleetnas.supernets import get_supernet


def timed(fn, runs: int) -> tuple[float, object]:
    """Median wall time (ms) of `runs` calls after one warm-up call, and the last result."""
    result = fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), result


def inputs_for(supernet, config) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for spec in supernet.input_specs(config):
        if spec["name"] == "attention_mask":
            arrays[spec["name"]] = np.ones(spec["shape"], np.int64)
        elif spec["dtype"] == "int64":
            arrays[spec["name"]] = rng.integers(0, supernet.vocab_size, spec["shape"])
        else:
            arrays[spec["name"]] = rng.standard_normal(spec["shape"]).astype(np.float32)
    return arrays


def export(module, args: tuple, names: list[str], path: Path, exporter: str) -> None:
    if exporter == "dynamo":
        torch.onnx.export(module, args, str(path), input_names=names, dynamo=True, external_data=False, verbose=False)
    else:
        torch.onnx.export(module, args, str(path), input_names=names, dynamo=False, opset_version=17)


def bench(space_id: str, which: str, exporter: str, runs: int, tmp: Path) -> None:
    import onnxruntime as ort

    supernet = get_supernet(space_id)
    config = {"sampled": lambda: supernet.space.sample(1, rng=0)[0],
              "smallest": lambda: {v.name: min(v.choices) for v in supernet.space.variables},
              "largest": lambda: {v.name: max(v.choices) for v in supernet.space.variables}}[which]()
    start = time.perf_counter()
    module = supernet.build(config)
    build_s = time.perf_counter() - start
    params_m = sum(p.numel() for p in module.parameters()) / 1e6
    arrays = inputs_for(supernet, config)
    names = list(arrays)
    args = tuple(torch.from_numpy(arrays[n]) for n in names)
    with torch.inference_mode():
        torch_ms, expected = timed(lambda: module(*args), runs)
    path = tmp / f"{space_id}-{which}.onnx"
    start = time.perf_counter()
    export(module, args, names, path, exporter)
    export_s = time.perf_counter() - start
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: arrays[i.name] for i in session.get_inputs()}
    ort_ms, (got, *_) = timed(lambda: session.run(None, feeds), runs)
    diff = float(np.abs(got - expected.numpy()).max())
    print(f"{space_id:5} {which:8} {params_m:7.1f} {build_s:8.2f} {torch_ms:10.1f} {export_s:9.2f} "
          f"{path.stat().st_size / 1e6:8.1f} {ort_ms:8.1f} {diff:10.2e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spaces", nargs="+", default=["hat", "bert", "vit"])
    parser.add_argument("--configs", nargs="+", default=["sampled"], choices=["sampled", "smallest", "largest"])
    parser.add_argument("--exporter", default="dynamo", choices=["dynamo", "legacy"])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    print(f"exporter: {args.exporter}; medians of {args.runs} runs after one warm-up, 1 thread")
    print(f"{'space':5} {'config':8} {'params M':>7} {'build s':>8} {'torch ms':>10} {'export s':>9} "
          f"{'onnx MB':>8} {'ort ms':>8} {'max |diff|':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for space_id in args.spaces:
            for which in args.configs:
                bench(space_id, which, args.exporter, args.runs, Path(tmp))


if __name__ == "__main__":
    main()
