"""Search tactics. Each is `run(session, seed, **settings)`: it spends the session's budget of real
evaluations, asking only through `session.evaluate`, and touches nothing else."""
from __future__ import annotations

from typing import Callable

from . import evolutionary, linas, random_search

TACTICS: dict[str, Callable] = {
    "linas": linas.run,
    "evolutionary": evolutionary.run,
    "random": random_search.run,
}


#: Tactics that fit predictors, and so learn from what a session knew before its run (`SearchSession.known`).
LEARNING = {"linas"}


def get_tactic(name: str) -> Callable:
    if name not in TACTICS:
        raise ValueError(f"unknown tactic {name!r}; choose one of {', '.join(TACTICS)}")
    return TACTICS[name]
