"""Accuracy figures of a predictor: the same five everywhere (CV, benchmarks, reports)."""
from __future__ import annotations

from typing import Any

import numpy as np


def regression_metrics(y_true, y_pred) -> dict[str, float]:
    """MAPE (%), share of predictions within ±5 % and ±10 % of the truth (fractions 0..1), RMSE (units of y)
    and Kendall's tau (rank agreement; NaN when either side is constant).

    Relative figures divide by |y_true|. MAPE leaves out the rows whose truth is zero (a peak memory of 0 B
    above baseline is a real measurement): one such row would make it infinite, hiding how close every other
    prediction is; RMSE still counts them. It is NaN when every truth is zero. In the ±5 % and ±10 % shares
    a zero truth is a miss unless the prediction is exactly zero too.
    """
    from scipy.stats import kendalltau

    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} values but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("no values to score")
    if not (np.isfinite(y_true).all() and np.isfinite(y_pred).all()):
        raise ValueError("y_true and y_pred must be finite")
    error = np.abs(y_pred - y_true)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(error == 0, 0.0, error / np.abs(y_true))
    if y_true.size > 1 and np.ptp(y_true) > 0 and np.ptp(y_pred) > 0:
        tau = float(kendalltau(y_true, y_pred).statistic)
    else:
        tau = float("nan")
    return {
        "mape": float(np.mean(relative[y_true != 0]) * 100.0) if np.any(y_true != 0) else float("nan"),
        "within_5": float(np.mean(relative <= 0.05)),
        "within_10": float(np.mean(relative <= 0.10)),
        "rmse": float(np.sqrt(np.mean(error ** 2))),
        "kendall_tau": tau,
    }


def json_safe(value: Any) -> Any:
    """NaN and infinities (e.g. Kendall's tau of a constant) as null, in nested dicts and lists: metrics
    kept as strict JSON in predictor files and in the store."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def figure(value, spec: str = ".2f") -> str:
    """A metric as text, "n/a" when it could not be computed (None, as json_safe stores NaN and infinities)."""
    if value is None or not np.isfinite(value):
        return "n/a"
    return format(value, spec)
