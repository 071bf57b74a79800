"""The transformer super-networks: HAT, elastic BERT and elastic ViT — spaces, HAT's features, builders,
checkpoint slicing and ONNX export.

Builders are exercised on reduced-size instances (small vocabularies, short sequences, 32×32 images):
their layers keep the real widths, only the inputs and the embedding tables shrink.
"""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from fleetnas.supernets import InvalidConfig, get_supernet
from fleetnas.supernets import elastic_bert, elastic_vit, hat

SMALL = {
    "hat": hat.HatSuperNetwork(vocab_size=50, source_length=7, target_length=5, beam=2),
    "bert": elastic_bert.ElasticBertSuperNetwork(vocab_size=40, sequence_length=9, num_labels=3),
    "vit": elastic_vit.ElasticViTSuperNetwork(image_size=32, num_classes=10),
}
MODULES = {"hat": hat, "bert": elastic_bert, "vit": elastic_vit}
SPACE_IDS = tuple(SMALL)


def inputs_for(supernet, config, batch=1, seed=0) -> list[torch.Tensor]:
    """Valid inputs for the module: token ids within the vocabulary, a full attention mask, an image."""
    rng = np.random.default_rng(seed)
    tensors = []
    for spec in supernet.input_specs(config, batch):
        if spec["name"] == "attention_mask":
            tensors.append(torch.ones(spec["shape"], dtype=torch.int64))
        elif spec["dtype"] == "int64":
            tensors.append(torch.from_numpy(rng.integers(0, supernet.vocab_size, spec["shape"])))
        else:
            tensors.append(torch.from_numpy(rng.standard_normal(spec["shape"]).astype(np.float32)))
    return tensors


def run(module, inputs):
    with torch.no_grad():
        return module(*inputs)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the machines running the tests have two cores, shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def supernet_weights():
    """Each small super-network's state dict (random, seeded), made once; most tests build from it,
    which is much faster than initialising tens of millions of weights again."""
    return {sid: supernet.supernet_state_dict(seed=1) for sid, supernet in SMALL.items()}


# ----- spaces ----------------------------------------------------------------------------------------------
def test_registered_under_their_ids():
    for sid, module in MODULES.items():
        supernet = get_supernet(sid)
        assert supernet is module.SUPERNET
        assert supernet.id == sid and not supernet.table_only


def test_space_shapes_match_the_published_spaces():
    space = hat.SPACE
    assert space.n_var == 4 + 6 * 2 + 6 * 4
    assert space.variable("encoder_layer_num").choices == (6,)
    assert space.variable("decoder_layer_num").choices == (1, 2, 3, 4, 5, 6)
    assert space.variable("encoder_ffn_embed_dim_5").choices == (1024, 2048, 3072)
    assert space.variable("decoder_arbitrary_ende_attn_0").choices == (-1, 1, 2)
    assert hat.LATENCY_DATASET_SPACE.variable("decoder_ende_attention_heads_3").choices == (2, 4, 8)
    for space in (hat.SPACE, elastic_bert.SPACE, elastic_vit.SPACE):  # index 0 is the cheapest choice
        assert space.decode([0] * space.n_var) == {v.name: min(v.choices) for v in space.variables}
    assert elastic_bert.SPACE.n_var == 1 + 12 * 2
    assert elastic_bert.SPACE.variable("num_attention_heads_11").choices == (6, 8, 10, 12)
    assert elastic_vit.SPACE.n_var == 2 + 14 * 2
    assert elastic_vit.SPACE.variable("mlp_ratio_13").choices == (3.5, 4.0)


@pytest.mark.parametrize("sid", SPACE_IDS)
def test_encodings_keys_and_json_round_trip(sid):
    space = SMALL[sid].space
    configs = space.sample(25, rng=3) + space.latin_hypercube(10, rng=4)
    for config in configs:
        assert space.is_valid(config)
        assert space.decode(space.encode(config)) == config
        assert space.from_key(space.key(config)) == config
        assert space.from_json(space.to_json(config)) == config
    rng = np.random.default_rng(5)
    for a, b in zip(configs, configs[1:]):
        assert space.is_valid(space.mutate(a, rng))
        assert space.is_valid(space.crossover(a, b, rng))
    assert len({space.key(c) for c in configs}) == len(configs)


