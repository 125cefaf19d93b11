"""Backends: the composed grid, parameter counts, padding invariance, gradients, the registry's errors."""
import pytest
import torch
from torch.nn import functional as F

from wespeaker_lap.models import BACKENDS, backend_options, build_backend
from wespeaker_lap.models.astp import AttentiveStatsPooling
from wespeaker_lap.models.common import frame_mask

L, D = 4, 16
LAP = {"hidden_dim": 8, "n_heads": 4}
ECAPA = {"channels": 16, "embed_dim": 6}
XVECTOR = {"channels": 8, "stats_channels": 10, "embed_dim": 6}
MHFA = {"head_nb": 3, "compression_dim": 5, "embed_dim": 6}
TINY_OPTIONS = {
    "lap_astp": {**LAP, "embed_dim": 6},
    "lap_ecapa": {**LAP, **ECAPA},
    "lap_xvector": {**LAP, **XVECTOR},
    "lap_mhfa": {**LAP, **MHFA},
    "superb_astp": {"embed_dim": 6},
    "superb_ecapa": ECAPA,
    "superb_xvector": XVECTOR,
    "superb_mhfa": MHFA,
    "mhfa": MHFA,
}


def _tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    backend = build_backend(name, L, D, **TINY_OPTIONS[name])
    with torch.no_grad():  # non-trivial BN statistics for the eval-mode tests
        for module in backend.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    return backend


def test_every_backend_has_tiny_options():
    assert set(TINY_OPTIONS) == set(BACKENDS)


# Parameter counts of the official modules (counted on them by benchmarks/check_official_parity.py).
OFFICIAL_COUNTS = {
    "lap_astp": (1_714_480, 2_312_464),
    "lap_ecapa": (8_286_320, 8_884_304),
    "lap_xvector": (6_713_220, 7_311_204),
    "lap_mhfa": (4_216_352, 5_412_320),
    "superb_astp": (1_480_141, 2_497_625),
    "superb_ecapa": (7_952_013, 8_607_385),
    "superb_xvector": (6_378_913, 7_034_285),
    "superb_mhfa": (2_302_554, 2_368_114),
    "mhfa": (2_302_554, 2_368_114),
}


def test_the_grid_is_every_aggregation_with_every_network():
    assert set(BACKENDS) == {f"{a}_{n}" for a in ("lap", "superb") for n in ("astp", "ecapa", "xvector", "mhfa")} | {
        "mhfa"}
    assert set(OFFICIAL_COUNTS) == set(BACKENDS)


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_parameter_counts_match_the_official_code(name):
    for (n_layers, in_dim), expected in zip(((13, 768), (25, 1024)), OFFICIAL_COUNTS[name]):
        with torch.device("meta"):
            backend = build_backend(name, n_layers, in_dim)
        assert sum(p.numel() for p in backend.parameters()) == expected, (name, n_layers)


def test_parts_are_named_after_the_grid():
    lap_xvector = build_backend("lap_xvector", L, D, **TINY_OPTIONS["lap_xvector"])
    assert {k.split(".")[0] for k in lap_xvector.state_dict()} == {"lap", "xvector"}
    assert {k.split(".")[0] for k in build_backend("superb_ecapa", L, D).state_dict()} == {"superb", "ecapa"}
    alias, full = build_backend("mhfa", L, D), build_backend("superb_mhfa", L, D)
    assert alias.state_dict().keys() == full.state_dict().keys()
    assert type(build_backend("lap_mhfa", L, D).key_layers).__name__ == "LayerAttentivePooling"


