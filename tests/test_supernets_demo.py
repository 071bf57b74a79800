"""The demo super-network: its space, standalone sub-networks, training cache and honest evaluation."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import torch

from fleetnas.supernets import InvalidConfig, get_supernet
from fleetnas.supernets import demo

# Enough for the largest sub-network to be far above chance (10 classes: it reaches about 0.85), yet
# about 20 s of one core.
TEST_EPOCHS = 5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(cache dir, state dict, how many times training ran) for a short, cached training."""
    cache = tmp_path_factory.mktemp("demo-cache")
    runs = []
    real_train = demo._train

    def counting_train(*args):
        runs.append(args)
        return real_train(*args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "_train", counting_train)
        state = demo.train_supernet(seed=0, epochs=TEST_EPOCHS, cache_dir=cache)
        again = demo.train_supernet(seed=0, epochs=TEST_EPOCHS, cache_dir=cache)
    return cache, state, again, runs


# ----- the space ---------------------------------------------------------------------------------------
def test_registered_under_its_id_and_rich_enough():
    assert get_supernet("demo") is demo.SUPERNET
    assert demo.SUPERNET.id == "demo" and not demo.SUPERNET.table_only
    assert demo.SPACE.size > 1e6
    # Distinct architectures, not just distinct encodings (unused blocks' choices do not count).
    assert len({demo.architecture(c) for c in demo.SPACE.sample(300, rng=0)}) > 250


def test_encode_decode_and_keys_round_trip():
    for config in [demo.SMALLEST, demo.LARGEST, *demo.SPACE.sample(20, rng=1)]:
        x = demo.SPACE.encode(config)
        assert demo.SPACE.decode(x) == config
        assert demo.SPACE.from_key(demo.SPACE.key(config)) == config
        assert demo.SPACE.from_json(demo.SPACE.to_json(config)) == config


def test_importing_the_module_does_not_import_torch():
    code = "import sys, fleetnas.supernets.demo as d; d.SPACE.sample(3); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("change, named", [
    ({"resolution": 10}, "resolution"),
    ({"kernel_s2b3": 7}, "kernel_s2b3"),
    ({"mid_width_s1b1": 0.3}, "mid_width_s1b1"),
    ({"depth_s3": 4}, "depth_s3"),
    ({"colour": "red"}, "colour"),
])
def test_invalid_configs_are_rejected_naming_the_variable(change, named):
    bad = {**demo.LARGEST, **change}
    for call in (demo.SUPERNET.build, demo.SUPERNET.input_specs, demo.architecture):
        with pytest.raises(InvalidConfig, match=named):
            call(bad)


def test_json_booleans_are_not_taken_for_numbers():
    """`True == 1` in Python: a JSON true must not pass for the width 1.0 (nor false for 0)."""
    from fleetnas.supernets.space import Variable

    assert demo.LARGEST["width_s1"] == 1.0 and demo.LARGEST["depth_s1"] == 3
    for name, value in (("width_s1", True), ("mid_width_s2b1", True), ("depth_s1", True)):
        with pytest.raises(InvalidConfig, match=rf"{name}=True is not allowed \(a boolean is not a number"):
            demo.SPACE.validate({**demo.LARGEST, name: value})
    text = demo.SPACE.to_json(demo.LARGEST).replace('"width_s1": 1.0', '"width_s1": true')
    with pytest.raises(InvalidConfig, match="width_s1=True"):
        demo.SPACE.from_json(text)
    assert demo.SPACE.validate({**demo.LARGEST, "width_s1": 1}) == demo.LARGEST  # 1 and 1.0 are one choice
    flags = Variable("flag", (False, True))  # booleans stay booleans where the choices are booleans
    assert (flags.index(True), flags.index(False)) == (1, 0)
    with pytest.raises(InvalidConfig, match="flag=1 is not allowed"):
        flags.index(1)
    with pytest.raises(InvalidConfig, match=r"pair=\(True, 2\)"):
        Variable("pair", ((1, 2), (3, 4))).index((True, 2))


def test_a_config_lacking_a_variable_is_rejected_naming_it():
    bad = dict(demo.SMALLEST)
    del bad["width_s2"]
    with pytest.raises(InvalidConfig, match="width_s2"):
        demo.SUPERNET.build(bad)


# ----- standalone sub-networks -------------------------------------------------------------------------
def test_built_subnetworks_take_their_input_specs_and_give_ten_logits():
    for config in [demo.SMALLEST, demo.LARGEST, *demo.SPACE.latin_hypercube(6, rng=2)]:
        specs = demo.SUPERNET.input_specs(config, batch=3)
        r = config["resolution"]
        assert specs == [{"name": "image", "shape": [3, 1, r, r], "dtype": "float32"}]
        module = demo.SUPERNET.build(config)
        with torch.no_grad():
            logits = module(torch.randn(*specs[0]["shape"]))
        assert logits.shape == (3, demo.NUM_CLASSES)
        assert torch.isfinite(logits).all()