@pytest.mark.parametrize("sid, variable, bad, allowed", [
    ("hat", "decoder_embed_dim", 768, "640"),
    ("hat", "decoder_arbitrary_ende_attn_2", 3, "-1"),
    ("hat", "encoder_layer_num", 5, "6"),
    ("bert", "num_layers", 13, "12"),
    ("bert", "intermediate_size_4", 4096, "3072"),
    ("vit", "mlp_ratio_0", 3.0, "3.5"),
    ("vit", "embed_dim", 256, "240"),
])
def test_invalid_values_are_rejected_naming_variable_and_choices(sid, variable, bad, allowed):
    supernet = SMALL[sid]
    config = {**MODULES[sid].SMALLEST, variable: bad}
    for call in (supernet.space.validate, supernet.build, supernet.input_specs):
        with pytest.raises(InvalidConfig) as caught:
            call(config)
        assert variable in str(caught.value) and allowed in str(caught.value)


def test_missing_and_unknown_variables_are_rejected():
    config = dict(elastic_bert.SMALLEST)
    del config["intermediate_size_7"]
    with pytest.raises(InvalidConfig, match="intermediate_size_7"):
        SMALL["bert"].build(config)
    with pytest.raises(InvalidConfig, match="num_heads_14"):
        elastic_vit.SPACE.validate({**elastic_vit.SMALLEST, "num_heads_14": 3})


@pytest.mark.parametrize("make, message", [
    (lambda: hat.HatSuperNetwork(vocab_size=0), "vocab_size"),
    (lambda: hat.HatSuperNetwork(beam=2.5), "beam"),
    (lambda: elastic_bert.ElasticBertSuperNetwork(sequence_length=600), "512"),
    (lambda: elastic_vit.ElasticViTSuperNetwork(image_size=50), "multiple"),
])
def test_bad_sizes_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_unused_layers_do_not_change_the_architecture(supernet_weights):
    base = {**hat.LARGEST, "decoder_layer_num": 2}
    other = {**base, "decoder_ffn_embed_dim_4": 1024, "decoder_arbitrary_ende_attn_5": -1}
    assert hat.architecture(base) == hat.architecture(other)
    supernet, weights = SMALL["hat"], supernet_weights["hat"]
    inputs = inputs_for(supernet, base)
    assert torch.equal(run(supernet.build(base, weights), inputs), run(supernet.build(other, weights), inputs))
    assert elastic_bert.architecture({**elastic_bert.LARGEST, "num_layers": 6, "num_attention_heads_9": 6}) == \
        elastic_bert.architecture({**elastic_bert.LARGEST, "num_layers": 6})


# ----- HAT's features --------------------------------------------------------------------------------------
def hat_config(encoder_ffn, encoder_heads, decoder_ffn, decoder_heads, ende_heads, arbitrary, *, dims=(640, 640)):
    """A flat HAT config from per-layer lists (decoder lists as long as the decoder); unused layers get
    values that would change the averages if they were wrongly counted."""
    config = {"encoder_embed_dim": dims[0], "encoder_layer_num": 6, "decoder_embed_dim": dims[1],
              "decoder_layer_num": len(decoder_ffn)}
    for i in range(6):
        config[f"encoder_ffn_embed_dim_{i}"] = encoder_ffn[i]
        config[f"encoder_self_attention_heads_{i}"] = encoder_heads[i]
        used = i < len(decoder_ffn)
        config[f"decoder_ffn_embed_dim_{i}"] = decoder_ffn[i] if used else 512
        config[f"decoder_self_attention_heads_{i}"] = decoder_heads[i] if used else 2
        config[f"decoder_ende_attention_heads_{i}"] = ende_heads[i] if used else 2
        config[f"decoder_arbitrary_ende_attn_{i}"] = arbitrary[i] if used else 2
    return config


