"""Random search: unseen configurations drawn uniformly, the baseline every tactic must beat."""
from __future__ import annotations

import numpy as np

from ..session import SearchSession

BATCH = 16


def run(session: SearchSession, seed: int = 0, batch: int = BATCH) -> None:
    rng = np.random.default_rng(seed)
    space = session.space
    pool_order = rng.permutation(len(session.pool)) if session.pool is not None else None
    drawn = 0
    while session.remaining > 0:
        want = min(batch, session.remaining)
        if pool_order is not None:
            rows = session.pool[pool_order[drawn:drawn + want * 2]]
            drawn += want * 2
            if len(rows) == 0:
                return  # the whole pool has been evaluated
        else:
            rows = space.encode_many(space.sample(want * 2, rng))
        fresh = session.fresh(rows)[:want]
        if len(fresh):
            session.evaluate([space.decode(x) for x in fresh])