def test_smaller_choices_build_smaller_networks():
    def params(config):
        return sum(p.numel() for p in demo.SUPERNET.build(config).parameters())

    assert params(demo.SMALLEST) * 10 < params(demo.LARGEST)
    assert params({**demo.LARGEST, "depth_s3": 1}) < params(demo.LARGEST)
    assert params({**demo.LARGEST, "kernel_s1b1": 3}) < params(demo.LARGEST)


def test_sliced_weights_are_the_supernetworks_first_channels_and_centre_kernels():
    torch.manual_seed(0)
    full = demo.SUPERNET.build(demo.LARGEST).state_dict()
    config = {**demo.LARGEST, "width_s1": 0.5, "mid_width_s1b2": 0.25, "kernel_s1b2": 3, "depth_s2": 2,
              "width_s3": 0.75}
    sub = demo.SUPERNET.build(config, full).state_dict()
    # Stage 1, block 2: 0.25 × 16 = 4 middle channels from 0.5 × 16 = 8 inputs, the 3×3 centre of 5×5.
    assert torch.equal(sub["stages.0.1.conv1.weight"], full["stages.0.1.conv1.weight"][:4, :8, 1:4, 1:4])
    assert torch.equal(sub["stages.0.1.conv2.weight"], full["stages.0.1.conv2.weight"][:8, :4])
    assert torch.equal(sub["stages.0.1.bn1.running_var"], full["stages.0.1.bn1.running_var"][:4])
    assert torch.equal(sub["head.weight"], full["head.weight"][:, :48])
    assert torch.equal(sub["head.bias"], full["head.bias"])
    assert "stages.1.2.conv1.weight" not in sub  # depth 2: the stage's third block is not used
    # Every tensor is the slice, and a copy of it: the sub-network does not alias the super-network.
    for name, tensor in sub.items():
        assert tensor.data_ptr() != full[name].data_ptr()


def test_weights_load_from_a_path_too(tmp_path):
    full = demo.SUPERNET.build(demo.LARGEST).state_dict()
    torch.save(full, tmp_path / "w.pt")
    config = demo.SPACE.sample(1, rng=3)[0]
    from_path = demo.SUPERNET.build(config, tmp_path / "w.pt").state_dict()
    from_dict = demo.SUPERNET.build(config, full).state_dict()
    assert all(torch.equal(from_path[k], from_dict[k]) for k in from_dict)


def test_foreign_weights_are_refused():
    with pytest.raises(ValueError, match="stem.0.weight needs at least"):
        demo.SUPERNET.build(demo.SMALLEST, {"fc.weight": torch.zeros(1)})
    with pytest.raises(TypeError, match="state dict or a path"):
        demo.SUPERNET.build(demo.SMALLEST, 42)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter warns that it is legacy
def test_onnx_export_runs_in_onnxruntime_with_the_same_outputs():
    import onnxruntime as ort

    torch.manual_seed(0)
    config = {**demo.SPACE.sample(1, rng=4)[0], "resolution": 12}
    module = demo.SUPERNET.build(config, demo.SUPERNET.build(demo.LARGEST).state_dict())
    x = torch.randn(*demo.SUPERNET.input_specs(config, batch=2)[0]["shape"])
    buffer = io.BytesIO()
    # The TorchScript exporter is enough to prove exportability, and far quicker than dynamo here.
    torch.onnx.export(module, (x,), buffer, dynamo=False, input_names=["image"], output_names=["logits"])
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        torch_logits = module(x).numpy()
    np.testing.assert_allclose(onnx_logits, torch_logits, rtol=1e-4, atol=1e-5)


# ----- batch-norm calibration --------------------------------------------------------------------------
def test_calibration_sets_batchnorm_statistics_to_the_calibration_batch():
    module = demo.SUPERNET.build(demo.SMALLEST)
    images = demo.preprocess(demo.digits_split()[0][:64], 8)
    demo.calibrate_batchnorm(module, images)
    with torch.no_grad():
        stem_out = module.stem[0](images)
    bn = module.stem[1]
    torch.testing.assert_close(bn.running_mean, stem_out.mean((0, 2, 3)))
    torch.testing.assert_close(bn.running_var, stem_out.var((0, 2, 3), unbiased=True))
    assert not module.training


# ----- data --------------------------------------------------------------------------------------------
def test_the_split_is_fixed_stratified_and_disjoint():
    x_train, y_train, x_val, y_val = demo.digits_split()
    assert len(x_train) + len(x_val) == 1797 and len(x_val) == 360
    assert x_train.shape[1:] == (1, 8, 8) and x_train.dtype == np.float32
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert np.bincount(y_val, minlength=10).min() >= 35  # every class held out in proportion
    train_rows = {row.tobytes() for row in x_train}
    assert sum(row.tobytes() in train_rows for row in x_val) < 10  # (the data set has a few duplicates)