def test_options_are_those_of_both_parts():
    assert backend_options("lap_ecapa") == {"hidden_dim": 512, "n_heads": 16, "dropout": 0.1, "channels": 512,
                                            "embed_dim": 192}
    assert backend_options("superb_xvector") == {"channels": 512, "stats_channels": 1500, "embed_dim": 512}
    assert backend_options("mhfa") == {"head_nb": 64, "compression_dim": 128, "embed_dim": 256}
    astp = build_backend("lap_astp", L, D, hidden_dim=8, n_heads=4, dropout=0.3)
    assert astp.lap.gate_dropout.p == 0.3 and astp.astp.dropout == 0.3  # one dropout for LAP and ASTP


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_padding_never_changes_an_embedding(name):
    backend = _tiny(name).eval()
    lengths = torch.tensor([20, 13, 7])  # 7: the shortest an x-vector takes
    x = torch.randn(3, 20, L, D)
    for b, length in enumerate(lengths.tolist()):
        x[b, length:] = 1e3 * torch.randn(20 - length, L, D)  # garbage padding
    with torch.no_grad():
        padded = backend(x, lengths)
        assert padded.shape == (3, backend.embed_dim)
        for b, length in enumerate(lengths.tolist()):
            alone = backend(x[b : b + 1, :length])
            torch.testing.assert_close(padded[b], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_gradients_reach_every_parameter(name):
    backend = _tiny(name).train()
    embeddings = backend(torch.randn(3, 12, L, D), torch.tensor([12, 9, 7]))
    (embeddings * torch.randn_like(embeddings)).sum().backward()  # a plain sum is constant after a BN
    for param_name, param in backend.named_parameters():
        assert param.grad is not None and bool(param.grad.ne(0).any()), param_name


@pytest.mark.parametrize("name", ["lap_astp", "lap_ecapa", "lap_xvector"])
def test_layer_gates_for_heat_maps(name):
    backend = _tiny(name).eval()
    gates = backend.layer_gates(torch.randn(2, 7, L, D))
    assert gates.shape == (2, 4, 7, L)
    assert bool(((gates > 0) & (gates < 1)).all())


def test_only_lap_backends_have_layer_gates():
    assert not hasattr(_tiny("superb_astp"), "layer_gates")


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(ValueError, match="lap_astp, lap_ecapa, lap_xvector, lap_mhfa, superb_astp"):
        build_backend("lap_tdnn", L, D)


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown option n_head;.*n_heads=16"):
        build_backend("lap_astp", L, D, n_head=4)


def test_option_of_the_wrong_type_is_named():
    with pytest.raises(ValueError, match="option n_heads: expected int"):
        build_backend("lap_astp", L, D, n_heads="4")


def test_heads_must_divide_the_input_width():
    with pytest.raises(ValueError, match="n_heads=5"):
        build_backend("lap_astp", L, D, n_heads=5)


def test_lengths_outside_the_padded_length_are_rejected():
    backend = _tiny("superb_astp").eval()
    with pytest.raises(ValueError, match="lengths must lie in 1..5"):
        backend(torch.randn(2, 5, L, D), torch.tensor([5, 6]))


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_bf16_autocast_with_padding(name):
    backend = _tiny(name).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embeddings = backend(torch.randn(3, 12, L, D), torch.tensor([12, 9, 7]))
    (embeddings.float() * torch.randn(embeddings.shape)).sum().backward()
    assert bool(torch.isfinite(embeddings).all())
    assert all(bool(torch.isfinite(p.grad).all()) for p in backend.parameters())


def test_astp_frame_dropout_keeps_valid_frames_only():
    torch.manual_seed(0)
    astp = AttentiveStatsPooling(4, 3, dropout=0.3).train()
    x = torch.randn(2000, 4, 50)
    mask = frame_mask(torch.randint(1, 51, (2000,)), 50)
    keep = astp._keep_frames(mask, x)  # [B, T], shared by all channels
    assert not bool((keep & ~mask).any())  # never a padded frame
    assert bool(keep.any(dim=1).all())  # every utterance keeps at least one frame
    assert keep.sum().item() / mask.sum().item() == pytest.approx(0.7, abs=0.01)
    assert bool(astp.eval()._keep_frames(mask, x).eq(mask).all())  # no dropout in eval mode


def _reference_astp(astp: AttentiveStatsPooling, x: torch.Tensor, one_frame: bool = False) -> torch.Tensor:
    """The official eval-mode computation: context from ``torch.std`` (unbiased, no floor; 0 for one frame)."""
    std = torch.zeros_like(x[..., :1]) if one_frame else x.std(-1, keepdim=True)
    context = torch.cat([x, x.mean(-1, keepdim=True).expand_as(x), std.expand_as(x)], dim=1)
    scores = astp.attn_out(astp.attn_norm(F.relu(astp.attn_in(context))))
    alpha = torch.softmax(scores, dim=-1)
    mean = (alpha * x).sum(-1)
    std = ((alpha * x.pow(2)).sum(-1) - mean.pow(2)).clamp(min=1e-4).sqrt()
    return astp.embed_norm(astp.embed(astp.pool_norm(torch.cat([mean, std], dim=1))))


def test_astp_context_std_is_unbiased_without_a_floor():
    torch.manual_seed(0)
    astp = AttentiveStatsPooling(6, 4).eval()
    for scale in (1.0, 1e-4):  # 1e-4: a context variance far below the old 1e-4 floor
        x = scale * torch.randn(3, 6, 5)
        with torch.no_grad():
            torch.testing.assert_close(astp(x), _reference_astp(astp, x), rtol=1e-5, atol=1e-6)
            padded = torch.cat([x, torch.randn(3, 6, 4)], dim=-1)  # the mask reproduces it on padded input
            torch.testing.assert_close(astp(padded, torch.tensor([5, 5, 5])), astp(x), rtol=1e-5, atol=1e-6)


def test_one_frame_utterance_has_zero_context_std_and_finite_gradients():
    torch.manual_seed(0)
    astp = AttentiveStatsPooling(6, 4, dropout=0.0).train()
    x = torch.randn(3, 6, 5, requires_grad=True)
    out = astp(x, torch.tensor([5, 1, 3]))
    (out * torch.randn_like(out)).sum().backward()
    assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(x.grad).all())
    astp.eval()
    with torch.no_grad():
        alone = astp(x[1:2, :, :1])
        torch.testing.assert_close(alone, _reference_astp(astp, x[1:2, :, :1], one_frame=True))
        torch.testing.assert_close(astp(x, torch.tensor([5, 1, 3]))[1], alone[0], rtol=1e-5, atol=1e-6)


