"""One network, one evaluation: configs that differ only in parts a super-network does not build (a stage's
blocks beyond its depth) share a canonical form, and a search measures that network once."""
import importlib.metadata

import numpy as np
import pytest

from fleetnas.search.objectives import Objective
from fleetnas.search.run import RunSpec
from fleetnas.search.session import BudgetExhausted, SearchSession
from fleetnas.search.tactics import get_tactic
from fleetnas.supernets import base, get_supernet
from fleetnas.supernets.base import SuperNetwork, network_count, network_of
from fleetnas.supernets.demo import architecture as demo_architecture
from fleetnas.supernets.ofa_mbv3 import plan as mbv3_plan
from fleetnas.supernets.ofa_resnet50 import plan as resnet_plan
from fleetnas.supernets.space import SearchSpace, Variable

#: What each built-in builds for a config: equal for two configs exactly when they are one network.
BUILDS = {"demo": demo_architecture, "ofa_mbv3": mbv3_plan, "ofa_resnet50": resnet_plan,
          "bert": lambda c: get_supernet("bert").architecture(c), "vit": lambda c: get_supernet("vit").architecture(c),
          "hat": lambda c: get_supernet("hat").architecture(c)}


@pytest.mark.parametrize("space_id", sorted(BUILDS))
def test_canonical_builds_the_same_network_and_only_unused_variables_change(space_id):
    supernet, builds = get_supernet(space_id), BUILDS[space_id]
    space = supernet.space
    assert network_of(supernet) is not None
    for config in space.sample(15, np.random.default_rng(0)):
        canonical = supernet.canonical(config)
        assert builds(canonical) == builds(config) and supernet.canonical(canonical) == canonical
        unused = supernet.unused(config)
        assert all(canonical[name] == space.variable(name).choices[0] for name in unused)
        for v in space.variables:  # any other choice of a used variable builds another network
            if v.name in unused:
                continue
            for choice in v.choices:
                other = {**config, v.name: choice}
                if choice != config[v.name] and space.is_valid(other):
                    assert builds(other) != builds(config), (v.name, config[v.name], choice)


def test_unused_blocks_and_a_stem_width_that_rounds_alike_are_named():
    mbv3 = get_supernet("ofa_mbv3")
    config = {**{f"ks_{i}": 7 for i in range(20)}, **{f"e_{i}": 6 for i in range(20)},
              **{f"d_{j}": 4 for j in range(5)}, "r": 224, "w": 1.0, "d_2": 2}
    assert mbv3.unused(config) == {"ks_10", "ks_11", "e_10", "e_11"}  # stage 3 runs blocks 8 and 9 only
    resnet = get_supernet("ofa_resnet50")
    largest = {v.name: max(v.choices) for v in resnet.space.variables}
    assert resnet.unused(largest) == set()
    assert resnet.unused({**largest, "w_0": 0.8}) == {"w_0"}  # 64 × 0.8 and 64 × 0.65 both round to 24 + 24
    assert resnet.canonical({**largest, "w_0": 0.8})["w_0"] == 0.65


def test_nb201_and_spaces_without_unused_parts_keep_every_config_apart():
    nb201 = get_supernet("nb201")
    assert nb201.unused_parts_run and network_of(nb201) is None  # its devices ran the dead edges
    assert network_of(get_supernet("fbnet")) is None  # nothing unused: the identity
    assert network_count(get_supernet("nb201")) == 15625


class LayeredNetwork(SuperNetwork):
    """Depth 1 or 2 and a width per layer: 32 configs, 20 networks (the second width is unused at depth 1)."""
    space = SearchSpace("layered", [Variable("depth", (1, 2)), Variable("width_1", (1, 2, 3, 4)),
                                    Variable("width_2", (1, 2, 3, 4))])
    table_only = True

    def unused(self, config):
        return {"width_2"} if config["depth"] == 1 else set()


LAYERED = LayeredNetwork()


class LayeredEvaluator:
    """Two objectives of the network alone (size up, cost down), and a count of the configs evaluated."""
    objectives = [Objective("size", "max"), Objective("cost", "min")]

    def __init__(self):
        self.evaluated: list[dict] = []

    def evaluate(self, configs):
        self.evaluated += list(configs)
        size = lambda c: c["width_1"] + (c["width_2"] if c["depth"] == 2 else 0)  # noqa: E731
        return np.array([[size(c), size(c) ** 2 + c["depth"]] for c in configs], dtype=float)


