"""LayerAttentivePooling against the paper's formula written as plain loops."""
import numpy as np
import pytest
import torch

from wespeaker_lap.models.lap import LayerAttentivePooling

B, T, L, D, HEADS, OUT = 2, 3, 5, 8, 2, 6


def _randomised_lap(n_heads: int = HEADS) -> LayerAttentivePooling:
    """A LAP in eval mode with every parameter and BN statistic random (biases included)."""
    torch.manual_seed(0)
    lap = LayerAttentivePooling(L, D, OUT, n_heads, dropout=0.1).eval()
    with torch.no_grad():
        for param in lap.parameters():
            param.normal_()
        for norm in (lap.in_norm, lap.out_norm):
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
    return lap


def _reference(lap: LayerAttentivePooling, x: np.ndarray) -> tuple:
    """Per frame, per head, per layer: the official computation, one number at a time."""
    p = {k: v.detach().double().numpy() for k, v in lap.state_dict().items()}
    n_heads, head_dim, eps = lap.n_heads, D // lap.n_heads, lap.in_norm.eps
    sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))
    out = np.zeros((B, OUT, T))
    gates = np.zeros((B, n_heads, T, L))
    for b in range(B):
        for t in range(T):
            z = np.zeros((L, D))
            for l in range(L):
                normed = (x[b, t, l] - p["in_norm.running_mean"]) / np.sqrt(p["in_norm.running_var"] + eps)
                normed = normed * p["in_norm.weight"] + p["in_norm.bias"]
                z[l] = p["in_proj.weight"] @ normed + p["in_proj.bias"] if n_heads > 1 else normed
            pooled = np.zeros(D)
            for h in range(n_heads):
                channels = slice(h * head_dim, (h + 1) * head_dim)
                mean = np.array([z[l, channels].mean() for l in range(L)])
                peak = np.array([z[l, channels].max() for l in range(L)])

                def excite(s):
                    hidden = np.maximum(s @ p["sq_weight"][h] + p["sq_bias"][h, 0], 0.0)
                    return hidden @ p["ex_weight"][h] + p["ex_bias"][h, 0]

                gate = sigmoid(excite(mean) + excite(peak))
                gates[b, h, t] = gate
                for c in range(channels.start, channels.stop):
                    pooled[c] = max(gate[l] * z[l, c] for l in range(L))
            projected = p["out_proj.weight"] @ pooled + p["out_proj.bias"]
            out[b, :, t] = (projected - p["out_norm.running_mean"]) / np.sqrt(p["out_norm.running_var"] + eps)
            out[b, :, t] = out[b, :, t] * p["out_norm.weight"] + p["out_norm.bias"]
    return out, gates


@pytest.mark.parametrize("n_heads", [HEADS, 1])
def test_lap_matches_the_formula_loop(n_heads):
    lap = _randomised_lap(n_heads)
    x = torch.randn(B, T, L, D)
    out, gates = lap(x, return_gates=True)
    expected_out, expected_gates = _reference(lap, x.double().numpy())
    np.testing.assert_allclose(out.detach().numpy(), expected_out, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gates.detach().numpy(), expected_gates, rtol=1e-5, atol=1e-6)


def test_gates_shape_and_range():
    lap = LayerAttentivePooling(L, D, OUT, HEADS).eval()
    out, gates = lap(torch.randn(B, T, L, D), return_gates=True)
    assert out.shape == (B, OUT, T)
    assert gates.shape == (B, HEADS, T, L)
    assert bool(((gates > 0) & (gates < 1)).all())


def test_identity_input_projection_with_one_head():
    assert isinstance(LayerAttentivePooling(L, D, OUT, n_heads=1).in_proj, torch.nn.Identity)


def test_heads_must_divide_the_input_width():
    LayerAttentivePooling(L, in_dim=12, out_dim=512, n_heads=12)  # 512 % 12 != 0 is fine: in_dim counts
    with pytest.raises(ValueError, match="in_dim=8"):
        LayerAttentivePooling(L, in_dim=8, out_dim=8, n_heads=3)


def test_wrong_input_shape_is_named():
    with pytest.raises(ValueError, match=r"\[B, T, 5, 8\]"):
        LayerAttentivePooling(L, D, OUT, HEADS)(torch.randn(B, T, L + 1, D))


