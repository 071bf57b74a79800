"""The pymoo Problem that search runs on predictors: vectorised over a whole population at once."""
from __future__ import annotations

from typing import Callable

import numpy as np
from pymoo.core.problem import Problem

from ..supernets.space import SearchSpace
from .objectives import Constraint, Objective


class PredictedProblem(Problem):
    """Objectives and constraints of integer-encoded configs, from `predict(X) -> values` (natural units).

    `predict` returns a (rows × objectives) array in the objectives' own units and directions; the
    problem flips maximised objectives so that pymoo minimises everything.
    """

    def __init__(self, space: SearchSpace, objectives: list[Objective], predict: Callable[[np.ndarray], np.ndarray],
                 constraints: list[Constraint] = ()):
        super().__init__(n_var=space.n_var, n_obj=len(objectives), n_ieq_constr=len(constraints), xl=0,
                         xu=space.upper, vtype=int)
        self.objectives, self.predict, self.constraints = objectives, predict, list(constraints)
        self._column = {o.name: i for i, o in enumerate(objectives)}
        for c in self.constraints:
            if c.objective not in self._column:
                raise ValueError(f"constraint on {c.objective!r}, which is not an objective "
                                 f"({', '.join(self._column)})")
        self.n_evaluated = 0

    def _evaluate(self, X, out, *args, **kwargs):
        values = self.predict(np.asarray(X).round().astype(np.int64))
        self.n_evaluated += len(values)
        out["F"] = values * np.array([o.sign for o in self.objectives])
        if self.constraints:
            out["G"] = np.stack([c.violation(values[:, self._column[c.objective]]) for c in self.constraints], axis=1)
