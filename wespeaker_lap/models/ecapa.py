"""ECAPA-TDNN as wired in the official code (WeSpeaker's model; docs/reproduction.md §Backends).

Padding invariance: padded frames are zeroed before every convolution and masked out of
every statistic (BatchNorm batch statistics in training, SE means, pooling), so an
utterance's embedding equals the one computed on it unpadded.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from wespeaker_lap.models.common import frame_mask, masked_batch_norm, masked_mean_var, xavier_init_, zero_padding

RES2_SCALE = 8
SE_BOTTLENECK = 128
MFA_CHANNELS = 1536  # WeSpeaker fixes the multi-layer aggregation width at 512 * 3 for every size
ATTENTION_BOTTLENECK = 128
VAR_EPS = 1e-7  # WeSpeaker's epsilon: added to the context variance, floor of the attentive variance


class ConvReluBn(nn.Module):
    """Conv1d → ReLU → BatchNorm1d on ``[B, C, T]``, with 'same' padding for odd kernels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1):
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation)
        self.norm = nn.BatchNorm1d(out_channels)

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        return masked_batch_norm(self.norm, F.relu(self.conv(zero_padding(x, mask))), mask)


class Res2ConvReluBn(nn.Module):
    """Res2Net block: the channels in ``scale`` groups, each group's conv also sees the previous output."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int = RES2_SCALE):
        super().__init__()
        self.width = channels // scale
        self.groups = nn.ModuleList(
            ConvReluBn(self.width, self.width, kernel_size, dilation) for _ in range(scale - 1)
        )

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        splits = torch.split(x, self.width, dim=1)  # scale x [B, C/scale, T]
        outputs, previous = [], None
        for split, group in zip(splits, self.groups):
            previous = group(split if previous is None else previous + split, mask)
            outputs.append(previous)
        outputs.append(splits[-1])  # the last group passes through
        return torch.cat(outputs, dim=1)  # [B, C, T]


class SqueezeExcite(nn.Module):
    """Channel gates from the mean over valid frames: Linear → ReLU → Linear → sigmoid."""

    def __init__(self, channels: int, bottleneck: int = SE_BOTTLENECK):
        super().__init__()
        self.squeeze = nn.Linear(channels, bottleneck)
        self.excite = nn.Linear(bottleneck, channels)

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        mean, _ = masked_mean_var(x, mask)  # [B, C, 1]
        gates = torch.sigmoid(self.excite(F.relu(self.squeeze(mean.squeeze(-1)))))  # [B, C]
        return x * gates.unsqueeze(-1)


class SeRes2Block(nn.Module):
    """1x1 ConvReluBn → Res2 (k3, dilated) → 1x1 ConvReluBn → SE, plus the residual."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.conv_in = ConvReluBn(channels, channels)
        self.res2 = Res2ConvReluBn(channels, kernel_size=3, dilation=dilation)
        self.conv_out = ConvReluBn(channels, channels)
        self.se = SqueezeExcite(channels)

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        out = self.conv_out(self.res2(self.conv_in(x, mask), mask), mask)
        return x + self.se(out, mask)


class ContextAttentiveStats(nn.Module):
    """WeSpeaker's global-context ASTP: tanh attention on ``[x; mean; std]``, weighted mean and std.

    The context std is WeSpeaker's ``sqrt(var + 1e-7)`` with the unbiased variance, over valid
    frames only.
    """

    def __init__(self, channels: int, bottleneck: int = ATTENTION_BOTTLENECK):
        super().__init__()
        self.attn_in = nn.Conv1d(3 * channels, bottleneck, kernel_size=1)
        self.attn_out = nn.Conv1d(bottleneck, channels, kernel_size=1)

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        x = zero_padding(x, mask)
        mean, var = masked_mean_var(x, mask, unbiased=True)  # [B, C, 1] each
        std = (var + VAR_EPS).sqrt()
        context = torch.cat([x, mean.expand_as(x), std.expand_as(x)], dim=1)  # [B, 3C, T]
        scores = self.attn_out(torch.tanh(self.attn_in(context)))  # [B, C, T]
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, :], torch.finfo(scores.dtype).min)
        alpha = torch.softmax(scores, dim=-1)
        weighted_mean = (alpha * x).sum(dim=-1)  # [B, C]
        weighted_var = (alpha * x.pow(2)).sum(dim=-1) - weighted_mean.pow(2)
        return torch.cat([weighted_mean, weighted_var.clamp(min=VAR_EPS).sqrt()], dim=1)  # [B, 2C]


class EcapaTdnn(nn.Module):
    """ECAPA-TDNN (C = ``channels``): ``x[B, in_dim, T] -> [B, embed_dim]``.

    Conv k5 → three SE-Res2Blocks (k3, dilations 2/3/4) → concat → 1x1 conv to 1536 → ReLU →
    global-context ASTP → BN(3072) → Linear → embedding (no embedding BN).
    """

    def __init__(self, in_dim: int, channels: int = 512, embed_dim: int = 192):
        super().__init__()
        if channels % RES2_SCALE != 0:
            raise ValueError(f"channels={channels} must be a multiple of the Res2 scale {RES2_SCALE}")
        self.in_dim, self.embed_dim = in_dim, embed_dim
        self.stem = ConvReluBn(in_dim, channels, kernel_size=5)
        self.blocks = nn.ModuleList(SeRes2Block(channels, dilation) for dilation in (2, 3, 4))
        self.aggregate = nn.Conv1d(3 * channels, MFA_CHANNELS, kernel_size=1)
        self.pool = ContextAttentiveStats(MFA_CHANNELS)
        self.pool_norm = nn.BatchNorm1d(2 * MFA_CHANNELS)
        self.embed = nn.Linear(2 * MFA_CHANNELS, embed_dim)
        xavier_init_(self)

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        if x.dim() != 3 or x.shape[1] != self.in_dim:
            raise ValueError(f"ECAPA-TDNN expects [B, {self.in_dim}, T], got {tuple(x.shape)}")
        mask = frame_mask(lengths, x.shape[-1], device=x.device)
        out = self.stem(x, mask)
        block_outputs = []
        for block in self.blocks:
            out = block(out, mask)
            block_outputs.append(out)
        out = F.relu(self.aggregate(torch.cat(block_outputs, dim=1)))  # [B, 1536, T]
        return self.embed(self.pool_norm(self.pool(out, mask)))
