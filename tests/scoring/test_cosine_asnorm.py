"""Cosine scoring with mean subtraction and AS-Norm against plain per-trial loops."""
import statistics

import numpy as np
import pytest

from wespeaker_lap.data.kaldi import DataError
from wespeaker_lap.scoring.asnorm import as_norm, cohort_statistics, speaker_means
from wespeaker_lap.scoring.cosine import center_and_normalize, paired_cosine
from wespeaker_lap.scoring.embeddings import Embeddings


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    raw = rng.normal(0.5, 1.0, (12, 8)).astype(np.float32)
    cohort_raw = rng.normal(0.5, 1.0, (20, 8)).astype(np.float32)
    mean = rng.normal(0.5, 0.1, 8).astype(np.float32)
    enroll = rng.integers(0, 12, 40)
    test = rng.integers(0, 12, 40)
    return raw, cohort_raw, mean, enroll, test


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_cosine_with_mean_subtraction_matches_numpy(data):
    raw, _, mean, enroll, test = data
    scores = paired_cosine(center_and_normalize(raw, mean), enroll, test, chunk_size=7)
    expected = [_cos(raw[e] - mean, raw[t] - mean) for e, t in zip(enroll, test)]
    np.testing.assert_allclose(scores, expected, atol=1e-6)


def _top_stats(query, cohort, k, mean):
    cosines = sorted((_cos(query - mean, c - mean) for c in cohort), reverse=True)[:k]
    return statistics.fmean(cosines), statistics.stdev(cosines)  # stdev is unbiased


def test_asnorm_matches_per_trial_loop(data):
    raw, cohort_raw, mean, enroll, test = data
    k = 5
    normalized = center_and_normalize(raw, mean)
    mu, sigma = cohort_statistics(normalized, center_and_normalize(cohort_raw, mean), k, chunk_size=5)
    scores = paired_cosine(normalized, enroll, test)
    normed = as_norm(scores, mu[enroll], sigma[enroll], mu[test], sigma[test])
    for s_norm, e, t in zip(normed, enroll, test):
        s = _cos(raw[e] - mean, raw[t] - mean)
        mu_e, sd_e = _top_stats(raw[e], cohort_raw, k, mean)
        mu_t, sd_t = _top_stats(raw[t], cohort_raw, k, mean)
        assert s_norm == pytest.approx(0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t), abs=1e-4)


def test_excluded_speakers_are_left_out_of_the_cohort(data):
    raw, cohort_raw, mean, _, _ = data
    cohort_speakers = np.arange(20) % 7  # speaker id of each cohort row
    excluded = np.array([[3, 3], [0, 5], [-1, -1]])  # per query; -1: none
    queries = center_and_normalize(raw[:3], mean)
    mu, sigma = cohort_statistics(
        queries, center_and_normalize(cohort_raw, mean), 4, cohort_speakers, excluded, chunk_size=2
    )
    for q in range(3):
        kept = cohort_raw[~np.isin(cohort_speakers, excluded[q])]
        assert (mu[q], sigma[q]) == pytest.approx(_top_stats(raw[q], kept, 4, mean), abs=1e-5)


def test_cohort_size_checks(data):
    raw, cohort_raw, mean, _, _ = data
    queries, cohort = center_and_normalize(raw, mean), center_and_normalize(cohort_raw, mean)
    with pytest.raises(ValueError, match="top_k must be between 2 and the cohort size 20"):
        cohort_statistics(queries, cohort, 21)
    cohort_speakers = np.repeat([0, 1, 2], [9, 8, 3])
    excluded = np.tile([0, 1], (12, 1))  # every query leaves out speakers 0 and 1
    with pytest.raises(ValueError, match="only 3 cohort entries remain"):
        cohort_statistics(queries, cohort, 4, cohort_speakers, excluded)


def test_speaker_means(data):
    raw = data[0]
    keys = [f"u{i}" for i in range(12)]
    utt2spk = {key: f"s{i % 3}" for i, key in enumerate(keys)}
    means = speaker_means(Embeddings(keys, raw, "emb.scp"), utt2spk, "utt2spk")
    assert means.keys == ["s0", "s1", "s2"]
    for s in range(3):
        np.testing.assert_allclose(means.matrix[s], raw[s::3].mean(axis=0), rtol=1e-5)
    del utt2spk["u4"]
    with pytest.raises(DataError, match="utt2spk: no speaker for utterance 'u4'"):
        speaker_means(Embeddings(keys, raw, "emb.scp"), utt2spk, "utt2spk")
