"""Fine-tuning regularisers on the real s3prl and transformers models: masking, LayerDrop, dropouts."""
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from wespeaker_lap.config import FinetuneConfig
from wespeaker_lap.upstream import Upstream, UpstreamError
from wespeaker_lap.upstream.regularizers import OFFICIAL_FINETUNE, official_finetune, span_mask
from wespeaker_lap.upstream.tiny import TINY_FAMILIES

REPO = Path(__file__).resolve().parents[2]
LENS = torch.tensor([16000, 12000])
NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0)
MASK_ONLY = FinetuneConfig(layerdrop=0.0, **NO_DROPOUT)  # default masking: p 0.05, 10 frames, at least 2 spans
LAYERDROP_ONLY = FinetuneConfig(mask_time_prob=0.0, mask_time_min_masks=0, layerdrop=0.5, **NO_DROPOUT)


def _wavs() -> torch.Tensor:
    wavs = torch.randn(len(LENS), int(LENS.max()), generator=torch.Generator().manual_seed(0))
    return wavs * (torch.arange(wavs.size(1)) < LENS[:, None])


def _upstreams(tiny_upstreams, tiny_hf_dir):
    """(name, path) of every tiny checkpoint: the three s3prl families and the HF WavLM."""
    return [(f"{family}_local", str(tiny_upstreams[family])) for family in sorted(TINY_FAMILIES)] + [
        (f"hf:{tiny_hf_dir}", None)]


# ----------------------------------------------------------------------------- span sampling


def test_span_mask_counts_follow_huggingface():
    lengths = torch.tensor([50, 20, 3])
    for seed in range(20):
        torch.manual_seed(seed)
        mask = span_mask(lengths, 50, prob=0.3, span=1, min_spans=2)  # span 1: masked frames = spans
        counts = mask.sum(dim=1).tolist()
        assert counts[0] in (15, 16) and counts[1] in (6, 7) and counts[2] == 2
        assert not bool(mask[1, 20:].any()) and not bool(mask[2, 3:].any())  # never a padded frame


def test_span_mask_spans_are_contiguous_and_fit_the_utterance():
    torch.manual_seed(0)
    lengths = torch.tensor([99, 40, 9])
    for _ in range(50):
        mask = span_mask(lengths, 99, prob=0.05, span=10, min_spans=2)
        for b, n in enumerate(lengths.tolist()):
            row = mask[b].tolist()
            runs = [len(r) for r in "".join("1" if v else "0" for v in row).split("0") if r]
            assert all(r >= 10 for r in runs) and not any(row[n:]), (b, runs)
            assert (sum(row) >= 10) == (n >= 10)  # 9 frames cannot hold a span: nothing masked
    assert not bool(span_mask(lengths, 9, prob=0.5, span=10, min_spans=2).any())  # T < span


def test_span_mask_matches_huggingface_statistics():
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

    np.random.seed(0)
    torch.manual_seed(0)
    lengths, draws = torch.tensor([99, 60]), 3000
    attention = (torch.arange(99) < lengths[:, None]).long()
    ours = np.stack([span_mask(lengths, 99, 0.075, 10, 2).numpy() for _ in range(draws)])
    hf = np.stack([_compute_mask_indices((2, 99), 0.075, 10, attention, min_masks=2) for _ in range(draws)])
    for b in range(2):  # masked frames per utterance: same mean and spread; same per-frame rate
        assert abs(ours[:, b].sum(1).mean() - hf[:, b].sum(1).mean()) < 0.3
        assert abs(ours[:, b].sum(1).std() - hf[:, b].sum(1).std()) < 0.3
        assert np.abs(ours[:, b].mean(0) - hf[:, b].mean(0)).max() < 0.04


# ----------------------------------------------------------------------------- on the models


def test_trainable_upstream_differs_in_train_mode_and_a_frozen_one_never(tiny_upstreams, tiny_hf_dir):
    """Every dropout 0 and no LayerDrop: only the time masking can make train mode differ."""
    for name, path in _upstreams(tiny_upstreams, tiny_hf_dir):
        tuned = Upstream(name, path=path, frozen=False, finetune=MASK_ONLY)
        with torch.no_grad():
            evaluated = tuned.eval()(_wavs(), LENS)[0]
            trained = tuned.train()(_wavs(), LENS)[0]
        assert not torch.equal(trained, evaluated), name
        frozen = Upstream(name, path=path, frozen=True, finetune=MASK_ONLY)
        assert torch.equal(frozen.train()(_wavs(), LENS)[0], frozen.eval()(_wavs(), LENS)[0]), name


def test_masked_frames_are_the_mask_embedding(tiny_upstreams, tiny_hf_dir):
    for name, path in _upstreams(tiny_upstreams, tiny_hf_dir):
        up = Upstream(name, path=path, frozen=False, finetune=MASK_ONLY).train()
        hf = name.startswith("hf:")
        projection = up.model.model.feature_projection if hf else up.model.upstream.model.dropout_input
        seen = []
        projection.register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
        up(_wavs(), LENS)
        embedding = up.regularizers.mask_embedding.detach()
        is_mask = (seen[-1].detach() == embedding).all(dim=-1)  # [B, T]
        frames = is_mask.sum(dim=1)
        assert bool((frames >= 10).all()) and bool((frames < is_mask.shape[1]).all()), (name, frames)
        assert not bool(is_mask[1, 37:].any()), name  # utterance 1 (12,000 samples) has 37 CNN frames


