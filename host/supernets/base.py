"""What a super-network offers, and how one is found by id.

A super-network is registered under the entry point group `fleetnas.supernets` (FleetNAS's built-ins
are registered the same way, in pyproject.toml), so that both the host and a torch-equipped agent can
find it by id. The object an entry point names must be importable with numpy and torch alone: an agent
loads it to build a sub-network from a spec, and must not pull in host-only packages.
"""
from __future__ import annotations

import importlib.metadata
from typing import Any

from .space import Config, SearchSpace

ENTRY_POINT_GROUP = "fleetnas.supernets"


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

    def canonical(self, config: Config) -> Config:
        """A valid config that computes the same function as `config`, the same one for all such configs;
        `config` itself by default. Predictors of quality (accuracy) see this instead: what a network learns
        depends on its function alone, so configs differing only in parts that cannot change it get the same
        features."""
        return config

    def input_specs(self, config: Config, batch: int = 1) -> list[dict]:
        """The module's inputs: [{"name", "shape", "dtype"}]."""
        raise NotImplementedError(f"{self.id} is a table-only space: it has no inputs")


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
