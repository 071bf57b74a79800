"""The reference set of a space: a few fixed sub-networks, measured again and again to watch a device.

Smallest and largest (every variable at its least and greatest choice) bound the space's cost; a fixed
Latin hypercube fills the middle. Same space, same set, on every host and every day: the seed is a
constant and the set's digest names it, so rounds are only ever compared with rounds of the same set.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fleetnas.store import canonical_json

from ..supernets.space import Config, SearchSpace

REFERENCE_SIZE = 10
# Part of the recipe: changing it changes every space's reference set (and its digest).
REFERENCE_SEED = 1729


@dataclass(frozen=True)
class ReferenceSet:
    space_id: str
    configs: tuple[Config, ...]
    keys: tuple[str, ...]     # space.key of each config, in order
    digest: str               # names this exact set: rounds of different digests are never compared


def reference_set(space: SearchSpace, size: int = REFERENCE_SIZE) -> ReferenceSet:
    """`size` distinct configs: the smallest and largest sub-networks (where valid), then a fixed Latin hypercube."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"a reference set needs at least 2 configs, got {size!r}")
    if space.size < size:
        raise ValueError(f"space {space.id} has only {space.size:g} configs, fewer than the reference set's {size}")
    candidates = [c for c in (_extreme(space, min), _extreme(space, max)) if c is not None]
    candidates += space.latin_hypercube(size, REFERENCE_SEED)
    configs = _distinct(space, candidates, size)
    draw = 0
    while len(configs) < size:  # a hypercube of a small space may repeat itself: top up with fixed draws
        configs = _distinct(space, configs + space.sample(size, REFERENCE_SEED + 1 + draw), size)
        draw += 1
    keys = tuple(space.key(c) for c in configs)
    digest = hashlib.sha256(canonical_json([space.id, list(keys)]).encode()).hexdigest()[:16]
    return ReferenceSet(space.id, tuple(configs), keys, digest)


def _extreme(space: SearchSpace, pick) -> Config | None:
    """Every variable at its least (pick=min) or greatest choice: numerically where choices are numbers,
    else the first or last listed. None when the space's rule forbids that combination."""
    config = {}
    for v in space.variables:
        if v.numeric:
            config[v.name] = pick(v.choices)
        else:
            config[v.name] = v.choices[0] if pick is min else v.choices[-1]
    return config if space.is_valid(config) else None


def _distinct(space: SearchSpace, configs: list[Config], size: int) -> list[Config]:
    seen, kept = set(), []
    for config in configs:
        key = space.key(config)
        if key not in seen:
            seen.add(key)
            kept.append(space.validate(config))
        if len(kept) == size:
            break
    return kept
