"""SpeakerModel on tiny real upstreams with the real backends: shapes, state dicts, gates."""
import pytest
import torch

from wespeaker_lap.config import BackendConfig, ModelConfig, UpstreamConfig
from wespeaker_lap.models.speaker_model import build_speaker_model

LAP_OPTIONS = {"hidden_dim": 16, "n_heads": 4}
LENS = torch.tensor([8000, 5000])


def _wavs() -> torch.Tensor:
    wavs = torch.randn(len(LENS), int(LENS.max()), generator=torch.Generator().manual_seed(0))
    return wavs * (torch.arange(wavs.size(1)) < LENS[:, None])


def _config(tiny_upstreams, family="wavlm", frozen=True, backend="lap_astp", options=None) -> ModelConfig:
    return ModelConfig(
        upstream=UpstreamConfig(name=f"{family}_local", path=str(tiny_upstreams[family]), frozen=frozen),
        backend=BackendConfig(name=backend, options=LAP_OPTIONS if options is None else options),
    )


@pytest.mark.parametrize("family", ["wavlm", "hubert", "wav2vec2"])
def test_waveform_to_embedding(tiny_upstreams, family):
    model = build_speaker_model(_config(tiny_upstreams, family)).eval()
    assert model.embed_dim == 192
    emb = model(_wavs(), LENS)
    assert emb.shape == (2, 192) and torch.isfinite(emb).all()


def test_frozen_upstream_stays_in_eval_mode_and_out_of_the_state_dict(tiny_upstreams):
    model = build_speaker_model(_config(tiny_upstreams)).train()
    assert model.backend.training and not model.upstream.model.training
    state = model.model_state_dict()
    assert state and all(k.startswith("backend.") for k in state)
    tuned = build_speaker_model(_config(tiny_upstreams, frozen=False))
    assert any(k.startswith("upstream.") for k in tuned.model_state_dict())


def test_backend_gets_gradients_through_a_frozen_upstream(tiny_upstreams):
    model = build_speaker_model(_config(tiny_upstreams)).train()
    model(_wavs(), LENS).square().sum().backward()
    assert all(p.grad is not None for p in model.backend.parameters())
    assert all(p.grad is None for p in model.upstream.parameters())


def test_load_model_state_dict_is_strict_on_the_backend(tiny_upstreams):
    model = build_speaker_model(_config(tiny_upstreams))
    state = model.model_state_dict()
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_model_state_dict({k: v for k, v in list(state.items())[1:]})
    with pytest.raises(KeyError, match="head.weight"):
        model.load_model_state_dict({**state, "head.weight": torch.zeros(1)})


def test_layer_gates_come_from_a_lap_backend(tiny_upstreams):
    model = build_speaker_model(_config(tiny_upstreams)).eval()
    gates = model.layer_gates(_wavs(), LENS)
    assert gates.shape == (2, LAP_OPTIONS["n_heads"], 25, 4)  # [B, heads, T, L]: 0.5 s, 3 layers + CNN
    superb = build_speaker_model(_config(tiny_upstreams, backend="superb_astp", options={"embed_dim": 8}))
    with pytest.raises(ValueError, match="no layer gates"):
        superb.layer_gates(_wavs(), LENS)