def test_preprocess_upsamples_to_the_resolution():
    x = demo.digits_split()[0][:5]
    assert demo.preprocess(x, 16).shape == (5, 1, 16, 16)
    assert torch.equal(demo.preprocess(x, 8), torch.from_numpy(x))


# ----- training, cache and evaluation ------------------------------------------------------------------
def test_training_is_cached_on_disk(trained):
    cache, state, again, runs = trained
    assert len(runs) == 1  # the second call loaded the file instead of training again
    path = demo.cache_path(0, TEST_EPOCHS, cache)
    assert path.parent == cache and path.name.startswith("demo-supernet-") and path.suffix == ".pt"
    assert list(cache.iterdir()) == [path]  # no temporary file left behind
    assert state.keys() == again.keys()
    assert all(torch.equal(state[k], again[k]) for k in state)


def test_training_is_deterministic_given_the_seed(tmp_path, monkeypatch):
    x_train, y_train, x_val, y_val = demo.digits_split()
    # A fifth of the training images keeps this quick; what decides the order of things is the same.
    monkeypatch.setattr(demo, "digits_split", lambda: (x_train[:288], y_train[:288], x_val, y_val))
    first = demo.train_supernet(seed=3, epochs=2, cache_dir=tmp_path / "a")
    second = demo.train_supernet(seed=3, epochs=2, cache_dir=tmp_path / "b")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_the_cache_key_depends_on_the_settings(monkeypatch, tmp_path):
    assert demo.cache_path(0, 5, tmp_path) != demo.cache_path(1, 5, tmp_path)
    assert demo.cache_path(0, 5, tmp_path) != demo.cache_path(0, 6, tmp_path)
    monkeypatch.setenv("FLEETNAS_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert demo.cache_path(0, 5).parent == tmp_path / "elsewhere"
    monkeypatch.delenv("FLEETNAS_CACHE_DIR")
    assert demo.cache_path(0, 5).parent.name == "fleetnas"


@pytest.mark.parametrize("epochs", [0, -1, 2.5, "3"])
def test_bad_epoch_counts_are_refused(epochs, tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        demo.train_supernet(epochs=epochs, cache_dir=tmp_path)


def test_the_evaluator_gives_validation_accuracy_fractions(trained):
    _, state, _, _ = trained
    evaluator = demo.DemoEvaluator(state)
    configs = [demo.SMALLEST, demo.LARGEST, *demo.SPACE.sample(4, rng=5)]
    accuracies = [evaluator(c) for c in configs]
    assert all(0.0 <= a <= 1.0 for a in accuracies)
    # 360 validation images: every accuracy is a whole number of them.
    assert all(abs(a * 360 - round(a * 360)) < 1e-9 for a in accuracies)
    assert evaluator(demo.LARGEST) == demo.evaluate_accuracy(demo.LARGEST, state)


def test_the_evaluator_memoises_per_architecture(trained):
    _, state, _, _ = trained
    evaluator = demo.DemoEvaluator(state)
    shallow = {**demo.LARGEST, "depth_s2": 1}
    evaluator(shallow)
    # The stage's unused blocks' choices do not change the network, so they are not evaluated again.
    evaluator({**shallow, "kernel_s2b3": 3, "mid_width_s2b2": 0.5})
    assert len(evaluator) == 1


def test_the_trained_largest_subnetwork_is_far_above_chance(trained):
    _, state, _, _ = trained
    evaluator = demo.DemoEvaluator(state)
    assert evaluator(demo.LARGEST) > 0.6  # chance is 0.1


def test_weights_of_the_wrong_shape_or_kind_are_refused(tmp_path):
    small = demo.SUPERNET.build(demo.SMALLEST).state_dict()
    with pytest.raises(ValueError, match="stages.0.0.conv1.weight needs at least"):
        demo.SUPERNET.build(demo.LARGEST, small)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a state dict"):
        demo.SUPERNET.build(demo.SMALLEST, tmp_path / "list.pt")


def test_a_torch_agent_builds_and_runs_a_subnetwork_from_a_spec(tmp_path):
    import json

    from fleetnas_agent.runtimes import torch_spec

    config = demo.SPACE.sample(1, rng=6)[0]
    spec = {"space": "demo", "config": json.loads(demo.SPACE.to_json(config)),
            "inputs": demo.SUPERNET.input_specs(config, batch=2)}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    model = torch_spec.load(str(tmp_path / "spec.json"), threads=1)
    shape = spec["inputs"][0]["shape"]
    model.set_inputs({"image": np.zeros(shape, np.float32)})
    model.run()
    assert model.input_specs() == spec["inputs"]
