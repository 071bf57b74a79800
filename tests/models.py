"""Small real models made by the tests themselves: no converter, no download.

The .tflite files are written directly from the TFLite flatbuffer schema (its Python object API ships
with ai-edge-litert); the .onnx files are built with the onnx helper API.
"""
from __future__ import annotations

from onnx import TensorProto, helper

# The project's own MLP writers (they make the reference model of `fleetnas devices check`).
from fleetnas.farm.reference import onnx_mlp, tflite_mlp  # noqa: F401


def onnx_huge_input() -> bytes:
    """A valid model whose declared input has 10^9 elements (4 GB): the agent must refuse, not allocate."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "huge",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1000, 1000, 1000])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1000, 1000, 1000])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def onnx_unallocatable_output() -> bytes:
    """A valid model whose output, 200,000 × 200,000 floats (160 GB), no device can allocate: the runtime's own
    allocation failure, not a MemoryError."""
    from onnx import numpy_helper
    import numpy as np

    shape = numpy_helper.from_array(np.array([200_000, 200_000], dtype=np.int64), "shape")
    graph = helper.make_graph([helper.make_node("Expand", ["x", "shape"], ["y"])], "unallocatable",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def onnx_unknown_op(name_length: int) -> bytes:
    """A model whose one operator no runtime knows, named by `name_length` characters: its load error, which
    names the operator, is as long."""
    graph = helper.make_graph([helper.make_node("Op" + "X" * name_length, ["x"], ["y"], domain="unknown.ops")],
                              "unknown_op", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("unknown.ops", 1)])
    model.ir_version = 8
    return model.SerializeToString()
