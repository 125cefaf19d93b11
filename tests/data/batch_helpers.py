"""Helpers shared by the raw and the shard pipeline tests: noise wavs, and batches compared bit for bit."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

SR = 16000


def write_wav(path: Path, n: int, seed: int) -> str:
    """``n`` samples of 16-bit Gaussian noise (seeded) at 16 kHz; returns the path as a string."""
    sf.write(str(path), np.random.default_rng(seed).normal(0, 0.1, n), SR, subtype="PCM_16")
    return str(path)


def assert_same_batches(left: list, right: list) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right):
        assert a["keys"] == b["keys"]
        assert torch.equal(a["labels"], b["labels"])
        assert torch.equal(a["wavs"], b["wavs"])
