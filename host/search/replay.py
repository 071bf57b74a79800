"""Replaying a recorded table as a search problem: a look-up is a real evaluation, and the table's exact
Pareto front scores every tactic by the fraction of its hypervolume reached after each evaluation."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..supernets import Config, SearchSpace, get_supernet
from ..tables import Table, table_configs
from .hypervolume import Normaliser, hv_curve, hypervolume, non_dominated
from .objectives import Objective, minimised
from .session import KNOWN_LIMIT, SearchSession
from .tactics import get_tactic

REF = 1.1


class TableEvaluator:
    """Evaluates configurations by looking them up in a table (the first row wins for repeated keys)."""

    def __init__(self, space: SearchSpace, configs: list[Config], values: np.ndarray, objectives: list[Objective]):
        self.space, self.objectives = space, objectives
        self.lookups = 0
        self._values: dict[str, np.ndarray] = {}
        for config, row in zip(configs, values):
            self._values.setdefault(space.key(config), row)

    def evaluate(self, configs) -> np.ndarray:
        self.lookups += len(configs)
        try:
            return np.stack([self._values[self.space.key(c)] for c in configs])
        except KeyError as exc:
            raise KeyError(f"configuration {exc} is not in the table") from None

    @property
    def pool(self) -> np.ndarray:
        return self.space.encode_many([self.space.from_key(k) for k in self._values])


@dataclass
class ReplayProblem:
    space: SearchSpace
    evaluator: TableEvaluator
    normaliser: Normaliser
    true_hv: float
    #: None when the table covers the whole space (tactics may then propose anything).
    pool: np.ndarray | None

    @classmethod
    def from_table(cls, table: Table, space_id: str, key: str, objectives: list[Objective]) -> "ReplayProblem":
        supernet = get_supernet(space_id)
        space, configs = supernet.space, table_configs(table, supernet, key)
        _refuse_duplicates(space, configs, table)
        values = np.stack([table.column(o.metric) for o in objectives], axis=1)
        evaluator = TableEvaluator(space, configs, values, objectives)
        F = minimised(values, objectives)
        with np.errstate(over="ignore"):
            normaliser = Normaliser.of_front(F)  # the true front's ideal -> 0, its nadir -> 1
        wide = [o.metric for o, span in zip(objectives, normaliser.span) if not np.isfinite(span)]
        if wide:  # 1e308 and -1e308: their difference is no float, and every value would scale to 0
            raise ValueError(f"{table.path.name}: the values of {wide[0]} on the true front span more than a float "
                             "holds; rescale the column")
        true_hv = hypervolume(normaliser(F[non_dominated(F)]), np.full(len(objectives), REF))
        covers_space = len(evaluator._values) >= space.size
        return cls(space, evaluator, normaliser, true_hv, None if covers_space else evaluator.pool)

    @property
    def size(self) -> int:
        """How many configurations the table holds: the most a run can evaluate."""
        return len(self.evaluator._values)

    def run(self, tactic: str, seed: int, budget: int, known: dict[str, int] | None = None, **settings) -> dict:
        """One run; `known` = {objective: n} gives it n random rows' values of that objective beforehand."""
        session = SearchSession(self.space, self.evaluator, budget, pool=self.pool,
                                known=self.known_sample(known or {}, seed))
        get_tactic(tactic)(session, seed=seed, **settings)
        _, values = session.history()
        curve = hv_curve(minimised(values, session.objectives), self.normaliser, REF) / self.true_hv
        return {"tactic": tactic, "seed": seed, "evaluated": session.keys(), "hv": [round(float(h), 6) for h in curve]}

    def known_sample(self, counts: dict[str, int], seed: int) -> dict[str, tuple[list[Config], list[float]]]:
        """`counts[name]` rows of the table drawn at random, whose values of objective `name` a run knows before
        it starts, as it would know a calibration's measurements or an earlier run's accuracy evaluations."""
        column = {o.name: j for j, o in enumerate(self.evaluator.objectives)}
        keys = list(self.evaluator._values)
        rng = np.random.default_rng(10_000 + seed)
        known = {}
        for name, n in counts.items():
            if name not in column:
                raise ValueError(f"cannot know values of {name!r}: it is not an objective ({', '.join(column)})")
            if not 0 < n <= min(len(keys), KNOWN_LIMIT):  # beyond the limit: what no live search is given
                raise ValueError(f"known rows of {name!r} must be 1 to {min(len(keys), KNOWN_LIMIT)} (a search learns "
                                 f"from the latest {KNOWN_LIMIT} known values of an objective at most), got {n}")
            rows = rng.choice(len(keys), n, replace=False)
            known[name] = ([self.space.from_key(keys[i]) for i in rows],
                           [float(self.evaluator._values[keys[i]][column[name]]) for i in rows])
        return known


def _refuse_duplicates(space: SearchSpace, configs: list[Config], table: Table) -> None:
    """A replay's truth is one row per configuration: a second row would be one the search can never see,
    yet its values would shape the true front that scores it."""
    first: dict[str, int] = {}
    for i, config in enumerate(configs):
        key = space.key(config)
        if key in first:
            raise ValueError(f"{table.path.name} lines {table.lines[first[key]]} and {table.lines[i]} hold the same "
                             f"configuration {key!r:.120}; a replay needs one row per configuration")
        first[key] = i


def evaluations_to_reach(hv: list[float], fraction: float) -> int | None:
    """How many evaluations a run needed to reach `fraction` of the true front's hypervolume (None: never)."""
    for i, h in enumerate(hv):
        if h >= fraction - 1e-12:
            return i + 1
    return None
