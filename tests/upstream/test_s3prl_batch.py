"""The sync-free batched s3prl forward equals s3prl's own per-utterance forward, padded or not."""
import pytest
import torch

from wespeaker_lap.upstream import Upstream
from wespeaker_lap.upstream import s3prl_batch
from wespeaker_lap.upstream.tiny import TINY_FAMILIES

FAMILIES = sorted(TINY_FAMILIES)
BATCHES = {
    "equal": [12000, 12000, 12000],
    "padded": [16000, 11000, 700],  # one shorter than s3prl's 800-sample minimum
    "all_short": [700, 500],  # the whole batch is padded to 800 samples, counted as signal
}


def _s3prl_model(tiny_upstreams, family):
    return Upstream(f"{family}_local", path=str(tiny_upstreams[family])).model.eval()


def _wavs(lens):
    wavs = torch.randn(len(lens), max(lens), generator=torch.Generator().manual_seed(len(lens)))
    return wavs + 3.0 * (torch.arange(max(lens)) >= torch.tensor(lens)[:, None])  # garbage past the lengths


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("family", FAMILIES)
def test_batched_forward_equals_s3prl(tiny_upstreams, family, batch, normalize):
    model = _s3prl_model(tiny_upstreams, family)
    expert = model.upstream
    flag_owner = expert if hasattr(expert, "wav_normalize") else getattr(expert, "task_cfg", None) or expert.cfg
    setattr(flag_owner, "wav_normalize" if flag_owner is expert else "normalize", normalize)
    assert s3prl_batch.batched_forward_unsupported(model) is None
    lens = BATCHES[batch]
    wavs = _wavs(lens)
    with torch.no_grad():
        expected, expected_lens = model(wavs, torch.tensor(lens))
        got, got_lens = s3prl_batch.hidden_states(model, wavs, lens)
    assert got_lens == expected_lens[0].tolist()
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_unsupported_expert_options_fall_back_to_s3prl(tiny_upstreams):
    model = _s3prl_model(tiny_upstreams, "wav2vec2")
    model.upstream.numpy_wav_normalize = True
    assert "numpy_wav_normalize" in s3prl_batch.batched_forward_unsupported(model)


def test_upstream_returns_host_lengths(tiny_upstreams):
    up = Upstream("wavlm_local", path=str(tiny_upstreams["wavlm"]))
    _, frame_lens = up(_wavs([16000, 9000]), torch.tensor([16000, 9000]))
    assert frame_lens.device.type == "cpu" and frame_lens.tolist() == [50, 29]
