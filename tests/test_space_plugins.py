"""Spaces from plug-ins: one that cannot load is named and hides no other; a validity rule's configs are counted."""
import importlib.metadata

import pytest

from fleetnas.cli import main
from fleetnas.search.run import RunSpec
from fleetnas.supernets import base
from fleetnas.supernets.base import SuperNetwork
from fleetnas.supernets.space import SearchSpace, Variable


def _rule(config):
    return None if config["a"] <= config["b"] else "a must not exceed b"


class RuledNetwork(SuperNetwork):
    """A table-only space of 4 × 4 choices, 10 of them valid (a <= b)."""
    space = SearchSpace("ruled", [Variable("a", (0, 1, 2, 3)), Variable("b", (0, 1, 2, 3))], rule=_rule,
                        description="a <= b")
    table_only = True


RULED = RuledNetwork()


class NothingNetwork(SuperNetwork):
    """A rule that no config meets."""
    space = SearchSpace("never", [Variable("a", (0, 1))], rule=lambda config: "never valid")
    table_only = True


NEVER = NothingNetwork()


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """Registered spaces as pip would register them: the built-ins, a module that does not parse, an entry
    point that names something other than a super-network, and a space with a validity rule."""
    (tmp_path / "broken_plugin.py").write_text("def oops(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    group = base.ENTRY_POINT_GROUP
    builtin = base._entry_points()
    extra = {"broken": importlib.metadata.EntryPoint("broken", "broken_plugin:NET", group),
             "not_a_net": importlib.metadata.EntryPoint("not_a_net", "json:dumps", group),
             "ruled": importlib.metadata.EntryPoint("ruled", f"{__name__}:RULED", group),
             "never": importlib.metadata.EntryPoint("never", f"{__name__}:NEVER", group)}
    monkeypatch.setattr(base, "_entry_points", lambda: {**builtin, **extra})


def test_a_broken_plugin_is_listed_as_unavailable_and_hides_no_other_space(plugins, capsys):
    assert main(["space", "list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "unavailable" in lines["broken"] and "SyntaxError" in lines["broken"]
    assert "unavailable" in lines["not_a_net"] and "not a super-network" in lines["not_a_net"]
    assert "buildable" in lines["ofa_mbv3"] and "table-only" in lines["nb201"]
    assert lines["ruled"].split()[1] == "10"  # the valid configs, not the 16 of the choices' product
    for name, message in (("broken", "space 'broken' is registered but cannot be loaded: SyntaxError"),
                          ("not_a_net", "which is not a super-network")):
        assert main(["space", "sample", name]) == 1
        assert message in capsys.readouterr().err


def test_a_search_budget_counts_only_the_configs_a_rule_accepts(plugins):
    assert RULED.space.size == 16 and RULED.space.valid_size == 10
    RunSpec(space="ruled", objectives=["accuracy:max", "latency:min"], tactic="random", budget=10).validate()
    with pytest.raises(ValueError, match="--budget 11 is more than the 10 valid configurations of ruled"):
        RunSpec(space="ruled", objectives=["accuracy:max", "latency:min"], tactic="random", budget=11).validate()


def test_a_rule_that_no_config_meets_is_refused_not_searched(plugins, capsys):
    assert NEVER.space.valid_size == 0
    with pytest.raises(ValueError, match="--budget 1 is more than the 0 valid configurations of never"):
        RunSpec(space="never", objectives=["accuracy:max", "latency:min"], tactic="random", budget=1).validate()
    assert main(["space", "sample", "never", "--n", "1"]) == 1
    assert "could not find a valid never config" in capsys.readouterr().err


class _Linear(SuperNetwork):
    def input_specs(self, config, batch=1):
        return [{"name": "x", "shape": [batch, 8], "dtype": "float32"}]


class ShapeFailNetwork(_Linear):
    """A plug-in whose builder fails on some configs (a == 2), as a shape mismatch would."""
    space = SearchSpace("shapefail", [Variable("a", (1, 2, 3, 4)), Variable("b", (8, 16))])

    def build(self, config, weights=None):
        import torch

        if config["a"] == 2:
            raise RuntimeError("shape mismatch for a=2")
        return torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(config["a"])], torch.nn.Linear(8, config["b"]))


class FewNetworksNetwork(_Linear):
    """3.9 million configs that build 10 networks: the eight j variables are never used."""
    space = SearchSpace("fewnets", [Variable("a", (1, 2)), Variable("b", (8, 16, 32, 64, 128))]
                        + [Variable(f"j{i}", (0, 1, 2, 3, 4)) for i in range(8)])

    def unused(self, config):
        return {f"j{i}" for i in range(8)}

    def build(self, config, weights=None):
        import torch

        return torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(config["a"])], torch.nn.Linear(8, config["b"]))