def test_train_mode_batch_statistics_ignore_padding():
    """Padded batch + lengths == the valid frames of both utterances as one unpadded utterance."""
    torch.manual_seed(1)
    padded_lap = LayerAttentivePooling(L, D, OUT, HEADS, dropout=0.0).train()
    joined_lap = LayerAttentivePooling(L, D, OUT, HEADS, dropout=0.0).train()
    joined_lap.load_state_dict(padded_lap.state_dict())
    lengths = torch.tensor([4, 2])
    x = torch.randn(2, 4, L, D)
    x[1, 2:] = 1e3 * torch.randn(2, L, D)  # garbage padding
    joined = torch.cat([x[0, :4], x[1, :2]])[None]  # [1, 6, L, D]

    out_padded = padded_lap(x, lengths)
    out_joined = joined_lap(joined)
    torch.testing.assert_close(out_padded[0], out_joined[0, :, :4])
    torch.testing.assert_close(out_padded[1, :, :2], out_joined[0, :, 4:])
    for name in ("in_norm", "out_norm"):
        padded_norm, joined_norm = getattr(padded_lap, name), getattr(joined_lap, name)
        torch.testing.assert_close(padded_norm.running_mean, joined_norm.running_mean)
        torch.testing.assert_close(padded_norm.running_var, joined_norm.running_var)


def test_xavier_init_and_zero_biases():
    lap = LayerAttentivePooling(13, 768, 512, 16)
    for bias in (lap.sq_bias, lap.ex_bias, lap.in_proj.bias, lap.out_proj.bias):
        assert not bias.detach().any()
    # Xavier-uniform bound for a 3-D tensor (h, L, L//2): fans use the last dim as receptive field
    bound = (6.0 / (13 * 6 + 16 * 6)) ** 0.5
    largest = float(lap.sq_weight.detach().abs().max())
    assert 0.8 * bound < largest <= bound


def test_input_norm_shares_statistics_across_layers():
    """One set of BN statistics over batch, time and layers (the authors' design)."""
    lap = LayerAttentivePooling(L, D, OUT, HEADS).train()
    x = torch.randn(B, T, L, D) + torch.arange(L, dtype=torch.float32)[:, None]  # layer-dependent offsets
    lap(x)
    expected = lap.in_norm.momentum * x.mean(dim=(0, 1, 2))
    torch.testing.assert_close(lap.in_norm.running_mean, expected)


def test_gate_dropout_draws_the_official_mask():
    """Dropout runs on the official layout [B*T, h, 1, L], so the same RNG state drops the same gates."""
    lap = LayerAttentivePooling(L, D, OUT, HEADS, dropout=0.5).train()
    x = torch.randn(B, T, L, D)
    torch.manual_seed(3)
    _, gates = lap(x, return_gates=True)  # [B, h, T, L]
    torch.manual_seed(3)
    kept = torch.nn.functional.dropout(torch.ones(B * T, HEADS, 1, L), 0.5) > 0  # the official gates' layout
    kept = kept.reshape(B, T, HEADS, L).transpose(1, 2)  # [B, h, T, L]
    assert torch.equal(gates > 0, kept)


def _plain_gated_max(lap: LayerAttentivePooling, x: torch.Tensor, keep: torch.Tensor):
    """Steps 2-4 in plain autograd ops, the official way (per-frame matmuls): ``x[N, L, h, d]`` -> pooled, gates."""
    mean, peak = x.mean(dim=-1).transpose(1, 2), x.max(dim=-1).values.transpose(1, 2)  # [N, h, L]

    def excite(stat):
        hidden = torch.relu(stat.unsqueeze(-2) @ lap.sq_weight + lap.sq_bias)  # [N, h, 1, L//2]
        return (hidden @ lap.ex_weight + lap.ex_bias).squeeze(-2)  # [N, h, L]

    gates = torch.sigmoid(excite(mean) + excite(peak)) * keep  # [N, h, L]
    return (x * gates.transpose(1, 2).unsqueeze(-1)).max(dim=1).values, gates


def test_hand_written_backward_equals_autograd():
    from wespeaker_lap.models.lap import _GatedLayerMax

    lap = _randomised_lap().double()
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(7, L, HEADS, D // HEADS, dtype=torch.double, generator=generator, requires_grad=True)
    keep = (torch.rand(7, HEADS, L, generator=generator, dtype=torch.double) > 0.3).double() / 0.7
    params = [lap.sq_weight, lap.sq_bias, lap.ex_weight, lap.ex_bias]
    pooled, gates = _GatedLayerMax.apply(x, *params, keep)
    expected_pooled, expected_gates = _plain_gated_max(lap, x, keep)
    torch.testing.assert_close(pooled, expected_pooled)
    torch.testing.assert_close(gates, expected_gates)
    probe = torch.randn(pooled.shape, dtype=torch.double, generator=generator)
    got = torch.autograd.grad((pooled * probe).sum(), [x] + params)
    expected = torch.autograd.grad((expected_pooled * probe).sum(), [x] + params)
    for name, a, b in zip(["x", "sq_weight", "sq_bias", "ex_weight", "ex_bias"], got, expected):
        torch.testing.assert_close(a, b, msg=name)
    assert torch.autograd.gradcheck(lambda *t: _GatedLayerMax.apply(*t, keep)[0], (x, *params))
