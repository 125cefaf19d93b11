"""Helpers shared by the backends: frame masks, masked BatchNorm and statistics, the official init.

Every backend takes ``lengths[B]`` (valid frames per utterance, ``None`` = all valid) and
turns it into a boolean frame mask ``[B, T]``. Frames at or past ``lengths[b]`` must never
influence utterance ``b``; these helpers are the one place where that is done.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from wespeaker_lap.utils.host_syncs import to_device


def frame_mask(lengths: Optional[Tensor], n_frames: int, device: Optional[torch.device] = None) -> Optional[Tensor]:
    """Boolean ``[B, T]`` mask on ``device`` (default: the lengths'), True on valid frames; ``None`` when every
    frame is valid.

    Lengths on the CPU (as ``Upstream`` returns them) are checked on the host, so a GPU step pays no
    device sync; lengths on a GPU cost one device-to-host copy. Raises ``ValueError`` if a length is
    outside ``1..n_frames``.
    """
    if lengths is None:
        return None
    if lengths.dim() != 1 or lengths.numel() == 0:
        raise ValueError(f"lengths must have shape [B] with B >= 1, got {tuple(lengths.shape)}")
    values = lengths.tolist()
    shortest, longest = min(values), max(values)
    if shortest < 1 or longest > n_frames:
        raise ValueError(f"lengths must lie in 1..{n_frames} (the padded frame count), got {shortest}..{longest}")
    if shortest == n_frames:
        return None
    device = lengths.device if device is None else torch.device(device)
    return torch.arange(n_frames, device=device) < to_device(lengths, device)[:, None]


def zero_padding(x: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Set the padded frames of channels-first ``x[B, C, T]`` to 0 (NaN-safe)."""
    if mask is None:
        return x
    return x.masked_fill(~mask[:, None, :], 0.0)


def masked_batch_norm(norm: nn.modules.batchnorm._BatchNorm, x: Tensor, mask: Optional[Tensor],
                      affine: bool = True) -> Tensor:
    """Apply ``norm`` to channels-first ``x[B, C, T, ...]`` with batch statistics from valid frames only.

    In eval mode, or when every frame is valid, this is ``norm(x)``. In train mode with
    padding, the valid frames are packed, normalised together (so the batch statistics and
    the running averages ignore padding) and scattered back; padded frames come out as 0.
    Works for BatchNorm1d/2d and SyncBatchNorm (packed input is shaped ``[N, C, 1, ...]``).
    With ``affine=False`` the output is only standardised (``norm``'s weight and bias are left
    for the caller to apply, e.g. folded into the next linear layer); the running statistics
    are updated all the same.
    """
    apply = norm if affine else functools.partial(_standardize, norm)
    if mask is None or not norm.training or bool(mask.all()):
        return apply(x)
    channels_last = x.movedim(1, -1)  # [B, T, ..., C]
    valid = channels_last[mask]  # [N, ..., C]
    n_channels = x.shape[1]
    packed = valid.reshape(-1, n_channels, *([1] * (x.dim() - 2)))  # [N*..., C, 1, ...]
    out = channels_last.new_zeros(channels_last.shape)
    out[mask] = apply(packed).reshape(valid.shape)
    return out.movedim(-1, 1)  # [B, C, T, ...]


def _standardize(norm: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """``norm(x)`` with unit weight and zero bias: batch (or running) statistics only."""
    identity = {"weight": torch.ones_like(norm.weight), "bias": torch.zeros_like(norm.bias)}
    return torch.func.functional_call(norm, identity, (x,))


def masked_mean_var(x: Tensor, mask: Optional[Tensor], unbiased: bool = True) -> Tuple[Tensor, Tensor]:
    """Mean and variance over the valid frames of ``x[B, C, T]``, each ``[B, C, 1]``.

    ``unbiased`` divides the squared deviations by ``N - 1`` (``torch.var``'s default, as the
    official code); an utterance with a single valid frame then has variance 0, where the
    official ``torch.var`` would give NaN (docs/reproduction.md §One-frame utterances).
    """
    if mask is None:
        count = torch.full((1, 1, 1), x.shape[-1], dtype=x.dtype, device=x.device)
        mean = x.mean(dim=-1, keepdim=True)
        squares = (x - mean).pow(2).sum(dim=-1, keepdim=True)
    else:
        weights = mask[:, None, :].to(x.dtype)  # [B, 1, T]
        count = weights.sum(dim=-1, keepdim=True)  # [B, 1, 1]
        mean = (x * weights).sum(dim=-1, keepdim=True) / count
        squares = ((x - mean).pow(2) * weights).sum(dim=-1, keepdim=True)
    denominator = (count - 1).clamp(min=1) if unbiased else count
    return mean, squares / denominator


def sqrt_or_zero(var: Tensor) -> Tensor:
    """``sqrt(var)`` without a floor, 0 where ``var`` is 0, and a finite gradient there too."""
    positive = var > 0
    return torch.where(positive, torch.where(positive, var, torch.ones_like(var)).sqrt(), torch.zeros_like(var))


def xavier_init_(module: nn.Module) -> None:
    """The official ``init_weights``: Xavier-uniform for every >1-dim weight, zeros for every bias.

    Parameters are recognised by name, as in the official code (LAP's 3-D ``sq_bias`` is a
    bias). 1-dim weights (BatchNorm scales) and SUPERB's logits keep their own init. For 3-D tensors
    PyTorch treats the last dim as a receptive field when computing the fans.
    """
    for name, param in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if "weight" in leaf and param.dim() > 1:
            nn.init.xavier_uniform_(param)
        elif "bias" in leaf:
            nn.init.zeros_(param)