def test_hat_features_average_the_used_layers():
    config = hat_config([3072, 2048, 1024, 1024, 2048, 3072], [8, 4, 8, 4, 8, 4],
                        [1024, 2048, 2048], [4, 8, 8], [8, 8, 4], [-1, 1, 2], dims=(512, 640))
    assert hat.hat_features(config) == {
        "encoder_embed_dim": 512.0, "encoder_layer_num": 6.0,
        "encoder_ffn_embed_dim_avg": 2048.0, "encoder_self_attention_heads_avg": 6.0,
        "decoder_embed_dim": 640.0, "decoder_layer_num": 3.0,
        "decoder_ffn_embed_dim_avg": pytest.approx(5120 / 3), "decoder_self_attention_heads_avg": pytest.approx(20 / 3),
        "decoder_ende_attention_heads_avg": pytest.approx(20 / 3),
        "decoder_arbitrary_ende_attn_avg": 2.0,  # -1, 1, 2 attend to 1, 2, 3 encoder layers
    }
    assert list(hat.hat_features(config)) == list(hat.FEATURE_NAMES)


# Two rows of HAT's published wmt14ende_cpu_xeon_all.csv (features only), and configs that produce them.
CSV_ROWS = [
    ("640,6,1194.6666666666667,4.666666666666667,640,3,1877.3333333333333,4.0,5.333333333333333,2.0",
     hat_config([3072, 1024, 1024, 1024, 512, 512], [8, 4, 4, 4, 4, 4], [3072, 2048, 512], [4, 4, 4],
                [8, 4, 4], [-1, 1, 2])),
    ("640,6,1109.3333333333333,6.333333333333333,512,1,512.0,8.0,8.0,2.0",
     hat_config([3072, 1024, 1024, 512, 512, 512], [8, 8, 8, 8, 4, 2], [512], [8], [8], [1], dims=(640, 512))),
]


@pytest.mark.parametrize("row, config", CSV_ROWS)
def test_hat_features_reproduce_rows_of_hats_latency_dataset(row, config):
    expected = [float(v) for v in row.split(",")]
    assert list(hat.hat_features(config).values()) == pytest.approx(expected, rel=1e-12)
    assert not hat.SPACE.is_valid(config)  # FFN 512 / 2 heads: only in the wider latency-dataset space


# Per-column minima and maxima over both of HAT's WMT'14 En-De latency datasets (cpu_xeon, gpu_titanxp).
CSV_RANGES = {
    "encoder_embed_dim": (512, 640), "encoder_layer_num": (6, 6),
    "encoder_ffn_embed_dim_avg": (512, 3072), "encoder_self_attention_heads_avg": (2, 8),
    "decoder_embed_dim": (512, 640), "decoder_layer_num": (1, 6),
    "decoder_ffn_embed_dim_avg": (512, 3072), "decoder_self_attention_heads_avg": (2, 8),
    "decoder_ende_attention_heads_avg": (2, 8), "decoder_arbitrary_ende_attn_avg": (1, 3),
}


def test_hat_features_span_exactly_the_ranges_of_hats_latency_datasets():
    space = hat.LATENCY_DATASET_SPACE
    low = hat.hat_features({v.name: min(v.choices) for v in space.variables})
    high = hat.hat_features({v.name: max(v.choices) for v in space.variables})
    assert {k: (low[k], high[k]) for k in hat.FEATURE_NAMES} == CSV_RANGES
    for config in hat.SPACE.sample(200, rng=7):  # the search space lies inside the datasets' ranges
        for name, value in hat.hat_features(config).items():
            lo, hi = CSV_RANGES[name]
            assert lo <= value <= hi, name


