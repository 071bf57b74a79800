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