def test_layerdrop_repeats_the_previous_hidden_state(tiny_upstreams, tiny_hf_dir):
    for name, path in _upstreams(tiny_upstreams, tiny_hf_dir):
        up = Upstream(name, path=path, frozen=False, finetune=LAYERDROP_ONLY).train()
        repeated = np.zeros(up.n_layers - 1)
        torch.manual_seed(0)
        with torch.no_grad():
            for _ in range(24):
                hidden, _ = up(_wavs(), LENS)
                assert hidden.shape[2] == up.n_layers  # the stack never shrinks
                repeated += [bool(torch.equal(hidden[:, :, i], hidden[:, :, i + 1])) for i in range(up.n_layers - 1)]
        last_has_norm = name.startswith("wav2vec2")  # pre-LN: the last state is the final LayerNorm's output
        droppable = repeated[:-1] if last_has_norm else repeated
        wavlm = "wavlm" in name
        assert (repeated[0] == 0) if wavlm else (repeated[0] > 0), (name, repeated)  # WavLM's layer 0 always runs
        assert all(3 <= r <= 21 for r in droppable[1 if wavlm else 0:]), (name, repeated)  # p = 0.5 of 24
        up.eval()
        hidden, _ = up(_wavs(), LENS)
        assert not any(torch.equal(hidden[:, :, i], hidden[:, :, i + 1]) for i in range(up.n_layers - 1)), name


def test_dropped_layers_still_get_a_gradient(tiny_upstreams, tiny_hf_dir):
    """DDP without find_unused_parameters needs a gradient (zero is fine) for every trainable weight."""
    always = FinetuneConfig(layerdrop=0.99)
    for name, path in _upstreams(tiny_upstreams, tiny_hf_dir):
        up = Upstream(name, path=path, frozen=False, finetune=always).train()
        up(_wavs(), LENS)[0].square().mean().backward()
        assert all(p.grad is not None for p in up.parameters() if p.requires_grad), name


def test_dropouts_are_set_on_both_paths(tiny_upstreams, tiny_hf_dir):
    settings = FinetuneConfig(hidden_dropout=0.11, attention_dropout=0.22, activation_dropout=0.33,
                              feat_proj_dropout=0.44)
    model = Upstream("wavlm_local", path=str(tiny_upstreams["wavlm"]), frozen=False,
                     finetune=settings).model.upstream.model
    layer = model.encoder.layers[1]
    assert (model.dropout_input.p, model.encoder.dropout) == (0.44, 0.11)
    assert (layer.dropout1.p, layer.dropout2.p, layer.dropout3.p, layer.self_attn.dropout_module.p) == (
        0.11, 0.33, 0.11, 0.22)
    hf = Upstream(f"hf:{tiny_hf_dir}", frozen=False, finetune=settings).model.model
    assert (hf.config.hidden_dropout, hf.config.attention_dropout, hf.config.activation_dropout,
            hf.config.feat_proj_dropout) == (0.11, 0.22, 0.33, 0.44)
    assert hf.feature_projection.dropout.p == 0.44 and hf.encoder.layers[0].feed_forward.intermediate_dropout.p == 0.33


def test_masking_needs_a_mask_embedding(tmp_path):
    import transformers

    config = transformers.WavLMConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                      conv_dim=(16,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                                      mask_time_prob=0.0)  # HF then builds no masked_spec_embed
    transformers.WavLMModel(config).save_pretrained(tmp_path / "no_mask")
    with pytest.raises(UpstreamError, match="no mask embedding.*mask_time_prob=0"):
        Upstream(f"hf:{tmp_path / 'no_mask'}", frozen=False)
    Upstream(f"hf:{tmp_path / 'no_mask'}", frozen=False, finetune=FinetuneConfig(mask_time_prob=0.0,
                                                                                   mask_time_min_masks=0))


@pytest.mark.parametrize("family", ["wav2vec2"])  # the tiny wav2vec 2.0 says normalize: true, like the real one
def test_waveform_raw_or_as_the_checkpoint_says(tiny_upstreams, family):
    wavs, valid = _wavs(), (torch.arange(int(LENS.max())) < LENS[:, None])
    for waveform, scale_invariant in (("raw", False), ("checkpoint", True)):
        up = Upstream(f"{family}_local", path=str(tiny_upstreams[family]), waveform=waveform)
        unit, frame_lens = up(wavs, LENS)
        scaled, _ = up(3.0 * wavs + 0.5 * valid, LENS)
        n = int(frame_lens[1])
        assert torch.allclose(unit[1, :n], scaled[1, :n], atol=1e-4) == scale_invariant, waveform


# ----------------------------------------------------------------------------- the recipe's values


def test_official_values_are_found_by_s3prl_name_and_hub_id():
    assert official_finetune("wavlm_large") == official_finetune("hf:microsoft/wavlm-large")
    assert official_finetune("wavlm_large").mask_time_prob == 0.075
    assert official_finetune("wav2vec2_large_ll60k") is OFFICIAL_FINETUNE["facebook/wav2vec2-large-lv60"]
    assert official_finetune("wavlm_local") is None
    assert FinetuneConfig() == OFFICIAL_FINETUNE["microsoft/wavlm-base-plus"]  # the default upstream's


def test_every_system_config_carries_its_regularisers():
    """Every system config spells out every value, and those of a known checkpoint are the official ones."""
    from wespeaker_lap.config import load_config

    systems = sorted(REPO.glob("egs/*/conf/systems/*.yaml"))
    assert len(systems) >= 13
    for system in systems:
        upstream = yaml.safe_load(system.read_text())["model"]["upstream"]
        assert set(upstream["finetune"]) == set(FinetuneConfig.__dataclass_fields__), system
        assert upstream["waveform"] == "raw", system
        cfg = load_config(str(system)).model.upstream
        official = official_finetune(cfg.name)
        assert official is None or cfg.finetune == official, system