def test_hat_nested_configs_convert_both_ways():
    # HAT's published SubTransformer HAT_wmt14ende_xeon@137.9ms_bleu@25.8.yml (one decoder layer).
    published = {"encoder": {"encoder_embed_dim": 512, "encoder_layer_num": 6,
                             "encoder_ffn_embed_dim": [3072] * 6, "encoder_self_attention_heads": [4, 8, 8, 8, 8, 8]},
                 "decoder": {"decoder_embed_dim": 512, "decoder_layer_num": 1, "decoder_ffn_embed_dim": [3072],
                             "decoder_self_attention_heads": [8], "decoder_ende_attention_heads": [8],
                             "decoder_arbitrary_ende_attn": [1]}}
    config = hat.from_hat_config(published)
    assert hat.hat_features(config)["encoder_self_attention_heads_avg"] == pytest.approx(44 / 6)
    assert hat.hat_features(config)["decoder_arbitrary_ende_attn_avg"] == 2.0
    assert hat.from_hat_config(hat.to_hat_config(config)) == config
    with pytest.raises(InvalidConfig, match="decoder"):
        hat.from_hat_config({"encoder": published["encoder"]})


# ----- builders ----------------------------------------------------------------------------------------------
def expected_params(sid: str, supernet, config) -> int:
    """Parameter count written out from each paper's layer formulas, independently of the builders."""
    def linear(n_in, n_out):
        return n_in * n_out + n_out

    if sid == "hat":
        arch, q = hat.architecture(config), hat.QKV_DIM
        de, dd = arch.encoder_embed_dim, arch.decoder_embed_dim
        def attn(dq, dk):
            return linear(dq, q) + 2 * linear(dk, q) + linear(q, dq)
        total = supernet.vocab_size * max(de, dd)
        total += sum(attn(de, de) + 4 * de + linear(de, l.ffn_dim) + linear(l.ffn_dim, de) for l in arch.encoder)
        total += sum(attn(dd, dd) + attn(dd, de) + 6 * dd + linear(dd, l.ffn_dim) + linear(l.ffn_dim, dd)
                     for l in arch.decoder)
        return total
    if sid == "bert":
        h = elastic_bert.HIDDEN_SIZE
        total = (supernet.vocab_size + 512 + 2) * h + 2 * h + linear(h, h) + linear(h, supernet.num_labels)
        for layer in elastic_bert.architecture(config).layers:
            width = layer.heads * 64
            total += 3 * linear(h, width) + linear(width, h) + linear(h, layer.intermediate_size)
            total += linear(layer.intermediate_size, h) + 4 * h
        return total
    arch = elastic_vit.architecture(config)
    e, patches = arch.embed_dim, (supernet.image_size // 16) ** 2
    total = e * 3 * 16 * 16 + e + e + (patches + 1) * e + 2 * e + linear(e, supernet.num_classes)
    for block in arch.blocks:
        width = block.heads * 64
        total += 4 * e + 3 * linear(e, width) + linear(width, e) + linear(e, block.mlp_dim) + linear(block.mlp_dim, e)
    return total


def output_shape(sid: str, supernet, batch: int) -> tuple:
    if sid == "hat":
        return (batch * supernet.beam, supernet.target_length, supernet.vocab_size)
    return (batch, supernet.num_labels if sid == "bert" else supernet.num_classes)


@pytest.mark.parametrize("sid", SPACE_IDS)
def test_random_initialisation_fills_every_weight(sid, supernet_weights):
    # Storage starts as NaN (see _transformer.build_module): a weight left out would stay NaN.
    for name, tensor in supernet_weights[sid].items():
        assert torch.isfinite(tensor).all(), name
        if tensor.dim() >= 2:  # matrices, tables, kernels: random, not constant
            assert tensor.std() > 0, name


@pytest.mark.parametrize("sid", SPACE_IDS)
def test_sampled_sub_networks_build_with_the_right_size_and_run(sid, supernet_weights):
    supernet = SMALL[sid]
    # The smallest with random weights, two samples with the super-network's.
    cases = [(MODULES[sid].SMALLEST, None), *((c, supernet_weights[sid]) for c in supernet.space.sample(2, rng=11))]
    for config, weights in cases:
        module = supernet.build(config, weights)
        assert sum(p.numel() for p in module.parameters()) == expected_params(sid, supernet, config)
        out = run(module, inputs_for(supernet, config, batch=2))
        assert tuple(out.shape) == output_shape(sid, supernet, batch=2)
        assert torch.isfinite(out).all()


def test_builds_are_seeded_and_leave_the_global_generator_alone():
    supernet, config = SMALL["vit"], elastic_vit.SMALLEST
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = supernet.build(config, seed=4)
    assert torch.equal(torch.rand(1), before)
    b, c = supernet.build(config, seed=4), supernet.build(config, seed=5)
    assert torch.equal(a.head.weight, b.head.weight) and not torch.equal(a.head.weight, c.head.weight)


def test_input_specs_follow_hats_measurement_and_the_sizes():
    config = hat.SMALLEST
    assert hat.SUPERNET.input_specs(config, batch=1) == [
        {"name": "src_tokens", "shape": [1, 30], "dtype": "int64"},
        {"name": "prev_output_tokens", "shape": [5, 30], "dtype": "int64"}]
    assert elastic_bert.SUPERNET.input_specs(elastic_bert.SMALLEST, batch=3)[1] == \
        {"name": "attention_mask", "shape": [3, 128], "dtype": "int64"}
    assert elastic_vit.SUPERNET.input_specs(elastic_vit.SMALLEST)[0]["shape"] == [1, 3, 224, 224]


def test_hat_decoder_is_causal_and_each_beam_reads_its_own_sentence(supernet_weights):
    supernet = SMALL["hat"]
    module = supernet.build(hat.LARGEST, supernet_weights["hat"])
    src, prev = inputs_for(supernet, hat.LARGEST, batch=2)
    src[1] = (src[0] + 1) % supernet.vocab_size
    prev[:] = prev[0]  # every hypothesis the same prefix
    out = run(module, [src, prev])
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[2], out[3])  # beams of one sentence agree
    assert not torch.allclose(out[0], out[2])
    later = prev.clone()
    later[:, -1] = (later[:, -1] + 1) % supernet.vocab_size
    changed = run(module, [src, later])
    assert torch.allclose(changed[:, :-1], out[:, :-1], atol=1e-5)  # earlier positions cannot see the last token
    assert not torch.allclose(changed[:, -1], out[:, -1])


