"""EER, minDCF, DET points and bootstrap CIs against hand-worked lists and brute force."""
from functools import partial

import numpy as np
import pytest

from wespeaker_lap.scoring.metrics import (
    bootstrap_ci,
    compute_eer,
    compute_min_dcf,
    det_curve,
    eer_from_rates,
    error_rates,
    min_dcf_from_rates,
)


def _trials(targets, nontargets):
    scores = np.array(list(targets) + list(nontargets), dtype=float)
    labels = np.array([1] * len(targets) + [0] * len(nontargets))
    return scores, labels


def test_eer_at_an_operating_point():
    # ascending: .1n .2n .3t .7n .8t .9t. Threshold .7 misses 1/3 targets (.3) and accepts
    # 1/3 non-targets (.7): the curves meet exactly there.
    assert compute_eer(*_trials([0.9, 0.8, 0.3], [0.7, 0.2, 0.1])) == pytest.approx(1 / 3)


def test_eer_interpolates_between_operating_points():
    # ascending: .1n .2t .3n .5n .6n .8t .9t; (p_miss, p_fa) at thresholds .5 and .6 are
    # (1/3, 1/2) and (1/3, 1/4): the segment between them meets p_miss = p_fa at 1/3.
    assert compute_eer(*_trials([0.2, 0.8, 0.9], [0.1, 0.3, 0.5, 0.6])) == pytest.approx(1 / 3)


def test_eer_splits_a_tie_between_a_target_and_a_nontarget():
    # Target .5 ties with non-target .5. Points: thr .1 (0, 1), thr .5 (0, 1/2), thr .9 (1/2, 0),
    # reject-all (1, 0). The crossing is halfway along (0, 1/2)-(1/2, 0): EER 1/4, where any
    # ordering inside the tie would give 0 or 1/2.
    assert compute_eer(*_trials([0.5, 0.9], [0.5, 0.1])) == pytest.approx(0.25)


def test_eer_extremes():
    assert compute_eer(*_trials([1.0] * 3, [1.0] * 5)) == pytest.approx(0.5)  # all tied
    assert compute_eer(*_trials([2.0, 3.0], [0.0, 1.0])) == 0.0  # perfectly separated
    assert compute_eer(*_trials([0.0, 1.0], [2.0, 3.0])) == 1.0  # perfectly wrong


def test_min_dcf_hand_worked():
    scores, labels = _trials([0.2, 0.8, 0.9], [0.1, 0.3, 0.5, 0.6])
    # (p_miss, p_fa): thr .1 (0, 1), .2 (0, 3/4), .3 (1/3, 3/4), .5 (1/3, 1/2), .6 (1/3, 1/4),
    # .8 (1/3, 0), .9 (2/3, 0), reject (1, 0).
    # p=0.01: cost / 0.01 = p_miss + 99 p_fa, smallest at .8: 1/3.
    assert compute_min_dcf(scores, labels, p_target=0.01) == pytest.approx(1 / 3)
    # p=0.5, c_miss=10: cost / min(5, 0.5) = 10 p_miss + p_fa, smallest at .2: 3/4.
    assert compute_min_dcf(scores, labels, p_target=0.5, c_miss=10.0) == pytest.approx(0.75)


def test_min_dcf_extremes():
    assert compute_min_dcf(*_trials([1.0] * 3, [1.0] * 5)) == pytest.approx(1.0)  # no information
    assert compute_min_dcf(*_trials([2.0, 3.0], [0.0, 1.0]), p_target=0.05) == 0.0


def _brute_force(scores, labels):
    """Operating points by direct counting at each distinct score and above the maximum."""
    thresholds = sorted(set(scores.tolist())) + [np.inf]
    tar, non = scores[labels == 1], scores[labels == 0]
    p_miss = np.array([np.sum(tar < t) / tar.size for t in thresholds])
    p_fa = np.array([np.sum(non >= t) / non.size for t in thresholds])
    eer = None
    for i in range(len(thresholds)):
        if p_miss[i] == p_fa[i]:
            eer = p_miss[i]
            break
        if p_miss[i] > p_fa[i]:  # crossed between i - 1 and i: intersect the segment with y = x
            (x0, y0), (x1, y1) = (p_fa[i - 1], p_miss[i - 1]), (p_fa[i], p_miss[i])
            lam = (x0 - y0) / ((x0 - y0) - (x1 - y1))
            eer = y0 + lam * (y1 - y0)
            break
    dcfs = {p: min(p * m + (1 - p) * f for m, f in zip(p_miss, p_fa)) / min(p, 1 - p) for p in (0.01, 0.05)}
    return eer, dcfs


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_brute_force_sweep_on_heavily_tied_scores(seed):
    rng = np.random.default_rng(seed)
    n = 300
    labels = (rng.random(n) < 0.3).astype(int)
    scores = rng.integers(0, 12, n) + 3 * labels  # only ~15 distinct values
    eer, dcfs = _brute_force(scores.astype(float), labels)
    assert compute_eer(scores, labels) == pytest.approx(eer, abs=1e-12)
    for p, dcf in dcfs.items():
        assert compute_min_dcf(scores, labels, p_target=p) == pytest.approx(dcf, abs=1e-12)


