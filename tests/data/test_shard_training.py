"""The trainer on tar shards: a run killed mid-epoch resumes to the same final weights as an uninterrupted one."""
from __future__ import annotations

import pytest
import torch

from wespeaker_lap.data.shards import write_shards
from wespeaker_lap.training import checkpoint as ckpt

from tests.training.test_resume import kill_after_checkpoint, losses
from tests.training.training_helpers import run_in_process, tiny_config, write_config, write_train_dir


@pytest.fixture
def one_thread():
    """One intra-op thread like the subprocesses (OMP_NUM_THREADS=1); the torch settings are put back after."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.mark.slow
def test_killed_shard_run_resumes_to_the_same_final_weights(tmp_path, tiny_upstreams, one_thread):
    train_dir = write_train_dir(tmp_path / "train")
    write_shards(train_dir, train_dir / "shards", utts_per_shard=5, seed=0)  # 32 utterances: 7 shards

    def config(**data):
        return tiny_config(train_dir, tiny_upstreams["wavlm"], data={"format": "shard", "shard_streams": 2,
                                                                      "shuffle_buffer": 4, "speed_perturb_prob": 0.4,
                                                                      **data},
                           train={"epochs": 2, "save_every_steps": 1, "keep_checkpoints": 10, "num_average": 2,
                                  "deterministic": True})

    reference = tmp_path / "reference"
    run_in_process(config(), reference)
    assert [s for s, _ in losses(reference)] == list(range(1, 9))  # 2 streams x 2 batches of 8, 2 epochs
    killed = tmp_path / "killed"
    kill_after_checkpoint(write_config(tmp_path / "train.yaml", config()), killed, step=3)  # mid-epoch 1
    run_in_process(config(num_workers=2), killed)  # resumed with 2 DataLoader workers: the same batches
    ref = torch.load(reference / ckpt.FINAL_MODEL_NAME, weights_only=True)
    got = torch.load(killed / ckpt.FINAL_MODEL_NAME, weights_only=True)
    for key in ref["state_dict"]:
        assert torch.equal(ref["state_dict"][key], got["state_dict"][key]), key
    assert losses(killed) == losses(reference)
