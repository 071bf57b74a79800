"""What a super-network offers, and how one is found by id.

A super-network is registered under the entry point group `fleetnas.supernets` (FleetNAS's built-ins
are registered the same way, in pyproject.toml), so that both the host and a torch-equipped agent can
find it by id. The object an entry point names must be importable with numpy and torch alone: an agent
loads it to build a sub-network from a spec, and must not pull in host-only packages.
"""
from __future__ import annotations

import importlib.metadata
from typing import Any, Callable

from .space import COUNTED_UP_TO, Config, SearchSpace

ENTRY_POINT_GROUP = "fleetnas.supernets"


class BuildError(ValueError):
    """A super-network's builder failed on one config (a plug-in's shape mismatch, say): that config fails
    alone, in a search as in a command, instead of ending the whole with a traceback."""


def built(supernet, config: Config):
    """`supernet.build(config)`, its failure a BuildError naming the space and the config."""
    import torch

    try:
        module = supernet.build(config)
    except Exception as exc:  # noqa: BLE001 - a plug-in's builder may raise anything
        raise BuildError(f"the {supernet.space.id} network of {config} could not be built: {exc!r}") from exc
    if not isinstance(module, torch.nn.Module):
        raise BuildError(f"the {supernet.space.id} network of {config} could not be built: build() returned "
                         f"{type(module).__name__}, not a torch.nn.Module")
    return module


def described_inputs(supernet, config: Config, batch: int = 1) -> list[dict]:
    """`supernet.input_specs(config, batch)`, its failure, or specs that are not [{"name": str, "shape": [int],
    "dtype": str}], a BuildError naming the space and the config."""
    try:
        specs = supernet.input_specs(config, batch)
    except Exception as exc:  # noqa: BLE001 - a plug-in's input_specs may raise anything
        raise BuildError(f"the inputs of the {supernet.space.id} network of {config} could not be described: "
                         f"{exc!r}") from exc
    if not (isinstance(specs, list) and specs and all(_is_input_spec(s) for s in specs)):
        raise BuildError(f"the inputs of the {supernet.space.id} network of {config} could not be described: "
                         f"input_specs returned {specs!r}"[:500] + ', not a list of {"name": str, "shape": [int], '
                         '"dtype": str}')
    return specs


def _is_input_spec(spec) -> bool:
    return (isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("dtype"), str)
            and isinstance(spec.get("shape"), (list, tuple))
            and all(isinstance(d, int) and not isinstance(d, bool) for d in spec["shape"]))


class SuperNetwork:
    """Base class. Subclasses set `space` and, unless table-only, implement `build` and `input_specs`."""

    space: SearchSpace
    #: True for spaces that exist only as recorded tables (NAS-Bench-201, FBNet): nothing to build.
    table_only: bool = False

    @property
    def id(self) -> str:
        return self.space.id

    def build(self, config: Config, weights: Any = None):
        """A standalone torch.nn.Module for `config` (random weights, or sliced from a checkpoint)."""
        raise NotImplementedError(f"{self.id} is a table-only space: its sub-networks cannot be built")

    def predictor_features(self, config: Config) -> dict[str, float]:
        """Cheap numeric features of a config for predictors (formulas, nothing built); none by default."""
        return {}

    #: True where devices run the parts `unused` names, so that they cost time and memory: NAS-Bench-201's
    #: recorded latencies come from graphs that run edges no output depends on. Costs then read a config as it
    #: is, and configs with one canonical form stay distinct evaluations. False for super-networks that build
    #: only the layers a config uses: one canonical form is then one network, measured once.
    unused_parts_run: bool = False

    def unused(self, config: Config) -> set[str]:
        """The variables that could take their first choice without changing what `config` computes (those of
        a stage's blocks beyond its depth, say); none by default."""
        return set()

    def canonical(self, config: Config) -> Config:
        """A valid config that computes the same function as `config`, the same one for all such configs: its
        `unused` variables at their first choice. Predictors of quality (accuracy) read this form: what a
        network learns depends on its function alone, so parts that cannot change it are noise to them."""
        config = self.space.validate(config)
        unused = self.unused(config)
        if not unused:
            return config
        return self.space.validate({name: self.space.variable(name).choices[0] if name in unused else value
                                    for name, value in config.items()})

    def input_specs(self, config: Config, batch: int = 1) -> list[dict]:
        """The module's inputs: [{"name", "shape", "dtype"}]."""
        raise NotImplementedError(f"{self.id} is a table-only space: it has no inputs")


def network_of(supernet) -> Callable[[Config], Config] | None:
    """The map from a config to the one that stands for the network it builds (its canonical form), for
    super-networks that name what a config leaves unused (`unused`) and never build it; None where devices run
    the unused parts too, and where each config is its own network. A `canonical` without `unused` (a plug-in
    written when canonical forms served accuracy alone) says only that two configs compute one function, not
    that they run alike: None too. A search evaluates each network once (`SearchSession(network=...)`)."""
    if getattr(supernet, "unused_parts_run", False) or not callable(getattr(supernet, "canonical", None)):
        return None
    declared = getattr(type(supernet), "unused", None)
    if declared is None or declared is SuperNetwork.unused:
        return None
    return supernet.canonical


def network_count(supernet) -> float | None:
    """How many distinct networks the valid configs build: `valid_size` where each config is its own network;
    else counted one by one in spaces of up to COUNTED_UP_TO configs; None (unknown) beyond."""
    space, network = supernet.space, network_of(supernet)
    if network is None:
        return space.valid_size
    if space.size > COUNTED_UP_TO:
        return None
    return float(len({space.key(network(c)) for c in space.valid_configs()}))


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def list_supernets() -> list[str]:
    return sorted(_entry_points())


def get_supernet(space_id: str) -> SuperNetwork:
    """The registered super-network `space_id`: KeyError when none is, ImportError (naming the space and the
    cause) when its plug-in cannot be loaded or does not name a super-network."""
    points = _entry_points()
    if space_id not in points:
        raise KeyError(f"unknown space {space_id!r}; known: {', '.join(sorted(points)) or 'none'}")
    try:
        supernet = points[space_id].load()
    except Exception as exc:  # noqa: BLE001 - a plug-in's module may fail in any way; say which and how
        raise ImportError(f"space {space_id!r} is registered but cannot be loaded: {type(exc).__name__}: {exc}") \
            from exc
    if not isinstance(getattr(supernet, "space", None), SearchSpace):
        raise ImportError(f"space {space_id!r} is registered as {points[space_id].value}, which is not a "
                          "super-network (an object with a SearchSpace as .space)")
    return supernet
