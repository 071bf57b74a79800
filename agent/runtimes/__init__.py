"""The runtimes an agent can measure with, behind one small interface.

A runtime module offers `version() -> str` and `load(path, threads) -> Model`, where a Model has
`input_specs()`, `set_inputs(arrays)`, `run()` (one inference, the thing that is timed) and
`memory_figures()`. A runtime module may also offer `prepare(path)`, whose result `load` then takes in
place of the path: work a model needs that is not the model itself (torch: importing the super-network's
package), done before the worker's memory baseline so that it is not counted in the model's peak.
Runtime modules are imported only inside the measuring child process; the agent itself learns what is
installed from package metadata, without importing anything.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

from ..proto import agent_pb2 as pb

if TYPE_CHECKING:
    import numpy as np


class Model(Protocol):
    def input_specs(self) -> list[dict]: ...          # [{"name", "shape" (-1 = open), "dtype"}]
    def set_inputs(self, arrays: "dict[str, np.ndarray]") -> None: ...
    def run(self) -> None: ...
    def memory_figures(self) -> dict: ...             # e.g. {"runtime_arena_bytes": n}; {} when unknown


@dataclass(frozen=True)
class RuntimeEntry:
    name: str
    adapter: str                       # module under fleetnas_agent.runtimes
    packages: tuple[tuple[str, str], ...]  # (import name, distribution name), in order of preference
    formats: tuple[int, ...]

    def installed(self) -> tuple[str, str] | None:
        """(import name, distribution) of the first installed provider, found without importing it."""
        for module, dist in self.packages:
            try:
                if importlib.util.find_spec(module) is not None:
                    return module, dist
            except (ImportError, ValueError):
                continue
        return None

    def info(self) -> pb.RuntimeInfo:
        found = self.installed()
        info = pb.RuntimeInfo(name=self.name, available=found is not None, formats=self.formats)
        if found:
            info.package = found[1]
            info.version = _dist_version(found[1])
        return info


RUNTIMES: dict[str, RuntimeEntry] = {
    "litert": RuntimeEntry("litert", "litert", (("ai_edge_litert", "ai-edge-litert"),
                                                ("tflite_runtime", "tflite-runtime")),
                           (pb.ARTIFACT_FORMAT_TFLITE,)),
    "onnxruntime": RuntimeEntry("onnxruntime", "ort", (("onnxruntime", "onnxruntime"),),
                                (pb.ARTIFACT_FORMAT_ONNX,)),
    "torch": RuntimeEntry("torch", "torch_spec", (("torch", "torch"),), (pb.ARTIFACT_FORMAT_TORCH_SPEC,)),
}
DEFAULT_FOR_FORMAT = {fmt: entry.name for entry in RUNTIMES.values() for fmt in entry.formats}


def describe_runtimes() -> list[pb.RuntimeInfo]:
    return [entry.info() for entry in RUNTIMES.values()]


def resolve(name: str, artifact_format: int) -> RuntimeEntry:
    """The runtime to use; raises ValueError with a message fit for the client."""
    if not name:
        name = DEFAULT_FOR_FORMAT.get(artifact_format, "")
    entry = RUNTIMES.get(name)
    if entry is None:
        raise ValueError(f"unknown runtime {name!r}; this agent knows {', '.join(RUNTIMES)}")
    if artifact_format not in entry.formats:
        kind = {pb.ARTIFACT_FORMAT_TFLITE: "TFLite model", pb.ARTIFACT_FORMAT_ONNX: "ONNX model",
                pb.ARTIFACT_FORMAT_TORCH_SPEC: "torch spec"}.get(artifact_format, "unrecognised")
        raise ValueError(f"runtime {name!r} cannot run this {kind} artifact; it runs "
                         f"{', '.join(pb.ArtifactFormat.Name(f).removeprefix('ARTIFACT_FORMAT_').lower() for f in entry.formats)}")
    return entry


def load_adapter(name: str) -> ModuleType:
    """Imports the adapter (and with it the runtime itself): call this only in the measuring child."""
    return importlib.import_module(f"{__name__}.{RUNTIMES[name].adapter}")


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""
