"""AAM-softmax with sub-centres and the inter-top-K penalty (``docs/reproduction.md`` §Phase defaults)."""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from wespeaker_lap.losses.cosine import sub_center_cosines

MIN_MARGIN = 0.001  # at or below this margin the inter-top-K penalty is switched off
SINE_FLOOR = 1e-12  # floor of 1 - cos² before the square root: finite gradients at cos = ±1


class AAMSoftmax(nn.Module):
    """Additive angular margin softmax with ``sub_centers`` centres per class and inter-top-K.

    * ``weight`` has shape ``[sub_centers, embed_dim, n_classes]`` (Xavier init); a class's
      cosine is the max over its sub-centres.
    * Target logit: ArcFace ``cos(θ + m)``, or ``cos θ − m·sin m`` when ``cos θ ≤ cos(π − m)``.
    * The ``top_k`` highest-cosine non-target classes get ``cos(θ − m′)`` (hard negatives
      are pushed up); every other class keeps ``cos θ``. Logits are scaled by ``scale``.
    * ``set_margin(m)`` sets ``m′ = penalty · m / m_init`` (``m_init``: the constructor
      margin), and ``m′ = 0`` when ``m ≤ 0.001``. A head built with ``margin = 0`` has no
      reference margin, so its ``m′`` stays 0.

    The margin arithmetic runs in float32 even under fp16/bf16 autocast, with ``1 − cos²``
    floored at 1e-12 before the square root (the official code has no clamp).
    """

    def __init__(self, embed_dim: int, n_classes: int, scale: float = 30.0, margin: float = 0.3,
                 sub_centers: int = 3, top_k: int = 5, penalty: float = 0.06):
        super().__init__()
        if n_classes < 1 or sub_centers < 1 or top_k < 0:
            raise ValueError(
                f"need n_classes >= 1, sub_centers >= 1, top_k >= 0; got {n_classes}, {sub_centers}, {top_k}"
            )
        self.embed_dim, self.n_classes, self.scale = embed_dim, n_classes, scale
        self.sub_centers, self.top_k = sub_centers, top_k
        self.initial_margin, self.initial_penalty = margin, penalty
        self.weight = nn.Parameter(torch.empty(sub_centers, embed_dim, n_classes))
        nn.init.xavier_uniform_(self.weight)
        self.set_margin(margin)

    def set_margin(self, margin: float) -> None:
        """Set the target margin ``m`` and rescale the inter-top-K penalty ``m′`` with it."""
        self.margin = float(margin)
        self.cos_m, self.sin_m = math.cos(margin), math.sin(margin)
        self.threshold = math.cos(math.pi - margin)  # below it, cos(θ + m) is no longer monotonic in θ
        self.fallback = math.sin(margin) * margin
        if margin > MIN_MARGIN and self.initial_margin > 0:
            self.penalty_margin = self.initial_penalty * margin / self.initial_margin
        else:
            self.penalty_margin = 0.0
        self.cos_p, self.sin_p = math.cos(self.penalty_margin), math.sin(self.penalty_margin)

    def slice_classes(self, n_classes: int) -> "AAMSoftmax":
        """Keep only the first ``n_classes`` classes (e.g. drop speed-perturbed classes); returns self."""
        if not 1 <= n_classes <= self.n_classes:
            raise ValueError(f"cannot slice {self.n_classes} classes to {n_classes}")
        self.weight = nn.Parameter(self.weight.detach()[:, :, :n_classes].clone())
        self.n_classes = n_classes
        return self

    def cosines(self, emb: Tensor) -> Tensor:
        """float32 cosines ``[B, n_classes]`` of ``emb[B, E]``: the max over each class's sub-centres."""
        with torch.autocast(device_type=emb.device.type, enabled=False):
            emb = F.normalize(emb.float(), dim=1)
            cosine = sub_center_cosines(emb, self.weight.float()).max(dim=0).values  # [K, B, C] -> [B, C]
            return cosine.clamp(-1.0, 1.0)

    def forward(self, emb: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor]:
        """``emb[B, E]``, ``labels[B]`` -> (mean cross-entropy, number of correct argmax-cosine predictions).

        The count is a 0-dim int64 tensor; it uses plain cosines (no margin, no top-K).
        """
        if emb.dim() != 2 or emb.shape[1] != self.embed_dim:
            raise ValueError(f"AAMSoftmax expects embeddings [B, {self.embed_dim}], got {tuple(emb.shape)}")
        cosine = self.cosines(emb)
        with torch.autocast(device_type=emb.device.type, enabled=False):
            sine = (1.0 - cosine.pow(2)).clamp(min=SINE_FLOOR).sqrt()
            target = F.one_hot(labels, self.n_classes).bool()  # [B, C]
            logits = cosine
            top_k = min(self.top_k, self.n_classes - 1)
            if top_k > 0:
                hard = cosine.masked_fill(target, -2.0).topk(top_k, dim=1).indices  # [B, k]
                is_hard = torch.zeros_like(target).scatter_(1, hard, True)
                logits = torch.where(is_hard, cosine * self.cos_p + sine * self.sin_p, logits)
            arc = cosine * self.cos_m - sine * self.sin_m
            arc = torch.where(cosine > self.threshold, arc, cosine - self.fallback)
            logits = torch.where(target, arc, logits)
            loss = F.cross_entropy(self.scale * logits, labels)
        n_correct = (cosine.argmax(dim=1) == labels).sum()
        return loss, n_correct
