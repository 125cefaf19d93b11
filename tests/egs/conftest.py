"""Fixtures of the recipe tests: whether the mini corpus's TTS engines are installed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "egs" / "mini" / "local"


@pytest.fixture(scope="session")
def tts_available() -> None:
    """Skip unless the Debian TTS packages of egs/mini/local/install_tts.sh are installed."""
    probe = subprocess.run(
        [sys.executable, "-c", "import tts_engines, tts_text, tts_voices; "
                               "tts_engines.check_voices(tts_voices.VOICES); tts_text.sentence_pool()"],
        cwd=LOCAL, env={**os.environ, "PYTHONPATH": f"{LOCAL}{os.pathsep}{REPO}"}, capture_output=True, text=True)
    if probe.returncode != 0:
        detail = "; ".join(line.strip() for line in probe.stderr.strip().splitlines()[-4:])
        pytest.skip(f"Debian TTS packages absent (egs/mini/local/install_tts.sh installs them): {detail}")
