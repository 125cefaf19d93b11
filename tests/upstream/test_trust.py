"""Untrusted checkpoints: a pickle payload never runs, whatever s3prl name or file route it takes.

The payload's ``__reduce__`` opens (creates) a marker file when unpickled; every refusal is checked
by the marker's absence. Control cases with trust show that the same file really runs its payload
through s3prl's loaders, so the refusals are what stopped it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wespeaker_lap.upstream import Upstream, cache_file
from wespeaker_lap.upstream.trust import TRUST_ENV, UntrustedCheckpointError

REPO = Path(__file__).resolve().parents[2]
# s3prl names whose loaders take a checkpoint file; distiller, mockingjay and tera call
# torch.load(weights_only=False) themselves.
LOCAL_NAMES = ["distiller_local", "mockingjay_local", "tera_local", "apc_local", "wavlm_local", "hubert_local",
               "wav2vec2_local", "wav2vec2_url", "decoar2_custom", "hubert_custom"]


class Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def payload(tmp_path, monkeypatch):
    """(checkpoint holding the payload, marker file the payload would create)."""
    monkeypatch.delenv(TRUST_ENV, raising=False)
    marker = tmp_path / "payload_ran"
    path = tmp_path / "shared_checkpoint.pt"
    torch.save({"Config": {}, "model": {"w": torch.zeros(2)}, "extra": Payload(marker)}, path)
    return path, marker


@pytest.mark.parametrize("name", LOCAL_NAMES)
def test_payload_checkpoint_is_refused_under_every_local_name(payload, name):
    path, marker = payload
    with pytest.raises(UntrustedCheckpointError) as err:
        Upstream(name, path=str(path))
    assert not marker.exists()
    message = str(err.value)
    assert message.startswith(f"{path}: refused as a checkpoint for {name}: torch.load(weights_only=True) cannot")
    assert "pickled Python object that calls io.open" in message and "trust_checkpoint" in message


def test_a_file_that_is_not_a_torch_checkpoint_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    (tmp_path / "config.yaml").write_text("a: 1\n")
    with pytest.raises(UntrustedCheckpointError, match="it is not a torch checkpoint"):
        Upstream("distiller_local", path=str(tmp_path / "config.yaml"))


@pytest.mark.parametrize("name", ["distilhubert", "mockingjay_origin"])
def test_a_poisoned_registered_cache_file_is_refused(payload, tmp_path, name):
    """Registered names load a cached download (their loaders use weights_only=False): forced to weights_only."""
    path, marker = payload
    target = cache_file(name, tmp_path / "cache")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, target)
    with pytest.raises(UntrustedCheckpointError, match=rf"{target.name}: refused as a checkpoint for {name}"):
        Upstream(name, cache_dir=str(tmp_path / "cache"))
    assert not marker.exists()
    assert torch.load.__module__ == "torch.serialization"  # the guard is gone after the build
    with pytest.raises(Exception):  # control: trusted, s3prl's own loader runs the payload (then fails)
        Upstream(name, cache_dir=str(tmp_path / "cache"), trust_checkpoint=True)
    assert marker.exists()


def test_trust_hands_the_file_over(payload, monkeypatch):
    path, marker = payload
    with pytest.raises(Exception):
        Upstream("distiller_local", path=str(path), trust_checkpoint=True)
    assert marker.exists()  # the flag really is what decides
    marker.unlink()
    monkeypatch.setenv(TRUST_ENV, "1")
    with pytest.raises(Exception):
        Upstream("distiller_local", path=str(path))
    assert marker.exists()


def test_plain_checkpoints_load_without_trust(tiny_upstreams, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    assert Upstream("wavlm_local", path=str(tiny_upstreams["wavlm"])).n_layers == 4


# ----------------------------------------------------------------------------- through a model file
def payload_model_dir(tmp_path: Path, checkpoint: Path) -> Path:
    """An experiment dir whose ``final_model.pt`` names ``distiller_local`` on the payload and claims trust."""
    exp = tmp_path / "shared_exp"
    exp.mkdir()
    model_config = {"upstream": {"name": "distiller_local", "path": str(checkpoint), "trust_checkpoint": True},
                    "backend": {"name": "lap_astp", "options": {}}}
    torch.save({"model_config": model_config, "state_dict": {}}, exp / "final_model.pt")
    return exp


def test_a_model_file_cannot_grant_trust(payload, tmp_path):
    from wespeaker_lap.models import load_speaker_model

    path, marker = payload
    exp = payload_model_dir(tmp_path, path)
    with pytest.raises(UntrustedCheckpointError, match="refused as a checkpoint for distiller_local"):
        load_speaker_model(exp / "final_model.pt")
    assert not marker.exists()
    with pytest.raises(Exception):  # control: the caller's trust does hand it over
        load_speaker_model(exp / "final_model.pt", trust_checkpoint=True)
    assert marker.exists()


def test_cli_similarity_refuses_the_payload_in_one_line(payload, tmp_path):
    path, marker = payload
    exp = payload_model_dir(tmp_path, path)
    wavs = []
    for i in range(2):
        wavs.append(str(tmp_path / f"{i}.wav"))
        sf.write(wavs[-1], np.random.default_rng(i).normal(0, 0.1, 8000), 16000, subtype="PCM_16")
    env = {k: v for k, v in os.environ.items() if k not in (TRUST_ENV, "WESPEAKER_LAP_DEBUG")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "wespeaker_lap", "similarity", "--exp_dir", str(exp), *wavs],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and run.stdout == ""
    errors = [line for line in run.stderr.splitlines() if line.startswith("wespeaker-lap: error:")]
    assert errors == [f"wespeaker-lap: error: {path}: refused as a checkpoint for distiller_local: "
                      "torch.load(weights_only=True) cannot load it, so loading it could run code: it holds a "
                      "pickled Python object that calls io.open; if you trust the file, set "
                      "model.upstream.trust_checkpoint: true (wespeaker-lap: --trust_checkpoint; any command: "
                      f"{TRUST_ENV}=1)"], run.stderr
    assert "Traceback" not in run.stderr
    assert not marker.exists()
