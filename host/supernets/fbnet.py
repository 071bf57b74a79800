"""FBNet (table-only): 22 searchable layers, 9 candidate blocks each, as in the FBNet / HW-NAS-Bench space.

Keys use the benchmark's `op_idx_list` format: the op index of each layer, space-separated
(`7 8 1 8 4 ...`). Op names follow the `arch_str` column: `k{kernel}_e{expansion}[_g2]`, or `skip`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from .base import SuperNetwork
from .space import Config, InvalidConfig, SearchSpace, Variable

OPS = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")
#: (output channels, stride) of each searchable layer, after a 3x3 stride-2 stem to 16 channels at 224².
LAYERS = ((16, 1),
          (24, 2), (24, 1), (24, 1), (24, 1),
          (32, 2), (32, 1), (32, 1), (32, 1),
          (64, 2), (64, 1), (64, 1), (64, 1),
          (112, 1), (112, 1), (112, 1), (112, 1),
          (184, 2), (184, 1), (184, 1), (184, 1),
          (352, 1))
STEM_CHANNELS, INPUT_SIDE, HEAD_CHANNELS, NUM_CLASSES = 16, 224, 1984, 1000
#: Side of the last layer's output, which the head sees.
HEAD_SIDE = INPUT_SIDE // 2 // math.prod(stride for _, stride in LAYERS)


def layer_name(i: int) -> str:
    return f"layer_{i:02d}"


def block_shape(op: str) -> tuple[int, int, int]:
    """(kernel, expansion, groups) of a block name; skip is (0, 0, 0)."""
    if op == "skip":
        return 0, 0, 0
    parts = op.split("_")
    return int(parts[0][1:]), int(parts[1][1:]), int(parts[2][1:]) if len(parts) > 2 else 1


class FBNetSpace(SearchSpace):
    """Keys in the benchmark's `op_idx_list` format instead of the generic JSON list."""

    def __init__(self):
        super().__init__("fbnet", [Variable(layer_name(i), OPS) for i in range(len(LAYERS))],
                         description="FBNet: 22 layers x 9 blocks")

    def key(self, config: Config) -> str:
        config = self.validate(config)
        return " ".join(str(OPS.index(config[n])) for n in self.names)

    def from_key(self, key: str) -> Config:
        if not isinstance(key, str):
            raise InvalidConfig(f"an fbnet key is a string of op indices, got {type(key).__name__}")
        tokens = key.split()
        if len(tokens) != self.n_var or not all(t.isdigit() and int(t) < len(OPS) for t in tokens):
            raise InvalidConfig(f"{key!r:.120} is not an fbnet op_idx_list: it needs {self.n_var} "
                                f"space-separated op indices 0..{len(OPS) - 1}")
        return self.validate({n: OPS[int(t)] for n, t in zip(self.names, tokens)})


SPACE = FBNetSpace()


class FBNet(SuperNetwork):
    space = SPACE
    table_only = True

    def predictor_features(self, config: Config) -> dict[str, float]:
        """The analytic features, plus an additive kernel view (nn-Meter's): per block type, the pointwise
        and depthwise MACs and the activation bytes of the layers that use it. A model then learns one cost
        per unit of work of each block type instead of one per (layer, block): 27 numbers, not 198."""
        layers = _layers(SPACE.validate(config))
        features = _analytic(layers, batch=1)
        for op in OPS:
            features.update({f"{op}_pointwise_macs": 0.0, f"{op}_depthwise_macs": 0.0, f"{op}_activation_bytes": 0.0})
        for layer in layers:
            features[f"{layer.op}_pointwise_macs"] += layer.pointwise_macs
            features[f"{layer.op}_depthwise_macs"] += layer.depthwise_macs
            features[f"{layer.op}_activation_bytes"] += layer.activation_bytes
        return features

    def analytic_features(self, config: Config, batch: int = 1) -> dict[str, float]:
        """MACs, parameters and activation bytes of the ImageNet network (inverted-residual blocks:
        grouped 1x1 expansion, kxk depthwise, grouped 1x1 projection; a skip that changes shape is a 1x1
        convolution), and each stage's MACs, so that a model can weigh early (large) layers differently."""
        return _analytic(_layers(SPACE.validate(config)), batch)


def _analytic(layers: list["_Layer"], batch: int) -> dict[str, float]:
    side = INPUT_SIDE // 2
    macs = batch * side * side * 3 * STEM_CHANNELS * 9
    params = 3 * STEM_CHANNELS * 9
    activation = batch * side * side * STEM_CHANNELS * 4.0
    stage_macs = [0.0] * 7
    for i, layer in enumerate(layers):
        layer_macs = layer.pointwise_macs + layer.depthwise_macs
        macs += batch * layer_macs
        params += layer.params
        activation += batch * layer.activation_bytes
        stage_macs[_stage(i)] += batch * layer_macs
    c_in = LAYERS[-1][0]
    macs += batch * (HEAD_SIDE * HEAD_SIDE * c_in * HEAD_CHANNELS + HEAD_CHANNELS * NUM_CLASSES)
    params += c_in * HEAD_CHANNELS + HEAD_CHANNELS * NUM_CLASSES + NUM_CLASSES
    features = {"macs": float(macs), "params": float(params), "activation_bytes": float(activation)}
    features.update({f"stage{s}_macs": float(m) for s, m in enumerate(stage_macs)})
    return features


class _Layer(NamedTuple):
    op: str
    pointwise_macs: float
    depthwise_macs: float
    params: float
    activation_bytes: float   # batch 1


def _layers(config: Config) -> list[_Layer]:
    """Each searchable layer's work at batch 1, in order."""
    side, c_in = INPUT_SIDE // 2, STEM_CHANNELS
    layers = []
    for i, (c_out, stride) in enumerate(LAYERS):
        out_side = side // stride
        op = config[layer_name(i)]
        kernel, expansion, groups = block_shape(op)
        if kernel:
            hidden = c_in * expansion
            pointwise = side * side * c_in * hidden / groups + out_side * out_side * hidden * c_out / groups
            depthwise = out_side * out_side * hidden * kernel * kernel
            params = c_in * hidden / groups + hidden * kernel * kernel + hidden * c_out / groups
            activation = (side * side * hidden + out_side * out_side * (hidden + c_out)) * 4.0
        elif (c_in, stride) != (c_out, 1):
            pointwise, depthwise = out_side * out_side * c_in * c_out, 0.0
            params, activation = c_in * c_out, out_side * out_side * c_out * 4.0
        else:
            pointwise = depthwise = params = activation = 0.0
        layers.append(_Layer(op, float(pointwise), float(depthwise), float(params), float(activation)))
        side, c_in = out_side, c_out
    return layers


def _stage(layer: int) -> int:
    return 0 if layer == 0 else min(6, 1 + (layer - 1) // 4)


SUPERNET = FBNet()
