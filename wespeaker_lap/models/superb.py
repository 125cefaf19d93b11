"""SUPERB weighted sum: one learned, time-invariant softmax weight per layer (docs/reproduction.md §Backends)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


class SuperbWeightedSum(nn.Module):
    """``x[B, T, L, D] -> [B, D, T]``: the softmax(logits)-weighted sum over layers.

    The logits start at 1/L, so the weights start uniform. No normalisation, no projection.
    Every frame is summed on its own, so ``lengths`` (accepted like every layer aggregation's)
    changes nothing.
    """

    def __init__(self, n_layers: int):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be positive, got {n_layers}")
        self.n_layers = n_layers
        self.layer_logits = nn.Parameter(torch.full((n_layers,), 1.0 / n_layers))

    @property
    def layer_weights(self) -> Tensor:
        """The current layer weights ``[L]`` (they sum to 1)."""
        return torch.softmax(self.layer_logits, dim=0)

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        if x.dim() != 4 or x.shape[2] != self.n_layers:
            raise ValueError(f"SUPERB expects hidden states [B, T, {self.n_layers}, D], got {tuple(x.shape)}")
        summed = torch.matmul(x.transpose(2, 3), self.layer_weights.to(x.dtype))  # [B, T, D, L] @ [L] -> [B, T, D]
        return summed.transpose(1, 2)  # [B, D, T]
