"""Non-finite losses in a real run: NaN audio skips steps without touching the weights; too many in a row stop it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import soundfile as sf
import torch

from wespeaker_lap.training import checkpoint as ckpt
from wespeaker_lap.training.step import NonFiniteLossError

from .training_helpers import N_SPEAKERS, SAMPLE_RATE, UTT_SECONDS, run_in_process, tiny_config


def with_nan_audio(train_dir: Path, out: Path, bad_keys: Sequence[str]) -> Path:
    """A copy of ``train_dir`` whose ``bad_keys`` point at float wavs that overflow the model to NaN.

    The samples are finite (NaN or Inf samples are refused as bad audio) but near float32's
    maximum, so the upstream's first convolution overflows.
    """
    shutil.copytree(train_dir, out)
    nan = np.full(int(UTT_SECONDS * SAMPLE_RATE), 3e38, dtype=np.float32)
    lines = []
    for line in (out / "wav.scp").read_text().splitlines():
        key, path = line.split(maxsplit=1)
        if key in bad_keys:
            path = str(out / f"{key}.nan.wav")
            sf.write(path, nan, SAMPLE_RATE, subtype="FLOAT")
        lines.append(f"{key} {path}\n")
    (out / "wav.scp").write_text("".join(lines))
    return out


def test_nan_batches_are_skipped_and_leave_the_model_finite(tmp_path, tiny_train_dir, tiny_upstreams,
                                                            in_process_torch):
    data = with_nan_audio(tiny_train_dir, tmp_path / "data", ["spk1-utt3"])
    cfg = tiny_config(data, tiny_upstreams["wavlm"], train={"epochs": 2, "max_nonfinite_steps": 2})
    run_in_process(cfg, tmp_path / "exp")

    records = [json.loads(line) for line in (tmp_path / "exp" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 8
    skipped = [r for r in records if r["skipped"]]
    assert len(skipped) == 2 and {r["epoch"] for r in skipped} == {1, 2}  # the bad utterance, once per epoch
    assert all(r["loss"] is None and r["grad_norm"] is None for r in skipped)
    assert all(r["loss"] is not None for r in records if not r["skipped"])
    last = ckpt.list_checkpoints(tmp_path / "exp" / "checkpoints")[-1].path
    assert ckpt.load_checkpoint(last)["nonfinite"] == {"in_row": int(records[-1]["skipped"]), "total": 2}
    final = torch.load(tmp_path / "exp" / ckpt.FINAL_MODEL_NAME, weights_only=True)
    for key, value in {**final["state_dict"], **final["loss_head"]}.items():
        if value.is_floating_point():  # BatchNorm running statistics included
            assert torch.isfinite(value).all(), key


def test_too_many_non_finite_steps_in_a_row_stop_the_run(tmp_path, tiny_train_dir, tiny_upstreams,
                                                         in_process_torch):
    bad = [f"spk{s}-utt{u}" for s in range(N_SPEAKERS) for u in range(8)]
    data = with_nan_audio(tiny_train_dir, tmp_path / "data", bad)
    cfg = tiny_config(data, tiny_upstreams["wavlm"], train={"epochs": 2, "max_nonfinite_steps": 3})
    with pytest.raises(NonFiniteLossError, match="3 optimizer steps in a row"):
        run_in_process(cfg, tmp_path / "exp")
    records = (tmp_path / "exp" / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 3 and not (tmp_path / "exp" / ckpt.FINAL_MODEL_NAME).exists()