def test_tie_handling_does_not_depend_on_trial_order_or_monotone_transforms():
    rng = np.random.default_rng(0)
    labels = (rng.random(500) < 0.5).astype(int)
    scores = np.round(rng.normal(labels, 1.0), 1)
    order = rng.permutation(500)
    reference = compute_eer(scores, labels), compute_min_dcf(scores, labels)
    assert (compute_eer(scores[order], labels[order]), compute_min_dcf(scores[order], labels[order])) == reference
    assert compute_eer(np.exp(scores), labels) == reference[0]


def test_det_curve_runs_from_accept_all_to_reject_all():
    p_fa, p_miss = det_curve(*_trials([0.5, 0.9], [0.5, 0.1]))
    np.testing.assert_allclose(p_fa, [1.0, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(p_miss, [0.0, 0.0, 0.5, 1.0])


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="one target and one non-target"):
        compute_eer(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(ValueError, match="NaN"):
        compute_eer(np.array([np.nan, 0.2]), np.array([1, 0]))
    with pytest.raises(ValueError, match="scores but"):
        compute_eer(np.array([0.1, 0.2, 0.3]), np.array([1, 0]))


def _synthetic(n, seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.2).astype(int)
    return rng.normal(2.0 * labels, 1.0), labels


@pytest.mark.parametrize(
    "metric, reference",
    [
        (eer_from_rates, compute_eer),
        (partial(min_dcf_from_rates, p_target=0.05), partial(compute_min_dcf, p_target=0.05)),
    ],
)
def test_bootstrap_equals_textbook_resampling_loop(metric, reference):
    scores, labels = _synthetic(400, 1)
    scores = np.round(scores, 1)  # ties too
    targets, nontargets = scores[labels == 1], scores[labels == 0]
    rng = np.random.default_rng(3)
    values = []
    for _ in range(50):
        tar = targets[rng.integers(0, targets.size, targets.size)]
        non = nontargets[rng.integers(0, nontargets.size, nontargets.size)]
        values.append(reference(*_trials(tar, non)))
    expected = np.quantile(values, [0.05, 0.95])
    low, high = bootstrap_ci(scores, labels, metric, n_boot=50, alpha=0.1, seed=3)
    assert (low, high) == pytest.approx(tuple(expected), abs=1e-12)


def test_bootstrap_ci_contains_the_estimate_and_shrinks_with_more_trials():
    widths = []
    for n in (1000, 16000):
        scores, labels = _synthetic(n, 2)
        low, high = bootstrap_ci(scores, labels, n_boot=200, seed=0)
        assert low <= compute_eer(scores, labels) <= high
        dcf = partial(min_dcf_from_rates, p_target=0.05)
        dcf_low, dcf_high = bootstrap_ci(scores, labels, dcf, n_boot=200, seed=0)
        assert dcf_low <= compute_min_dcf(scores, labels, p_target=0.05) <= dcf_high
        widths.append(high - low)
    assert widths[1] < 0.5 * widths[0]  # ~1/4 expected for 16x the trials


def test_rates_are_monotone():
    scores, labels = _synthetic(1000, 4)
    p_miss, p_fa = error_rates(np.round(scores, 1), labels)
    assert p_miss[0] == 0 and p_fa[0] == 1 and p_miss[-1] == 1 and p_fa[-1] == 0
    assert np.all(np.diff(p_miss) >= 0) and np.all(np.diff(p_fa) <= 0)


def test_official_closest_point_eer_is_never_lower_and_at_most_one_step_higher():
    scores, labels = _synthetic(2000, 5)
    p_miss, p_fa = error_rates(scores, labels)
    closest = np.argmin(np.abs(p_miss - p_fa))
    official = max(p_miss[closest], p_fa[closest])
    eer = compute_eer(scores, labels)
    assert eer <= official <= eer + 1.0 / min(labels.sum(), (1 - labels).sum())
