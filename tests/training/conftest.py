"""Fixtures of the trainer tests (helpers: ``training_helpers.py``)."""
from __future__ import annotations

from pathlib import Path

import pytest

from .training_helpers import write_train_dir


@pytest.fixture(scope="session")
def tiny_train_dir(tmp_path_factory) -> Path:
    """A Kaldi training dir of 4 distinguishable synthetic speakers x 8 utterances of 1.2 s."""
    return write_train_dir(tmp_path_factory.mktemp("tiny_train"))


@pytest.fixture
def in_process_torch():
    """For in-process training runs: one thread like the subprocesses (OMP_NUM_THREADS=1); afterwards
    the thread count and the deterministic-algorithms flag (``train.deterministic``) are put back."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
