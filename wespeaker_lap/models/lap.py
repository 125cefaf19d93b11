"""Layer Attentive Pooling (LAP): per-frame, per-head layer gates, then max-pooling over layers.

Follows the official ``LAP`` module (docs/reproduction.md §Backends) step for step.
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
        keep = None
        if self.training and self.gate_dropout.p > 0:  # drawn on the official gates' layout [BT, h, L]
            keep = self.gate_dropout(x.new_ones(batch * n_frames, self.n_heads, self.n_layers,
                                                 dtype=_at_least_fp32(x)))
        pooled, gates = _GatedLayerMax.apply(x, self.sq_weight, self.sq_bias, self.ex_weight, self.ex_bias, keep)

        pooled = pooled.reshape(batch, n_frames, self.in_dim)  # [B, T, D]
        out = masked_batch_norm(self.out_norm, self.out_proj(pooled).transpose(1, 2), mask)  # [B, out_dim, T]
        if not return_gates:
            return out
        gates = gates.reshape(batch, n_frames, self.n_heads, self.n_layers).transpose(1, 2)  # [B, h, T, L]
        return out, gates


class _GatedLayerMax(torch.autograd.Function):
    """Steps 2-4 of LAP on projected features ``x[N, L, h, d]``, with a hand-written backward.

    Per frame, layer and head: the mean and max over the head's channels; the per-head
    squeeze-excitation over layers of both (``sq_*``, ``ex_*``: ``[h, L, K]``, ``[h, 1, K]``,
    ``[h, K, L]``, ``[h, 1, L]``), summed, sigmoid, times the dropout ``keep`` mask ``[N, h, L]``
    (or None); then the max over layers of ``x * gates``. Returns ``(pooled[N, h, d], gates[N, h, L])``.

    Autograd's generic backward of these steps writes and re-reads several tensors the size of
    ``x``; this one writes the gradient of ``x`` once (the mean's share, then the two maxima's by
    scatter) and runs the small MLP backward by hand, in fp32. Same values and gradients: at ties of
    a max the gradient goes to the index ``torch.max`` returns, as autograd's. On a GPU the per-layer
    sum of the gates' gradient is a scatter-add: bitwise reproducible under ``train.deterministic``
    (torch's deterministic kernel), otherwise up to fp32 rounding order.
    """

    @staticmethod
    def forward(ctx, x: Tensor, sq_weight: Tensor, sq_bias: Tensor, ex_weight: Tensor, ex_bias: Tensor,
                keep: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        n_rows, n_layers, n_heads, head_dim = x.shape
        peak, peak_index = x.max(dim=-1)  # [N, L, h]
        stats = torch.stack([x.mean(dim=-1), peak]).to(_at_least_fp32(x))  # [2, N, L, h]
        stats = stats.permute(3, 0, 1, 2).reshape(n_heads, 2 * n_rows, n_layers)  # [h, 2N, L]
        with torch.autocast(x.device.type, enabled=False):  # a tiny MLP: fp32 under AMP too
            pre = torch.baddbmm(sq_bias, stats, sq_weight)  # [h, 2N, K]
            hidden = F.relu(pre)
            excited = torch.baddbmm(ex_bias, hidden, ex_weight)  # [h, 2N, L]
        excited = excited.reshape(n_heads, 2, n_rows, n_layers).sum(dim=1)  # MLP(mean) + MLP(max): [h, N, L]
        sigmoid = torch.sigmoid(excited.transpose(0, 1))  # [N, h, L]
        gates = sigmoid if keep is None else sigmoid * keep
        layer_gates = gates.transpose(1, 2).to(x.dtype)  # [N, L, h]
        pooled, layer_index = (x * layer_gates.unsqueeze(-1)).max(dim=1)  # [N, h, d], the winning layer
        ctx.save_for_backward(x, peak_index, layer_index, stats, pre, sigmoid, keep, layer_gates,
                              sq_weight, ex_weight)
        ctx.mark_non_differentiable(gates)
        return pooled, gates

    @staticmethod
    def backward(ctx, grad_pooled: Tensor, _grad_gates: Optional[Tensor]):
        x, peak_index, layer_index, stats, pre, sigmoid, keep, layer_gates, sq_weight, ex_weight = ctx.saved_tensors
        n_rows, n_layers, n_heads, head_dim = x.shape
        winner = layer_index.unsqueeze(1)  # [N, 1, h, d]
        # gates: the winning layer's value per channel, summed over the head's channels (in fp32)
        contribution = (grad_pooled * x.gather(1, winner).squeeze(1)).to(stats.dtype)  # [N, h, d]
        grad_layer_gates = torch.zeros(n_rows, n_layers, n_heads, dtype=stats.dtype, device=x.device)
        grad_layer_gates.scatter_add_(1, layer_index.transpose(1, 2), contribution.transpose(1, 2))  # [N, L, h]
        grad_gates = grad_layer_gates.transpose(1, 2)  # [N, h, L]
        grad_sigmoid = grad_gates if keep is None else grad_gates * keep
        grad_excited = (grad_sigmoid * sigmoid * (1.0 - sigmoid)).transpose(0, 1)  # [h, N, L]
        grad_excited = grad_excited.unsqueeze(1).expand(n_heads, 2, n_rows, n_layers).reshape(
            n_heads, 2 * n_rows, n_layers)  # both statistics' MLP outputs: [h, 2N, L]
        grad_ex_weight = torch.bmm(F.relu(pre).transpose(1, 2), grad_excited)  # [h, K, L]
        grad_ex_bias = grad_excited.sum(dim=1, keepdim=True)  # [h, 1, L]
        grad_pre = torch.bmm(grad_excited, ex_weight.transpose(1, 2)) * (pre > 0)  # [h, 2N, K]
        grad_sq_weight = torch.bmm(stats.transpose(1, 2), grad_pre)  # [h, L, K]
        grad_sq_bias = grad_pre.sum(dim=1, keepdim=True)  # [h, 1, K]
        grad_stats = torch.bmm(grad_pre, sq_weight.transpose(1, 2))  # [h, 2N, L]
        grad_mean, grad_peak = grad_stats.reshape(n_heads, 2, n_rows, n_layers).permute(1, 2, 3, 0)  # [N, L, h]
        # x: the mean's share to every channel, then each maximum's to its winner
        grad_x = (grad_mean / head_dim).to(x.dtype).unsqueeze(-1).repeat(1, 1, 1, head_dim)  # [N, L, h, d]
        grad_x.scatter_add_(-1, peak_index.unsqueeze(-1), grad_peak.unsqueeze(-1).to(x.dtype))
        gate_of_winner = layer_gates.unsqueeze(-1).expand_as(x).gather(1, winner)  # [N, 1, h, d]
        grad_x.scatter_add_(1, winner, (grad_pooled.unsqueeze(1) * gate_of_winner).to(x.dtype))
        return grad_x, grad_sq_weight, grad_sq_bias, grad_ex_weight, grad_ex_bias, None



def _at_least_fp32(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)
