"""NAS-Bench-201 (table-only): one cell of 4 nodes, 6 edges, 5 operations per edge.

The same cell is stacked 15 times in the CIFAR network (3 stages of 5 cells, 16/32/64 channels at 32²/16²/8²,
joined by ResNet reduction blocks). Keys use the benchmark's own `cellstr` format, where each `+`-separated
group lists the edges into node i as `op~j` (j = the edge's source node):

    |avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|
"""
from __future__ import annotations

import re

from .base import SuperNetwork
from .space import Config, InvalidConfig, SearchSpace, Variable

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: (target node, source node) of each edge, in `cellstr` order.
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
#: (channels, height = width) of the three stages of the CIFAR network; 5 cells each.
STAGES = ((16, 32), (32, 16), (64, 8))
CELLS_PER_STAGE = 5
NUM_CLASSES = 10


def edge_name(target: int, source: int) -> str:
    return f"edge_{target}_{source}"


_GROUP = re.compile(r"\|([a-z0-9_]+)~(\d)")


class NB201Space(SearchSpace):
    """Keys in the benchmark's `cellstr` format instead of the generic JSON list."""

    def __init__(self):
        super().__init__("nb201", [Variable(edge_name(t, s), OPS) for t, s in EDGES],
                         description="NAS-Bench-201 cell: 6 edges x 5 operations (15,625 cells)")

    def key(self, config: Config) -> str:
        config = self.validate(config)
        return "+".join("|" + "|".join(f"{config[edge_name(node, s)]}~{s}" for s in range(node)) + "|"
                        for node in (1, 2, 3))

    def from_key(self, key: str) -> Config:
        if not isinstance(key, str):
            raise InvalidConfig(f"an nb201 key is a cellstr string, got {type(key).__name__}")
        groups = key.strip().split("+")
        if len(groups) != 3:
            raise InvalidConfig(f"{key!r:.120} is not an nb201 cellstr: it needs 3 '+'-separated node groups")
        config = {}
        for node, group in enumerate(groups, start=1):
            edges = _GROUP.findall(group)
            if "".join(f"|{op}~{s}" for op, s in edges) + "|" != group or [int(s) for _, s in edges] != list(range(node)):
                raise InvalidConfig(f"nb201 cellstr group {group!r} should read "
                                    + "".join(f"|op~{s}" for s in range(node)) + "|")
            for op, source in edges:
                config[edge_name(node, int(source))] = op
        return self.validate(config)


SPACE = NB201Space()


def live_edges(config: Config) -> list[tuple[int, int]]:
    """Edges a graph compiler must compute: those whose source node depends on the cell's input through
    non-`none` edges. The others see a constant (zeros) and fold away; when node 3 itself is constant, the
    whole network's output is, and nothing is left (such rows have near-zero latency on Pixel 3).
    A `none` edge from a live node stays, as a multiplication by zero (x·0 is not folded: NaN·0 is NaN)."""
    reached = {0}
    for t, s in EDGES:          # EDGES is topologically ordered
        if config[edge_name(t, s)] != "none" and s in reached:
            reached.add(t)
    return [(t, s) for t, s in EDGES if s in reached] if 3 in reached else []


def useful_edges(config: Config) -> list[tuple[int, int]]:
    """Edges on some path from the cell's input to its output through non-`none` edges: the ones whose
    result can change what the cell computes (what accuracy depends on; Pixel 3's compiled graphs also keep
    little else)."""
    forward = {0}
    for t, s in EDGES:
        if config[edge_name(t, s)] != "none" and s in forward:
            forward.add(t)
    backward = {3}
    for t, s in reversed(EDGES):
        if config[edge_name(t, s)] != "none" and t in backward:
            backward.add(s)
    return [(t, s) for t, s in EDGES if config[edge_name(t, s)] != "none" and s in forward and t in backward]


#: The cell's four input-to-output paths, as edge lists.
PATHS = (((3, 0),), ((1, 0), (3, 1)), ((2, 0), (3, 2)), ((1, 0), (2, 1), (3, 2)))
CONVS = ("nor_conv_1x1", "nor_conv_3x3")