def test_hat_arbitrary_encoder_decoder_attention_reads_the_last_encoder_layers(supernet_weights):
    supernet = SMALL["hat"]
    seen = {}
    for attended, choice in ((1, -1), (2, 1), (3, 2)):
        config = {**hat.SMALLEST, "decoder_arbitrary_ende_attn_0": choice}
        module = supernet.build(config, supernet_weights["hat"])
        hook = module.decoder_layers[0].encoder_attn.k_proj.register_forward_hook(
            lambda _m, args, _out, attended=attended: seen.__setitem__(attended, tuple(args[0].shape)))
        run(module, inputs_for(supernet, config))
        hook.remove()
    width = hat.SMALLEST["encoder_embed_dim"]
    assert seen == {k: (supernet.beam, k * supernet.source_length, width) for k in (1, 2, 3)}


def test_hat_heads_change_the_computation_but_not_the_weights(supernet_weights):
    supernet = SMALL["hat"]
    four = {**hat.LARGEST, **{f"encoder_self_attention_heads_{i}": 4 for i in range(6)}}
    a, b = supernet.build(hat.LARGEST, supernet_weights["hat"]), supernet.build(four, supernet_weights["hat"])
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    inputs = inputs_for(supernet, four)
    assert not torch.allclose(run(a, inputs), run(b, inputs))


