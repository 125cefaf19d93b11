"""Backends: parameter counts, padding invariance, gradients, the registry's errors."""
import pytest
import torch

from wespeaker_lap.models import BACKENDS, build_backend
from wespeaker_lap.models.astp import AttentiveStatsPooling
from wespeaker_lap.models.common import frame_mask

L, D = 4, 16
TINY_OPTIONS = {
    "lap_astp": {"hidden_dim": 8, "n_heads": 4, "embed_dim": 6},
    "superb_astp": {"embed_dim": 6},
    "superb_ecapa": {"channels": 16, "embed_dim": 6},
    "mhfa": {"head_nb": 3, "compression_dim": 5, "embed_dim": 6},
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


# Backend sizes from the official code (paper.md §1.6), in millions of parameters.
@pytest.mark.parametrize(
    "name, n_layers, in_dim, millions",
    [
        ("lap_astp", 13, 768, 1.71),
        ("lap_astp", 25, 1024, 2.31),
        ("superb_astp", 13, 768, 1.48),
        ("superb_astp", 25, 1024, 2.50),
        ("superb_ecapa", 13, 768, 7.95),
        ("superb_ecapa", 25, 1024, 8.61),
        ("mhfa", 13, 768, 2.30),
        ("mhfa", 25, 1024, 2.37),
    ],
)
def test_parameter_counts_match_the_official_code(name, n_layers, in_dim, millions):
    with torch.device("meta"):
        backend = build_backend(name, n_layers, in_dim)
    count = sum(p.numel() for p in backend.parameters())
    assert abs(count / 1e6 - millions) / millions < 0.01


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_padding_never_changes_an_embedding(name):
    backend = _tiny(name).eval()
    lengths = torch.tensor([20, 13, 6])
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
    embeddings = backend(torch.randn(3, 12, L, D), torch.tensor([12, 9, 5]))
    (embeddings * torch.randn_like(embeddings)).sum().backward()  # a plain sum is constant after a BN
    for param_name, param in backend.named_parameters():
        assert param.grad is not None and bool(param.grad.ne(0).any()), param_name


def test_layer_gates_for_heat_maps():
    backend = _tiny("lap_astp").eval()
    gates = backend.layer_gates(torch.randn(2, 7, L, D))
    assert gates.shape == (2, 4, 7, L)
    assert bool(((gates > 0) & (gates < 1)).all())


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(ValueError, match="lap_astp, superb_astp, superb_ecapa, mhfa"):
        build_backend("lap_ecapa", L, D)


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
        embeddings = backend(torch.randn(3, 12, L, D), torch.tensor([12, 9, 5]))
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
