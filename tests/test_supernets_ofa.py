"""The Once-for-All super-networks: spaces, the recorded table's layout, builders, slicing OFA checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fleetnas.supernets import InvalidConfig, get_supernet
from fleetnas.supernets import ofa_mbv3, ofa_resnet50
from fleetnas.supernets.ofa_common import canonical_key, collapse_key, make_divisible

# Two rows of shared/data/ofa_mbv3_latency.csv (HELP's release), as the csv module reads them.
ROWS = [
    {"ks": "7 5 5 5 7 7 5 7 5 7 3 7 5 3 7 3 5 3 5 3", "e": "6 4 4 6 6 3 4 3 3 6 3 3 3 6 3 4 6 4 3 6",
     "d": "2 2 2 2 3", "r": "204"},
    {"ks": "7 3 5 3 3 7 3 7 3 7 3 7 3 7 7 3 5 5 7 3", "e": "4 6 3 4 4 4 4 6 3 6 6 4 4 6 6 4 3 6 6 4",
     "d": "2 3 4 3 4", "r": "136"},
]
torch.set_num_threads(1)  # two threads on two busy cores stall (PACKAGES.md); the tests need no speed-up
MBV3 = get_supernet("ofa_mbv3")
RESNET = get_supernet("ofa_resnet50")


def first_choices(space) -> dict:
    return space.decode(np.zeros(space.n_var, dtype=np.int64))


# ----- spaces and the recorded table ---------------------------------------------------------------------------
def test_the_entry_points_name_these_supernetworks():
    assert MBV3 is ofa_mbv3.SUPERNET and RESNET is ofa_resnet50.SUPERNET
    assert MBV3.id == "ofa_mbv3" and RESNET.id == "ofa_resnet50"
    assert not MBV3.table_only and not RESNET.table_only


def test_mbv3_space_has_ofas_choices():
    space = MBV3.space
    assert space.n_var == 20 + 20 + 5 + 2
    assert space.variable("ks_19").choices == (3, 5, 7) and space.variable("e_0").choices == (3, 4, 6)
    assert space.variable("d_4").choices == (2, 3, 4) and space.variable("w").choices == (1.0, 1.2)
    assert space.variable("r").choices == tuple(range(128, 225, 4))
    assert space.size == pytest.approx(3.0 ** 45 * 25 * 2)


@pytest.mark.parametrize("row", ROWS)
def test_rows_of_the_recorded_table_map_onto_configs_and_back(row):
    config = ofa_mbv3.config_from_row(row)
    assert config["w"] == 1.0 and config["r"] == int(row["r"])
    assert [config[f"ks_{i}"] for i in range(20)] == [int(v) for v in row["ks"].split()]
    assert [config[f"d_{j}"] for j in range(5)] == [int(v) for v in row["d"].split()]
    assert ofa_mbv3.row_from_config(config) == {**row, "r": int(row["r"])}
    assert ofa_mbv3.from_arch(ofa_mbv3.to_arch(config)) == config
    assert MBV3.space.decode(MBV3.space.encode(config)) == config


@pytest.mark.parametrize("row, message", [
    ({**ROWS[0], "ks": "7 5"}, "20 ks"),
    ({**ROWS[0], "e": ROWS[0]["e"].replace("6", "5", 1)}, r"e_0=5 .*3, 4, 6"),
    ({**ROWS[0], "r": "130"}, r"r=130"),
    ({k: v for k, v in ROWS[0].items() if k != "d"}, "'d'"),
    ({**ROWS[0], "d": "2 2 x 2 3"}, "integers"),
    ({**ROWS[0], "r": "204.5"}, "r must be a whole number of pixels, not '204.5'"),  # never rounded down
    ({**ROWS[0], "r": "inf"}, "r must be a whole number of pixels, not 'inf'"),
])
def test_bad_rows_are_refused_naming_what_is_wrong(row, message):
    with pytest.raises(InvalidConfig, match=message):
        ofa_mbv3.config_from_row(row)


@pytest.mark.parametrize("supernet, change, message", [
    (MBV3, {"ks_3": 9}, r"ks_3=9 is not allowed; choose one of 3, 5, 7"),
    (MBV3, {"w": 0.75}, r"w=0.75 .*1\.0, 1\.2"),
    (RESNET, {"e_17": 0.5}, r"e_17=0.5 .*0\.2, 0\.25, 0\.35"),
    (RESNET, {"d_0": 1}, r"d_0=1 .*0, 2"),
    (RESNET, {"depth": 3}, "no variable 'depth'"),
])
def test_configs_outside_the_space_are_refused_naming_variable_and_choices(supernet, change, message):
    with pytest.raises(InvalidConfig, match=message):
        supernet.build({**first_choices(supernet.space), **change})


def test_resnet_space_follows_ofas_arch_dicts():
    space = RESNET.space
    assert space.n_var == 5 + 18 + 6 + 1
    for config in space.sample(20, 1):
        arch = ofa_resnet50.to_arch(config)
        assert len(arch["d"]) == 5 and len(arch["e"]) == 18 and set(arch["w"]) <= {0, 1, 2}
        assert ofa_resnet50.from_arch(arch) == config
        assert space.from_key(space.key(config)) == config


# ----- builders ------------------------------------------------------------------------------------------------
def test_mbv3_builds_ofas_architecture_for_a_recorded_row():
    config = {**ofa_mbv3.config_from_row(ROWS[1]), "r": 128}
    net = MBV3.build(config)
    active = [1, 2, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 17, 18, 19, 20]  # d = 2 3 4 3 4
    assert len(net.blocks) == 1 + len(active)
    for block, index in zip(net.blocks[1:], active):
        dw = block.conv.depth_conv.conv
        assert dw.kernel_size == (config[f"ks_{index - 1}"],) * 2
        cin = block.conv.inverted_bottleneck.conv.in_channels
        assert dw.out_channels == make_divisible(round(cin * config[f"e_{index - 1}"])) == dw.groups
        stage = (index - 1) // 4
        assert hasattr(block.conv.depth_conv, "se") == (stage in (1, 3, 4))
        act = block.conv.depth_conv.act
        assert isinstance(act, nn.Hardswish if stage >= 2 else nn.ReLU)
    assert [b.conv.point_linear.conv.out_channels for b in net.blocks] == [16, 24, 24] + [40] * 3 + [80] * 4 + [112] * 3 + [160] * 4
    assert [b.residual for b in net.blocks][:4] == [True, False, True, False]
    assert net.final_expand_layer.conv.out_channels == 960 and net.feature_mix_layer.conv.out_channels == 1280
    assert not hasattr(net.feature_mix_layer, "bn")
    out = net(torch.randn(2, 3, 128, 128))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    assert MBV3.input_specs(config, batch=2) == [{"name": "input", "shape": [2, 3, 128, 128], "dtype": "float32"}]


def test_mbv3_width_12_matches_ofas_published_lookup_table_widths():
    # shared/data/ofa_note10_lut: Conv 224x224x3 -> 112x112x24, expanded_conv ...x24 -> 56x56x32, 7x7x192 -> 1152 -> 1536
    net = MBV3.build({**first_choices(MBV3.space), "w": 1.2})
    assert net.first_conv.conv.out_channels == 24 and net.blocks[1].conv.point_linear.conv.out_channels == 32
    assert net.final_expand_layer.conv.in_channels == 192 and net.final_expand_layer.conv.out_channels == 1152
    assert net.feature_mix_layer.conv.out_channels == 1536


def test_resnet_builds_the_depths_widths_and_ratios_asked_for():
    config = {**first_choices(RESNET.space), "d_0": 0, "d_1": 1, "d_3": 2, "e_0": 0.35, "w_2": 1.0}
    net = RESNET.build(config)
    assert len(net.input_stem) == 2  # d_0 = 0 skips the stem's residual conv
    assert len(net.blocks) == 3 + 2 + 6 + 2
    assert net.input_stem[0].conv.out_channels == 24 and net.input_stem[1].conv.out_channels == 40
    assert [net.blocks[i].conv3.conv.out_channels for i in (0, 3, 5, 11)] == [256, 336, 664, 1328]
    assert net.blocks[0].conv1.conv.out_channels == 88    # make_divisible(round(256 * 0.35))
    assert net.blocks[1].conv1.conv.out_channels == 48    # make_divisible(round(256 * 0.2))
    assert [b.downsample is not None for b in net.blocks] == [True, False, False, True, False, True] + [False] * 5 + [True, False]
    assert net.blocks[3].conv2.conv.stride == (2, 2) and net.blocks[3].downsample.avg_pool.stride == 2
    assert net.classifier.linear.in_features == 1328
    assert len(RESNET.build({**config, "d_0": 2}).input_stem) == 3
    assert net(torch.randn(1, 3, 128, 128)).shape == (1, 1000)


def test_checkpoint_keys_of_every_spelling_meet():
    assert canonical_key("module.blocks.3.mobile_inverted_conv.depth_conv.conv.conv.weight") == \
        canonical_key("blocks.3.conv.depth_conv.conv.weight") == "blocks.3.conv.depth_conv.conv.weight"
    assert canonical_key("input_stem.1.conv.conv.conv.weight") == "input_stem.1.conv.weight"
    assert collapse_key("blocks.1.mobile_inverted_conv.inverted_bottleneck.bn.bn.running_var") == \
        "blocks.1.mobile_inverted_conv.inverted_bottleneck.bn.running_var"


# ----- slicing OFA checkpoints (random ones in OFA's layout: nothing is downloaded) -------------------------------
@pytest.fixture(scope="module")
def mbv3_checkpoint(tmp_path_factory):
    """OFA's published layout, saved as OFA saved it ({"state_dict": ...}) and read back from a file."""
    state = MBV3.random_supernet_state_dict(width_mult=1.0, seed=1)
    assert "blocks.5.mobile_inverted_conv.depth_conv.conv.7to5_matrix" in state
    assert "blocks.5.mobile_inverted_conv.inverted_bottleneck.conv.conv.weight" in state
    assert sum(t.numel() for t in state.values()) == pytest.approx(7.7e6, rel=0.01)  # OFA's 7.7 M
    path = tmp_path_factory.mktemp("ckpt") / "ofa_mbv3_d234_e346_k357_w1.0"
    torch.save({"state_dict": state}, path)
    return path, state