def test_bert_ignores_padded_positions(supernet_weights):
    supernet = SMALL["bert"]
    module = supernet.build(elastic_bert.SMALLEST, supernet_weights["bert"])
    ids, mask = inputs_for(supernet, elastic_bert.SMALLEST, batch=2)
    mask[:, 6:] = 0
    other = ids.clone()
    other[:, 6:] = (other[:, 6:] + 1) % supernet.vocab_size
    assert torch.allclose(run(module, [ids, mask]), run(module, [other, mask]), atol=1e-6)
    assert not torch.allclose(run(module, [ids, torch.ones_like(mask)]), run(module, [other, torch.ones_like(mask)]))


# ----- weights from a super-network ------------------------------------------------------------------------
def corner(tensor, shape):
    return tensor[tuple(slice(0, n) for n in shape)]


@pytest.mark.parametrize("sid", SPACE_IDS)
def test_sub_network_weights_are_slices_of_the_super_network(sid, supernet_weights, tmp_path):
    supernet, full = SMALL[sid], supernet_weights[sid]
    path = tmp_path / f"{sid}.pt"
    torch.save(full, path)
    config = supernet.space.sample(1, rng=21)[0]
    sub = supernet.build(config, weights=path).state_dict()
    for name, tensor in sub.items():
        if name == "encoder_embed_extra":
            continue  # checked below: not a leading corner
        assert torch.equal(tensor, corner(full[name], tensor.shape)), name
    # The largest sub-network is the super-network itself.
    largest = supernet.build(MODULES[sid].LARGEST, weights=full).state_dict()
    assert largest.keys() == full.keys() and all(torch.equal(largest[k], full[k]) for k in full)


def test_slices_take_first_heads_first_units_and_first_layers(supernet_weights):
    full = supernet_weights["bert"]
    config = {**elastic_bert.LARGEST, "num_layers": 7, "num_attention_heads_2": 6, "intermediate_size_2": 1024}
    module = SMALL["bert"].build(config, weights=full)
    layer = module.bert.encoder.layer[2]
    prefix = "bert.encoder.layer.2."
    assert torch.equal(layer.attention.self.query.weight, full[prefix + "attention.self.query.weight"][:6 * 64])
    assert torch.equal(layer.attention.output.dense.weight, full[prefix + "attention.output.dense.weight"][:, :6 * 64])
    assert torch.equal(layer.output.dense.weight, full[prefix + "output.dense.weight"][:, :1024])
    assert len(module.bert.encoder.layer) == 7


def test_hat_shares_one_embedding_table_between_encoder_decoder_and_output(supernet_weights):
    full = supernet_weights["hat"]["embed_tokens.weight"]
    config = {**hat.LARGEST, "encoder_embed_dim": 640, "decoder_embed_dim": 512}
    module = SMALL["hat"].build(config, weights=supernet_weights["hat"])
    assert torch.equal(module.embed_tokens.weight, full[:, :512])
    assert torch.equal(module.encoder_embed_extra, full[:, 512:640])
    narrow = SMALL["hat"].build({**config, "encoder_embed_dim": 512, "decoder_embed_dim": 640})
    assert narrow.encoder_embed_extra is None and narrow.embed_tokens.weight.shape[1] == 640


