"""An evolutionary algorithm on real evaluations only: every individual is measured (pymoo ask/tell)."""
from __future__ import annotations

import numpy as np
from pymoo.core.evaluator import Evaluator
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.problems.static import StaticProblem
from pymoo.core.termination import NoTermination

from ..algorithms import make_algorithm
from ..objectives import minimised
from ..session import SearchSession


#: What the algorithm is told of a configuration that could not be evaluated, in every objective (all
#: minimised) and constraint violation: far beyond any value, so that every evaluated one dominates it.
FAILED = 1e30


def run(session: SearchSession, seed: int = 0, algorithm: str = "nsga2", pop_size: int = 20) -> None:
    space = session.space
    problem = Problem(n_var=space.n_var, n_obj=len(session.objectives), n_ieq_constr=len(session.constraints),
                      xl=0, xu=space.upper, vtype=int)
    column = {o.name: j for j, o in enumerate(session.objectives)}
    algo = make_algorithm(algorithm, space, problem.n_obj, pop_size=pop_size)
    algo.setup(problem, seed=seed, termination=NoTermination())
    while session.remaining > 0:
        asked = algo.ask()
        # MOEA/D asks for one individual at a time; evaluate it as a population of one, tell it as it was asked.
        pop = asked if isinstance(asked, Population) else Population.create(asked)
        X = np.atleast_2d(np.asarray(pop.get("X"))).round().astype(np.int64)
        if session.pool is not None:
            unseen = session.fresh(session.pool)
            if not len(unseen):
                return  # every row of the table has been evaluated
            X = snap_to_pool(X, unseen)
            pop.set("X", X)
        configs = [space.decode(x) for x in X]
        new = len(session.fresh(X))
        if not session.keep_drawing(new, len(X)):
            return
        if new > session.remaining:  # the last generation does not fit: measure what the budget allows
            session.evaluate([space.decode(x) for x in session.fresh(X)[:session.remaining]])
            return
        values = session.evaluate(configs)
        # A config that could not be evaluated (NaN) is told to the algorithm as worse than any that was.
        known = {"F": np.nan_to_num(minimised(values, session.objectives), nan=FAILED)}
        if session.constraints:
            known["G"] = np.nan_to_num(np.stack([c.violation(values[:, column[c.objective]])
                                                 for c in session.constraints], axis=1), nan=FAILED)
        Evaluator().eval(StaticProblem(problem, **known), pop)
        algo.tell(infills=asked)


def snap_to_pool(X: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Each row replaced by its nearest pool member (fewest differing variables): tables cover few configs.
    Given the rows not evaluated yet, every generation measures something new until the table runs out."""
    distance = (X[:, None, :] != pool[None, :, :]).sum(axis=2)
    return pool[distance.argmin(axis=1)]
