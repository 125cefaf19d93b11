"""Cosine scoring with the training-set mean subtracted (WeSpeaker's "sub mean of vox2_dev"; the LAP paper's too)."""
from __future__ import annotations

import numpy as np


def center_and_normalize(embeddings: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``(x - mean) / ||x - mean||`` per row, ``[N, D] -> [N, D]`` float32."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    mean = np.asarray(mean, dtype=np.float32)
    if mean.shape != embeddings.shape[1:]:
        raise ValueError(f"mean has shape {mean.shape}, embeddings have dimension {embeddings.shape[1:]}")
    centered = embeddings - mean
    norms = np.linalg.norm(centered, axis=1, keepdims=True)
    return centered / np.maximum(norms, np.finfo(np.float32).tiny)


def paired_cosine(
    normalized: np.ndarray, enroll_rows: np.ndarray, test_rows: np.ndarray, chunk_size: int = 65536
) -> np.ndarray:
    """Score ``[T]`` of each (enroll, test) row pair of already centred, L2-normalised embeddings.

    Rows are gathered ``chunk_size`` trials at a time to bound memory.
    """
    scores = np.empty(len(enroll_rows), dtype=np.float32)
    for start in range(0, len(enroll_rows), chunk_size):
        stop = start + chunk_size
        enroll = normalized[enroll_rows[start:stop]]  # [chunk, D]
        test = normalized[test_rows[start:stop]]  # [chunk, D]
        scores[start:stop] = np.einsum("ij,ij->i", enroll, test)
    return scores
