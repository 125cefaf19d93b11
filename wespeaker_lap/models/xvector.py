"""x-vector TDNN as wired in the official code (docs/reproduction.md §Backends).

Five Conv1d → ReLU → BatchNorm1d layers (kernels 5, 3, 3, 1, 1; dilations 1, 2, 3, 1, 1;
paddings 2, 1, 1, 0, 0; ``channels`` wide, the last ``stats_channels``), statistics pooling
(mean and ``sqrt(unbiased var + 1e-7)``), and Linear(2 · stats_channels, embed_dim): the
embedding. The two dilated layers pad less than their reach, so each utterance loses 2 and 4
frames (6 in all; it needs at least 7).

In train mode the official forward feeds the loss with ``Linear(ReLU(embedding))`` instead of
the embedding; :attr:`loss_projection` is that ReLU → Linear(embed_dim, embed_dim), applied by
``forward`` in train mode only. Eval mode (extraction) returns the embedding itself.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from wespeaker_lap.models.common import frame_mask, masked_batch_norm, masked_mean_var, xavier_init_, zero_padding

KERNELS = (5, 3, 3, 1, 1)
DILATIONS = (1, 2, 3, 1, 1)
PADDINGS = (2, 1, 1, 0, 0)
STATS_EPS = 1e-7  # added to the variance before the square root, as the official pooling


def _frames_lost(kernel: int, dilation: int, padding: int) -> int:
    return dilation * (kernel - 1) - 2 * padding


class XVector(nn.Module):
    """``x[B, in_dim, T] -> [B, embed_dim]`` (see the module doc)."""

    def __init__(self, in_dim: int, channels: int = 512, stats_channels: int = 1500, embed_dim: int = 512):
        super().__init__()
        self.in_dim, self.embed_dim = in_dim, embed_dim
        widths = [in_dim] + [channels] * 4 + [stats_channels]
        self.convs = nn.ModuleList(
            nn.Conv1d(widths[i], widths[i + 1], k, dilation=d, padding=p)
            for i, (k, d, p) in enumerate(zip(KERNELS, DILATIONS, PADDINGS))
        )
        self.norms = nn.ModuleList(nn.BatchNorm1d(width) for width in widths[1:])
        self.embed = nn.Linear(2 * stats_channels, embed_dim)
        self.loss_projection = nn.Sequential(nn.ReLU(), nn.Linear(embed_dim, embed_dim))
        self.min_frames = 1 + sum(_frames_lost(k, d, p) for k, d, p in zip(KERNELS, DILATIONS, PADDINGS))
        xavier_init_(self)

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        if x.dim() != 3 or x.shape[1] != self.in_dim:
            raise ValueError(f"x-vector expects [B, {self.in_dim}, T], got {tuple(x.shape)}")
        if x.shape[-1] < self.min_frames:
            raise ValueError(f"x-vector needs at least {self.min_frames} frames, got {x.shape[-1]}")
        mask = frame_mask(lengths, x.shape[-1], device=x.device)
        if mask is not None and int(lengths.min()) < self.min_frames:
            raise ValueError(f"x-vector needs at least {self.min_frames} valid frames per utterance, "
                             f"got {int(lengths.min())}")
        for conv, norm, (k, d, p) in zip(self.convs, self.norms, zip(KERNELS, DILATIONS, PADDINGS)):
            x = conv(zero_padding(x, mask))  # [B, C, T - lost]
            lost = _frames_lost(k, d, p)
            if lost and mask is not None:
                lengths = lengths - lost
                mask = frame_mask(lengths, x.shape[-1], device=x.device)  # [B, T - lost]
            x = masked_batch_norm(norm, F.relu(x), mask)
        mean, var = masked_mean_var(x, mask, unbiased=True)  # [B, C, 1] each
        stats = torch.cat([mean, (var + STATS_EPS).sqrt()], dim=1).squeeze(-1)  # [B, 2C]
        embedding = self.embed(stats)
        return self.loss_projection(embedding) if self.training else embedding
