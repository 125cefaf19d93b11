"""The authors' attentive statistics pooling and embedding layer (docs/reproduction.md §Backends)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from wespeaker_lap.models.common import (
    frame_mask,
    masked_batch_norm,
    masked_mean_var,
    sqrt_or_zero,
    xavier_init_,
    zero_padding,
)

VAR_FLOOR = 1e-4  # the official floor of the attentive (weighted) variance


class AttentiveStatsPooling(nn.Module):
    """``x[B, C, T] -> [B, embed_dim]``: channel- and frame-dependent attention, mean and std, projection.

    * Attention input: ``[x; mean; std]`` with the mean and the unbiased std over time (global
      context, no floor, as the official ``torch.std``), scored by Conv1d(3C, C·reduction) →
      ReLU → BN → Conv1d(C·reduction, C).
    * In training, whole frames are dropped from the attention (same frames for every
      channel, keep-probability ``1 - dropout``, one uniform draw per frame as the official
      code); if that would drop every valid frame of an utterance, that utterance keeps all
      its frames.
    * Softmax over time, weighted mean and std (sqrt of the variance clamped to 1e-4),
      BN(2C) → Linear(2C, embed_dim) → BN(embed_dim).

    Our extension: padded frames are masked out of the attention and of the context
    statistics (the official code never passes a mask). A one-frame utterance has context
    std 0 (the official ``torch.std`` gives NaN).
    """

    def __init__(self, in_dim: int, embed_dim: int = 192, reduction: float = 0.5, dropout: float = 0.1):
        super().__init__()
        hidden = int(in_dim * reduction)
        if hidden < 1:
            raise ValueError(f"in_dim * reduction must be at least 1, got {in_dim} * {reduction}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.in_dim, self.embed_dim, self.dropout = in_dim, embed_dim, dropout
        self.attn_in = nn.Conv1d(3 * in_dim, hidden, kernel_size=1)
        self.attn_norm = nn.BatchNorm1d(hidden)
        self.attn_out = nn.Conv1d(hidden, in_dim, kernel_size=1)
        self.pool_norm = nn.BatchNorm1d(2 * in_dim)
        self.embed = nn.Linear(2 * in_dim, embed_dim)
        self.embed_norm = nn.BatchNorm1d(embed_dim)
        xavier_init_(self)

    def _keep_frames(self, mask: Optional[Tensor], x: Tensor) -> Tensor:
        """``[B, T]`` frames the attention may use: valid ones, minus dropped ones in training."""
        batch, _, n_frames = x.shape
        keep = mask if mask is not None else torch.ones(batch, n_frames, dtype=torch.bool, device=x.device)
        if self.training and self.dropout > 0:
            kept = keep & (torch.rand(batch, n_frames, device=x.device) >= self.dropout)
            keep = torch.where(kept.any(dim=1, keepdim=True), kept, keep)
        return keep

    def _attend_context(self, x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """``attn_in`` of the context ``[x; mean; std]`` (``[B, 3C, T]``), without building it: the mean and
        std columns are the same at every frame, so their part is one matrix-vector product per utterance."""
        weight = self.attn_in.weight.squeeze(-1)  # [H, 3C]
        per_utterance = F.linear(torch.cat([mean, std], dim=1).squeeze(-1), weight[:, self.in_dim:],
                                 self.attn_in.bias)  # [B, H]
        return torch.matmul(weight[:, :self.in_dim], x) + per_utterance[:, :, None]  # [B, H, T]

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        if x.dim() != 3 or x.shape[1] != self.in_dim:
            raise ValueError(f"ASTP expects [B, {self.in_dim}, T], got {tuple(x.shape)}")
        n_frames = x.shape[-1]
        mask = frame_mask(lengths, n_frames, device=x.device)
        x = zero_padding(x, mask)

        mean, var = masked_mean_var(x, mask, unbiased=True)  # [B, C, 1] each
        std = sqrt_or_zero(var)
        hidden = masked_batch_norm(self.attn_norm, F.relu(self._attend_context(x, mean, std)), mask)
        scores = _pointwise(self.attn_out, hidden)  # [B, C, T]
        keep = self._keep_frames(mask, x)[:, None, :]  # [B, 1, T]
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        alpha = torch.softmax(scores, dim=-1)  # [B, C, T]

        weighted_mean = (alpha * x).sum(dim=-1)  # [B, C]
        weighted_var = (alpha * x.pow(2)).sum(dim=-1) - weighted_mean.pow(2)
        pooled = torch.cat([weighted_mean, weighted_var.clamp(min=VAR_FLOOR).sqrt()], dim=1)  # [B, 2C]
        return self.embed_norm(self.embed(self.pool_norm(pooled)))


def _pointwise(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """A kernel-size-1 ``conv`` on ``x[B, C, T]`` as a matmul: any input strides, BLAS in both directions."""
    return torch.matmul(conv.weight.squeeze(-1), x) + conv.bias[:, None]
