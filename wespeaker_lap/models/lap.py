"""Layer Attentive Pooling (LAP): per-frame, per-head layer gates, then max-pooling over layers.

Follows the official ``LAP`` module (paper.md §1.2) step for step.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from wespeaker_lap.models.common import frame_mask, masked_batch_norm, xavier_init_


class LayerAttentivePooling(nn.Module):
    """Aggregate the hidden states ``x[B, T, L, D]`` of all layers into ``[B, out_dim, T]``.

    1. BatchNorm over D with ONE set of statistics shared by all layers (pooled over batch,
       time and layers, as BatchNorm2d on ``[B, D, T, L]``), then a D→D projection (the
       official 1x1 conv, as a Linear on channels-last frames; Identity when ``n_heads == 1``).
    2. Split D into ``n_heads`` heads of ``D / n_heads`` channels. For every frame, head and
       layer take the mean and the max over the head's channels.
    3. One squeeze-excitation MLP per head over the layer axis (L → ⌊L/2⌋ → ReLU → L) is
       applied to both statistics; gates = dropout(sigmoid(MLP(mean) + MLP(max))).
    4. Gate the features and take the max over layers (the max acts on gated values, so a
       small gate raises a negative value: this is the authors' design, kept as is).
    5. D→out_dim projection (1x1 conv as a Linear) and BatchNorm1d, no non-linearity.

    Our extension for variable-length batches: when ``lengths`` is given, the two BatchNorms
    take their train-mode batch statistics over valid frames only. Everything else is
    per-frame, so padding never changes a valid frame's output (in eval mode even without
    ``lengths``).
    """

    def __init__(self, n_layers: int, in_dim: int, out_dim: int = 512, n_heads: int = 16, dropout: float = 0.1):
        super().__init__()
        if n_layers < 2:
            raise ValueError(f"LAP needs at least 2 layers (the squeeze width is n_layers // 2), got {n_layers}")
        if n_heads < 1 or in_dim % n_heads != 0:
            raise ValueError(f"n_heads={n_heads} must be positive and divide the input width in_dim={in_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.n_layers, self.in_dim, self.out_dim, self.n_heads = n_layers, in_dim, out_dim, n_heads
        squeezed = n_layers // 2

        self.in_norm = nn.BatchNorm2d(in_dim)
        self.in_proj = nn.Linear(in_dim, in_dim) if n_heads > 1 else nn.Identity()
        self.sq_weight = nn.Parameter(torch.empty(n_heads, n_layers, squeezed))
        self.sq_bias = nn.Parameter(torch.zeros(n_heads, 1, squeezed))
        self.ex_weight = nn.Parameter(torch.empty(n_heads, squeezed, n_layers))
        self.ex_bias = nn.Parameter(torch.zeros(n_heads, 1, n_layers))
        self.gate_dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(in_dim, out_dim)
        self.out_norm = nn.BatchNorm1d(out_dim)
        xavier_init_(self)

    def _project(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        """Input BatchNorm then the D→D projection: ``[B, T, L, D] -> [B, T, L, D]``.

        The BatchNorm's scale and shift are folded into the projection, which then reads the
        standardised input: the same function, one pass less over the input, and, when the input
        needs no gradient (a frozen upstream), no backward through the BatchNorm at all.
        """
        channels_first = x.permute(0, 3, 1, 2)  # [B, D, T, L], a view
        if isinstance(self.in_proj, nn.Identity):
            return masked_batch_norm(self.in_norm, channels_first, mask).permute(0, 2, 3, 1)
        standardised = masked_batch_norm(self.in_norm, channels_first, mask, affine=False)  # [B, D, T, L]
        weight = self.in_proj.weight * self.in_norm.weight  # W diag(gamma): [D, D]
        bias = torch.addmv(self.in_proj.bias, self.in_proj.weight, self.in_norm.bias)  # b + W beta
        return F.linear(standardised.permute(0, 2, 3, 1), weight, bias)  # [B, T, L, D]

    def _gates(self, stats: Tensor) -> Tensor:
        """Squeeze-excitation over layers, per head, of the mean and max statistics.

        ``stats[2, N, L, h]`` (mean, max) -> gates ``[N, L, h]``: one batched matmul per layer of
        the MLP, over the heads, for both statistics at once.
        """
        _, n_rows, n_layers, n_heads = stats.shape
        stats = stats.permute(3, 0, 1, 2).reshape(n_heads, 2 * n_rows, n_layers)  # [h, 2N, L]
        hidden = F.relu(torch.baddbmm(self.sq_bias, stats, self.sq_weight))  # [h, 2N, L//2]
        excited = torch.baddbmm(self.ex_bias, hidden, self.ex_weight)  # [h, 2N, L]
        excited = excited.reshape(n_heads, 2, n_rows, n_layers).sum(dim=1)  # MLP(mean) + MLP(max): [h, N, L]
        # Dropout on the official layout [N, h, L] (contiguous): the same RNG state drops the same gates.
        gates = self.gate_dropout(torch.sigmoid(excited.transpose(0, 1).contiguous()))  # [N, h, L]
        return gates.transpose(1, 2)  # [N, L, h]

    def forward(
        self, x: Tensor, lengths: Optional[Tensor] = None, return_gates: bool = False
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """``x[B, T, L, D]`` -> ``[B, out_dim, T]`` (and the gates ``[B, n_heads, T, L]``)."""
        if x.dim() != 4 or x.shape[2] != self.n_layers or x.shape[3] != self.in_dim:
            raise ValueError(
                f"LAP expects hidden states [B, T, {self.n_layers}, {self.in_dim}], got {tuple(x.shape)}"
            )
        batch, n_frames = x.shape[:2]
        mask = frame_mask(lengths, n_frames, device=x.device)

        x = self._project(x, mask)  # [B, T, L, D]
        x = x.reshape(batch * n_frames, self.n_layers, self.n_heads, self.in_dim // self.n_heads)  # [BT, L, h, d]
        stats = _HeadMeanMax.apply(x)  # per frame, layer and head: [2, BT, L, h]
        gates = self._gates(stats)  # [BT, L, h]
        pooled = _GatedLayerMax.apply(x, gates)  # gate, then max over layers: [BT, h, d]

        pooled = pooled.reshape(batch, n_frames, self.in_dim)  # [B, T, D]
        out = masked_batch_norm(self.out_norm, self.out_proj(pooled).transpose(1, 2), mask)  # [B, out_dim, T]
        if not return_gates:
            return out
        gates = gates.reshape(batch, n_frames, self.n_layers, self.n_heads).permute(0, 3, 1, 2)  # [B, h, T, L]
        return out, gates


# The two steps that touch every gated value, with hand-written backward passes: autograd's generic
# ones (expand, zero-fill and scatter, multiply, sum, and adding the three gradients of ``x``)
# cost about ten passes over ``x[BT, L, h, d]``; these cost three. Same values, same gradients
# (at ties of a max, the gradient goes to the index that ``torch.max`` returns, as autograd's).


class _HeadMeanMax(torch.autograd.Function):
    """``x[N, L, h, d]`` -> ``stack(mean over d, max over d)`` ``[2, N, L, h]``."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        peak, index = x.max(dim=-1)  # [N, L, h]
        ctx.save_for_backward(index)
        ctx.head_dim = x.shape[-1]
        return torch.stack([x.mean(dim=-1), peak])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (index,) = ctx.saved_tensors
        grad_mean, grad_peak = grad
        grad_x = (grad_mean / ctx.head_dim).unsqueeze(-1).repeat(1, 1, 1, ctx.head_dim)  # [N, L, h, d]
        return grad_x.scatter_add_(-1, index.unsqueeze(-1), grad_peak.unsqueeze(-1).to(grad_x.dtype))