def test_a_session_evaluates_a_network_once_whichever_config_names_it():
    evaluator = LayeredEvaluator()
    session = SearchSession(LAYERED.space, evaluator, budget=3, network=network_of(LAYERED))
    a = {"depth": 1, "width_1": 2, "width_2": 1}
    same = {**a, "width_2": 4}
    values = session.evaluate([a, same])
    assert evaluator.evaluated == [a] and session.used == 1 and np.array_equal(values[0], values[1])
    session.evaluate([same])  # asking again by the other name costs nothing either
    assert session.used == 1 and session.keys() == [LAYERED.space.key(a)]
    assert len(session.fresh(LAYERED.space.encode_many([same, {**a, "depth": 2}]))) == 1
    plain = SearchSession(LAYERED.space, LayeredEvaluator(), budget=3)  # not told: two evaluations
    plain.evaluate([a, same])
    assert plain.used == 2


@pytest.mark.parametrize("tactic,budget", [("random", 20), ("evolutionary", 20), ("linas", 12)])
def test_tactics_never_measure_one_network_twice(tactic, budget):
    evaluator = LayeredEvaluator()
    session = SearchSession(LAYERED.space, evaluator, budget=budget, network=network_of(LAYERED))
    settings = {"pop_size": 6} if tactic == "evolutionary" else {"n_init": 6, "models": "ridge"} \
        if tactic == "linas" else {}
    get_tactic(tactic)(session, seed=0, **settings)
    networks = [LAYERED.space.key(LAYERED.canonical(c)) for c in evaluator.evaluated]
    assert len(networks) == len(set(networks)) == budget == session.used


def test_a_budget_beyond_the_distinct_networks_is_refused(monkeypatch):
    builtin = base._entry_points()
    extra = {"layered": importlib.metadata.EntryPoint("layered", f"{__name__}:LAYERED", base.ENTRY_POINT_GROUP)}
    monkeypatch.setattr(base, "_entry_points", lambda: {**builtin, **extra})
    assert network_count(LAYERED) == 20 and LAYERED.space.size == 32
    RunSpec(space="layered", objectives=["accuracy:max", "latency:min"], tactic="random", budget=20).validate()
    with pytest.raises(ValueError, match="--budget 21 is more than the 20 distinct networks that the configurations"):
        RunSpec(space="layered", objectives=["accuracy:max", "latency:min"], tactic="random", budget=21).validate()


class Recorded:
    """A run's record as a store keeps it: here one written before networks were told apart."""

    def __init__(self, rows):
        self.rows, self.recorded = rows, []

    def load(self):
        return self.rows

    def record(self, index, config, values):
        self.recorded.append(config)

    def record_prediction(self, config, mean, std):
        pass

    def record_predicted_front(self, configs, values):
        pass


def test_a_run_recorded_before_networks_were_told_apart_keeps_to_its_budget():
    a = {"depth": 1, "width_1": 2, "width_2": 1}
    rows = [(c, LayeredEvaluator().evaluate([c])[0]) for c in (a, {**a, "width_2": 3}, {**a, "width_1": 4})]
    evaluator, recorder = LayeredEvaluator(), Recorded(rows)  # 3 evaluations paid, 2 networks
    session = SearchSession(LAYERED.space, evaluator, budget=5, recorder=recorder, network=network_of(LAYERED))
    assert session.used == 1 and session.remaining == 4  # the repeat was paid for; a replay never asks for it
    try:
        get_tactic("random")(session, seed=0)
    except BudgetExhausted:  # the replay diverged and asked for more than is left, which ends a run
        pass
    assert session.used <= 5 and len(rows) + len(evaluator.evaluated) <= 5  # before: 6
    assert evaluator.evaluated == recorder.recorded


class OnlyCanonical(SuperNetwork):
    """A plug-in written when canonical forms served accuracy alone: two configs, one function, two costs."""
    space = LAYERED.space

    def canonical(self, config):
        return {**config, "width_2": 1} if config["depth"] == 1 else config


def test_a_canonical_form_without_unused_is_read_by_accuracy_alone():
    assert network_of(OnlyCanonical()) is None and network_count(OnlyCanonical()) == 32
    assert network_of(LAYERED) is not None


def test_an_accuracy_stored_for_one_config_of_a_network_serves_the_others(tmp_path):
    from fleetnas.search.live import LiveEvaluator
    from fleetnas.search.objectives import parse_objective
    from fleetnas.store import open_store

    demo = get_supernet("demo")
    calls = []

    def accuracy(config):
        calls.append(config)
        return 0.9

    config = demo.space.sample(1, np.random.default_rng(3))[0]
    config = {**config, "depth_s1": 1}
    other = {**config, "kernel_s1b3": 5 if config["kernel_s1b3"] == 3 else 3}  # a block beyond the depth
    with open_store(tmp_path / "a.db") as store:
        for c in (config, other):  # as two runs would ask
            evaluator = LiveEvaluator("demo", [parse_objective("accuracy:max"), parse_objective("params:min")],
                                      store=store, accuracy=accuracy)
            assert evaluator.evaluate([c])[0][0] == 0.9
        assert calls == [config] and len(store.evaluations("demo", "accuracy")) == 1
