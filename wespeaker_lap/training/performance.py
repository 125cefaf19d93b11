"""Speed settings of a training run, shared by the trainer and ``benchmarks/bench_train_step.py``.

None of them changes what is computed beyond floating-point rounding: cuDNN autotuning and TF32
matmuls on GPUs, bf16 weights for a frozen upstream under bf16 autocast (autocast would cast them
anyway, every step: frozen weights are not in its cast cache), fused Adam (no per-parameter host
reads), optional ``torch.compile``, and the gradient accumulation that a per-process
micro-batch size implies.
"""
from __future__ import annotations

import logging
from typing import Iterable, Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)

COMPILE_CHOICES = ("off", "backend", "upstream", "all")


def configure_torch(device: torch.device, deterministic: bool, tf32: bool) -> None:
    """cuDNN autotuning unless ``deterministic`` (crops have one fixed shape, so it tunes once), and
    TF32 for fp32 matmuls and convolutions (``tf32``; Ampere and newer GPUs)."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def cast_frozen_upstream(model: nn.Module, amp_dtype: Optional[torch.dtype]) -> bool:
    """Under bf16 autocast, store a frozen upstream's linear and convolution weights in bf16.

    Autocast runs those layers in bf16 anyway, so the result is the same; what is saved is the
    cast of every weight at every step. Norm layers, embeddings and everything else keep their
    dtype (autocast runs norms in fp32). Returns whether it cast anything.
    """
    upstream = getattr(model, "upstream", None)
    if amp_dtype != torch.bfloat16 or upstream is None or not upstream.frozen:
        return False
    n_params = 0
    for module in upstream.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            module.to(torch.bfloat16)
            n_params += sum(p.numel() for p in module.parameters(recurse=False))
    logger.info("frozen upstream: %.1f M linear/conv weights stored in bf16", n_params / 1e6)
    return n_params > 0


def adam(params: Iterable[nn.Parameter], lr: float, weight_decay: float, device: torch.device) -> torch.optim.Adam:
    """Adam with coupled weight decay (the authors'), as one fused kernel on GPUs and CPUs: no per-parameter
    host reads of step counters, one pass over the weights (8x faster than the default on a CPU)."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay,
                            fused=True if device.type in ("cuda", "cpu") else None)


def compile_model(model: nn.Module, what: str, backend: str = "inductor") -> None:
    """``torch.compile`` the model's ``backend``, ``upstream`` or both (``all``) in place (state-dict keys
    unchanged); ``off`` does nothing. Shapes are fixed by the crop length, so each compiles once. The
    host-side length checks split the graphs (a few graph breaks); the GPU work between them is compiled."""
    if what not in COMPILE_CHOICES:
        raise ValueError(f"train.compile must be one of {COMPILE_CHOICES}, got {what!r}")
    for part in ("backend", "upstream"):
        if what in (part, "all"):
            getattr(model, part).compile(dynamic=False, backend=backend)
            logger.info("torch.compile (%s): %s", backend, part)


def accumulation_steps(batch_size: int, accum_steps: int, micro_batch_size: Optional[int], world_size: int) -> int:
    """Micro-batches per optimizer step: ``optim.accum_steps``, or the number implied by
    ``train.micro_batch_size`` (utterances per process and micro-batch) on ``world_size`` processes.

    The global batch (``optim.batch_size``) and the LR never change; so neither do the utterances of
    each optimizer step (global batch ``k`` of the epoch order), whatever the GPU count.
    """
    if micro_batch_size is None:
        if batch_size % (world_size * accum_steps):
            raise ValueError(f"optim.batch_size={batch_size} is not divisible by world_size ({world_size}) x "
                             f"optim.accum_steps ({accum_steps})")
        return accum_steps
    per_step = world_size * micro_batch_size
    if batch_size % per_step:
        raise ValueError(f"optim.batch_size={batch_size} is not a multiple of world_size ({world_size}) x "
                         f"train.micro_batch_size ({micro_batch_size})")
    steps = batch_size // per_step
    if steps != accum_steps:
        logger.info("train.micro_batch_size=%d on %d processes: %d accumulated micro-batches per step "
                    "(instead of optim.accum_steps=%d)", micro_batch_size, world_size, steps, accum_steps)
    return steps