class _GatedLayerMax(torch.autograd.Function):
    """``x[N, L, h, d]``, ``gates[N, L, h]`` -> ``max over L of x * gates`` ``[N, h, d]``."""

    @staticmethod
    def forward(ctx, x: Tensor, gates: Tensor) -> Tensor:
        pooled, index = (x * gates.unsqueeze(-1)).max(dim=1)  # [N, h, d], the winning layer per channel
        ctx.save_for_backward(x, gates, index)
        return pooled

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        x, gates, index = ctx.saved_tensors
        layer = index.unsqueeze(1)  # [N, 1, h, d]
        grad_x = grad_gates = None
        if ctx.needs_input_grad[0]:
            gate_of_winner = gates.unsqueeze(-1).expand_as(x).gather(1, layer)  # [N, 1, h, d]
            grad_x = torch.zeros_like(x).scatter_(1, layer, (grad.unsqueeze(1) * gate_of_winner).to(x.dtype))
        if ctx.needs_input_grad[1]:
            contribution = grad * x.gather(1, layer).squeeze(1)  # [N, h, d]
            grad_gates = torch.zeros(gates.shape, dtype=contribution.dtype, device=gates.device)
            grad_gates.scatter_add_(1, index.transpose(1, 2), contribution.transpose(1, 2))  # sum over d per layer
            grad_gates = grad_gates.to(gates.dtype)
        return grad_x, grad_gates
