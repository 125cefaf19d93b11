"""The recipe's phase and system configs load with the official defaults (docs/reproduction.md §Phase defaults)."""
from pathlib import Path

import pytest

from wespeaker_lap.config import TrainConfig, load_config
from wespeaker_lap.upstream.regularizers import official_finetune

CONF = Path(__file__).resolve().parents[1] / "egs" / "voxceleb" / "conf"


def _phase(name: str, system: str = "lap_wavlm_large"):
    return load_config([str(CONF / f"{name}.yaml"), str(CONF / "systems" / f"{system}.yaml")])


def test_phase1_frozen():
    cfg = _phase("phase1_frozen")
    assert cfg.model.upstream.frozen
    assert (cfg.train.epochs, cfg.train.seed, cfg.data.crop_seconds, cfg.optim.batch_size, cfg.optim.accum_steps) == (
        40, 42, 2.0, 512, 1)
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_ratio, cfg.optim.weight_decay) == (1e-3, 1e-5, 0.1, 5e-5)
    assert cfg.data.speed_perturb_prob == pytest.approx(0.4)  # [1, 1, 1, 0.9, 1.1]: 0.9 and 1.1 with 0.2 each
    assert cfg.data.augment.prob == 0.6
    loss = cfg.loss
    assert (loss.scale, loss.margin, loss.sub_centers, loss.top_k, loss.penalty) == (30.0, 0.3, 3, 5, 0.06)
    assert (loss.schedule.shape, loss.schedule.initial, loss.schedule.ramp_epochs) == ("log", 0.0, 20.0)


def test_phase2_joint_fine_tuning():
    cfg = _phase("phase2_joint_ft")
    assert not cfg.model.upstream.frozen
    assert (cfg.train.epochs, cfg.train.seed, cfg.data.crop_seconds, cfg.optim.batch_size) == (10, 21, 2.0, 512)
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_ratio, cfg.optim.weight_decay) == (5e-5, 5e-6, 0.1, 1e-5)
    assert cfg.data.speed_perturb_prob == 0.0 and not cfg.train.slice_classes  # all 17,982 classes stay
    assert (cfg.loss.margin, cfg.loss.top_k, cfg.loss.penalty, cfg.loss.schedule.ramp_epochs) == (0.3, 5, 0.06, 0.0)


def test_phase3_large_margin_fine_tuning():
    cfg = _phase("phase3_lmft")
    assert not cfg.model.upstream.frozen
    assert (cfg.train.epochs, cfg.train.seed, cfg.data.crop_seconds) == (3, 14, 6.0)
    assert (cfg.optim.batch_size, cfg.optim.accum_steps) == (512, 4)  # 128 x 4, as the official grad_acc 4
    assert cfg.optim.lr == cfg.optim.min_lr == 5e-6  # the official scheduler's effective (constant) rate
    assert cfg.optim.weight_decay == 1e-5 and not cfg.train.slice_classes
    assert (cfg.loss.margin, cfg.loss.top_k, cfg.loss.penalty) == (0.5, 0, 0.0)


@pytest.mark.parametrize("system, upstream", [("lap_wavlm_base_plus", "wavlm_base_plus"),
                                              ("lap_wavlm_large", "wavlm_large")])
def test_fine_tuning_phases_use_the_official_upstream_regularisers(system, upstream):
    for phase in ("phase2_joint_ft", "phase3_lmft"):
        up = _phase(phase, system).model.upstream
        assert up.name == upstream and up.waveform == "raw"
        assert up.finetune == official_finetune(upstream)


def test_slicing_is_off_unless_asked_for():
    assert TrainConfig().slice_classes is False
