"""The device farm: an inventory of agents, and a scheduler that spreads measurement jobs over them.

Search and calibration call one of:

    with Farm.open("fleetnas.toml", db="fleetnas.db") as farm:
        results = farm.measure(configs, "rpi4-litert-1t", space="ofa_mbv3")       # sub-networks (exported)
        results = farm.measure_artifacts(artifacts, "rpi4-litert-1t")            # any ArtifactSource
        results = farm.run(jobs)                                                 # explicit Jobs

or the one-shot `measure(configs, device_kind, space=...)` below. Each returns one JobResult per input,
in order; every successful result is in the store before it is returned.
"""
from __future__ import annotations

from typing import Sequence

from .inventory import DEFAULT_INVENTORY, AgentEntry, Inventory, InventoryError
from .jobs import ArtifactSource, Job, JobError, JobResult, Settings
from .scheduler import Farm, FarmError


def measure(configs: Sequence[dict], device_kind: str, *, space: str, inventory=DEFAULT_INVENTORY, db=None,
            stopping=None, seed: int = 0, remeasure: bool = False, **farm_options) -> list[JobResult]:
    """Measures sub-networks of `space` on every healthy agent of `device_kind`; one result per config."""
    with Farm.open(inventory, db, **farm_options) as farm:
        return farm.measure(configs, device_kind, space=space, stopping=stopping, seed=seed, remeasure=remeasure)


__all__ = ["DEFAULT_INVENTORY", "AgentEntry", "ArtifactSource", "Farm", "FarmError", "Inventory", "InventoryError",
           "Job", "JobError", "JobResult", "Settings", "measure"]