def ofa_depthwise(weight: torch.Tensor, matrices: dict, kernel: int) -> torch.Tensor:
    """OFA's get_active_filter, written out for the test: 7 -> 5 -> 3 through the transform matrices."""
    channels = weight.shape[0]
    for src, dst in ((7, 5), (5, 3)):
        if kernel >= src:
            break
        s = (src - dst) // 2
        flat = weight[:, :, s:s + dst, s:s + dst].reshape(channels, dst * dst)
        weight = (flat @ matrices[f"{src}to{dst}"].T).reshape(channels, 1, dst, dst)
    return weight


def test_the_largest_mbv3_takes_the_checkpoint_unchanged(mbv3_checkpoint):
    path, state = mbv3_checkpoint
    largest = {**{v.name: max(v.choices) for v in MBV3.space.variables}, "w": 1.0, "r": 128}
    net = MBV3.build(largest, weights=path)
    mine = net.state_dict()
    theirs = {canonical_key(k): v for k, v in state.items() if not k.endswith(("_matrix", "num_batches_tracked"))}
    assert len(mine) - sum(k.endswith("num_batches_tracked") for k in mine) == len(theirs)
    for key, value in mine.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, theirs[canonical_key(key)]), key


def test_smaller_mbv3_blocks_are_sliced_by_ofas_rules(mbv3_checkpoint):
    path, state = mbv3_checkpoint
    config = {**ofa_mbv3.config_from_row(ROWS[1]), "r": 128}
    net = MBV3.build(config, weights=str(path))
    plan = ofa_mbv3.plan(config)
    for block, bp in zip(net.blocks[1:], plan.blocks[1:]):
        src = f"blocks.{bp.index}.mobile_inverted_conv"
        m = block.conv
        assert torch.equal(m.inverted_bottleneck.conv.weight,
                           state[f"{src}.inverted_bottleneck.conv.conv.weight"][:bp.mid, :bp.cin])
        assert torch.equal(m.inverted_bottleneck.bn.running_var,
                           state[f"{src}.inverted_bottleneck.bn.bn.running_var"][:bp.mid])
        matrices = {n: state[f"{src}.depth_conv.conv.{n}_matrix"] for n in ("7to5", "5to3")}
        want = ofa_depthwise(state[f"{src}.depth_conv.conv.conv.weight"][:bp.mid], matrices, bp.kernel)
        torch.testing.assert_close(m.depth_conv.conv.weight, want)
        if bp.se_mid:
            assert torch.equal(m.depth_conv.se.fc.reduce.weight,
                               state[f"{src}.depth_conv.se.fc.reduce.weight"][:bp.se_mid, :bp.mid])
            assert torch.equal(m.depth_conv.se.fc.expand.bias, state[f"{src}.depth_conv.se.fc.expand.bias"][:bp.mid])
        assert torch.equal(m.point_linear.conv.weight, state[f"{src}.point_linear.conv.conv.weight"][:, :bp.mid])
    assert {b.kernel for b in plan.blocks[1:]} == {3, 5, 7} and {b.mid // b.cin for b in plan.blocks[1:]} == {3, 4, 6}
    out = net(torch.randn(1, 3, 128, 128))
    assert torch.isfinite(out).all()


def test_a_flat_spelling_of_the_checkpoint_gives_the_same_network(mbv3_checkpoint):
    _, state = mbv3_checkpoint
    flat = {"module." + collapse_key(k): v for k, v in state.items()}
    assert "module.blocks.5.mobile_inverted_conv.inverted_bottleneck.conv.weight" in flat
    config = MBV3.space.sample(1, 7)[0] | {"w": 1.0}
    a, b = MBV3.build(config, state).state_dict(), MBV3.build(config, flat).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_that_does_not_fit_is_refused_clearly(mbv3_checkpoint):
    _, state = mbv3_checkpoint
    config = first_choices(MBV3.space)
    with pytest.raises(ValueError, match="width"):
        MBV3.build({**config, "w": 1.2}, state)
    missing = {k: v for k, v in state.items() if "blocks.1." not in k}
    with pytest.raises(ValueError, match=r"no tensor 'blocks\.1\.conv\.inverted_bottleneck\.conv\.weight'"):
        MBV3.build(config, missing)
    small = {**state, "classifier.linear.weight": state["classifier.linear.weight"][:, :100]}
    with pytest.raises(ValueError, match=r"classifier\.linear\.weight.*\(1000, 100\)"):
        MBV3.build(config, small)


@pytest.fixture(scope="module")
def resnet_checkpoint():
    return RESNET.random_supernet_state_dict(seed=2)


def test_resnet_sub_networks_are_sliced_from_the_checkpoint(resnet_checkpoint):
    state = resnet_checkpoint
    assert "input_stem.1.conv.conv.conv.weight" in state and "classifier.linear.linear.weight" in state
    config = {**RESNET.space.sample(1, 5)[0], "d_0": 2, "w_0": 0.65, "w_2": 0.8, "e_0": 0.2, "r": 128}
    net = RESNET.build(config, state)
    stem_mid = net.input_stem[0].conv.out_channels
    assert torch.equal(net.input_stem[0].conv.weight, state["input_stem.0.conv.conv.weight"][:stem_mid])
    assert torch.equal(net.input_stem[1].conv.conv.weight,
                       state["input_stem.1.conv.conv.conv.weight"][:stem_mid, :stem_mid])
    b0 = net.blocks[0]
    mid, cin, cout = b0.conv1.conv.out_channels, b0.conv1.conv.in_channels, b0.conv3.conv.out_channels
    assert (mid, cout) == (40, 208)  # make_divisible(round(208 * 0.2)), make_divisible(256 * 0.8)
    assert torch.equal(b0.conv2.conv.weight, state["blocks.0.conv2.conv.conv.weight"][:mid, :mid])
    assert torch.equal(b0.downsample.conv.weight, state["blocks.0.downsample.conv.conv.weight"][:cout, :cin])
    assert torch.equal(b0.conv3.bn.bias, state["blocks.0.conv3.bn.bn.bias"][:cout])
    last = net.classifier.linear
    assert torch.equal(last.weight, state["classifier.linear.linear.weight"][:, :last.in_features])
    flat = {collapse_key(k): v for k, v in state.items()}
    assert "blocks.0.conv1.conv.weight" in flat
    again = RESNET.build(config, flat).state_dict()
    assert all(torch.equal(v, again[k]) for k, v in net.state_dict().items())
    assert torch.isfinite(net(torch.randn(1, 3, 128, 128))).all()


def _block_key(config: dict, block: int) -> str:
    """The nested-layout key prefix of the plan's `block`-th block (its index in the super-network)."""
    return f"blocks.{ofa_mbv3.plan(config).blocks[block].index}.mobile_inverted_conv"


def test_a_checkpoint_tensor_of_the_wrong_shape_is_refused_naming_both_shapes(mbv3_checkpoint):
    """Every dimension is checked, not only the leading ones: a 1x1 kernel used to broadcast silently into a
    3x3 one, a 2-D bias to fail with torch's RuntimeError, a too-small depthwise kernel with an IndexError."""
    _, state = mbv3_checkpoint
    config = {**first_choices(MBV3.space), "ks_0": 7}
    dw = _block_key(config, 1) + ".depth_conv.conv.conv.weight"
    cases = [
        ("first_conv.conv.weight", state["first_conv.conv.weight"][:, :, :1, :1].clone(),
         r"'first_conv\.conv\.weight' has shape \(16, 3, 1, 1\); this sub-network needs \(≥16, ≥3, 3, 3\)"),
        ("classifier.linear.bias", torch.zeros(1000, 3),
         r"'classifier\.linear\.bias' has shape \(1000, 3\); this sub-network needs \(≥1000,\)"),
        (dw, state[dw][:, :, 2:5, 2:5].clone(),
         r"has shape \(\d+, 1, 3, 3\); this sub-network needs \(≥\d+, 1, 7, 7\)"),
        (dw, state[dw].expand(-1, 2, -1, -1).clone(), r"has shape \(\d+, 2, 7, 7\)"),
    ]
    for key, tensor, message in cases:
        with pytest.raises(ValueError, match=message):
            MBV3.build(config, {**state, key: tensor})
    small_kernel = {**config, "ks_0": 3}  # goes through both kernel-transform matrices
    matrix = _block_key(small_kernel, 1) + ".depth_conv.conv.5to3_matrix"
    with pytest.raises(ValueError, match=r"5to3_matrix' has shape \(9, 8\); this sub-network needs \(9, 9\)"):
        MBV3.build(small_kernel, {**state, matrix: state[matrix][:, :8].clone()})


def test_checkpoint_files_that_are_not_tensor_dicts_are_refused_naming_the_path(tmp_path):
    """Each case is a clear error naming the path; torch's own message (which suggests weights_only=False,
    exactly what must not be done with a file from anywhere) never reaches the user."""
    import argparse

    config = first_choices(MBV3.space)
    pickled, listed, tensorless = tmp_path / "pickled.pth", tmp_path / "listed.pth", tmp_path / "tensorless.pth"
    torch.save({"state_dict": {}, "args": argparse.Namespace(arch="ofa")}, pickled)
    torch.save([torch.zeros(2)], listed)
    torch.save({"epoch": 3}, tensorless)
    cases = [(pickled, ValueError, "cannot be read as tensors alone"),
             (listed, ValueError, "holds a list, not a state dict"),
             (tensorless, ValueError, "hold no tensors"),
             (tmp_path / "absent.pth", FileNotFoundError, "no ofa_mbv3 checkpoint file at"),
             (tmp_path, IsADirectoryError, "is a directory")]
    for path, error, message in cases:
        with pytest.raises(error, match=message) as caught:
            MBV3.build(config, path)
        assert str(path) in str(caught.value) and "weights_only=False" not in str(caught.value)
    with pytest.raises(TypeError, match="a state dict or a path to a checkpoint, got int"):
        RESNET.build(first_choices(RESNET.space), 42)
