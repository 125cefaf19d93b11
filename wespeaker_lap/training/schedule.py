"""Learning-rate schedule: linear warmup from ``min_lr`` to ``max_lr``, then a cosine back to ``min_lr``.

The rate is a pure function of the optimizer step, ``max_lr`` (``optim.lr``), ``min_lr`` and the warmup
length, stepped once per optimizer step. Like the authors' scheduler
(docs/reproduction.md §Phase defaults) the warmup starts at ``min_lr``, not 0; unlike it (§Official
bugs we do not copy, 5) the configured ``optim.lr`` is always the peak, so ``lr == min_lr``
gives a constant rate (phase 3) and any other ``lr`` is honoured.
"""
from __future__ import annotations

import math

import torch

from wespeaker_lap.config import OptimConfig


def warmup_cosine_lr(step: int, total_steps: int, warmup_steps: int, max_lr: float, min_lr: float) -> float:
    """The learning rate of optimizer step ``step`` (0-based) in a run of ``total_steps`` steps."""
    if step < warmup_steps:
        return min_lr + (max_lr - min_lr) * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps_for(optim: OptimConfig, total_steps: int) -> int:
    """Number of warmup steps: ``optim.warmup_ratio`` of the run, rounded."""
    return int(round(optim.warmup_ratio * total_steps))


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`warmup_cosine_lr`; the optimizer's groups must start at ``optim.lr``.

    Its ``state_dict`` holds the step count, so a resumed run continues the curve exactly.
    """
    warmup = warmup_steps_for(optim, total_steps)

    def factor(step: int) -> float:
        return warmup_cosine_lr(step, total_steps, warmup, optim.lr, optim.min_lr) / optim.lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
