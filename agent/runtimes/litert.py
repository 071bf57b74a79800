"""LiteRT (formerly TensorFlow Lite): ai-edge-litert, or tflite-runtime on older device images."""
from __future__ import annotations

import numpy as np

try:
    from ai_edge_litert import interpreter as _interpreter
    PACKAGE = "ai-edge-litert"
except ImportError:  # older images ship only tflite-runtime
    from tflite_runtime import interpreter as _interpreter  # type: ignore[no-redef]
    PACKAGE = "tflite-runtime"


def version() -> str:
    import importlib.metadata
    return importlib.metadata.version(PACKAGE)


class LiteRTModel:
    def __init__(self, path: str, threads: int):
        self.interpreter = _interpreter.Interpreter(model_path=path, num_threads=threads)
        self.interpreter.allocate_tensors()
        self._inputs = self.interpreter.get_input_details()

    def input_specs(self) -> list[dict]:
        specs = []
        for d in self._inputs:
            shape = d.get("shape_signature")  # holds -1 for open dimensions
            if shape is None or len(shape) != len(d["shape"]):
                shape = d["shape"]
            specs.append({"name": d["name"], "shape": [int(x) for x in shape], "dtype": np.dtype(d["dtype"]).name})
        return specs

    def set_inputs(self, arrays: dict[str, np.ndarray]) -> None:
        resized = False
        for d in self._inputs:
            array = arrays[d["name"]]
            if list(d["shape"]) != list(array.shape):
                self.interpreter.resize_tensor_input(d["index"], list(array.shape))
                resized = True
        if resized:
            self.interpreter.allocate_tensors()
            self._inputs = self.interpreter.get_input_details()
        for d in self._inputs:
            self.interpreter.set_tensor(d["index"], arrays[d["name"]])

    def run(self) -> None:
        self.interpreter.invoke()

    def memory_figures(self) -> dict:
        return {}


def load(path: str, threads: int) -> LiteRTModel:
    return LiteRTModel(path, threads)
