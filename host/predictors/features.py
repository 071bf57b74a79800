"""Feature matrices for predictors.

A space's configs become: the one-hot encoding (what a linear model needs to learn a per-choice cost), the
ordinal encoding (numeric choices as numbers, so trees can split on "kernel ≥ 5"), per-choice counts over
variables that share a choice set (how many layers use each op: what an additive cost model sees at a
glance), and optional analytic columns (MACs, params, activation bytes) supplied by the caller.
Tables without a space give plain numeric columns (`tables.Table.features`).

`feature_views` names column subsets that the cross-validation may choose among: with a hundred or two
rows, a few hundred one-hot columns can drown the handful of analytic ones that carry the signal.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from ..supernets.space import SearchSpace


def space_features(space: SearchSpace, X_int: np.ndarray, analytic: np.ndarray | None = None) -> np.ndarray:
    """One-hot + ordinal + choice-count (+ analytic) columns of integer encodings `X_int` (one row per config)."""
    X_int = np.atleast_2d(np.asarray(X_int))
    if X_int.shape[1] != space.n_var:
        raise ValueError(f"{space.id} encodings have {space.n_var} columns, got {X_int.shape[1]}")
    parts = [space.one_hot(X_int).astype(np.float64), space.ordinal(X_int), _choice_counts(space, X_int)]
    if analytic is not None:
        analytic = np.asarray(analytic, dtype=np.float64)
        analytic = analytic.reshape(len(X_int), -1) if analytic.ndim == 1 else analytic
        if len(analytic) != len(X_int):
            raise ValueError(f"analytic features have {len(analytic)} rows for {len(X_int)} configs")
        parts.append(analytic)
    return np.hstack(parts)


def space_feature_names(space: SearchSpace, analytic_names: Sequence[str] = ()) -> list[str]:
    """Column names of `space_features`, in order (saved in a predictor's feature spec)."""
    names = [f"{v.name}={c}" for v in space.variables for c in v.choices]
    names += [f"{v.name}#" for v in space.variables]
    for members, choices, numeric in _shared_choice_sets(space):
        label = "+".join([members[0], members[-1]]) if len(members) > 2 else "+".join(members)
        names += [f"count({label})={c}" for c in choices]
        if numeric:
            names.append(f"sum({label})")
    return names + [f"analytic:{n}" for n in analytic_names]


def _shared_choice_sets(space: SearchSpace) -> list[tuple[list[str], tuple, bool]]:
    """Groups of two or more variables with the same choices: (variable names, choices, numeric?)."""
    groups: dict[tuple, list[str]] = defaultdict(list)
    for v in space.variables:
        groups[v.choices].append(v.name)
    return [(members, choices, space.variable(members[0]).numeric)
            for choices, members in groups.items() if len(members) > 1]


def _choice_counts(space: SearchSpace, X_int: np.ndarray) -> np.ndarray:
    index = {name: j for j, name in enumerate(space.names)}
    ordinal = None
    cols = []
    for members, choices, numeric in _shared_choice_sets(space):
        block = X_int[:, [index[m] for m in members]]
        cols += [(block == k).sum(axis=1) for k in range(len(choices))]
        if numeric:
            ordinal = space.ordinal(X_int) if ordinal is None else ordinal
            cols.append(ordinal[:, [index[m] for m in members]].sum(axis=1))
    return np.stack(cols, axis=1).astype(np.float64) if cols else np.zeros((len(X_int), 0))


def feature_views(names: Sequence[str]) -> dict[str, list[int]] | None:
    """Column subsets of a feature matrix with these column names, for `fit_predictor(views=...)`.

    "all" is every column; "compact" keeps the analytic columns and the per-choice counts and sums, and
    drops the one-hot and ordinal encoding. An additive cost model over kernels (nn-Meter's view of
    latency: each layer's cost follows from its operation and shape) lives in the compact columns; on
    FBNet's Xeon Gold latency, 200 rows of them predict 94.8 % of the rest within ±10 % against 86.2 % with
    every column (benchmarks/results/predictors.txt).

    "counts" keeps only the per-choice counts and sums: a cost that adds up over the choices wherever they
    are, as when every edge of a cell runs its kernel. On NAS-Bench-201 a least-squares fit of latency on
    the 5 operation counts comes within 2.8 % of the Titan Xp table on average, next to the 2.7 % by which
    cells sharing those counts differ among themselves; from 100 random rows, offering this view cut the
    chosen predictor's error on the whole table from 3.7 % to 2.8 % (Titan Xp), 3.8 % to 2.7 % (Xeon Gold)
    and 1.5 % to 1.0 % (Titan RTX): a hundred rows cannot afford to weigh the analytic columns beside them.
    On Pixel 3, whose compiled graphs drop the edges that cannot reach the output, it went from 28 % to 32 %
    (cross-validation picked the counts too often); the search still gained overall (bench_search.py).
    None when there are no analytic columns."""
    compact = [i for i, n in enumerate(names) if n.startswith(("analytic:", "count(", "sum("))]
    if not any(n.startswith("analytic:") for n in names) or len(compact) == len(names):
        return None
    views = {"all": list(range(len(names))), "compact": compact}
    counts = [i for i, n in enumerate(names) if n.startswith(("count(", "sum("))]
    if counts:  # never all of compact: it holds an analytic column too (else None above)
        views["counts"] = counts
    return views


def config_features(supernet, configs: Sequence[dict]) -> tuple[np.ndarray, list[str]]:
    """`space_features` of configs plus the super-network's own cheap numeric features
    (`SuperNetwork.predictor_features`: formulas of the config, no module built), and the column names.
    Builder-based counting (fleetnas.supernets.analytic) is not used here: it builds each sub-network,
    a fraction of a second to seconds per config, too slow for thousands of candidates."""
    space = supernet.space
    X_int = space.encode_many(list(configs))
    dicts = [supernet.predictor_features(c) for c in configs]
    names = list(dicts[0]) if dicts else []
    analytic = np.array([[d[n] for n in names] for d in dicts], dtype=np.float64) if names else None
    return space_features(space, X_int, analytic), space_feature_names(space, names)
