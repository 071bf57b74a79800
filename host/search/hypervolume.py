"""Pareto fronts and hypervolume in all-minimise form."""
from __future__ import annotations

import numpy as np


def non_dominated(F: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of F (minimise all) that no other row dominates; duplicates all stay."""
    F = np.atleast_2d(F)
    n = len(F)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        if not keep[i]:
            continue
        dominated_by_i = np.all(F[i] <= F, axis=1) & np.any(F[i] < F, axis=1)
        keep &= ~dominated_by_i
    return keep


def hypervolume(F: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume dominated by the rows of F (minimise all) up to the reference point."""
    F = np.atleast_2d(np.asarray(F, dtype=float))
    F = F[np.all(F < ref, axis=1)]
    if len(F) == 0:
        return 0.0
    F = F[non_dominated(F)]
    if F.shape[1] == 2:
        return _hv2d(F, ref)
    from pymoo.indicators.hv import HV
    return float(HV(ref_point=ref)(F))


def _hv2d(F: np.ndarray, ref: np.ndarray) -> float:
    order = np.argsort(F[:, 0], kind="stable")
    f1, f2 = F[order, 0], F[order, 1]
    # A staircase: each point's box spans from its f1 to the next point's f1, from its f2 to the reference.
    right = np.append(f1[1:], ref[0])
    return float(np.sum((right - f1) * (ref[1] - f2)))


def hvi_2d(candidates: np.ndarray, front: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Hypervolume improvement of adding each candidate (rows) to `front`, exactly, for two objectives."""
    P = np.atleast_2d(candidates)
    Q = np.atleast_2d(front)
    Q = Q[np.all(Q < ref, axis=1)] if len(Q) else Q.reshape(0, 2)
    box = np.prod(np.clip(ref - P, 0, None), axis=1)  # what the candidate alone dominates
    if len(Q) == 0:
        return box
    Q = Q[non_dominated(Q)]
    Q = Q[np.argsort(Q[:, 0])]
    # The front's volume inside each candidate's box: clip every front point into the box, take the staircase.
    clipped1 = np.maximum(Q[None, :, 0], P[:, None, 0])       # (candidates, front)
    clipped2 = np.maximum(Q[None, :, 1], P[:, None, 1])
    right = np.concatenate([clipped1[:, 1:], np.full((len(P), 1), ref[0])], axis=1)
    # After clipping, f2 is no longer strictly decreasing; the running minimum restores the staircase.
    f2 = np.minimum.accumulate(clipped2, axis=1)
    overlap = np.sum(np.clip(right - clipped1, 0, None) * np.clip(ref[1] - f2, 0, None), axis=1)
    return np.clip(box - overlap, 0, None)


class Normaliser:
    """Maps objectives so that `ideal` -> 0 and `nadir` -> 1 (all-minimise form).

    An objective with no span (every value alike so far) is scaled by its own magnitude instead: a span of
    1 in its unit would make a hypervolume's scale depend on that unit (bytes or MACs against fractions)."""

    def __init__(self, ideal: np.ndarray, nadir: np.ndarray):
        self.ideal = np.asarray(ideal, dtype=float)
        span = np.asarray(nadir, dtype=float) - self.ideal
        magnitude = np.abs(self.ideal)
        self.span = np.where(span > 0, span, np.where(magnitude > 0, magnitude, 1.0))

    def __call__(self, F: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(F) - self.ideal) / self.span

    @classmethod
    def of_front(cls, F: np.ndarray) -> "Normaliser":
        front = np.atleast_2d(F)[non_dominated(F)]
        return cls(front.min(axis=0), front.max(axis=0))


def hv_curve(F_in_order: np.ndarray, normaliser: Normaliser, ref: float = 1.1) -> np.ndarray:
    """Hypervolume of the first k rows, for every k (normalised space, reference point `ref` everywhere)."""
    F = normaliser(F_in_order)
    r = np.full(F.shape[1], ref)
    curve = np.zeros(len(F))
    front = np.zeros((0, F.shape[1]))
    current = 0.0
    for k, f in enumerate(F):
        if not np.any(np.all(front <= f, axis=1)):  # f is not weakly dominated: the volume may grow
            front = np.vstack([front[~np.all(f <= front, axis=1)], f])
            current = hypervolume(front, r)
        curve[k] = current
    return curve
