"""Small real models made by the tests themselves: no converter, no download.

The .tflite files are written directly from the TFLite flatbuffer schema (its Python object API ships
with ai-edge-litert); the .onnx files are built with the onnx helper API.
"""
from __future__ import annotations

import flatbuffers
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tflite_mlp(width: int = 256, layers: int = 2, seed: int = 0, batch: int = 1) -> bytes:
    """A chain of FULLY_CONNECTED + RELU layers on a [batch, width] float32 input."""
    from ai_edge_litert import schema_py_generated as s

    rng = np.random.default_rng(seed)
    buffers = [s.BufferT()]  # buffer 0 is the empty sentinel the schema requires
    tensors = []

    def tensor(name: str, shape, data: np.ndarray | None = None) -> int:
        t = s.TensorT()
        t.name, t.shape, t.type = name.encode(), list(shape), s.TensorType.FLOAT32
        t.buffer = 0
        if data is not None:
            b = s.BufferT()
            b.data = np.frombuffer(data.astype(np.float32).tobytes(), dtype=np.uint8)
            buffers.append(b)
            t.buffer = len(buffers) - 1
        tensors.append(t)
        return len(tensors) - 1

    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
    code.version = 1
    operators = []
    current = tensor("input", [batch, width])
    graph_input = current
    for i in range(layers):
        weights = tensor(f"w{i}", [width, width], rng.standard_normal((width, width)) / np.sqrt(width))
        bias = tensor(f"b{i}", [width], np.zeros(width))
        out = tensor(f"h{i}", [batch, width])
        op = s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = 0, [current, weights, bias], [out]
        op.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
        op.builtinOptions = s.FullyConnectedOptionsT()
        op.builtinOptions.fusedActivationFunction = s.ActivationFunctionType.RELU
        operators.append(op)
        current = out

    graph = s.SubGraphT()
    graph.tensors, graph.operators = tensors, operators
    graph.inputs, graph.outputs = [graph_input], [current]
    graph.name = b"main"
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [graph], buffers
    model.description = b"fleetnas test mlp"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def onnx_mlp(width: int = 256, layers: int = 2, seed: int = 0, batch: int | str = 1) -> bytes:
    """A chain of MatMul + Relu on a [batch, width] float32 input; `batch` may be a symbolic name."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "input"
    for i in range(layers):
        w = numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i}"]))
        current = f"h{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, width])],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, [batch, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="fleetnas-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def onnx_huge_input() -> bytes:
    """A valid model whose declared input has 10^9 elements (4 GB): the agent must refuse, not allocate."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "huge",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1000, 1000, 1000])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1000, 1000, 1000])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()