class GridNetwork(_Linear):
    """5 × 5 × 5 configs, each its own network."""
    space = SearchSpace("grid", [Variable("a", (1, 2, 3, 4, 5)), Variable("b", (8, 16, 24, 32, 40)),
                                 Variable("c", (1, 2, 3, 4, 5))])

    def build(self, config, weights=None):
        import torch

        return torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(config["a"])],
                                   torch.nn.Linear(8, config["b"] * config["c"]))


class MisbehavingNetwork(_Linear):
    """A plug-in that fails outside its builder: a network that does not fit its inputs (a == 2), input specs that
    raise (a == 3) or are not JSON (a == 5), a builder that returns no module (a == 4)."""
    space = SearchSpace("misbehaving", [Variable("a", (1, 2, 3, 4, 5, 6, 7, 8)), Variable("b", (8, 16))])

    def input_specs(self, config, batch=1):
        import torch

        if config["a"] == 3:
            raise ValueError("no inputs for a=3")
        if config["a"] == 5:
            return [{"name": "x", "shape": [batch, 8], "dtype": torch.float32}]
        return super().input_specs(config, batch)

    def build(self, config, weights=None):
        import torch

        if config["a"] == 4:
            return "not a module"
        return torch.nn.Sequential(torch.nn.Linear(8, 9 if config["a"] == 2 else 8), torch.nn.Linear(8, config["b"]))


SHAPEFAIL, FEWNETS, GRID, MISBEHAVING = ShapeFailNetwork(), FewNetworksNetwork(), GridNetwork(), MisbehavingNetwork()


@pytest.fixture
def buildable(monkeypatch):
    group = base.ENTRY_POINT_GROUP
    builtin = base._entry_points()
    extra = {"shapefail": importlib.metadata.EntryPoint("shapefail", f"{__name__}:SHAPEFAIL", group),
             "fewnets": importlib.metadata.EntryPoint("fewnets", f"{__name__}:FEWNETS", group),
             "grid": importlib.metadata.EntryPoint("grid", f"{__name__}:GRID", group),
             "misbehaving": importlib.metadata.EntryPoint("misbehaving", f"{__name__}:MISBEHAVING", group)}
    monkeypatch.setattr(base, "_entry_points", lambda: {**builtin, **extra})


