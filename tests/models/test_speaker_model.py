"""SpeakerModel on tiny real upstreams with the real backends: shapes, state dicts, save/load."""
import dataclasses

import pytest
import torch

from wespeaker_lap.config import BackendConfig, ModelConfig, UpstreamConfig
from wespeaker_lap.models.speaker_model import build_speaker_model, load_speaker_model, save_speaker_model

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


def _randomise_batchnorm(model):
    """Non-trivial BN statistics, so that a round trip that drops them would show."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)


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


def test_save_load_round_trip_gives_identical_embeddings(tmp_path, tiny_upstreams):
    cfg = _config(tiny_upstreams)
    model = build_speaker_model(cfg)
    _randomise_batchnorm(model)
    model.eval()
    save_speaker_model(tmp_path / "model.pt", model, cfg, n_classes=7, speakers=["a", "b"])
    loaded, blob = load_speaker_model(tmp_path / "model.pt")
    assert not loaded.training
    assert blob["n_classes"] == 7 and blob["speakers"] == ["a", "b"]
    assert torch.equal(loaded(_wavs(), LENS), model(_wavs(), LENS))


def test_fine_tuned_upstream_weights_survive_the_round_trip(tmp_path, tiny_upstreams):
    cfg = _config(tiny_upstreams, frozen=False)
    model = build_speaker_model(cfg)
    with torch.no_grad():  # as if fine-tuned: no longer the checkpoint's weights
        for p in model.upstream.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    save_speaker_model(tmp_path / "model.pt", model, cfg)
    loaded, _ = load_speaker_model(tmp_path / "model.pt")
    assert torch.equal(loaded(_wavs(), LENS), model(_wavs(), LENS))


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


def test_load_errors_name_the_file(tmp_path, tiny_upstreams):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_speaker_model(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="corrupt.pt: not a readable model file"):
        load_speaker_model(corrupt)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match="other.pt: not a speaker model file .no model_config"):
        load_speaker_model(other)
    cfg = _config(tiny_upstreams)
    mismatched = tmp_path / "mismatched.pt"
    save_speaker_model(mismatched, build_speaker_model(cfg), cfg)
    blob = torch.load(mismatched, weights_only=True)
    blob["model_config"]["backend"]["options"] = {"hidden_dim": 8, "n_heads": 4}
    torch.save(blob, mismatched)
    with pytest.raises(ValueError, match="mismatched.pt: weights do not fit"):
        load_speaker_model(mismatched)


def test_save_rejects_reserved_extra_keys(tmp_path, tiny_upstreams):
    cfg = _config(tiny_upstreams)
    with pytest.raises(ValueError, match="reserved"):
        save_speaker_model(tmp_path / "m.pt", build_speaker_model(cfg), cfg, state_dict={})
    assert not (tmp_path / "m.pt").exists()


def test_config_is_saved_as_given(tmp_path, tiny_upstreams):
    cfg = _config(tiny_upstreams)
    save_speaker_model(tmp_path / "m.pt", build_speaker_model(cfg), cfg)
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    assert blob["model_config"] == dataclasses.asdict(cfg)
