"""A small reference model per format, made here (no converter, no download), for `fleetnas devices check`.

The same model on every agent of a kind should take about the same time: a reference latency far from
its peers' flags a device that is throttled, busy or misconfigured.
"""
from __future__ import annotations

import numpy as np

WIDTH, LAYERS = 256, 2


def reference_model(fmt: str) -> bytes | None:
    """A two-layer 256-wide MLP as .onnx or .tflite bytes; None where this host cannot write that format."""
    if fmt == "onnx":
        return onnx_mlp()
    if fmt == "tflite":
        try:
            return tflite_mlp()
        except ImportError:  # the TFLite schema ships with ai-edge-litert, an optional extra on the host
            return None
    return None


def _weights(rng: np.random.Generator, width: int) -> np.ndarray:
    return (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)


def onnx_mlp(width: int = WIDTH, layers: int = LAYERS, seed: int = 0, batch: int | str = 1) -> bytes:
    """MatMul + Relu layers on a [batch, width] float32 input; `batch` may be a symbolic name."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, current = [], [], "input"
    for i in range(layers):
        inits.append(numpy_helper.from_array(_weights(rng, width), f"w{i}"))
        nodes += [helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Relu", [f"m{i}"], [f"h{i}"])]
        current = f"h{i}"
    graph = helper.make_graph(nodes, "fleetnas-reference", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, [batch, width])], [helper.make_tensor_value_info(current, TensorProto.FLOAT,
                                                                                     [batch, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="fleetnas-reference")
    model.ir_version = 8
    return model.SerializeToString()


def tflite_mlp(width: int = WIDTH, layers: int = LAYERS, seed: int = 0, batch: int = 1) -> bytes:
    """FULLY_CONNECTED + RELU layers on a [batch, width] float32 input, written from the TFLite schema."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    rng = np.random.default_rng(seed)
    buffers, tensors, operators = [s.BufferT()], [], []

    def tensor(name: str, shape, data: np.ndarray | None = None) -> int:
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), list(shape), s.TensorType.FLOAT32, 0
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
    current = graph_input = tensor("input", [batch, width])
    for i in range(layers):
        # FULLY_CONNECTED stores weights as [out, in]: the transpose of the ONNX MatMul's [in, out]
        weights = tensor(f"w{i}", [width, width], _weights(rng, width).T)
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
    graph.tensors, graph.operators, graph.inputs, graph.outputs, graph.name = tensors, operators, [graph_input], \
        [current], b"main"
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [graph], buffers
    model.description = b"fleetnas-reference"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
