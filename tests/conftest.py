"""Shared fixtures: tiny random-init upstream checkpoints written once per test session."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Dict

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run_make_tiny_upstream(*args: str) -> Dict[str, Path]:
    """Run ``tools/make_tiny_upstream.py`` in this process (its ``main``), return family -> path."""
    spec = importlib.util.spec_from_file_location("make_tiny_upstream", REPO / "tools" / "make_tiny_upstream.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.main(list(args))


@pytest.fixture(scope="session")
def tiny_upstreams(tmp_path_factory) -> Dict[str, Path]:
    """family ("wavlm", "hubert", "wav2vec2") -> checkpoint for s3prl's ``<family>_local``.

    Shapes: wavlm 3 layers x 32, hubert 2 x 48, wav2vec2 2 x 40 (L = layers + 1 hidden states);
    ``wespeaker_lap.upstream.tiny.TINY_FAMILIES`` has them. Hop 320 samples.
    """
    return _run_make_tiny_upstream("--out_dir", str(tmp_path_factory.mktemp("tiny_upstream")))


@pytest.fixture(scope="session")
def other_tiny_upstreams(tmp_path_factory) -> Dict[str, Path]:
    """Like ``tiny_upstreams`` (same shapes and file sizes) with other random weights (seed 1)."""
    return _run_make_tiny_upstream("--out_dir", str(tmp_path_factory.mktemp("other_tiny_upstream")), "--seed", "1")


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory) -> Path:
    """A tiny random-init HuggingFace ``WavLMModel`` directory (2 layers x 32) for ``hf:<dir>``."""
    paths = _run_make_tiny_upstream("--out_dir", str(tmp_path_factory.mktemp("tiny_hf")), "--hf")
    return paths["hf"]
