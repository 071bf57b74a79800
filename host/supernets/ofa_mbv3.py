"""Once-for-All MobileNetV3 (Cai et al., ICLR 2020): the `ofa_mbv3_d234_e346_k357` super-network.

Space "ofa_mbv3": 20 elastic blocks, each with a kernel size `ks_i` in {3, 5, 7} and an expand ratio `e_i`
in {3, 4, 6}; 5 stages whose depths `d_j` are in {2, 3, 4} (a stage runs its first d_j of 4 blocks, so the
ks/e of skipped blocks do not change the network); input resolution `r` from 128 to 224 in steps of 4; and
width multiplier `w` of 1.0 or 1.2 (OFA trained one super-network per width, so `w` chooses the checkpoint).

Names follow OFA's own arch dicts ({"ks": [20], "e": [20], "d": [5]}) and the recorded table
shared/data/ofa_mbv3_latency.csv: `config_from_row` / `row_from_config` convert.

Building imports torch; everything else here is plain Python.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from .ofa_common import RESOLUTIONS, ImageSuperNetwork, make_divisible, per_item
from .space import Config, InvalidConfig, SearchSpace, Variable

KERNELS = (3, 5, 7)
EXPANDS = (3, 4, 6)
DEPTHS = (2, 3, 4)
WIDTHS = (1.0, 1.2)
N_STAGES, MAX_DEPTH = 5, 4
N_BLOCKS = N_STAGES * MAX_DEPTH
N_CLASSES = 1000

# OFA's MobileNetV3 layout: first conv, first block, five stages, final expand, feature mix.
BASE_WIDTHS = (16, 16, 24, 40, 80, 112, 160, 960, 1280)
STAGE_STRIDES = (2, 2, 2, 1, 2)
STAGE_ACTS = ("relu", "relu", "h_swish", "h_swish", "h_swish")
STAGE_SE = (False, True, False, True, True)
SE_REDUCTION = 4

SPACE = SearchSpace(
    "ofa_mbv3",
    per_item("ks", N_BLOCKS, KERNELS) + per_item("e", N_BLOCKS, EXPANDS) + per_item("d", N_STAGES, DEPTHS)
    + [Variable("r", RESOLUTIONS), Variable("w", WIDTHS)],
    description="Once-for-All MobileNetV3: 20 blocks x kernel {3,5,7} x expand {3,4,6}, "
                "5 stage depths {2,3,4}, resolution 128-224, width 1.0/1.2",
)


@dataclass(frozen=True)
class BlockPlan:
    """One MBConv block of a sub-network; `index` is its position among the super-network's 21 blocks."""
    index: int
    cin: int
    cout: int
    kernel: int
    stride: int
    mid: int          # channels after the 1x1 expansion (== cin when there is none)
    act: str          # "relu" or "h_swish"
    se_mid: int       # squeeze-excite hidden channels; 0: no SE
    expand: bool      # has the 1x1 inverted-bottleneck convolution

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.cin == self.cout


@dataclass(frozen=True)
class Plan:
    resolution: int
    widths: tuple[int, ...]   # first conv, first block, 5 stages, final expand, feature mix
    blocks: tuple[BlockPlan, ...]
    n_classes: int = N_CLASSES


def stage_widths(width_mult: float) -> tuple[int, ...]:
    return tuple(make_divisible(b * width_mult) for b in BASE_WIDTHS)


def middle_channels(cin: int, expand: float) -> int:
    return make_divisible(round(cin * expand))


