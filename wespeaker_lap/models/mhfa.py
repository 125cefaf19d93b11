"""Multi-head factorized attentive pooling, MHFA (Peng et al., SLT 2022; docs/reproduction.md §Backends)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from wespeaker_lap.models.common import frame_mask, xavier_init_


class Mhfa(nn.Module):
    """MHFA on two layer aggregations: ``x[B, T, L, D] -> [B, embed_dim]``.

    ``keys`` and ``values`` are two independent layer aggregations (``[B, T, L, D] -> [B, C, T]``
    of width ``in_dim``): two SUPERB weightings in the original MHFA, or two LAPs (the official
    code's ``layer_aggregation: lap``). Each stream is compressed to ``compression_dim``; a
    Linear maps the keys to ``head_nb`` scores per frame, softmax over the valid frames; each
    head pools the compressed values; the ``head_nb x compression_dim`` concatenation goes
    through a Linear to the embedding.
    """

    def __init__(self, keys: nn.Module, values: nn.Module, in_dim: int, *, head_nb: int = 64,
                 compression_dim: int = 128, embed_dim: int = 256):
        super().__init__()
        self.in_dim, self.embed_dim = in_dim, embed_dim
        self.key_layers = keys
        self.value_layers = values
        self.compress_key = nn.Linear(in_dim, compression_dim)
        self.compress_value = nn.Linear(in_dim, compression_dim)
        self.attention_heads = nn.Linear(compression_dim, head_nb)
        self.embed = nn.Linear(head_nb * compression_dim, embed_dim)
        xavier_init_(self)

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"MHFA expects hidden states [B, T, L, D], got {tuple(x.shape)}")
        mask = frame_mask(lengths, x.shape[1], device=x.device)
        if mask is not None:
            x = x.masked_fill(~mask[:, :, None, None], 0.0)
        keys = self.compress_key(self.key_layers(x, lengths).transpose(1, 2))  # [B, C, T] -> [B, T, cmp]
        values = self.compress_value(self.value_layers(x, lengths).transpose(1, 2))  # [B, T, cmp]
        scores = self.attention_heads(keys)  # [B, T, H]
        if mask is not None:
            scores = scores.masked_fill(~mask[:, :, None], torch.finfo(scores.dtype).min)
        alpha = torch.softmax(scores, dim=1)  # [B, T, H], over time
        pooled = torch.matmul(alpha.transpose(1, 2), values)  # [B, H, T] @ [B, T, cmp] -> [B, H, cmp]
        return self.embed(pooled.flatten(1))  # [B, H*cmp] -> [B, embed_dim]
