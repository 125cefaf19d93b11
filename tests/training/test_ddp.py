"""Two-process DDP under torchrun (gloo on the CPU): the loss falls, and the replicas stay identical."""
from __future__ import annotations

import json

import pytest
import torch

from wespeaker_lap.training import checkpoint as ckpt

from .training_helpers import run_training, tiny_config, write_config


@pytest.mark.slow
def test_two_process_training_learns_and_ranks_agree(tmp_path, tiny_train_dir, tiny_upstreams):
    cfg = tiny_config(tiny_train_dir, tiny_upstreams["wavlm"], optim={"batch_size": 16},
                      train={"epochs": 4, "save_every_steps": 3, "keep_checkpoints": 10})
    exp_dir = tmp_path / "exp"
    run_training(write_config(tmp_path / "train.yaml", cfg), exp_dir, nproc=2)

    records = [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))  # 32 utterances / global batch 16 x 4 epochs
    first = [r["loss"] for r in records if r["epoch"] == 1]
    last = [r["loss"] for r in records if r["epoch"] == 4]
    assert sum(last) / len(last) < 0.6 * sum(first) / len(first)

    files = ckpt.list_checkpoints(exp_dir / "checkpoints")
    assert [c.global_step for c in files] == [2, 3, 4, 6, 8] and [c.epoch for c in files] == [1, None, 2, 3, 4]
    for c in files:
        state = ckpt.load_checkpoint(c.path)
        assert state["world_size"] == 2 and len(state["rng"]) == 2
        assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # per-rank dropout streams
        if c.is_epoch_end:
            fingerprints = state["replica_fingerprints"]
            assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]
    assert (exp_dir / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    log = (exp_dir / "train.log").read_text()
    assert "2 processes on cpu" in log and "epoch 4/4 done" in log
    assert (exp_dir / ckpt.FINAL_MODEL_NAME).is_file()
