"""Upstream on s3prl's real loaders and tiny checkpoints: shapes, frozen and fine-tune modes, errors."""
import pytest
import torch
from torch import nn

from wespeaker_lap.config import FinetuneConfig
from wespeaker_lap.upstream import Upstream, UpstreamError
from wespeaker_lap.upstream.tiny import TINY_FAMILIES

FAMILIES = sorted(TINY_FAMILIES)
LENS = torch.tensor([16000, 11000, 700])  # 1 s, 0.69 s, and shorter than s3prl's 800-sample minimum


def _wavs(seed: int = 0) -> torch.Tensor:
    wavs = torch.randn(len(LENS), int(LENS.max()), generator=torch.Generator().manual_seed(seed))
    return wavs * (torch.arange(wavs.size(1)) < LENS[:, None])  # zero padding


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_states_shape_and_frame_lengths(tiny_upstreams, family):
    _, layers, width = TINY_FAMILIES[family]
    up = Upstream(f"{family}_local", path=str(tiny_upstreams[family]))
    hidden, frame_lens = up(_wavs(), LENS)
    n_frames = len(range(0, int(LENS.max()), 320))  # hop 320, last frame repeated by s3prl
    assert (up.n_layers, up.hidden_dim, up.downsample_rate) == (layers + 1, width, 320)
    assert hidden.shape == (len(LENS), n_frames, layers + 1, width)
    assert frame_lens.tolist() == [(n - 1) // 320 + 1 for n in LENS.tolist()]


@pytest.mark.parametrize("family", FAMILIES)
def test_samples_past_the_length_are_ignored(tiny_upstreams, family):
    up = Upstream(f"{family}_local", path=str(tiny_upstreams[family]))
    garbage = _wavs() + 5.0 * (torch.arange(int(LENS.max())) >= LENS[:, None])
    clean_hidden, frame_lens = up(_wavs(), LENS)
    garbage_hidden, _ = up(garbage, LENS)
    for b, n in enumerate(frame_lens.tolist()):
        assert torch.allclose(clean_hidden[b, :n], garbage_hidden[b, :n], atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_upstream_has_no_gradient_and_stays_in_eval_mode(tiny_upstreams, family):
    up = Upstream(f"{family}_local", path=str(tiny_upstreams[family]), frozen=True)
    parent = nn.Sequential(up).train()  # a training loop puts the whole model in train mode
    assert up.training and not any(m.training for m in up.model.modules())
    assert not any(p.requires_grad for p in up.parameters())
    first, _ = up(_wavs(), LENS)
    second, _ = up(_wavs(), LENS)
    assert not first.requires_grad
    assert torch.equal(first, second)  # no dropout
    parent.eval().train()
    assert not any(m.training for m in up.model.modules())


@pytest.mark.parametrize("family", FAMILIES)
def test_fine_tuned_upstream_trains_everything_it_uses(tiny_upstreams, family):
    no_layerdrop = FinetuneConfig(layerdrop=0.0)  # a skipped layer's gradient is zero (but present)
    up = Upstream(f"{family}_local", path=str(tiny_upstreams[family]), frozen=False, finetune=no_layerdrop).train()
    assert all(m.training for m in up.model.modules())
    hidden, _ = up(_wavs(), LENS)
    hidden.square().mean().backward()
    trainable = {n: p for n, p in up.named_parameters() if p.requires_grad}
    without_grad = [n for n, p in trainable.items() if p.grad is None or not p.grad.any()]
    assert not without_grad  # DDP without find_unused_parameters would fail on these
    assert any("feature_extractor.conv_layers.0" in n for n in trainable)  # the CNN trains too
    assert any(n.endswith("mask_emb") for n in trainable)  # time masking uses it
    unmasked = Upstream(f"{family}_local", path=str(tiny_upstreams[family]), frozen=False,
                        finetune=FinetuneConfig(mask_time_prob=0.0, mask_time_min_masks=0))
    frozen = {n for n, p in unmasked.named_parameters() if not p.requires_grad}
    assert any(n.endswith("mask_emb") for n in frozen)  # unused without masking, so frozen


def test_fine_tuned_upstream_in_eval_mode_is_deterministic(tiny_upstreams):
    up = Upstream("wavlm_local", path=str(tiny_upstreams["wavlm"]), frozen=False)
    up.train()
    assert not torch.equal(up(_wavs(), LENS)[0], up(_wavs(), LENS)[0])  # dropout is on when training
    up.eval()
    assert torch.equal(up(_wavs(), LENS)[0], up(_wavs(), LENS)[0])


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="did you mean.*wavlm_base_plus"):
        Upstream("wavlm_bse_plus")


def test_registered_name_rejects_a_path_s3prl_would_ignore(tiny_upstreams):
    with pytest.raises(UpstreamError, match="wavlm_local"):
        Upstream("wavlm_base_plus", path=str(tiny_upstreams["wavlm"]))


def test_local_name_needs_an_existing_checkpoint(tmp_path, tiny_upstreams):
    with pytest.raises(UpstreamError, match="needs a checkpoint path"):
        Upstream("wavlm_local")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        Upstream("wavlm_local", path=str(tmp_path / "missing.pt"))
    with pytest.raises(UpstreamError, match=f"{tiny_upstreams['wavlm']}: could not load as hubert_local"):
        Upstream("hubert_local", path=str(tiny_upstreams["wavlm"]))


def test_forward_checks_input_shapes(tiny_upstreams):
    up = Upstream("wavlm_local", path=str(tiny_upstreams["wavlm"]))
    with pytest.raises(ValueError, match=r"wavs \[B, S\]"):
        up(torch.zeros(2, 1, 1600), torch.tensor([1600, 1600]))


@pytest.mark.parametrize("frozen", [True, False])
def test_building_leaves_the_callers_random_streams_alone(tiny_upstreams, frozen):
    """s3prl's loaders reseed the global RNGs; a model built after ``torch.manual_seed(s)`` must depend on ``s``."""
    import random

    import numpy as np

    def draws(build: bool):
        torch.manual_seed(7), random.seed(7), np.random.seed(7)
        if build:
            Upstream(f"{FAMILIES[0]}_local", path=str(tiny_upstreams[FAMILIES[0]]), frozen=frozen)
        return torch.rand(3).tolist(), random.random(), float(np.random.rand())

    assert draws(build=True) == draws(build=False)
