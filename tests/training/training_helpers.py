"""Helpers of the trainer tests: synthetic speakers, tiny-run configs, and launching ``bin/train.py``
under plain python or torchrun (imported by the tests and ``conftest.py``)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from wespeaker_lap.training.distributed import DistContext

REPO = Path(__file__).resolve().parents[2]
SAMPLE_RATE = 16000
N_SPEAKERS = 4
UTTS_PER_SPEAKER = 8
UTT_SECONDS = 1.2


def speaker_wave(speaker: int, utt: int) -> np.ndarray:
    """A voiced-sound stand-in: a speaker-specific pitch and spectral tilt, jittered per utterance, plus noise."""
    rng = np.random.default_rng([speaker, utt])
    f0 = (110.0, 170.0, 260.0, 390.0)[speaker] * rng.uniform(0.97, 1.03)
    tilt = (0.5, 0.8, 1.2, 1.8)[speaker]
    t = np.arange(int(UTT_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    wave = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) / k**tilt for k in range(1, 9))
    wave = wave * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))  # syllable-like envelope
    wave = wave + 0.05 * rng.standard_normal(t.shape)
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def write_train_dir(root: Path) -> Path:
    """Kaldi dir ``wav.scp``/``utt2spk``/``spk2utt`` of 4 speakers x 8 utterances of 1.2 s, 16 kHz."""
    wav_scp, utt2spk = [], []
    for speaker in range(N_SPEAKERS):
        for utt in range(UTTS_PER_SPEAKER):
            key = f"spk{speaker}-utt{utt}"
            path = root / "wav" / f"{key}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, speaker_wave(speaker, utt), SAMPLE_RATE, subtype="PCM_16")
            wav_scp.append(f"{key} {path}\n")
            utt2spk.append(f"{key} spk{speaker}\n")
    (root / "wav.scp").write_text("".join(wav_scp))
    (root / "utt2spk").write_text("".join(utt2spk))
    (root / "spk2utt").write_text("".join(
        f"spk{s} " + " ".join(f"spk{s}-utt{u}" for u in range(UTTS_PER_SPEAKER)) + "\n" for s in range(N_SPEAKERS)))
    return root


def tiny_config(train_dir: Path, upstream_path: Path, **sections: Dict) -> Dict:
    """A config for seconds-long CPU runs; ``sections`` update the defaults section by section."""
    cfg = {
        "model": {"upstream": {"name": "wavlm_local", "path": str(upstream_path), "frozen": True},
                  "backend": {"name": "lap_astp",
                              "options": {"hidden_dim": 32, "n_heads": 4, "dropout": 0.1, "embed_dim": 32}}},
        "loss": {"scale": 30.0, "margin": 0.1, "sub_centers": 2, "top_k": 2, "penalty": 0.04,
                 "schedule": {"shape": "log", "initial": 0.0, "ramp_epochs": 0.0}},
        "data": {"train_dir": str(train_dir), "crop_seconds": 0.5, "speed_perturb_prob": 0.0,
                 "augment": {"prob": 0.0}, "num_workers": 0},
        "optim": {"batch_size": 8, "accum_steps": 1, "lr": 3e-2, "min_lr": 3e-3, "warmup_ratio": 0.1,
                  "weight_decay": 1e-5},
        "train": {"epochs": 2, "seed": 7, "num_average": 2, "keep_checkpoints": 2, "save_every_steps": 2,
                  "log_every": 1, "deterministic": True},
    }
    for name, values in sections.items():
        cfg[name] = _merge(cfg[name], values)
    return cfg


def _merge(base: Dict, extra: Dict) -> Dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def write_config(path: Path, cfg: Dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(config: Path, exp_dir: Path, nproc: int = 1, extra: Optional[List[str]] = None) -> List[str]:
    """``bin/train.py`` under plain python (``nproc=1``) or ``torch.distributed.run`` (gloo on the CPU)."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
                     "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    return launcher + ["-m", "wespeaker_lap.bin.train", "--config", str(config), "--exp_dir", str(exp_dir),
                       *(extra or [])]


def train_env() -> Dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


def run_training(config: Path, exp_dir: Path, nproc: int = 1, extra: Optional[List[str]] = None,
                 timeout: float = 300) -> subprocess.CompletedProcess:
    """Run to completion; fail the test with the process output if it fails."""
    proc = subprocess.run(train_command(config, exp_dir, nproc, extra), cwd=REPO, env=train_env(),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"training failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


CPU = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))  # no process group


def run_in_process(cfg: Dict, exp_dir: Path) -> Path:
    """Train in this process (no torchrun, no logging setup): the same ``Trainer`` the entry script runs."""
    from wespeaker_lap.config import ExperimentConfig, from_dict
    from wespeaker_lap.training.trainer import Trainer

    return Trainer(from_dict(ExperimentConfig, cfg), exp_dir, CPU).run()
