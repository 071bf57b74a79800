"""pymoo algorithms over a SearchSpace's integer encoding, with operators that keep configs valid."""
from __future__ import annotations

import numpy as np
from pymoo.core.crossover import Crossover
from pymoo.core.mutation import Mutation
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling

from ..supernets.space import SearchSpace

ALGORITHMS = ("nsga2", "agemoea", "unsga3", "ctaea", "moead")


class ChoiceSampling(Sampling):
    """Uniform over each variable's choices, optionally starting from given rows (e.g. the known front)."""

    def __init__(self, space: SearchSpace, seeds: np.ndarray | None = None):
        super().__init__()
        self.space, self.seeds = space, seeds

    def _do(self, problem, n_samples, **kwargs):
        rng = kwargs.get("random_state") or np.random.default_rng()
        X = rng.integers(0, self.space.upper + 1, size=(n_samples, self.space.n_var))
        if self.seeds is not None and len(self.seeds):
            k = min(len(self.seeds), n_samples // 2)
            X[:k] = self.seeds[rng.permutation(len(self.seeds))[:k]]
        return X


class UniformChoiceCrossover(Crossover):
    """Each variable from either parent: the natural crossover for categorical choices."""

    def __init__(self):
        super().__init__(n_parents=2, n_offsprings=2)

    def _do(self, problem, X, **kwargs):
        rng = kwargs.get("random_state") or np.random.default_rng()
        a, b = X[0], X[1]
        take = rng.random(a.shape) < 0.5
        return np.stack([np.where(take, a, b), np.where(take, b, a)])


class ChoiceMutation(Mutation):
    """Resets each variable to another choice with probability 1/n_var (at least one per individual)."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space

    def _do(self, problem, X, **kwargs):
        rng = kwargs.get("random_state") or np.random.default_rng()
        X = X.copy()
        upper = self.space.upper
        flip = rng.random(X.shape) < 1.0 / X.shape[1]
        none = ~flip.any(axis=1)
        flip[none, rng.integers(0, X.shape[1], size=none.sum())] = True
        shift = rng.integers(1, np.maximum(upper, 1) + 1, size=X.shape)
        X[flip] = ((X + shift) % (upper + 1))[flip]
        return X


class SpaceRepair(Repair):
    """Replaces rows a space's validity rule rejects with valid mutations of themselves."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space

    def _do(self, problem, X, **kwargs):
        X = np.asarray(X).round().astype(np.int64)
        if self.space.rule is None:
            return X
        rng = np.random.default_rng(int(X.sum()) % (2 ** 32))
        for i, row in enumerate(X):
            config = self.space.decode(row)
            if self.space.rule(config) is not None:
                X[i] = self.space.encode(self.space.sample(1, rng)[0])
        return X


def make_algorithm(name: str, space: SearchSpace, n_obj: int, pop_size: int = 100, seeds: np.ndarray | None = None):
    """A pymoo algorithm by name (nsga2, agemoea, unsga3, ctaea, moead) with choice-preserving operators."""
    from pymoo.util.ref_dirs import get_reference_directions

    ops = dict(sampling=ChoiceSampling(space, seeds), crossover=UniformChoiceCrossover(),
               mutation=ChoiceMutation(space), repair=SpaceRepair(space), eliminate_duplicates=True)
    if name in ("unsga3", "ctaea", "moead"):
        partitions = max(1, pop_size - 1) if n_obj == 2 else max(1, int(round((2 * pop_size) ** 0.5)) - 1)
        ref_dirs = get_reference_directions("das-dennis", n_obj, n_partitions=partitions)
    if name == "nsga2":
        from pymoo.algorithms.moo.nsga2 import NSGA2
        return NSGA2(pop_size=pop_size, **ops)
    if name == "agemoea":
        from pymoo.algorithms.moo.age import AGEMOEA
        return AGEMOEA(pop_size=pop_size, **ops)
    if name == "unsga3":
        from pymoo.algorithms.moo.unsga3 import UNSGA3
        # At least one individual per reference direction (pymoo warns on stdout otherwise: --json would break).
        return UNSGA3(ref_dirs, pop_size=max(pop_size, len(ref_dirs)), **ops)
    if name == "ctaea":
        from pymoo.algorithms.moo.ctaea import CTAEA
        # Its diversity archive loops forever when the first population has fewer members than reference
        # directions, which removing duplicates causes on a small space (340 valid configs, say).
        return CTAEA(ref_dirs, **{**ops, "eliminate_duplicates": False})
    if name == "moead":
        from pymoo.algorithms.moo.moead import MOEAD
        ops.pop("eliminate_duplicates")
        return MOEAD(ref_dirs, n_neighbors=min(15, len(ref_dirs)), prob_neighbor_mating=0.7, **ops)
    raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
