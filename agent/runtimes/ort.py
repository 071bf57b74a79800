"""ONNX Runtime on the CPU."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

# ONNX type strings as ONNX Runtime reports them -> numpy dtype names.
ONNX_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
    "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool",
}


def version() -> str:
    return ort.__version__


class OrtModel:
    def __init__(self, path: str, threads: int):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads burn the idle core and add noise on small boards.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self._feeds: dict[str, np.ndarray] = {}

    def input_specs(self) -> list[dict]:
        specs = []
        for i in self.session.get_inputs():
            if i.type not in ONNX_TYPES:
                raise ValueError(f"input {i.name!r} has type {i.type}, which the agent cannot generate")
            shape = [d if isinstance(d, int) and d >= 0 else -1 for d in i.shape]
            specs.append({"name": i.name, "shape": shape, "dtype": ONNX_TYPES[i.type]})
        return specs

    def set_inputs(self, arrays: dict[str, np.ndarray]) -> None:
        self._feeds = dict(arrays)

    def run(self) -> None:
        self.session.run(None, self._feeds)

    def memory_figures(self) -> dict:
        return {}


def load(path: str, threads: int) -> OrtModel:
    return OrtModel(path, threads)
