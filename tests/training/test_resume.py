"""Resume: a run SIGKILLed mid-epoch ends with the same weights as an uninterrupted one; config changes are refused."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from wespeaker_lap.config import ExperimentConfig, from_dict, save_config
from wespeaker_lap.training import checkpoint as ckpt
from wespeaker_lap.training.trainer import ResumeConfigError, Trainer, check_resume_config

from .training_helpers import CPU, REPO, run_in_process, tiny_config, train_command, train_env, write_config

KILL_AT_STEP = 2  # 4 steps per epoch (32 utterances, batch 8): step 2 is mid-epoch 1


def resume_config(tiny_train_dir, tiny_upstreams, data=None, **train):
    train = {"epochs": 2, "save_every_steps": 1, "keep_checkpoints": 10, "num_average": 2, "deterministic": True,
             **train}
    return tiny_config(tiny_train_dir, tiny_upstreams["wavlm"], train=train, data=data or {})


def kill_after_checkpoint(config: Path, exp_dir: Path, step: int) -> None:
    """Start training in a subprocess and SIGKILL it as soon as the checkpoint of ``step`` exists."""
    target = ckpt.checkpoint_path(exp_dir / ckpt.CHECKPOINT_SUBDIR, step, None)
    proc = subprocess.Popen(train_command(config, exp_dir), cwd=REPO, env=train_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{stderr[-3000:]}"
    assert target.exists() and not (exp_dir / ckpt.FINAL_MODEL_NAME).exists()
    # Forget whatever it wrote after that checkpoint: the resume must start mid-epoch.
    for later in ckpt.list_checkpoints(exp_dir / ckpt.CHECKPOINT_SUBDIR):
        if later.global_step > step:
            later.path.unlink()


def losses(exp_dir: Path):
    return [(r["step"], r["loss"]) for r in map(json.loads, (exp_dir / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_final_weights(tmp_path, tiny_train_dir, tiny_upstreams,
                                                      in_process_torch):
    cfg = resume_config(tiny_train_dir, tiny_upstreams)
    reference = tmp_path / "reference"
    run_in_process(cfg, reference)

    killed = tmp_path / "killed"
    kill_after_checkpoint(write_config(tmp_path / "train.yaml", cfg), killed, KILL_AT_STEP)
    # num_workers and log_every do not change what is computed, so the resume may change them;
    # 2 DataLoader workers must replay the same batches as the in-process loading.
    run_in_process(resume_config(tiny_train_dir, tiny_upstreams, data={"num_workers": 2}, log_every=3), killed)

    ref = torch.load(reference / ckpt.FINAL_MODEL_NAME, weights_only=True)
    got = torch.load(killed / ckpt.FINAL_MODEL_NAME, weights_only=True)
    assert ref["state_dict"].keys() == got["state_dict"].keys()
    for key in ref["state_dict"]:
        assert torch.equal(ref["state_dict"][key], got["state_dict"][key]), key
    for key in ref["loss_head"]:
        assert torch.equal(ref["loss_head"][key], got["loss_head"][key]), key
    last = [c for c in ckpt.list_checkpoints(reference / "checkpoints") if c.is_epoch_end][-1].path
    ref_state = ckpt.load_checkpoint(last)
    got_state = ckpt.load_checkpoint(killed / "checkpoints" / last.name)
    for ref_param, got_param in zip(ref_state["optimizer"]["state"].values(), got_state["optimizer"]["state"].values()):
        assert torch.equal(ref_param["exp_avg_sq"], got_param["exp_avg_sq"])
    assert ref_state["rng"][0]["torch"].equal(got_state["rng"][0]["torch"])
    # the metrics log was cut back to the checkpoint and continued: one record per step, same losses
    assert losses(killed) == losses(reference)
    assert [s for s, _ in losses(reference)] == list(range(1, 9))


def test_changed_config_is_refused_naming_the_keys(tmp_path, tiny_train_dir, tiny_upstreams, caplog):
    exp_dir = tmp_path / "exp"
    cfg = from_dict(ExperimentConfig, resume_config(tiny_train_dir, tiny_upstreams))
    (exp_dir / "checkpoints").mkdir(parents=True)
    save_config(cfg, str(exp_dir / "config.yaml"))
    (exp_dir / "checkpoints" / "step_00000003.pt").write_bytes(b"")  # a run exists
    changed = resume_config(tiny_train_dir, tiny_upstreams, data={"num_workers": 3})
    changed["optim"]["lr"], changed["loss"]["margin"] = 0.01, 0.4
    changed = from_dict(ExperimentConfig, changed)
    with pytest.raises(ResumeConfigError) as err:
        Trainer(changed, exp_dir, CPU)
    message = str(err.value)
    assert "optim.lr: 0.03 -> 0.01" in message and "loss.margin: 0.1 -> 0.4" in message
    assert "num_workers" not in message and "--allow_config_change" in message
    check_resume_config(exp_dir, changed, allow_change=True)  # the override flag: a warning only
    assert "optim.lr" in caplog.text
    check_resume_config(exp_dir, cfg, allow_change=False)  # unchanged: fine
