"""Adaptive symmetric score normalisation (AS-Norm), vectorised, as WeSpeaker's ``score_norm.py``.

The official settings (top 600, speaker-mean cohort) are in docs/reproduction.md §AS-Norm.

Every embedding (enroll, test and cohort) is centred with the training-set mean and
L2-normalised first. For a trial with raw cosine ``s``:

    s_norm = ½ [(s − μ_e) / σ_e + (s − μ_t) / σ_t]

where ``μ_e, σ_e`` are the mean and unbiased std of the ``top_k`` highest cosines of the
enroll embedding against the cohort (likewise ``μ_t, σ_t`` for the test side). The
statistics depend on one embedding only, so they are computed once per distinct
utterance with one matmul + top-k per chunk of utterances.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Optional, Tuple

import numpy as np

from wespeaker_lap.scoring.cosine import center_and_normalize
from wespeaker_lap.scoring.embeddings import Embeddings, lookup_keys
from wespeaker_lap.utils.console import progress as progress_bar


def speaker_means(embeddings: Embeddings, utt2spk: Mapping[str, str], utt2spk_path: str) -> Embeddings:
    """Mean raw embedding of each speaker (sorted speaker ids): the default AS-Norm cohort."""
    names = lookup_keys(utt2spk, embeddings.keys, utt2spk_path, "speaker")
    speakers, speaker_of_row = np.unique(names, return_inverse=True)
    counts = np.bincount(speaker_of_row, minlength=speakers.size)
    sums = np.stack(
        [np.bincount(speaker_of_row, weights=column, minlength=speakers.size) for column in embeddings.matrix.T],
        axis=1,
    )  # [S, D], accumulated in float64
    means = (sums / counts[:, None]).astype(np.float32)
    return Embeddings(speakers.tolist(), means, f"speaker means of {embeddings.source}")


@dataclass(frozen=True)
class Cohort:
    """An AS-Norm cohort: centred, L2-normalised ``embeddings [C, D]``, the speaker of each row, and ``top_k``."""

    embeddings: np.ndarray  # [C, D]
    speakers: Optional[List[str]]  # [C]; None: unknown (no speaker can be left out)
    top_k: int
    source: str = "cohort"

    def __post_init__(self) -> None:
        if not 2 <= self.top_k <= len(self.embeddings):
            raise ValueError(f"cohort.top_k={self.top_k} must be between 2 and the size of the cohort "
                             f"({len(self.embeddings)} rows of {self.source})")

    @classmethod
    def from_embeddings(cls, raw: Embeddings, mean: np.ndarray, top_k: int,
                        speakers: Optional[List[str]] = None) -> "Cohort":
        """Centre and normalise ``raw`` (one row per cohort entry); ``speakers`` default to its keys."""
        return cls(center_and_normalize(raw.matrix, mean), speakers if speakers is not None else raw.keys, top_k,
                   raw.source)

    def statistics(self, queries: np.ndarray, **kwargs) -> Tuple[np.ndarray, np.ndarray]:
        """``cohort_statistics(queries, self.embeddings, self.top_k, **kwargs)``."""
        return cohort_statistics(queries, self.embeddings, self.top_k, **kwargs)


def cohort_statistics(
    queries: np.ndarray,
    cohort: np.ndarray,
    top_k: int,
    cohort_speakers: Optional[np.ndarray] = None,
    excluded_speakers: Optional[np.ndarray] = None,
    chunk_size: Optional[int] = None,
    progress: bool = False,
) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased std ``([N], [N])`` of each query's ``top_k`` highest cohort cosines.

    ``queries [N, D]`` and ``cohort [C, D]`` are centred and L2-normalised. To leave speakers
    out (calibration trials), give ``cohort_speakers [C]`` (an integer speaker id per cohort
    row) and ``excluded_speakers [N, E]`` (ids to leave out for each query, -1 for none).
    ``chunk_size`` queries are scored at a time (default: about 32 M cosines per chunk); the
    top-k is an in-place ``np.partition`` (linear time; faster than ``torch.topk`` on CPU here).
    """
    n_cohort = cohort.shape[0]
    if not 2 <= top_k <= n_cohort:
        raise ValueError(f"top_k must be between 2 and the cohort size {n_cohort}, got {top_k}")
    if (cohort_speakers is None) != (excluded_speakers is None):
        raise ValueError("give both cohort_speakers and excluded_speakers, or neither")
    chunk_size = chunk_size or max(1, (1 << 25) // n_cohort)
    cohort_t = np.ascontiguousarray(cohort, dtype=np.float32).T  # [D, C]
    means = np.empty(len(queries), dtype=np.float32)
    stds = np.empty(len(queries), dtype=np.float32)
    starts = range(0, len(queries), chunk_size)
    for start in progress_bar(starts, desc="AS-Norm cohort", disable=not progress, leave=False):
        stop = start + chunk_size
        scores = np.asarray(queries[start:stop], dtype=np.float32) @ cohort_t  # [chunk, C]
        if excluded_speakers is not None:
            mask = np.zeros(scores.shape, dtype=bool)  # [chunk, C]: cohort row of an excluded speaker
            for excluded in excluded_speakers[start:stop].T:  # [chunk] per excluded slot
                mask |= cohort_speakers[None, :] == excluded[:, None]
            available = int(n_cohort - mask.sum(axis=1).max())
            if available < top_k:
                raise ValueError(f"only {available} cohort entries remain after exclusion, top_k is {top_k}")
            np.copyto(scores, -np.inf, where=mask)
        scores.partition(n_cohort - top_k, axis=1)  # in place: the top_k largest end up last
        top = scores[:, n_cohort - top_k:]  # [chunk, top_k]
        means[start:stop] = top.mean(axis=1)
        stds[start:stop] = top.std(axis=1, ddof=1)  # unbiased, like the paper's torch.std
    return means, stds


def as_norm(
    scores: np.ndarray, enroll_mean: np.ndarray, enroll_std: np.ndarray, test_mean: np.ndarray, test_std: np.ndarray
) -> np.ndarray:
    """``½ [(s − μ_e) / σ_e + (s − μ_t) / σ_t]``, elementwise over trials."""
    return 0.5 * ((scores - enroll_mean) / enroll_std + (scores - test_mean) / test_std)
