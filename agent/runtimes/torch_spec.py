"""PyTorch: builds a sub-network on the device from a spec, never from received code or pickles.

A spec is JSON: {"space": "<super-network id>", "config": {...}, "inputs": [{"name", "shape", "dtype"}]}.
The super-network's builder is found through the `fleetnas.supernets` entry point group, so that any
installed super-network package (FleetNAS's built-ins or a user's own) can be built by id. Its `build`
validates the config (JSON lists are accepted where a choice is a tuple) and raises on a bad one, which the
worker reports to the client as INVALID_ARGUMENT. The host writes specs with `fleetnas export --format spec`.
"""
from __future__ import annotations

import importlib.metadata
import json

import numpy as np
import torch

ENTRY_POINT_GROUP = "fleetnas.supernets"


def version() -> str:
    return torch.__version__.split("+")[0]


def find_supernet(space: str):
    """The registered super-network object for `space` (it offers build(config) -> torch.nn.Module)."""
    points = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    if space not in points:
        known = ", ".join(sorted(points)) or "none"
        raise ValueError(f"unknown super-network {space!r}; installed on this device: {known}")
    return points[space].load()


class TorchModel:
    def __init__(self, path: str, threads: int):
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already fixed in this process (only possible once, before any parallel work)
            pass
        with open(path) as f:
            spec = json.load(f)
        supernet = find_supernet(spec["space"])
        torch.manual_seed(0)  # random weights, as the host's exports use: latency does not depend on their values
        self.module = supernet.build(spec["config"]).eval()
        self._specs = [{"name": i["name"], "shape": list(i["shape"]), "dtype": i.get("dtype", "float32")}
                       for i in spec.get("inputs", [])]
        if not self._specs:
            raise ValueError("the spec names no inputs")
        self._args: list[torch.Tensor] = []

    def input_specs(self) -> list[dict]:
        return self._specs

    def set_inputs(self, arrays: dict[str, np.ndarray]) -> None:
        self._args = [torch.from_numpy(arrays[s["name"]]) for s in self._specs]

    def run(self) -> None:
        with torch.inference_mode():
            self.module(*self._args)

    def memory_figures(self) -> dict:
        return {}


def load(path: str, threads: int) -> TorchModel:
    return TorchModel(path, threads)
