"""Verification metrics that are exact with tied scores: EER, minDCF, DET points, bootstrap CIs.

A trial is accepted when its score is at or above the threshold. The operating points are
one threshold at each *distinct* score (tied trials are accepted or rejected together,
never one at a time) plus "reject all". With ``t_0 < ... < t_{m-1}`` the distinct scores,
point ``j < m`` accepts the scores ``>= t_j`` and point ``m`` accepts none:

    p_miss[j] = #targets below t_j / #targets,   p_fa[j] = #non-targets at or above t_j / #non-targets

so ``p_miss`` rises from 0 (point 0 accepts all) to 1 and ``p_fa`` falls from 1 to 0.
"""
from __future__ import annotations

from typing import Callable, Tuple

import numpy as np

from wespeaker_lap.utils.console import progress as progress_bar

Rates = Tuple[np.ndarray, np.ndarray]  # (p_miss, p_fa), each [m + 1]


def _check(scores: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{int(np.sum(~np.isfinite(scores)))} scores are NaN or infinite")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must be 0 (non-target) or 1 (target)")
    labels = labels.astype(bool)
    if labels.all() or not labels.any():
        raise ValueError("need at least one target and one non-target trial")
    return scores, labels


def _tie_groups(scores: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Distinct scores (ascending) and, for each trial, the index of its score among them."""
    return np.unique(scores, return_inverse=True)


def _rates_from_counts(target_counts: np.ndarray, nontarget_counts: np.ndarray) -> Rates:
    """Operating points from per-distinct-score counts (ascending scores), ``[m] -> [m + 1]``."""
    n_target = target_counts.sum()
    n_nontarget = nontarget_counts.sum()
    targets_below = np.concatenate(([0], np.cumsum(target_counts)))
    nontargets_below = np.concatenate(([0], np.cumsum(nontarget_counts)))
    return targets_below / n_target, (n_nontarget - nontargets_below) / n_nontarget


def error_rates(scores: np.ndarray, labels: np.ndarray) -> Rates:
    """Miss and false-alarm rates at every distinct-score threshold plus reject-all (see module doc)."""
    scores, labels = _check(scores, labels)
    distinct, group = _tie_groups(scores)
    m = distinct.size
    return _rates_from_counts(
        np.bincount(group[labels], minlength=m), np.bincount(group[~labels], minlength=m)
    )


def eer_from_rates(p_miss: np.ndarray, p_fa: np.ndarray) -> float:
    """Where the miss and false-alarm curves cross.

    ``p_miss - p_fa`` rises from -1 to 1 over the operating points. If it is 0 at a point,
    that point's rate is the EER; otherwise the EER is where the straight segment between
    the last point below 0 and the first point above 0 meets ``p_miss = p_fa`` (the error
    rate of randomising between those two thresholds). Every operating point has
    ``max(p_miss, p_fa) >= EER``, so the official code's EER (that maximum at the point
    where the rates are closest; ``docs/reproduction.md`` §Departures) is never lower than this one.
    """
    gap = p_miss - p_fa
    i = int(np.searchsorted(gap, 0.0, side="left"))  # first point with p_miss >= p_fa
    if gap[i] == 0.0:
        return float(p_miss[i])
    step = -gap[i - 1] / (gap[i] - gap[i - 1])
    return float(p_miss[i - 1] + step * (p_miss[i] - p_miss[i - 1]))


def min_dcf_from_rates(
    p_miss: np.ndarray, p_fa: np.ndarray, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0
) -> float:
    """Minimum detection cost over the operating points, normalised by min(c_miss·p, c_fa·(1-p))."""
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    cost = c_miss * p_target * p_miss + c_fa * (1.0 - p_target) * p_fa
    return float(cost.min() / min(c_miss * p_target, c_fa * (1.0 - p_target)))


def compute_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate as a fraction (0.0123 = 1.23 %); see ``eer_from_rates`` for the definition."""
    return eer_from_rates(*error_rates(scores, labels))


def compute_min_dcf(
    scores: np.ndarray, labels: np.ndarray, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0
) -> float:
    """Normalised minimum DCF over thresholds between distinct scores, accept-all and reject-all."""
    return min_dcf_from_rates(*error_rates(scores, labels), p_target=p_target, c_miss=c_miss, c_fa=c_fa)


def det_curve(scores: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(p_fa, p_miss) at every operating point, for plotting a DET curve."""
    p_miss, p_fa = error_rates(scores, labels)
    return p_fa, p_miss


def bootstrap_ci(
    scores: np.ndarray,
    labels: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float] = eer_from_rates,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    progress: bool = False,
) -> Tuple[float, float]:
    """Percentile bootstrap ``(1 - alpha)`` interval of ``metric(p_miss, p_fa)``.

    The resampling unit is the trial, stratified by label: each replicate draws the
    targets with replacement (``rng.integers(0, n_target, n_target)``), then the
    non-targets the same way, with ``rng = np.random.default_rng(seed)``. Trials that
    share speakers or utterances are not independent, so the interval is optimistic
    (too narrow). Scores are sorted once; a replicate only counts how often each
    distinct score was drawn, so it costs O(n) and no sort.
    ``metric`` maps operating points to a number: ``eer_from_rates`` or e.g.
    ``functools.partial(min_dcf_from_rates, p_target=0.05)``.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    scores, labels = _check(scores, labels)
    _, group = _tie_groups(scores)
    m = int(group.max()) + 1
    target_groups, nontarget_groups = group[labels], group[~labels]
    n_target, n_nontarget = target_groups.size, nontarget_groups.size
    rng = np.random.default_rng(seed)
    # Buffers reused by every replicate: counts below each threshold ([0] stays 0), then the rates.
    targets_below = np.zeros(m + 1, dtype=np.int64)
    nontargets_below = np.zeros(m + 1, dtype=np.int64)
    p_miss, p_fa = np.empty(m + 1), np.empty(m + 1)
    values = np.empty(n_boot)
    for b in progress_bar(range(n_boot), desc="bootstrap", leave=False, disable=not progress):
        target_draw = target_groups[rng.integers(0, n_target, n_target)]
        nontarget_draw = nontarget_groups[rng.integers(0, n_nontarget, n_nontarget)]
        np.cumsum(np.bincount(target_draw, minlength=m), out=targets_below[1:])
        np.cumsum(np.bincount(nontarget_draw, minlength=m), out=nontargets_below[1:])
        np.divide(targets_below, n_target, out=p_miss)
        np.subtract(n_nontarget, nontargets_below, out=p_fa)
        np.divide(p_fa, n_nontarget, out=p_fa)
        values[b] = metric(p_miss, p_fa)
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)
