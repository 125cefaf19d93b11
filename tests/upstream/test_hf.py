"""The hf: path: model class from the config, same [B, T, L, D] layout, equal to a direct transformers forward."""
import pytest
import torch

from wespeaker_lap.upstream import Upstream
from wespeaker_lap.upstream.hf import conv_output_lengths, receptive_field

LENS = torch.tensor([16000, 9000])


def _wavs(seed: int = 0) -> torch.Tensor:
    wavs = torch.randn(len(LENS), int(LENS.max()), generator=torch.Generator().manual_seed(seed))
    return wavs * (torch.arange(wavs.size(1)) < LENS[:, None])


def _cnn_frames(n: int) -> int:
    return (n - 400) // 320 + 1  # kernel 400 samples, hop 320


def test_shapes_and_frame_lengths(tiny_hf_dir):
    up = Upstream(f"hf:{tiny_hf_dir}")
    hidden, frame_lens = up(_wavs(), LENS)
    assert (up.n_layers, up.hidden_dim, up.downsample_rate) == (3, 32, 320)
    assert hidden.shape == (2, _cnn_frames(16000), 3, 32)
    assert frame_lens.tolist() == [_cnn_frames(n) for n in LENS.tolist()]


def test_matches_a_direct_transformers_forward(tiny_hf_dir):
    from transformers import WavLMModel

    direct = WavLMModel.from_pretrained(tiny_hf_dir).eval()
    wav = _wavs()[:1]
    with torch.no_grad():
        expected = torch.stack(direct(wav, output_hidden_states=True).hidden_states, dim=2)
    hidden, _ = Upstream(f"hf:{tiny_hf_dir}")(wav, LENS[:1])
    assert torch.allclose(hidden, expected, atol=1e-5)


def test_samples_past_the_length_are_ignored(tiny_hf_dir):
    up = Upstream(f"hf:{tiny_hf_dir}")
    garbage = _wavs() + 5.0 * (torch.arange(int(LENS.max())) >= LENS[:, None])
    clean, frame_lens = up(_wavs(), LENS)
    noisy, _ = up(garbage, LENS)
    n = int(frame_lens[1])
    assert torch.allclose(clean[1, :n], noisy[1, :n], atol=1e-5)


@pytest.mark.parametrize("model_type", ["hubert", "wav2vec2"])
def test_model_class_follows_the_config_not_the_name(tmp_path, model_type):
    import transformers

    config_class, model_class = {
        "hubert": (transformers.HubertConfig, transformers.HubertModel),
        "wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model),
    }[model_type]
    config = config_class(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                          conv_dim=(16,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)
    source = tmp_path / "wavlm-named-dir"  # the name must not decide the class
    model_class(config).save_pretrained(source)
    up = Upstream(f"hf:{source}")
    assert type(up.model.model) is model_class
    hidden, _ = up(_wavs(), LENS)
    assert hidden.shape[2:] == (2, 16)


def test_waveform_is_raw_or_normalised_as_the_feature_extractor_says(tmp_path, tiny_hf_dir):
    import shutil

    from transformers import Wav2Vec2FeatureExtractor

    normalised = tmp_path / "normalised"
    shutil.copytree(tiny_hf_dir, normalised)
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(normalised)
    wavs = _wavs()
    for source, waveform, scale_invariant in ((tiny_hf_dir, "checkpoint", False), (normalised, "checkpoint", True),
                                              (normalised, "raw", False)):
        up = Upstream(f"hf:{source}", waveform=waveform)
        unit, frame_lens = up(wavs, LENS)
        scaled, _ = up(3.0 * wavs + 0.5 * (torch.arange(wavs.size(1)) < LENS[:, None]), LENS)
        n = int(frame_lens[1])
        assert torch.allclose(unit[1, :n], scaled[1, :n], atol=1e-4) == scale_invariant, (source, waveform)


def test_frozen_and_fine_tune_modes(tiny_hf_dir):
    frozen = Upstream(f"hf:{tiny_hf_dir}").train()
    assert not frozen.model.model.training and not any(p.requires_grad for p in frozen.parameters())
    tuned = Upstream(f"hf:{tiny_hf_dir}", frozen=False).train()
    config = tuned.model.model.config
    assert config.layerdrop == 0.0 and not config.apply_spec_augment  # ours replace HF's own
    hidden, _ = tuned(_wavs(), LENS)
    hidden.square().mean().backward()
    trainable = {n: p for n, p in tuned.named_parameters() if p.requires_grad}
    assert all(p.grad is not None for p in trainable.values())
    assert any("feature_extractor" in n for n in trainable)
    assert tuned.model.model.masked_spec_embed.requires_grad  # time masking uses it


def test_frame_counts_of_the_standard_cnn():
    kernels, strides = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)
    assert receptive_field(kernels, strides) == 400
    lengths = torch.tensor([100, 400, 719, 720, 16000, 16319, 16320])
    expected = [max(1, _cnn_frames(n)) for n in lengths.tolist()]  # never 0
    assert conv_output_lengths(lengths, kernels, strides).tolist() == expected


def test_utterance_shorter_than_one_frame(tiny_hf_dir):
    hidden, frame_lens = Upstream(f"hf:{tiny_hf_dir}")(torch.randn(1, 300), torch.tensor([300]))
    assert hidden.shape == (1, 1, 3, 32) and frame_lens.tolist() == [1]


def test_path_is_rejected_for_hf_names(tiny_hf_dir):
    with pytest.raises(ValueError, match="no path"):
        Upstream(f"hf:{tiny_hf_dir}", path="x.pt")


def test_a_full_length_batch_skips_the_mask_without_changing_the_result(tiny_hf_dir):
    """Equal-length crops run without an attention mask (no host syncs); the result is the masked one."""
    from transformers import WavLMModel

    direct = WavLMModel.from_pretrained(tiny_hf_dir).eval()
    wavs = _wavs()  # both rows 16000 samples of signal
    with torch.no_grad():
        masked = direct(wavs, attention_mask=torch.ones_like(wavs, dtype=torch.long), output_hidden_states=True)
    hidden, frame_lens = Upstream(f"hf:{tiny_hf_dir}")(wavs, torch.tensor([16000, 16000]))
    assert frame_lens.device.type == "cpu"
    torch.testing.assert_close(hidden, torch.stack(masked.hidden_states, dim=2), rtol=1e-5, atol=1e-5)
