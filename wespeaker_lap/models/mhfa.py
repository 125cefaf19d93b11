"""Multi-head factorized attentive pooling, MHFA (Peng et al., SLT 2022; paper.md §1.5)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from wespeaker_lap.models.common import frame_mask, xavier_init_
from wespeaker_lap.models.superb import SuperbWeightedSum


class Mhfa(nn.Module):
    """The original MHFA: ``x[B, T, L, D] -> [B, embed_dim]``.

    Two SUPERB layer weightings build a key stream and a value stream; each is compressed
    to ``compression_dim``; a Linear maps the keys to ``head_nb`` scores per frame, softmax
    over the valid frames; each head pools the compressed values; the ``head_nb x
    compression_dim`` concatenation goes through a Linear to the embedding.
    """

    def __init__(self, n_layers: int, in_dim: int, *, head_nb: int = 64, compression_dim: int = 128,
                 embed_dim: int = 256):
        super().__init__()
        self.n_layers, self.in_dim, self.embed_dim = n_layers, in_dim, embed_dim
        self.key_layers = SuperbWeightedSum(n_layers)
        self.value_layers = SuperbWeightedSum(n_layers)
        self.compress_key = nn.Linear(in_dim, compression_dim)
        self.compress_value = nn.Linear(in_dim, compression_dim)
        self.attention_heads = nn.Linear(compression_dim, head_nb)
        self.embed = nn.Linear(head_nb * compression_dim, embed_dim)
        xavier_init_(self)

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        if x.dim() != 4 or x.shape[2] != self.n_layers or x.shape[3] != self.in_dim:
            raise ValueError(f"MHFA expects hidden states [B, T, {self.n_layers}, {self.in_dim}], got {tuple(x.shape)}")
        mask = frame_mask(lengths, x.shape[1], device=x.device)
        if mask is not None:
            x = x.masked_fill(~mask[:, :, None, None], 0.0)
        keys = self.compress_key(self.key_layers(x).transpose(1, 2))  # [B, T, cmp]
        values = self.compress_value(self.value_layers(x).transpose(1, 2))  # [B, T, cmp]
        scores = self.attention_heads(keys)  # [B, T, H]
        if mask is not None:
            scores = scores.masked_fill(~mask[:, :, None], torch.finfo(scores.dtype).min)
        alpha = torch.softmax(scores, dim=1)  # [B, T, H], over time
        pooled = torch.matmul(alpha.transpose(1, 2), values)  # [B, H, T] @ [B, T, cmp] -> [B, H, cmp]
        return self.embed(pooled.flatten(1))  # [B, H*cmp] -> [B, embed_dim]
