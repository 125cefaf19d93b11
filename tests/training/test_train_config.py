"""Validation of the optim and train config sections: bad values name their key."""
import pytest

from wespeaker_lap.config import ConfigError, ExperimentConfig, OptimConfig, from_dict, load_config

from .training_helpers import REPO


@pytest.mark.parametrize("fields, key", [
    ({"lr": 1e-3, "min_lr": 1e-2}, "optim.min_lr"),
    ({"batch_size": 10, "accum_steps": 4}, "optim.batch_size"),
    ({"warmup_ratio": 1.0}, "optim.warmup_ratio"),
    ({"grad_clip": 0.0}, "optim.grad_clip"),
])
def test_bad_optim_values_name_the_key(fields, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        OptimConfig(**fields)


def test_bad_train_values_name_the_key():
    with pytest.raises(ConfigError, match=r"train\.num_average: must be >= 1, got 0"):
        from_dict(ExperimentConfig, {"train": {"num_average": 0}})


def test_phase_configs_load_with_the_paper_values():
    conf = REPO / "egs" / "voxceleb" / "conf"
    p1, p2, p3 = (load_config([f"{conf}/{name}.yaml", f"{conf}/systems/lap_wavlm_large.yaml"])
                  for name in ("phase1_frozen", "phase2_joint_ft", "phase3_lmft"))
    assert p1.model.upstream.frozen and not p2.model.upstream.frozen and not p3.model.upstream.frozen
    assert (p1.train.epochs, p2.train.epochs, p3.train.epochs) == (40, 10, 3)
    assert (p1.optim.lr, p1.optim.min_lr, p1.optim.weight_decay) == (1e-3, 1e-5, 5e-5)
    assert (p2.optim.lr, p2.optim.min_lr, p2.optim.weight_decay) == (5e-5, 5e-6, 1e-5)
    assert p3.optim.lr == p3.optim.min_lr == 5e-6 and p3.optim.batch_size // p3.optim.accum_steps == 128
    assert (p1.data.crop_seconds, p3.data.crop_seconds) == (2.0, 6.0)
    assert p1.data.speed_perturb_prob > 0 and p2.data.speed_perturb_prob == p3.data.speed_perturb_prob == 0
    assert (p1.loss.schedule.ramp_epochs, p1.loss.margin, p3.loss.margin, p3.loss.top_k) == (20.0, 0.3, 0.5, 0)