def test_xvector_feeds_the_loss_through_its_training_projection():
    backend = _tiny("superb_xvector")
    captured = []
    backend.xvector.embed.register_forward_hook(lambda module, args, out: captured.append(out))
    x, lengths = torch.randn(3, 12, L, D), torch.tensor([12, 9, 7])
    with torch.no_grad():
        trained = backend.train()(x, lengths)
        torch.testing.assert_close(trained, backend.xvector.loss_projection(captured[-1]))
        embedded = backend.eval()(x, lengths)
        torch.testing.assert_close(embedded, captured[-1])
    assert embedded.shape == trained.shape == (3, 6)


def test_xvector_needs_seven_frames():
    backend = _tiny("lap_xvector").eval()
    with pytest.raises(ValueError, match="at least 7 frames"):
        backend(torch.randn(1, 6, L, D))
    with pytest.raises(ValueError, match="at least 7 valid frames per utterance, got 6"):
        backend(torch.randn(2, 9, L, D), torch.tensor([9, 6]))


@pytest.mark.parametrize("name", ["superb_astp", "superb_ecapa", "superb_xvector", "mhfa"])
def test_host_lengths_drive_masks_on_the_models_device(name):
    """``Upstream`` returns lengths on the CPU; every mask must be built on the features' device.

    The meta device stands in for a GPU (LAP's fused kernels do not run on it): a CPU tensor meeting
    a meta one fails exactly as it would meet a CUDA one.
    """
    with torch.device("meta"):
        backend = _tiny(name).eval()
    x, lengths = torch.empty(2, 12, L, D, device="meta"), torch.tensor([12, 9])
    assert backend(x, lengths).device.type == "meta"
