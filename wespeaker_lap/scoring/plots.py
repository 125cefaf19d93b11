"""DET curves on probit (normal-deviate) axes, several trial lists on one plot."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Tuple

import numpy as np

TICKS_PERCENT = (0.01, 0.05, 0.2, 0.5, 1, 2, 5, 10, 20, 40, 60)


def _thin(x: np.ndarray, y: np.ndarray, resolution: float = 0.005) -> Tuple[np.ndarray, np.ndarray]:
    """Drop points closer than ``resolution`` (probit units) to the last kept one on both axes."""
    cell = np.stack((np.round(x / resolution), np.round(y / resolution)), axis=1)  # [P, 2]
    keep = np.ones(len(x), dtype=bool)
    keep[1:] = np.any(cell[1:] != cell[:-1], axis=1)
    keep[-1] = True
    return x[keep], y[keep]


def plot_det(
    curves: Mapping[str, Tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    title: str,
    eers: Mapping[str, float] | None = None,
) -> None:
    """Draw each ``name -> (p_fa, p_miss)`` curve and save a PNG at ``path`` (atomically).

    ``eers`` (fractions) adds each curve's EER to its legend entry and marks the point.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state
    from scipy.stats import norm

    from wespeaker_lap.utils.io import atomic_open

    low, high = TICKS_PERCENT[0] / 100, TICKS_PERCENT[-1] / 100
    fig = Figure(figsize=(5.5, 5.5))
    ax = fig.subplots()
    for name, (p_fa, p_miss) in curves.items():
        x = norm.ppf(np.clip(p_fa, low / 10, 1 - low / 10))
        y = norm.ppf(np.clip(p_miss, low / 10, 1 - low / 10))
        x, y = _thin(x, y)
        label = name
        if eers and name in eers:
            label = f"{name} (EER {100 * eers[name]:.2f} %)"
        (line,) = ax.plot(x, y, linewidth=1.5, label=label)
        if eers and name in eers:
            point = norm.ppf(np.clip(eers[name], low / 10, 1 - low / 10))
            ax.plot(point, point, "o", color=line.get_color(), markersize=4)
    ticks = norm.ppf(np.asarray(TICKS_PERCENT) / 100)
    labels = [f"{t:g}" for t in TICKS_PERCENT]
    ax.set_xticks(ticks, labels, fontsize=8)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_xlim(norm.ppf(low), norm.ppf(high))
    ax.set_ylim(norm.ppf(low), norm.ppf(high))
    ax.plot(ax.get_xlim(), ax.get_ylim(), ":", color="grey", linewidth=0.8)  # the EER line
    ax.set_xlabel("false-alarm rate (%)")
    ax.set_ylabel("miss rate (%)")
    ax.set_title(title)
    ax.grid(True, linewidth=0.4, alpha=0.6)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
