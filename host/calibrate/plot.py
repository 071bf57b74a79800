"""Parity plot: each predictor's cross-validated (out-of-fold) prediction against the measured value."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..predictors.metrics import figure

# metric -> (axis label, factor from the stored unit to the plotted one)
UNITS = {"latency_ms": ("latency (ms)", 1.0), "peak_bytes": ("peak memory (MiB)", 1.0 / 2**20)}


def parity_plot(path: str | Path, panels: Sequence[tuple[str, np.ndarray, np.ndarray, dict]], title: str) -> Path:
    """A PNG with one panel per (metric, measured, predicted out-of-fold, cv metrics); returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    for ax, (metric, measured, predicted, cv) in zip(axes[0], panels):
        label, factor = UNITS.get(metric, (metric, 1.0))
        x, y = np.asarray(measured) * factor, np.asarray(predicted) * factor
        low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        pad = 0.05 * (high - low or abs(high) or 1.0)
        line = np.array([low - pad, high + pad])
        ax.fill_between(line, line * 0.9, line * 1.1, color="0.9", label="±10 %")
        ax.plot(line, line, color="0.4", linewidth=1)
        ax.scatter(x, y, s=14, alpha=0.8)
        ax.set(xlim=tuple(line), ylim=tuple(line), xlabel=f"measured {label}", ylabel=f"predicted {label}, out of fold")
        ax.set_title(f"{metric}: MAPE {figure(cv['mape'])} %, ±10 % {figure(cv['within_10'], '.0%')}, n={len(x)}",
                     fontsize=9)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