def se_channels(mid: int) -> int:
    return make_divisible(mid // SE_REDUCTION)


def _block(index: int, cin: int, cout: int, kernel: int, stride: int, expand: float, act: str, se: bool) -> BlockPlan:
    mid = middle_channels(cin, expand)
    return BlockPlan(index, cin, cout, kernel, stride, mid, act, se_channels(mid) if se else 0, True)


def plan(config: Config) -> Plan:
    """The sub-network `config` names, layer by layer (channels, kernels, strides)."""
    c = SPACE.validate(config)
    widths = stage_widths(c["w"])
    blocks = [BlockPlan(0, widths[0], widths[1], 3, 1, widths[0], "relu", 0, False)]
    cin = widths[1]
    for stage in range(N_STAGES):
        for j in range(c[f"d_{stage}"]):
            i = stage * MAX_DEPTH + j  # index into ks_/e_ (block i + 1 of the super-network)
            blocks.append(_block(i + 1, cin, widths[stage + 2], c[f"ks_{i}"], STAGE_STRIDES[stage] if j == 0 else 1,
                                 c[f"e_{i}"], STAGE_ACTS[stage], STAGE_SE[stage]))
            cin = widths[stage + 2]
    return Plan(c["r"], widths, tuple(blocks))


def supernet_plan(width_mult: float = 1.0) -> Plan:
    """Every block at its largest (kernel 7, expand 6, depth 4): the shapes of the super-network's tensors."""
    config = {**{f"ks_{i}": 7 for i in range(N_BLOCKS)}, **{f"e_{i}": 6 for i in range(N_BLOCKS)},
              **{f"d_{j}": MAX_DEPTH for j in range(N_STAGES)}, "r": 224, "w": width_mult}
    return plan(config)


# ----- the recorded table's layout ---------------------------------------------------------------
def config_from_row(row: dict, width_mult: float = 1.0) -> Config:
    """A config from a row of ofa_mbv3_latency.csv (`ks`, `e`: 20 values, `d`: 5, `r`), space-separated."""
    try:
        ks = [int(v) for v in str(row["ks"]).split()]
        e = [int(v) for v in str(row["e"]).split()]
        d = [int(v) for v in str(row["d"]).split()]
        r = _whole_number(row["r"])
    except KeyError as exc:
        raise InvalidConfig(f"an ofa_mbv3 row needs columns ks, e, d and r; {exc} is missing") from None
    except ValueError as exc:
        raise InvalidConfig(f"an ofa_mbv3 row holds integers: {exc}") from None
    if (len(ks), len(e), len(d)) != (N_BLOCKS, N_BLOCKS, N_STAGES):
        raise InvalidConfig(f"an ofa_mbv3 row lists {N_BLOCKS} ks, {N_BLOCKS} e and {N_STAGES} d values, "
                            f"not {len(ks)}, {len(e)} and {len(d)}")
    return from_arch({"ks": ks, "e": e, "d": d, "r": r, "w": width_mult})


def _whole_number(text) -> int:
    """A resolution as tables write it ("204", "204.0"); 204.5, inf and nan are refused, never rounded."""
    value = float(text)
    if not value.is_integer():
        raise ValueError(f"r must be a whole number of pixels, not {text!r}")
    return int(value)


def row_from_config(config: Config) -> dict:
    """The table's columns for `config`: {"ks": "7 5 ...", "e": "...", "d": "...", "r": 224}."""
    arch = to_arch(config)
    return {"ks": " ".join(map(str, arch["ks"])), "e": " ".join(map(str, arch["e"])),
            "d": " ".join(map(str, arch["d"])), "r": arch["r"]}


def to_arch(config: Config) -> dict:
    """OFA's own arch dict: {"ks": [20], "e": [20], "d": [5], "r": int, "w": float}."""
    c = SPACE.validate(config)
    return {"ks": [c[f"ks_{i}"] for i in range(N_BLOCKS)], "e": [c[f"e_{i}"] for i in range(N_BLOCKS)],
            "d": [c[f"d_{j}"] for j in range(N_STAGES)], "r": c["r"], "w": c["w"]}


def from_arch(arch: dict) -> Config:
    config = {f"ks_{i}": v for i, v in enumerate(arch["ks"])}
    config.update({f"e_{i}": v for i, v in enumerate(arch["e"])})
    config.update({f"d_{j}": v for j, v in enumerate(arch["d"])})
    config.update(r=arch.get("r", 224), w=arch.get("w", 1.0))
    return SPACE.validate(config)


# ----- the super-network ---------------------------------------------------------------------------
class OFAMobileNetV3(ImageSuperNetwork):
    space = SPACE

    def build(self, config: Config, weights: Any = None):
        """A standalone MobileNetV3 for `config`: random weights, or sliced from an OFA super-network checkpoint.

        `weights`: None, a path to a checkpoint in OFA's published layout (read with torch.load(weights_only=True)),
        or such a state dict. The checkpoint's width must match `w`.
        """
        from . import ofa_nets

        return ofa_nets.build_mbv3(plan(config), weights)

    def random_supernet_state_dict(self, width_mult: float = 1.0, seed: int = 0, layout: str = "nested") -> dict:
        """A full-size super-network state dict in OFA's published layout, with random values (for tests)."""
        from . import ofa_nets

        return ofa_nets.random_mbv3_state_dict(supernet_plan(width_mult), seed, layout)

    def predictor_features(self, config: Config) -> dict[str, float]:
        return plan_features(plan(config))

    def unused(self, config: Config) -> set[str]:
        """The kernels and expand ratios of each stage's blocks beyond its depth."""
        config = SPACE.validate(config)
        return {f"{key}_{stage * MAX_DEPTH + j}" for stage in range(N_STAGES)
                for j in range(config[f"d_{stage}"], MAX_DEPTH) for key in ("ks", "e")}


def plan_features(plan: Plan) -> dict[str, float]:
    """Aggregates of a block plan (blocks with cin, cout, kernel, stride, mid, se_mid at a `resolution`):
    approximate MACs of each block (1x1 expansion, depthwise kxk, 1x1 projection, squeeze-excite), summed in
    total and per spatial size, plus the count of blocks and the kernel and width sums per spatial size.
    Only blocks that run count, so choices of skipped blocks cannot mislead the model."""
    side = plan.resolution / 2.0            # after the stride-2 stem
    total = {"macs_approx": 0.0, "blocks": 0.0}
    per_size: dict[int, dict[str, float]] = defaultdict(lambda: {"macs": 0.0, "blocks": 0.0, "kernel": 0.0, "mid": 0.0})
    stage = 0
    for block in plan.blocks:
        if block.stride > 1:
            stage += 1
        out_side = side / block.stride
        expand = side * side * block.cin * block.mid if getattr(block, "expand", True) else 0.0
        macs = (expand + out_side * out_side * block.mid * block.kernel ** 2 + out_side * out_side * block.mid * block.cout
                + 2 * block.mid * getattr(block, "se_mid", 0))
        agg = per_size[stage]
        agg["macs"] += macs
        agg["blocks"] += 1
        agg["kernel"] += block.kernel
        agg["mid"] += block.mid
        total["macs_approx"] += macs
        total["blocks"] += 1
        side = out_side
    features = dict(total)
    for stage in sorted(per_size):
        features.update({f"size{stage}_{k}": v for k, v in per_size[stage].items()})
    return features


SUPERNET = OFAMobileNetV3()
