"""Helpers shared by the CPU and GPU extraction tests: a Kaldi dir of tone utterances and a tiny model file."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
import torch

from wespeaker_lap.config import BackendConfig, ModelConfig, UpstreamConfig
from wespeaker_lap.data.kaldi import write_map
from wespeaker_lap.utils.rng import kept_global_rng

SR = 16000


def write_tone_dir(root: Path, seconds: Sequence[float], n_speakers: int, rng: np.random.Generator) -> Path:
    """One utterance (a tone + noise, drawn from ``rng``) per entry of ``seconds``, with utt2spk and utt2dur."""
    root.mkdir(parents=True, exist_ok=True)
    wav_scp, utt2spk, utt2dur = {}, {}, {}
    for i, duration in enumerate(seconds):
        t = np.arange(int(duration * SR)) / SR
        wav = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 600) * t) + 0.05 * rng.standard_normal(len(t))
        key, path = f"spk{i % n_speakers}/utt{i:03d}", root / f"utt{i:03d}.wav"
        sf.write(path, wav.astype(np.float32), SR, subtype="PCM_16")
        wav_scp[key], utt2spk[key], utt2dur[key] = str(path), f"spk{i % n_speakers}", len(t) / SR
    write_map(root / "wav.scp", wav_scp)
    write_map(root / "utt2spk", utt2spk)
    write_map(root / "utt2dur", {k: f"{v:.4f}" for k, v in utt2dur.items()})
    return root


def write_model(path: Path, upstream: Path, seed: int) -> Path:
    """A random-init tiny WavLM + LAP+ASTP model file (what ``load_speaker_model`` reads), built under ``seed``.

    The caller's random streams are left as they were.
    """
    from wespeaker_lap.models import build_speaker_model
    from wespeaker_lap.models.model_file import save_speaker_model

    cfg = ModelConfig(UpstreamConfig("wavlm_local", path=str(upstream)),
                      BackendConfig("lap_astp", {"hidden_dim": 32, "n_heads": 4}))
    with kept_global_rng():
        torch.manual_seed(seed)
        model = build_speaker_model(cfg)
    save_speaker_model(path, model, cfg)
    return path