def test_moead_spends_a_whole_small_space(buildable, tmp_path, capsys):
    """MOEA/D asks for one configuration at a time: 50 asks of seen ones in a row ended its run at 64 of 125."""
    import json

    assert main(["search", "--space", "grid", "--objective", "macs:min", "--objective", "params:min",
                 "--tactic", "evolutionary", "--algorithm", "moead", "--budget", "125",
                 "--db", str(tmp_path / "s.db"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["evaluations"] == 125


def test_a_config_whose_network_cannot_be_built_fails_alone(buildable, tmp_path, capsys):
    """A plug-in's builder that raised on one config ended search, export and space sample with a traceback."""
    import json

    assert main(["search", "--space", "shapefail", "--objective", "macs:min", "--objective", "params:min",
                 "--tactic", "random", "--budget", "8", "--db", str(tmp_path / "s.db"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["evaluations"] == 8
    assert "2 configurations could not be evaluated" in err and "shape mismatch for a=2" in err
    bad = json.dumps({"a": 2, "b": 8})
    assert main(["export", "--space", "shapefail", "--config", bad, "--format", "onnx",
                 "--out", str(tmp_path / "m.onnx")]) == 1
    assert "the shapefail network of {'a': 2, 'b': 8} could not be built: RuntimeError('shape mismatch for a=2')" in (
        capsys.readouterr().err)
    assert main(["space", "sample", "shapefail", "--n", "8", "--seed", "0"]) == 1
    assert "could not be built" in capsys.readouterr().err


@pytest.mark.parametrize("a, counted, exported", [
    (2, "could not be counted: RuntimeError('mat1 and mat2 shapes cannot be multiplied",
     "could not be exported to onnx: RuntimeError('mat1 and mat2 shapes cannot be multiplied"),
    (3, "could not be counted: ValueError('no inputs for a=3')", "could not be described: ValueError('no inputs for a=3')"),
    (4, "could not be built: build() returned str, not a torch.nn.Module",
     "could not be built: build() returned str, not a torch.nn.Module"),
    (5, "could not be counted: TypeError(", "input_specs returned [{'name': 'x', 'shape': [1, 8], 'dtype': "
     "torch.float32}], not a list of {\"name\": str, \"shape\": [int], \"dtype\": str}")])
def test_a_network_that_fails_after_it_is_built_fails_its_config_alone(buildable, tmp_path, capsys, a, counted,
                                                                      exported):
    """A forward pass that did not fit the inputs, input specs that raised, a builder that returned no module:
    each ended the search, the export or the count with a traceback."""
    import json

    from fleetnas.farm.jobs import JobError
    from fleetnas.farm.scheduler import Farm
    from fleetnas.supernets.analytic import analytic_features
    from fleetnas.supernets.base import BuildError

    config = {"a": a, "b": 8}
    with pytest.raises(BuildError, match=f"network of {config}") as raised:
        analytic_features(MISBEHAVING, config, cache=False)
    assert counted in str(raised.value)
    assert main(["export", "--space", "misbehaving", "--config", json.dumps(config), "--format", "onnx",
                 "--out", str(tmp_path / "m.onnx"), "--cache-dir", str(tmp_path / "cache")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and exported in err
    with pytest.raises(JobError, match=f"cannot export misbehaving config {config}"):
        Farm.exported([config], "misbehaving", "onnx", cache_dir=tmp_path / "cache")


def test_a_search_over_a_misbehaving_plugin_goes_on_past_its_failures(buildable, tmp_path, capsys):
    import json

    assert main(["search", "--space", "misbehaving", "--objective", "macs:min", "--objective", "params:min",
                 "--tactic", "random", "--budget", "16", "--db", str(tmp_path / "s.db"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["evaluations"] == 16 and "8 configurations could not be evaluated" in err


@pytest.mark.parametrize("tactic", ["random", "evolutionary", "linas"])
def test_a_search_ends_when_the_networks_it_can_draw_are_spent(buildable, tmp_path, capsys, caplog, tactic):
    """Random and evolutionary search drew for ever, and LINAS crashed, once the 10 networks were evaluated."""
    import json

    assert main(["search", "--space", "fewnets", "--objective", "macs:min", "--objective", "params:min",
                 "--tactic", tactic, "--budget", "12", "--db", str(tmp_path / "s.db"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["evaluations"] == 10
    assert "configurations drawn in a row held no network that was not evaluated yet" in caplog.text
    with pytest.raises(ValueError, match=r"--budget 4000000 is more than the 3,906,250 configurations of fewnets$"):
        RunSpec(space="fewnets", objectives=["macs:min", "params:min"], tactic="random", budget=4_000_000).validate()


def test_a_config_whose_network_cannot_be_built_fails_alone_when_measured_on_a_device(buildable, tmp_path, capsys):
    """Its model, exported on the host, could not be made: the batch ended with a traceback."""
    import json

    from agents import running_agent

    inventory = tmp_path / "farm.toml"
    with running_agent(tmp_path / "cache", label="pc") as (address, _):
        assert main(["devices", "add", "pc", "--address", address, "--kind", "cpu", "--inventory", str(inventory)]) == 0
        capsys.readouterr()
        assert main(["search", "--space", "shapefail", "--objective", "latency@cpu:min", "--objective", "params:min",
                     "--tactic", "random", "--budget", "8", "--inventory", str(inventory), "--db",
                     str(tmp_path / "s.db"), "--json", "--warmup-runs", "1", "--warmup-seconds", "0.001",
                     "--min-runs", "3", "--min-seconds", "0.001", "--max-seconds", "0.05"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["evaluations"] == 8
    assert "2 configurations could not be evaluated" in err and "cannot export shapefail config" in err
