"""The paper's three phases chained under 2-process torchrun (gloo, CPU), scaled down to seconds.

Phase 1 trains the backend on a frozen upstream with speed perturbation (3 x 4 classes) and a margin
ramp; phase 2 starts from phase 1's final model, unfreezes the upstream and slices the head to the 4
real speakers; phase 3 fine-tunes on longer crops with a larger margin, accumulation and a constant LR.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from wespeaker_lap.bin import average_model
from wespeaker_lap.config import ExperimentConfig, ModelConfig, from_dict
from wespeaker_lap.models import build_speaker_model, load_speaker_model
from wespeaker_lap.training import checkpoint as ckpt
from wespeaker_lap.training.trainer import Trainer

from .training_helpers import CPU, N_SPEAKERS, run_training, tiny_config, write_config

PHASES = ("phase1", "phase2", "phase3")


def phase_configs(train_dir: Path, upstream: Path, root: Path) -> Dict[str, dict]:
    common = {"optim": {"batch_size": 16}, "train": {"save_every_steps": 0}}
    phase1 = tiny_config(train_dir, upstream, data={"speed_perturb_prob": 0.4},
                         loss={"schedule": {"shape": "log", "ramp_epochs": 2.0}},
                         optim={**common["optim"], "lr": 3e-2, "min_lr": 3e-3},
                         train={**common["train"], "epochs": 4})
    phase2 = tiny_config(train_dir, upstream, model={"upstream": {"frozen": False}},
                         optim={**common["optim"], "lr": 1e-3, "min_lr": 1e-4},
                         train={**common["train"], "epochs": 2, "seed": 8, "slice_classes": True,
                                "init_from": str(root / "phase1" / ckpt.FINAL_MODEL_NAME)})
    phase3 = tiny_config(train_dir, upstream, model={"upstream": {"frozen": False}},
                         data={"crop_seconds": 1.0}, loss={"margin": 0.3, "top_k": 0, "penalty": 0.0},
                         optim={"batch_size": 16, "accum_steps": 2, "lr": 1e-4, "min_lr": 1e-4},
                         train={**common["train"], "epochs": 1, "num_average": 1, "seed": 9,
                                "init_from": str(root / "phase2" / ckpt.FINAL_MODEL_NAME)})
    return {"phase1": phase1, "phase2": phase2, "phase3": phase3}


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_train_dir, tiny_upstreams) -> Path:
    root = tmp_path_factory.mktemp("phases")
    for name, cfg in phase_configs(tiny_train_dir, tiny_upstreams["wavlm"], root).items():
        run_training(write_config(root / f"{name}.yaml", cfg), root / name, nproc=2)
    return root


def metrics(exp_dir: Path) -> List[dict]:
    return [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]


def final(exp_dir: Path) -> dict:
    return torch.load(exp_dir / ckpt.FINAL_MODEL_NAME, weights_only=True)


@pytest.mark.slow
def test_phase1_ramps_the_margin_and_keeps_the_ranks_in_step(chain):
    records = metrics(chain / "phase1")
    assert [r["step"] for r in records] == list(range(1, 9))  # 32 utterances / 16 per step x 4 epochs
    margins = [r["margin"] for r in records]
    assert margins[0] == 0.0 and margins[-1] == pytest.approx(0.1) and margins == sorted(margins)
    assert 0.05 < margins[1] < 0.1  # the log ramp rises fast: past half-way a quarter into the ramp
    for c in ckpt.list_checkpoints(chain / "phase1" / "checkpoints"):
        fingerprints = ckpt.load_checkpoint(c.path)["replica_fingerprints"]
        assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]


@pytest.mark.slow
def test_phase1_final_model_is_the_head_with_speed_classes_and_no_frozen_upstream(chain):
    model = final(chain / "phase1")
    assert model["n_classes"] == 3 * N_SPEAKERS
    assert model["loss_head"]["weight"].shape[-1] == 3 * N_SPEAKERS
    assert model["speakers"] == [f"spk{i}" for i in range(N_SPEAKERS)]
    assert not any(key.startswith("upstream.") for key in model["state_dict"])
    assert model["averaged_checkpoints"] == ["epoch_0003_step_00000006.pt", "epoch_0004_step_00000008.pt"]
    assert model["sample_rate"] == 16000 and model["upstream_identity"]["name"] == "wavlm_local"


@pytest.mark.slow
def test_phase2_slices_the_head_and_trains_the_upstream(chain):
    model = final(chain / "phase2")
    assert model["n_classes"] == N_SPEAKERS
    assert model["loss_head"]["weight"].shape == (2, 32, N_SPEAKERS)
    pretrained = build_speaker_model(from_dict(ModelConfig, model["model_config"])).state_dict()
    upstream = {k: v for k, v in model["state_dict"].items() if k.startswith("upstream.")}
    assert upstream, "a fine-tuned upstream's weights must be saved"
    changed = {k for k, v in upstream.items() if not torch.equal(v, pretrained[k])}
    assert any("feature_extractor.conv_layers.0" in k for k in changed), "the CNN encoder must train too"
    assert any("encoder.layers.2" in k for k in changed)
    # phase 2 starts where phase 1 ended: its backend stays near phase 1's final one, far from a fresh init
    # (losses do not show it: phase 1's margin ramps up, and the regularisers perturb phase 2's features)
    phase1 = final(chain / "phase1")["state_dict"]
    weights = [k for k, v in phase1.items() if k.startswith("backend.") and v.is_floating_point()
               and "running_" not in k]

    def distance(a: dict, b: dict) -> float:
        return float(sum((a[k].double() - b[k].double()).pow(2).sum() for k in weights) ** 0.5)

    assert distance(model["state_dict"], phase1) < 0.5 * distance(model["state_dict"], pretrained)


@pytest.mark.slow
def test_phase3_uses_long_crops_accumulation_large_margin_and_constant_lr(chain):
    records = metrics(chain / "phase3")
    assert len(records) == 2  # 32 utterances / (8 per micro-batch x 2 accumulated) = 2 steps
    assert {r["lr"] for r in records} == {1e-4} and {r["margin"] for r in records} == {0.3}
    saved = (chain / "phase3" / "config.yaml").read_text()
    assert "crop_seconds: 1.0" in saved and "accum_steps: 2" in saved
    model = final(chain / "phase3")
    assert model["n_classes"] == N_SPEAKERS and model["averaged_checkpoints"] == ["epoch_0001_step_00000002.pt"]
    speaker_model, _ = load_speaker_model(chain / "phase3" / ckpt.FINAL_MODEL_NAME)
    with torch.no_grad():
        emb = speaker_model(torch.randn(1, 16000), torch.tensor([16000]))
    assert emb.shape == (1, 32) and torch.isfinite(emb).all()


@pytest.mark.slow
def test_average_model_cli_averages_the_chosen_epochs(chain, tmp_path):
    out = tmp_path / "avg.pt"
    average_model.main(["--exp_dir", str(chain / "phase1"), "averaging.num_average=1", "--out", str(out)])
    single = torch.load(out, weights_only=True)
    assert single["averaged_checkpoints"] == ["epoch_0004_step_00000008.pt"]
    last = ckpt.load_checkpoint(chain / "phase1" / "checkpoints" / "epoch_0004_step_00000008.pt")
    for key, value in last["head"].items():
        assert torch.equal(single["loss_head"][key], value)
    two = final(chain / "phase1")  # the trainer's own average of epochs 3 and 4 differs from epoch 4 alone
    assert not torch.equal(two["loss_head"]["weight"], single["loss_head"]["weight"])
    again = tmp_path / "again.pt"  # without a number: the run's train.num_average, i.e. the trainer's average
    average_model.main(["--exp_dir", str(chain / "phase1"), "--out", str(again)])
    default = torch.load(again, weights_only=True)
    assert default["averaged_checkpoints"] == two["averaged_checkpoints"]
    assert all(torch.equal(default["loss_head"][k], v) for k, v in two["loss_head"].items())


@pytest.mark.slow
def test_init_from_a_model_of_another_upstream_checkpoint_is_refused(chain, tmp_path, tiny_train_dir,
                                                                     other_tiny_upstreams, in_process_torch):
    cfg = tiny_config(tiny_train_dir, other_tiny_upstreams["wavlm"],  # same family and size, other weights
                      train={"init_from": str(chain / "phase1" / ckpt.FINAL_MODEL_NAME)})
    with pytest.raises(ValueError, match=r"upstream mismatch \(the content differs\).*Every phase must use"):
        Trainer(from_dict(ExperimentConfig, cfg), tmp_path / "exp", CPU)


@pytest.mark.slow
def test_init_from_a_model_of_other_speakers_is_refused(chain, tmp_path, tiny_train_dir, tiny_upstreams,
                                                        in_process_torch):
    other = tmp_path / "other"
    other.mkdir()
    for name in ("wav.scp", "utt2spk"):  # the same audio under other speaker names
        text = (tiny_train_dir / name).read_text()
        (other / name).write_text(text.replace(" spk", " talker") if name == "utt2spk" else text)
    cfg = tiny_config(other, tiny_upstreams["wavlm"],
                      train={"init_from": str(chain / "phase1" / ckpt.FINAL_MODEL_NAME)})
    with pytest.raises(ValueError, match="train.init_from: the speakers of .* differ"):
        Trainer(from_dict(ExperimentConfig, cfg), tmp_path / "exp", CPU)
