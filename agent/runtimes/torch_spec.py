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
from dataclasses import dataclass

import numpy as np
import torch

ENTRY_POINT_GROUP = "fleetnas.supernets"
#: The input dtypes a spec may name: those the agent generates and torch takes from numpy.
DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")


def version() -> str:
    return torch.__version__.split("+")[0]


def find_supernet(space: str):
    """The registered super-network object for `space` (it offers build(config) -> torch.nn.Module)."""
    points = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    if space not in points:
        known = ", ".join(sorted(points)) or "none"
        raise ValueError(f"unknown super-network {space!r}; installed on this device: {known}")
    return points[space].load()


@dataclass(frozen=True)
class PreparedSpec:
    """A checked spec and its super-network, whose package is imported: what comes before the model itself."""
    spec: dict
    supernet: object


def prepare(path: str) -> PreparedSpec:
    """Reads and checks the spec, and imports its super-network's package; the worker calls this before it
    takes the memory baseline, so that the package's import is not counted as the model's."""
    with open(path) as f:
        spec = json.load(f)
    check_spec(spec)
    return PreparedSpec(spec, find_supernet(spec["space"]))


def check_spec(spec) -> None:
    """Raises ValueError naming the first wrongly typed field: found here, not after a whole measurement."""
    if not isinstance(spec, dict) or not {"space", "config"} <= spec.keys():
        raise ValueError('a torch spec is a JSON object with "space" and "config"')
    if not isinstance(spec["space"], str) or not spec["space"]:
        raise ValueError(f"spec field space must be a non-empty string, got {spec['space']!r:.80}")
    declared = spec.get("inputs")
    if not isinstance(declared, list) or not declared:
        raise ValueError("the spec names no inputs: inputs must be a non-empty list")
    names = set()
    for i, given in enumerate(declared):
        _check_input(f"inputs[{i}]", given)
        if given["name"] in names:
            raise ValueError(f"spec field inputs[{i}].name {given['name']!r} names an input twice")
        names.add(given["name"])


def _check_input(where: str, given) -> None:
    if not isinstance(given, dict):
        raise ValueError(f"spec field {where} must be an object with name, shape and dtype, got {given!r:.80}")
    name, shape, dtype = given.get("name"), given.get("shape"), given.get("dtype", "float32")
    if not isinstance(name, str) or not name:
        raise ValueError(f"spec field {where}.name must be a non-empty string, got {name!r:.80}")
    if not isinstance(shape, list) or not all(type(d) is int and d > 0 for d in shape):
        raise ValueError(f"spec field {where}.shape must be a list of positive integers, got {shape!r:.80}")
    if _numpy_name(dtype) not in DTYPES:  # numpy's spellings too ("long", "half"), as inputs are drawn by numpy
        raise ValueError(f"spec field {where}.dtype must be one of {', '.join(DTYPES)}, got {dtype!r:.80}")


def _numpy_name(dtype) -> str | None:
    try:
        return np.dtype(dtype).name if isinstance(dtype, str) else None
    except TypeError:
        return None


class TorchModel:
    def __init__(self, prepared: PreparedSpec, threads: int):
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already fixed in this process (only possible once, before any parallel work)
            pass
        spec = prepared.spec
        torch.manual_seed(0)  # random weights, as the host's exports use: latency does not depend on their values
        self.module = prepared.supernet.build(spec["config"]).eval()
        self._specs = [{"name": i["name"], "shape": list(i["shape"]), "dtype": i.get("dtype", "float32")}
                       for i in spec["inputs"]]
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


def load(source: "str | PreparedSpec", threads: int) -> TorchModel:
    """A model from a spec's path, or from what prepare() made of it."""
    return TorchModel(source if isinstance(source, PreparedSpec) else prepare(source), threads)
