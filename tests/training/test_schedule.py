"""The warmup-cosine LR: its shape, and that the torch scheduler follows it step by step."""
import math

import pytest
import torch

from wespeaker_lap.config import OptimConfig
from wespeaker_lap.training.schedule import build_lr_scheduler, warmup_cosine_lr, warmup_steps_for


def test_warmup_rises_linearly_from_min_lr_to_max_lr():
    lrs = [warmup_cosine_lr(s, 100, 10, 1e-3, 1e-5) for s in range(11)]
    assert lrs[0] == pytest.approx(1e-5)
    assert lrs[10] == pytest.approx(1e-3)
    steps = [b - a for a, b in zip(lrs, lrs[1:])]
    assert all(d == pytest.approx(steps[0]) for d in steps)


def test_cosine_decays_monotonically_to_min_lr_with_half_way_midpoint():
    lrs = [warmup_cosine_lr(s, 100, 10, 1e-3, 1e-5) for s in range(10, 101)]
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(1e-5)
    assert warmup_cosine_lr(55, 100, 10, 1e-3, 1e-5) == pytest.approx((1e-3 + 1e-5) / 2)


def test_equal_max_and_min_lr_is_constant_despite_warmup():
    """Phase 3 (lr == min_lr == 5e-6): constant even with a 10 % warmup configured."""
    assert {warmup_cosine_lr(s, 30, 3, 5e-6, 5e-6) for s in range(31)} == {5e-6}


def test_no_warmup_starts_at_max_lr():
    assert warmup_cosine_lr(0, 50, 0, 5e-5, 5e-6) == pytest.approx(5e-5)


def test_lambda_scheduler_tracks_the_function_and_resumes_from_its_state():
    optim = OptimConfig(lr=1e-3, min_lr=1e-5, warmup_ratio=0.1)
    total = 40
    warmup = warmup_steps_for(optim, total)
    assert warmup == 4

    def make():
        params = [torch.nn.Parameter(torch.zeros(1))]
        opt = torch.optim.Adam(params, lr=optim.lr)
        return opt, build_lr_scheduler(opt, optim, total)

    opt, sched = make()
    seen = []
    for step in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        if step == 16:
            saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    assert seen == pytest.approx([warmup_cosine_lr(s, total, warmup, 1e-3, 1e-5) for s in range(total)])

    opt2, sched2 = make()
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    resumed = []
    for _ in range(17, total):
        resumed.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert resumed == pytest.approx(seen[17:])


def test_schedule_is_finite_everywhere():
    assert all(math.isfinite(warmup_cosine_lr(s, 7, 1, 1e-3, 0.0)) for s in range(8))