def path_features(config: Config) -> dict[str, float]:
    """How information can flow through the cell: open paths, and convolutions along them.

    `conv_free_paths` counts the open paths with no convolution on them (skips and pools only): how much of
    the cell's output bypasses every learned layer. `min_conv_depth` says only whether there is one. From
    100 random cells, this one column raised the accuracy predictor's Kendall τ over all 15,625 from 0.715 to
    0.772 (CIFAR-10) and from 0.727 to 0.760 (ImageNet16): about what doubling the rows to 200 gave without
    it (0.749, 0.763; benchmarks/bench_accuracy_predictor.py)."""
    open_paths = [p for p in PATHS if all(config[edge_name(*e)] != "none" for e in p)]
    depths = [sum(config[edge_name(*e)] in CONVS for e in p) for p in open_paths]
    features = {"open_paths": float(len(open_paths)), "max_conv_depth": float(max(depths, default=-1)),
                "min_conv_depth": float(min(depths, default=-1)),
                "conv_free_paths": float(sum(depth == 0 for depth in depths))}
    for i, path in enumerate(PATHS):
        is_open = path in open_paths
        features[f"path{i}_open"] = float(is_open)
        for op in OPS[1:]:
            features[f"path{i}_{op}"] = float(is_open and sum(config[edge_name(*e)] == op for e in path))
    return features


class NB201(SuperNetwork):
    space = SPACE
    table_only = True

    def predictor_features(self, config: Config) -> dict[str, float]:
        return self.analytic_features(config)

    #: The recorded latencies were measured on graphs that run the dead edges.
    unused_parts_run = True

    def unused(self, config: Config) -> set[str]:
        """The edges off every input-to-output path (`useful_edges`), whose canonical choice is "none": 6,345
        of the 15,625 cells share their function with others, and with it their accuracy up to training noise."""
        useful = set(useful_edges(SPACE.validate(config)))
        return {edge_name(t, s) for t, s in EDGES if (t, s) not in useful}

    def analytic_features(self, config: Config, batch: int = 1) -> dict[str, float]:
        """MACs, parameters and activation bytes of the CIFAR network as a graph compiler runs it, counting
        only the cell's live edges (`live_edges`), plus how many live edges use each operation."""
        config = SPACE.validate(config)
        live = live_edges(config)
        macs = params = activation = 0.0
        for channels, side in STAGES:
            pixels = side * side
            for t, s in live:
                op = config[edge_name(t, s)]
                k2 = {"nor_conv_1x1": 1, "nor_conv_3x3": 9}.get(op, 0)
                macs += CELLS_PER_STAGE * batch * k2 * pixels * channels * channels
                params += CELLS_PER_STAGE * (k2 * channels * channels + (2 * channels if k2 else 0))
                activation += CELLS_PER_STAGE * batch * pixels * channels * 4.0
        # A constant network (no live edge) folds to its output: nothing of the stem or the reductions runs.
        fixed_macs, fixed_params, fixed_activation = _fixed_parts(batch) if live else (0.0, 0.0, 0.0)
        features = {"macs": macs + fixed_macs, "params": params + fixed_params,
                    "activation_bytes": activation + fixed_activation, "live_edges": float(len(live)), "constant_output": float(not live)}
        useful = useful_edges(config)
        for op in OPS:
            features[f"live_{op}"] = float(sum(config[edge_name(t, s)] == op for t, s in live))
            features[f"useful_{op}"] = float(sum(config[edge_name(t, s)] == op for t, s in useful))
        features.update(path_features(config))
        return features


def _fixed_parts(batch: int) -> tuple[float, float, float]:
    """The parts outside the cells: 3x3 stem to 16 channels, two ResNet reduction blocks, linear classifier."""
    macs = batch * 32 * 32 * 3 * 16 * 9
    params = 3 * 16 * 9 + 2 * 16
    activation = batch * 32 * 32 * 16 * 4.0
    for (c_in, _), (c_out, side) in zip(STAGES, STAGES[1:]):
        pixels = side * side
        macs += batch * pixels * (9 * c_in * c_out + 9 * c_out * c_out + c_in * c_out)
        params += 9 * c_in * c_out + 9 * c_out * c_out + c_in * c_out + 4 * c_out
        activation += batch * pixels * c_out * 4.0 * 3
    macs += batch * STAGES[-1][0] * NUM_CLASSES
    params += STAGES[-1][0] * NUM_CLASSES + NUM_CLASSES
    return float(macs), float(params), activation


SUPERNET = NB201()
