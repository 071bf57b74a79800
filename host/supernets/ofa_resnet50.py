"""Once-for-All ResNet50 (Cai et al., ICLR 2020): the `ofa_resnet50` super-network (a ResNet-50-D family).

Space "ofa_resnet50", named after OFA's arch dicts ({"d": [5], "e": [18], "w": [6]}):
- `d_0` in {0, 2}: the input stem's depth choice; 0 skips the stem's middle (residual) 3x3 conv, as OFA does
  for any value below its maximum (OFA's sampler draws only 0 or 2).
- `d_1`..`d_4` in {0, 1, 2}: added to the base depths [2, 2, 4, 2], so stages run 2-4, 2-4, 4-6, 2-4 blocks.
- `e_0`..`e_17` in {0.2, 0.25, 0.35}: each block's bottleneck ratio (its middle channels are
  make_divisible(round(out_channels * e))); the e of a skipped block does not change the network.
- `w_0`..`w_5` in {0.65, 0.8, 1.0}: width multipliers of the stem's first two convs, the stem's last conv,
  and the four stages (OFA stores them as indices into this list; here they are the multipliers).
- `r`: input resolution 128 to 224 in steps of 4.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .ofa_common import RESOLUTIONS, ImageSuperNetwork, make_divisible, per_item
from .space import Config, SearchSpace, Variable

STEM_DEPTHS = (0, 2)
DEPTHS = (0, 1, 2)
EXPANDS = (0.2, 0.25, 0.35)
WIDTHS = (0.65, 0.8, 1.0)
BASE_DEPTHS = (2, 2, 4, 2)
STAGE_WIDTHS = (256, 512, 1024, 2048)
STAGE_STRIDES = (1, 2, 2, 2)
MAX_BLOCKS = tuple(b + max(DEPTHS) for b in BASE_DEPTHS)  # (4, 4, 6, 4)
N_BLOCKS = sum(MAX_BLOCKS)
N_CLASSES = 1000

SPACE = SearchSpace(
    "ofa_resnet50",
    [Variable("d_0", STEM_DEPTHS)] + [Variable(f"d_{j}", DEPTHS) for j in range(1, 5)]
    + per_item("e", N_BLOCKS, EXPANDS) + per_item("w", 6, WIDTHS) + [Variable("r", RESOLUTIONS)],
    description="Once-for-All ResNet50: stem depth, 4 stage depths +{0,1,2}, 18 bottleneck ratios "
                "{0.2,0.25,0.35}, 6 width multipliers {0.65,0.8,1.0}, resolution 128-224",
)


@dataclass(frozen=True)
class BottleneckPlan:
    index: int        # position among the super-network's 18 blocks
    cin: int
    cout: int
    mid: int
    stride: int
    downsample: bool  # the first block of a stage: avg-pool + 1x1 conv on the shortcut


@dataclass(frozen=True)
class Plan:
    resolution: int
    stem: tuple[tuple[int, int, int], ...]  # (cin, cout, stride) of each 3x3 stem conv
    stem_skip: bool                         # the middle stem conv (a residual one) is skipped
    blocks: tuple[BottleneckPlan, ...]
    n_classes: int = N_CLASSES


def stem_widths(w0: float, w1: float) -> tuple[int, int]:
    """(channels of the stem's first two convs, channels of its last), as OFA derives them."""
    return make_divisible(make_divisible(64 * w0) // 2), make_divisible(64 * w1)


def middle_channels(cout: int, expand: float) -> int:
    return make_divisible(round(cout * expand))


def plan(config: Config) -> Plan:
    c = SPACE.validate(config)
    mid_stem, stem_out = stem_widths(c["w_0"], c["w_1"])
    stem = ((3, mid_stem, 2), (mid_stem, mid_stem, 1), (mid_stem, stem_out, 1))
    blocks, cin, first = [], stem_out, 0
    for s in range(4):
        cout = make_divisible(STAGE_WIDTHS[s] * c[f"w_{s + 2}"])
        for j in range(BASE_DEPTHS[s] + c[f"d_{s + 1}"]):
            i = first + j
            blocks.append(BottleneckPlan(i, cin, cout, middle_channels(cout, c[f"e_{i}"]),
                                         STAGE_STRIDES[s] if j == 0 else 1, j == 0))
            cin = cout
        first += MAX_BLOCKS[s]
    return Plan(c["r"], stem, c["d_0"] < max(STEM_DEPTHS), tuple(blocks))


def supernet_config() -> Config:
    """The largest sub-network: every choice at its maximum (the shapes of the super-network's tensors)."""
    return {v.name: max(v.choices) for v in SPACE.variables}


def to_arch(config: Config) -> dict:
    """OFA's arch dict: {"d": [5], "e": [18], "w": [6 indices into (0.65, 0.8, 1.0)], "r": int}."""
    c = SPACE.validate(config)
    return {"d": [c[f"d_{j}"] for j in range(5)], "e": [c[f"e_{i}"] for i in range(N_BLOCKS)],
            "w": [WIDTHS.index(c[f"w_{k}"]) for k in range(6)], "r": c["r"]}


def from_arch(arch: dict) -> Config:
    config = {f"d_{j}": v for j, v in enumerate(arch["d"])}
    config["d_0"] = max(STEM_DEPTHS) if config.get("d_0") == max(STEM_DEPTHS) else min(STEM_DEPTHS)
    config.update({f"e_{i}": v for i, v in enumerate(arch["e"])})
    config.update({f"w_{k}": WIDTHS[int(v)] for k, v in enumerate(arch["w"])})
    config["r"] = arch.get("r", 224)
    return SPACE.validate(config)


class OFAResNet50(ImageSuperNetwork):
    space = SPACE

    def build(self, config: Config, weights: Any = None):
        """A standalone ResNet for `config`: random weights, or sliced from OFA's `ofa_resnet50` checkpoint.

        `weights`: None, a path to a checkpoint in OFA's layout (read with torch.load(weights_only=True)), or
        such a state dict.
        """
        from . import ofa_nets

        return ofa_nets.build_resnet(plan(config), weights)

    def unused(self, config: Config) -> set[str]:
        """The bottleneck ratios of each stage's blocks beyond its depth; and the stem's first width where it
        rounds to the channels of the first choice (0.8 and 0.65 both give 24)."""
        config = SPACE.validate(config)
        firsts = [sum(MAX_BLOCKS[:s]) for s in range(4)]
        unused = {f"e_{firsts[s] + j}" for s in range(4)
                  for j in range(BASE_DEPTHS[s] + config[f"d_{s + 1}"], MAX_BLOCKS[s])}
        if stem_widths(config["w_0"], config["w_1"]) == stem_widths(WIDTHS[0], config["w_1"]):
            unused.add("w_0")
        return unused

    def random_supernet_state_dict(self, seed: int = 0, layout: str = "nested") -> dict:
        """A full-size super-network state dict in OFA's layout, with random values (for tests)."""
        from . import ofa_nets

        return ofa_nets.random_resnet_state_dict(plan(supernet_config()), seed, layout)


SUPERNET = OFAResNet50()
