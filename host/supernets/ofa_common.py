"""What the two Once-for-All super-networks share, without torch: channel rounding, resolutions, checkpoint keys.

OFA's published checkpoints were saved by more than one version of its code, so the same tensor may be
stored as `blocks.3.mobile_inverted_conv.depth_conv.conv.conv.weight` (dynamic modules nest a plain module
under the same name) or as `blocks.3.mobile_inverted_conv.depth_conv.conv.weight`. `canonical_key` maps
every spelling to one: `mobile_inverted_conv` becomes `conv`, and a segment that repeats the one before it
(`conv.conv`, `bn.bn`, `linear.linear`) is said once.
"""
from __future__ import annotations

import os
from typing import Any

from .base import SuperNetwork
from .space import Config, Variable

CHANNEL_DIVISIBLE = 8
RESOLUTIONS = tuple(range(128, 225, 4))  # OFA's elastic resolution: 128 to 224 in steps of 4
_COLLAPSE = {"conv", "bn", "linear"}


def make_divisible(value: float, divisor: int = CHANNEL_DIVISIBLE) -> int:
    """OFA's (and TF-slim's) channel rounding: nearest multiple of `divisor`, never more than 10 % down."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def per_item(prefix: str, count: int, choices: tuple) -> list[Variable]:
    return [Variable(f"{prefix}_{i}", tuple(choices)) for i in range(count)]


def canonical_key(key: str) -> str:
    return collapse_key(".".join("conv" if part == "mobile_inverted_conv" else part
                                 for part in key.removeprefix("module.").split(".")))


def collapse_key(key: str) -> str:
    """`a.conv.conv.weight` -> `a.conv.weight`: a `conv`, `bn` or `linear` segment repeated is said once."""
    parts: list[str] = []
    for part in key.split("."):
        if not (parts and part == parts[-1] and part in _COLLAPSE):
            parts.append(part)
    return ".".join(parts)


def load_state_dict(weights: Any, owner: str) -> dict:
    """A checkpoint's tensors under canonical keys, from a mapping or a path (read as tensors alone, never
    otherwise: `_checkpoint.read_weights` names the path when the file is missing, a directory or not tensors)."""
    import torch

    from ._checkpoint import read_weights

    if weights is None:
        raise ValueError("no weights given")
    state = read_weights(weights, owner)
    out = {canonical_key(key): value for key, value in state.items()
           if isinstance(key, str) and isinstance(value, torch.Tensor)}
    if not out:
        where = f" in {weights}" if isinstance(weights, (str, os.PathLike)) else ""
        raise ValueError(f"the {owner} weights{where} hold no tensors: not an OFA super-network checkpoint")
    return out


class ImageSuperNetwork(SuperNetwork):
    """A super-network of image classifiers: one float32 NCHW input whose side is the config's `r`."""

    def input_specs(self, config: Config, batch: int = 1) -> list[dict]:
        r = self.space.validate(config)["r"]
        return [{"name": "input", "shape": [int(batch), 3, r, r], "dtype": "float32"}]
