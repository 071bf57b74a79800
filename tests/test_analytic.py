"""Analytic features: MACs, parameters and activation bytes checked against hand counts, and their cache."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fleetnas.supernets import InvalidConfig, get_supernet, list_supernets, ofa_mbv3
from fleetnas.supernets import analytic
from fleetnas.supernets.analytic import analytic_features, count_module
from fleetnas.supernets.base import SuperNetwork
from fleetnas.supernets.ofa_nets import Bottleneck, Classifier, ConvLayer, ResNet

torch.set_num_threads(1)  # two threads on two busy cores stall (PACKAGES.md); the tests need no speed-up
F32 = 4


def count(module: nn.Module, *shapes) -> dict:
    return count_module(module.eval(), [torch.randn(s) for s in shapes])


# ----- one layer type at a time --------------------------------------------------------------------------------
@pytest.mark.parametrize("cin, cout, k, stride, padding, dilation, groups, size", [
    (3, 16, 3, 1, 1, 1, 1, 32),
    (8, 16, 3, 2, 1, 1, 1, 33),     # stride 2, odd input
    (16, 16, 5, 1, 4, 2, 1, 20),    # dilation 2
    (8, 16, 3, 2, 2, 2, 4, 32),     # groups 4, dilation and stride together
    (24, 24, 7, 2, 3, 1, 24, 28),   # depthwise
])
def test_conv_macs_are_out_pixels_times_in_channels_per_group_times_kernel(cin, cout, k, stride, padding, dilation,
                                                                          groups, size):
    conv = nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, bias=True)
    out = (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    f = count(conv, (2, cin, size, size))
    assert f["macs"] == 2 * cout * out * out * (cin // groups) * k * k
    assert f["params"] == cout * (cin // groups) * k * k + cout
    assert f["activation_bytes"] == 2 * cout * out * out * F32
    assert f["peak_activation_bytes"] == 2 * (cin * size * size + cout * out * out) * F32


@pytest.mark.parametrize("shape", [(4, 32), (2, 5, 32)])
def test_linear_macs_are_rows_times_in_times_out(shape):
    rows = math.prod(shape[:-1])
    f = count(nn.Linear(32, 64), shape)
    assert f["macs"] == rows * 32 * 64 and f["params"] == 32 * 64 + 64
    assert f["activation_bytes"] == rows * 64 * F32


def test_normalisation_counts_no_macs_but_its_parameters_and_outputs():
    # Documented: BatchNorm folds into the preceding convolution when deployed; LayerNorm is elementwise.
    f = count(nn.Sequential(nn.BatchNorm2d(8), nn.LayerNorm(10)), (2, 8, 10, 10))
    assert f["macs"] == 0 and f["params"] == 2 * 8 + 2 * 10
    assert f["activation_bytes"] == 2 * (2 * 8 * 10 * 10) * F32


def test_multi_head_attention_counts_projections_and_both_products():
    batch, length, dim, heads = 2, 10, 64, 4

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    f = count(Attention(), (batch, length, dim))
    projections = 3 * length * dim * dim + length * dim * dim
    products = 2 * length * length * dim  # Q K^T and softmax(.) V, over all heads
    assert f["macs"] == batch * (projections + products)
    assert f["params"] == 4 * dim * dim + 4 * dim


def test_scaled_dot_product_attention_and_matmuls_in_functional_code_are_counted():
    class Functional(nn.Module):
        def forward(self, q, a, b):
            attended = F.scaled_dot_product_attention(q, q, q)      # [2, 4, 10, 16]
            return attended.sum() + torch.matmul(a, b).sum() + torch.bmm(a, b).sum()

    f = count(Functional(), (2, 4, 10, 16), (3, 5, 7), (3, 7, 6))
    assert f["macs"] == 2 * (2 * 4 * 10 * 10 * 16) + 2 * (3 * 5 * 7 * 6)
    # The module is its own only leaf: its scalar output is all; the functional steps inside add no activations.
    assert f["params"] == 0 and f["activation_bytes"] == F32


def test_activation_bytes_sum_leaf_outputs_and_skip_what_hands_its_input_back():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Identity(), nn.Conv2d(8, 4, 1))
    f = count(net, (1, 3, 16, 16))
    assert f["activation_bytes"] == (8 * 256 + 8 * 256 + 4 * 256) * F32
    assert f["peak_activation_bytes"] == (8 * 256 + 8 * 256) * F32  # the ReLU: its input and its output


def test_features_scale_with_batch_except_parameters():
    supernet = get_supernet("ofa_mbv3")
    config = supernet.space.sample(1, 2)[0]
    one, four = (analytic_features(supernet, config, b, cache=False) for b in (1, 4))
    assert four["macs"] == 4 * one["macs"] and four["activation_bytes"] == 4 * one["activation_bytes"]
    assert four["params"] == one["params"]


def test_counts_at_batch_k_are_k_times_batch_1_and_what_a_pass_at_batch_k_counts():
    """The ground truth of extending small batches' counts: on the demo space, a real forward pass at batch 4
    (how every batch used to be counted) counts exactly 4 x batch 1, parameters aside."""
    supernet = get_supernet("demo")
    for config in supernet.space.sample(3, 4):
        one = analytic_features(supernet, config, 1, cache=False)
        four = analytic_features(supernet, config, 4, cache=False)
        module = supernet.build(config)
        real_pass = count_module(module, [torch.zeros(s["shape"]) for s in supernet.input_specs(config, 4)])
        assert four == real_pass
        assert four == {**{k: 4 * v for k, v in one.items()}, "params": one["params"]}


class _Tiny(nn.Module):
    """A token embedding plus a position embedding (its output has no batch dimension, as BERT's does), then
    a linear layer; with `pairwise`, a leaf whose output grows as batch x batch."""

    def __init__(self, pairwise: bool):
        super().__init__()
        self.tokens, self.positions, self.linear = nn.Embedding(10, 8), nn.Embedding(6, 8), nn.Linear(8, 4)
        self.pairwise = _Pairwise() if pairwise else None

    def forward(self, ids):
        x = self.linear(self.tokens(ids) + self.positions(torch.arange(ids.shape[1])))
        return self.pairwise(x) if self.pairwise is not None else x


class _Pairwise(nn.Module):
    def forward(self, x):
        flat = x.flatten(1)
        return flat @ flat.T


class _TinySuperNetwork(SuperNetwork):
    def __init__(self, pairwise: bool):
        from fleetnas.supernets.space import SearchSpace, Variable

        self.space = SearchSpace(f"tiny_{pairwise}", [Variable("length", (6,))])
        self.pairwise, self.batches = pairwise, []

    def build(self, config, weights=None):
        return _Tiny(self.pairwise).eval()

    def input_specs(self, config, batch=1):
        self.batches.append(batch)
        return [{"name": "ids", "shape": [batch, config["length"]], "dtype": "int64"}]


@pytest.mark.parametrize("pairwise", [False, True])
def test_a_large_batch_is_extended_from_small_ones_not_run(pairwise):
    """`space sample --batch 1024` used to run a forward pass at batch 1024 (GBs for an image network). Counts
    are affine in the batch (the position embedding's part is not multiplied), so batches 1 to 3 suffice;
    a module whose counts are not affine (batch x batch) is still counted right, at the batch itself."""
    supernet = _TinySuperNetwork(pairwise)
    got = analytic_features(supernet, {"length": 6}, 1024, cache=False)
    want = count_module(_Tiny(pairwise).eval(), [torch.zeros(1024, 6, dtype=torch.int64)])
    assert got == want
    assert max(supernet.batches) == (1024 if pairwise else 3)
    assert want["activation_bytes"] != 1024 * analytic_features(supernet, {"length": 6}, 1, cache=False)[
        "activation_bytes"]


# ----- whole networks ----------------------------------------------------------------------------------------
def conv_macs(cin: int, cout: int, k: int, out: int, groups: int = 1) -> int:
    return cout * out * out * (cin // groups) * k * k


RESNET50_STAGES = ((256, 3, 1), (512, 4, 2), (1024, 6, 2), (2048, 3, 2))  # (channels, blocks, stride)


def resnet50_blocks_by_hand(cin: int = 64, size: int = 56) -> tuple[int, int]:
    """MACs and parameters of ResNet-50's 16 bottlenecks and classifier (torchvision's v1.5 layout)."""
    macs = params = 0
    for cout, n, stride in RESNET50_STAGES:
        mid = cout // 4
        for j in range(n):
            s = stride if j == 0 else 1
            out = size // s
            macs += conv_macs(cin, mid, 1, size) + conv_macs(mid, mid, 3, out) + conv_macs(mid, cout, 1, out)
            params += cin * mid + 2 * mid + mid * mid * 9 + 2 * mid + mid * cout + 2 * cout
            if j == 0:
                macs += conv_macs(cin, cout, 1, out)
                params += cin * cout + 2 * cout
            cin, size = cout, out
    return macs + 2048 * 1000, params + 2048 * 1000 + 1000


def test_resnet50_at_224_counts_the_well_known_4_1_g_macs_and_25_6_m_parameters():
    """torchvision's ResNet-50 built from the OFA ResNet builder's own layers (7x7 stem, strided 1x1 shortcut)."""
    blocks, cin = [], 64
    for cout, n, stride in RESNET50_STAGES:
        for j in range(n):
            blocks.append(Bottleneck(cin, cout, cout // 4, stride if j == 0 else 1, "conv" if j == 0 else "identity"))
            cin = cout
    net = ResNet([ConvLayer(3, 64, 7, 2)], blocks, Classifier(2048, 1000))
    f = count(net, (1, 3, 224, 224))
    block_macs, block_params = resnet50_blocks_by_hand()
    assert f["macs"] == conv_macs(3, 64, 7, 112) + block_macs
    assert f["params"] == 3 * 64 * 49 + 2 * 64 + block_params == 25_557_032  # torchvision's figure
    # The literature's "4.1 GFLOPs" (He et al.; 4.09 G in fvcore and ptflops) counts these same MACs.
    assert f["macs"] == pytest.approx(4.09e9, rel=0.005)


def test_ofa_resnet50_at_resnet50_depths_is_resnet50_d():
    """d = [2, 1, 2, 2, 1] gives 3-4-6-3 blocks; OFA's ResNet-50-D stem (three 3x3 convs) replaces the 7x7 conv,
    and its avg-pool + 1x1 shortcut costs what a strided 1x1 conv does."""
    supernet = get_supernet("ofa_resnet50")
    config = {**{v.name: max(v.choices) for v in supernet.space.variables},
              **{f"e_{i}": 0.25 for i in range(18)}, "d_1": 1, "d_4": 1, "r": 224}
    f = analytic_features(supernet, config, cache=False)
    stem = conv_macs(3, 32, 3, 112) + conv_macs(32, 32, 3, 112) + conv_macs(32, 64, 3, 112)
    assert f["macs"] == stem + resnet50_blocks_by_hand()[0]
    assert f["macs"] / 4.09e9 == pytest.approx(1.06, abs=0.01)  # the deep stem's cost over ResNet-50


def mbv3_macs_by_hand(config: dict) -> int:
    p = ofa_mbv3.plan(config)
    size = math.ceil(p.resolution / 2)
    w = p.widths
    macs = conv_macs(3, w[0], 3, size)
    for b in p.blocks:
        out = math.ceil(size / b.stride)
        if b.expand:
            macs += conv_macs(b.cin, b.mid, 1, size)
        macs += conv_macs(b.mid, b.mid, b.kernel, out, groups=b.mid)
        macs += 2 * b.mid * b.se_mid  # squeeze-excite on the pooled 1x1 map
        macs += conv_macs(b.mid, b.cout, 1, out)
        size = out
    return macs + conv_macs(w[-3], w[-2], 1, size) + w[-2] * w[-1] + w[-1] * 1000


@pytest.mark.parametrize("seed", [0, 1])
def test_ofa_mbv3_macs_match_a_hand_count_of_its_layers(seed):
    supernet = get_supernet("ofa_mbv3")
    config = supernet.space.sample(1, seed)[0]
    f = analytic_features(supernet, config, cache=False)
    assert f["macs"] == mbv3_macs_by_hand(config)
    assert f["params"] == sum(p.numel() for p in supernet.build(config).parameters())


def test_the_largest_ofa_mbv3_is_about_ofas_published_size():
    supernet = get_supernet("ofa_mbv3")
    largest = {**{v.name: max(v.choices) for v in supernet.space.variables}, "w": 1.0}
    f = analytic_features(supernet, largest, cache=False)
    assert f["params"] == pytest.approx(7.6e6, rel=0.02)  # the max sub-network's weights (OFA: "7.7M" with tables)
    assert 0.55e9 < f["macs"] < 0.65e9                     # k7 e6 d4 at 224


# ----- the cache ---------------------------------------------------------------------------------------------
def test_features_are_cached_in_memory_and_on_disk(tmp_path, monkeypatch):
    supernet = get_supernet("ofa_resnet50")
    configs = supernet.space.sample(3, 9)
    computed = []
    real = analytic._compute
    monkeypatch.setattr(analytic, "_compute", lambda *a: computed.append(a[1]) or real(*a))

    first = analytic.analytic_features_many(supernet, configs, cache_dir=tmp_path)
    assert len(computed) == 3
    assert analytic.analytic_features_many("ofa_resnet50", configs, cache_dir=tmp_path) == first
    assert len(computed) == 3

    analytic.clear_memory_cache()  # as a new process would start
    (path,) = tmp_path.iterdir()
    assert path.name.startswith("ofa_resnet50-") and path.name.endswith("-b1.jsonl")
    with open(path, "a") as f:
        f.write('{"key": "[1,2", "feat')  # a line a crash cut short
    assert analytic.analytic_features_many(supernet, configs, cache_dir=tmp_path) == first
    assert len(computed) == 3
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()[:3]] == \
        [supernet.space.key(c) for c in configs]

    returned = analytic_features(supernet, configs[0], cache_dir=tmp_path)
    returned["macs"] = -1  # callers get copies: the cache cannot be changed from outside
    assert analytic_features(supernet, configs[0], cache_dir=tmp_path) == first[0]


def test_the_builder_fingerprint_follows_the_builders_source():
    mbv3, resnet = get_supernet("ofa_mbv3"), get_supernet("ofa_resnet50")
    names = [source.split("\n", 1)[0] for source in analytic._sources(ofa_mbv3)]
    assert {"fleetnas.supernets.ofa_mbv3", "fleetnas.supernets.ofa_nets", "fleetnas.supernets.ofa_common",
            "fleetnas.supernets.space"} <= set(names)
    assert len(analytic.builder_fingerprint(mbv3)) == 16
    assert analytic.builder_fingerprint(mbv3) != analytic.builder_fingerprint(resnet)


def test_bad_requests_are_refused():
    config = get_supernet("ofa_mbv3").space.sample(1, 0)[0]
    with pytest.raises(InvalidConfig, match=r"ks_0=4 .*3, 5, 7"):
        analytic_features("ofa_mbv3", {**config, "ks_0": 4}, cache=False)
    with pytest.raises(InvalidConfig, match="lacks r"):
        analytic_features("ofa_mbv3", {k: v for k, v in config.items() if k != "r"}, cache=False)
    with pytest.raises(KeyError, match="no_such_space"):
        analytic_features("no_such_space", {}, cache=False)
    for name in list_supernets():
        try:
            supernet = get_supernet(name)
        except ImportError:
            continue
        if supernet.table_only:
            with pytest.raises(ValueError, match="table-only"):
                analytic_features(supernet, supernet.space.sample(1, 0)[0], cache=False)
