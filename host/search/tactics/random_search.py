"""Random search: unseen configurations drawn uniformly, the baseline every tactic must beat."""
from __future__ import annotations

import numpy as np

from ..session import SearchSession

BATCH = 16


def run(session: SearchSession, seed: int = 0, batch: int = BATCH) -> None:
    rng = np.random.default_rng(seed)
    space = session.space
    if session.pool is not None:  # a table: its rows in a random order, until the budget or the rows run out
        order = session.fresh(session.pool[rng.permutation(len(session.pool))])
        for start in range(0, min(len(order), session.remaining), batch):
            session.evaluate([space.decode(x) for x in order[start:start + min(batch, session.remaining)]])
        return
    while session.remaining > 0:
        want = min(batch, session.remaining)
        fresh = session.fresh(space.encode_many(space.sample(want * 2, rng)))[:want]
        if not session.keep_drawing(len(fresh), want * 2):
            return
        if len(fresh):
            session.evaluate([space.decode(x) for x in fresh])
