"""One optimizer step: gradient accumulation, AMP, clipping and non-finite handling.

Every process always runs every backward (DDP all-reduces inside it), and the decision to skip a
step is taken on values summed over all processes, so the replicas never diverge.
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Tuple

import torch

from wespeaker_lap.training.distributed import all_reduce_sum

logger = logging.getLogger(__name__)

MicroBatch = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # wavs [B, S], wav_lens [B], labels [B]


class NonFiniteLossError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


def resolve_amp(setting: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``train.amp`` on ``device``; None means full precision (always on the CPU)."""
    if setting == "off" or device.type != "cuda":
        if setting in ("bf16", "fp16"):
            logger.info("train.amp=%s ignored: mixed precision is only used on GPUs", setting)
        return None
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if setting == "bf16" and not torch.cuda.is_bf16_supported():
        raise RuntimeError("train.amp=bf16 but this GPU has no bf16 support; use fp16 or auto")
    return torch.bfloat16 if setting == "bf16" else torch.float16


def restore_scaler(scaler: torch.amp.GradScaler, state: Dict[str, Any]) -> None:
    """Load a checkpoint's GradScaler state; an empty one (written under bf16 or without AMP) into an
    fp16 run starts from a fresh scale instead of failing (``GradScaler.load_state_dict`` refuses it)."""
    if scaler.is_enabled() and not state:
        logger.info("the checkpoint has no fp16 loss-scale state (it was written under bf16 or without AMP): "
                    "starting from a fresh scale of %g", scaler.get_scale())
        return
    scaler.load_state_dict(state)  # a disabled scaler ignores a saved fp16 state


class NonFiniteGuard:
    """Counts skipped (non-finite) steps; ``max_in_row`` of them in a row stop the run."""

    def __init__(self, max_in_row: int):
        self.max_in_row = max_in_row
        self.in_row = 0
        self.total = 0

    def record(self, finite: bool, global_step: int) -> None:
        if finite:
            self.in_row = 0
            return
        self.in_row += 1
        self.total += 1
        logger.warning("step %d: non-finite loss or gradient, step skipped (%d in a row, %d in all)",
                       global_step, self.in_row, self.total)
        if self.in_row >= self.max_in_row:
            raise NonFiniteLossError(
                f"{self.in_row} optimizer steps in a row had a non-finite loss or gradient (up to step "
                f"{global_step}); stopping (train.max_nonfinite_steps={self.max_in_row}). Lower optim.lr, "
                "set optim.grad_clip, try train.amp=bf16 or off, or look for bad audio in the data."
            )

    def state_dict(self) -> Dict[str, int]:
        return {"in_row": self.in_row, "total": self.total}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.in_row, self.total = int(state["in_row"]), int(state["total"])


@dataclass(frozen=True)
class StepResult:
    """Global (all-process) results of one optimizer step."""

    loss: float  # mean over the global batch; nan if non-finite
    accuracy: float
    grad_norm: float  # before clipping; nan when the step was skipped for a non-finite loss
    finite: bool  # False: the step was skipped and counts as non-finite
    applied: bool  # the optimizer updated the weights (False also on an fp16 overflow)


def train_step(
    module: torch.nn.Module,
    micro_batches: Iterator[MicroBatch],
    accum_steps: int,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    amp_dtype: Optional[torch.dtype],
    grad_clip: Optional[float],
) -> StepResult:
    """Run ``accum_steps`` micro-batches through ``module`` (returns ``(loss, n_correct)``) and step once.

    DDP gradient sync happens only on the last micro-batch. A non-finite loss on any process, or a
    non-finite gradient norm without a GradScaler, skips the step and puts BatchNorm's running
    statistics back as they were. With fp16, an overflowing gradient is the GradScaler's normal
    calibration: the step is not applied, but it does not count as non-finite.
    """
    device = next(module.parameters()).device
    bn_stats = _batchnorm_stats(module)
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss * B, n_correct, B, non-finite count
    for index in range(accum_steps):
        wavs, wav_lens, labels = next(micro_batches)
        last = index == accum_steps - 1
        no_sync = getattr(module, "no_sync", None)
        with contextlib.nullcontext() if last or no_sync is None else no_sync():
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss, n_correct = module(wavs, wav_lens, labels)
            scaler.scale(loss / accum_steps).backward()
        loss = loss.detach().double()
        finite = torch.isfinite(loss)
        totals[0] += torch.where(finite, loss * len(labels), 0.0)  # Python numbers enter as kernel arguments:
        totals[1] += n_correct  # no host-to-device copy
        totals[2] += len(labels)
        totals[3] += (~finite).double()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    scaler.unscale_(optimizer)  # fp16: also records on the device whether a gradient overflowed
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if grad_clip is not None:
        torch.nn.utils.clip_grads_with_norm_(params, grad_clip, grad_norm)
    # The step's one host read: the global sums, and the gradient norm (equal on every replica).
    loss_sum, n_correct, n_samples, n_nonfinite, grad_norm = torch.cat(
        [all_reduce_sum(totals), grad_norm.detach().double().reshape(1)]).tolist()
    accuracy = n_correct / n_samples
    finite_grad = math.isfinite(grad_norm)
    if n_nonfinite > 0 or (not finite_grad and not scaler.is_enabled()):
        optimizer.zero_grad(set_to_none=True)
        _restore(bn_stats)  # the bad forward also fed BatchNorm's running statistics
        scaler.update()  # fp16: closes the unscale_ above (and backs the scale off if a gradient overflowed)
        if n_nonfinite > 0:
            return StepResult(math.nan, accuracy, math.nan, finite=False, applied=False)
        return StepResult(loss_sum / n_samples, accuracy, grad_norm, finite=False, applied=False)
    scaler.step(optimizer)  # skipped internally if the fp16 gradients overflowed
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_sum / n_samples, accuracy, grad_norm, finite=True, applied=finite_grad)


def _batchnorm_stats(module: torch.nn.Module) -> Dict[torch.Tensor, torch.Tensor]:
    """Copies of every BatchNorm running statistic (buffer -> copy), to undo a skipped step's updates."""
    return {buffer: buffer.detach().clone()
            for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)
            for buffer in m.buffers()}


def _restore(stats: Dict[torch.Tensor, torch.Tensor]) -> None:
    with torch.no_grad():
        for buffer, saved in stats.items():
            buffer.copy_(saved)