def test_hat_takes_fairseq_checkpoints_with_fused_projections(supernet_weights, tmp_path):
    ours = supernet_weights["hat"]
    fairseq = {}  # the same weights under HAT's names: fused in_proj, "encoder.layers.", both embeddings
    for name, tensor in ours.items():
        if ".q_proj." in name:
            parts = [ours[name.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
            fused = name.replace("q_proj.weight", "in_proj_weight").replace("q_proj.bias", "in_proj_bias")
            name, tensor = fused, torch.cat(parts)
        elif ".k_proj." in name or ".v_proj." in name:
            continue
        name = name.replace("encoder_layers.", "encoder.layers.").replace("decoder_layers.", "decoder.layers.")
        if name == "embed_tokens.weight":
            fairseq["decoder.embed_tokens.weight"] = tensor
            name = "encoder.embed_tokens.weight"
        fairseq[name] = tensor
    fairseq["encoder.version"] = torch.tensor([3.0])
    path = tmp_path / "checkpoint_best.pt"
    torch.save({"model": fairseq}, path)
    config = SMALL["hat"].space.sample(1, rng=8)[0]
    a = SMALL["hat"].build(config, weights=path).state_dict()
    b = SMALL["hat"].build(config, weights=ours).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_wrong_weights_are_rejected_with_the_reason(supernet_weights, tmp_path):
    hat_net, vit_net = SMALL["hat"], SMALL["vit"]
    with pytest.raises(ValueError, match="lack 'embed_tokens.weight'"):
        hat_net.build(hat.SMALLEST, weights=supernet_weights["bert"])
    shrunk = {**supernet_weights["vit"], "head.weight": supernet_weights["vit"]["head.weight"][:, :100]}
    with pytest.raises(ValueError, match="head.weight"):
        vit_net.build(elastic_vit.LARGEST, weights=shrunk)
    with pytest.raises(ValueError, match="image_size"):
        elastic_vit.ElasticViTSuperNetwork(image_size=48, num_classes=10).build(
            elastic_vit.SMALLEST, weights=supernet_weights["vit"])
    # Weights for 32×32 patches would otherwise be cut to their top-left 16×16 corner.
    weight = supernet_weights["vit"]["patch_embed.proj.weight"]
    big_patch = {**supernet_weights["vit"], "patch_embed.proj.weight": weight.repeat(1, 1, 2, 2)}
    with pytest.raises(ValueError, match=r"'patch_embed.proj.weight' has sizes 3×32×32 .* 16×16 patches"):
        vit_net.build(elastic_vit.SMALLEST, weights=big_patch)
    # Sizes that are not elastic are never sliced: a bigger vocabulary is a different model.
    with pytest.raises(ValueError, match="vocab_size"):
        hat.HatSuperNetwork(vocab_size=40).build(hat.SMALLEST, weights=supernet_weights["hat"])
    with pytest.raises(ValueError, match="num_labels"):
        elastic_bert.ElasticBertSuperNetwork(vocab_size=40, num_labels=2).build(
            elastic_bert.SMALLEST, weights=supernet_weights["bert"])
    with pytest.raises(FileNotFoundError):
        vit_net.build(elastic_vit.SMALLEST, weights=tmp_path / "absent.pt")
    with pytest.raises(TypeError):
        vit_net.build(elastic_vit.SMALLEST, weights=[1, 2])
    pickled = tmp_path / "pickled.pt"  # like a fairseq checkpoint: its args are an object, not tensors
    torch.save({"model": supernet_weights["vit"], "args": argparse.Namespace(arch="vit")}, pickled)
    garbage, empty = tmp_path / "garbage.pt", tmp_path / "empty.pt"
    garbage.write_bytes(b"not a checkpoint" * 8)
    empty.write_bytes(b"")
    for path in (pickled, garbage, empty):
        with pytest.raises(ValueError, match="cannot be read as tensors alone"):
            vit_net.build(elastic_vit.SMALLEST, weights=path)


# ----- ONNX --------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.export's own deprecation notices
@pytest.mark.parametrize("sid", SPACE_IDS)
def test_exports_to_onnx_and_onnx_runtime_agrees(sid, supernet_weights):
    """Exported with torch.onnx.export's default (dynamo) exporter; ONNX Runtime's outputs must match
    torch's within 1e-4 absolute + 1e-4 relative (float32, different kernels and summation orders)."""
    ort = pytest.importorskip("onnxruntime")
    supernet = SMALL[sid]
    config = supernet.space.sample(1, rng=13)[0]
    module = supernet.build(config, supernet_weights[sid])
    specs = supernet.input_specs(config, batch=2)
    inputs = inputs_for(supernet, config, batch=2)
    program = torch.onnx.export(module, tuple(inputs), input_names=[s["name"] for s in specs], dynamo=True,
                                external_data=False, verbose=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(program.model_proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {s["name"]: t.numpy() for s, t in zip(specs, inputs)})
    np.testing.assert_allclose(got, run(module, inputs).numpy(), rtol=1e-4, atol=1e-4)
