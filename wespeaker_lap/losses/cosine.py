"""Cosines between embeddings and the columns of a sub-centre weight, with a hand-written backward.

``sub_center_cosines(emb, weight)`` equals ``emb @ F.normalize(weight, dim=1)`` for unit-norm rows
``emb[B, E]`` and ``weight[K, E, C]``, but never builds the normalised weight, and its backward
reads the weight twice and writes its gradient once (autograd's goes through the normalisation in
several passes). The weight has ``K x E x C`` entries (10 M for VoxCeleb2 with speed perturbation),
so on a CPU these passes are a good part of a frozen-upstream step.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

NORM_FLOOR = 1e-12  # as F.normalize: a column norm below this is replaced by it (and gets no gradient)


class _SubCenterCosines(torch.autograd.Function):
    @staticmethod
    def forward(ctx, emb: Tensor, weight: Tensor) -> Tensor:
        norms = torch.linalg.vector_norm(weight, dim=1, keepdim=True)  # [K, 1, C]
        inv_norms = norms.clamp(min=NORM_FLOOR).reciprocal()
        cosine = torch.bmm(emb.expand(weight.shape[0], -1, -1), weight) * inv_norms  # [K, B, C]
        ctx.save_for_backward(emb, weight, inv_norms, cosine, norms > NORM_FLOOR)
        return cosine

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Tensor, Tensor]:
        emb, weight, inv_norms, cosine, unclamped = ctx.saved_tensors
        scaled = grad * inv_norms  # [K, B, C]
        # d cos[b, c] / d w[:, c] = emb[b] / |w_c| - cos[b, c] * w_c / |w_c|^2
        along_w = -(grad * cosine).sum(dim=1, keepdim=True) * inv_norms.square() * unclamped  # [K, 1, C]
        grad_weight = torch.bmm(emb.t().expand(weight.shape[0], -1, -1), scaled).addcmul_(weight, along_w)
        grad_emb = torch.bmm(weight, scaled.transpose(1, 2)).sum(dim=0).t()  # [E, B] -> [B, E]; reads weight in place
        return grad_emb, grad_weight


def sub_center_cosines(emb: Tensor, weight: Tensor) -> Tensor:
    """``[K, B, C]`` cosines of unit rows ``emb[B, E]`` with the columns of ``weight[K, E, C]`` (float32)."""
    return _SubCenterCosines.apply(emb, weight)
