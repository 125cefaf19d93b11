"""Model files: the round trip, the optional training extras, errors naming the file, and the recorded
identity of the upstream checkpoint (a swapped checkpoint is refused unless allowed)."""
import dataclasses
import logging
import shutil

import pytest
import torch

from wespeaker_lap.config import BackendConfig, ModelConfig, UpstreamConfig
from wespeaker_lap.models.model_file import (
    TrainingExtras,
    UpstreamMismatchError,
    load_speaker_model,
    read_model_file,
    save_speaker_model,
)
from wespeaker_lap.models.speaker_model import build_speaker_model
from wespeaker_lap.upstream.identity import file_digest, upstream_identity

LENS = torch.tensor([8000, 5000])


def _wavs() -> torch.Tensor:
    wavs = torch.randn(len(LENS), int(LENS.max()), generator=torch.Generator().manual_seed(0))
    return wavs * (torch.arange(wavs.size(1)) < LENS[:, None])


def _config(path, frozen=True) -> ModelConfig:
    return ModelConfig(upstream=UpstreamConfig(name="wavlm_local", path=str(path), frozen=frozen),
                       backend=BackendConfig(name="lap_astp", options={"hidden_dim": 16, "n_heads": 4}))


def _extras() -> TrainingExtras:
    head = {"weight": torch.arange(12.0).reshape(3, 4)}
    return TrainingExtras(loss_head=head, n_classes=3, speakers=["a", "b", "c"],
                          train_config={"train": {"epochs": 1}}, averaged_checkpoints=["epoch_0001_step_00000002.pt"])


def _randomise_batchnorm(model):
    """Non-trivial BN statistics, so that a round trip that drops them would show."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)


def test_round_trip_gives_identical_embeddings_and_keeps_the_extras(tmp_path, tiny_upstreams):
    cfg = _config(tiny_upstreams["wavlm"])
    model = build_speaker_model(cfg)
    _randomise_batchnorm(model)
    model.eval()
    save_speaker_model(tmp_path / "model.pt", model, cfg, training=_extras())
    loaded, model_file = load_speaker_model(tmp_path / "model.pt")
    assert not loaded.training and torch.equal(loaded(_wavs(), LENS), model(_wavs(), LENS))
    assert model_file.model_config == cfg and model_file.sample_rate == 16000
    assert model_file.training.speakers == ["a", "b", "c"] and model_file.training.n_classes == 3
    assert torch.equal(model_file.training.loss_head["weight"], _extras().loss_head["weight"])
    assert model_file.training.averaged_checkpoints == ["epoch_0001_step_00000002.pt"]
    blob = torch.load(tmp_path / "model.pt", weights_only=True)  # plain data: loads without pickled code
    assert blob["model_config"] == dataclasses.asdict(cfg) and blob["format_version"] == 1
    assert blob["upstream_identity"] == upstream_identity(cfg.upstream)
    assert blob["upstream_identity"]["size"] == tiny_upstreams["wavlm"].stat().st_size


def test_inference_file_has_no_training_extras(tmp_path, tiny_upstreams):
    cfg = _config(tiny_upstreams["wavlm"])
    save_speaker_model(tmp_path / "m.pt", build_speaker_model(cfg), cfg)
    assert read_model_file(tmp_path / "m.pt").training is None
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    assert not {"loss_head", "n_classes", "speakers"} & set(blob)


def test_fine_tuned_upstream_weights_survive_the_round_trip(tmp_path, tiny_upstreams):
    cfg = _config(tiny_upstreams["wavlm"], frozen=False)
    model = build_speaker_model(cfg)
    with torch.no_grad():  # as if fine-tuned: no longer the checkpoint's weights
        for p in model.upstream.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    save_speaker_model(tmp_path / "model.pt", model, cfg)
    loaded, _ = load_speaker_model(tmp_path / "model.pt")
    assert torch.equal(loaded(_wavs(), LENS), model(_wavs(), LENS))


def test_a_swapped_upstream_checkpoint_is_refused_unless_allowed(tmp_path, tiny_upstreams, other_tiny_upstreams,
                                                                 caplog):
    upstream = tmp_path / "wavlm.pt"
    shutil.copy(tiny_upstreams["wavlm"], upstream)
    cfg = _config(upstream)
    model = build_speaker_model(cfg).eval()
    save_speaker_model(tmp_path / "model.pt", model, cfg)
    expected = model(_wavs(), LENS)

    shutil.copy(tiny_upstreams["wavlm"], tmp_path / "moved.pt")  # same bytes elsewhere: fine
    upstream.unlink()
    (tmp_path / "moved.pt").rename(upstream)
    assert torch.equal(load_speaker_model(tmp_path / "model.pt")[0](_wavs(), LENS), expected)

    other = other_tiny_upstreams["wavlm"]
    assert other.stat().st_size == upstream.stat().st_size and other.read_bytes() != upstream.read_bytes()
    shutil.copy(other, upstream)  # another checkpoint of the same size under the same name
    with pytest.raises(UpstreamMismatchError, match=r"model\.pt: upstream mismatch \(the content differs\): the model "
                       r"was trained with wavlm_local from .*wavlm\.pt .*--allow_upstream_mismatch"):
        load_speaker_model(tmp_path / "model.pt")
    with caplog.at_level(logging.WARNING):
        swapped, _ = load_speaker_model(tmp_path / "model.pt", allow_upstream_mismatch=True)
    assert "going on (--allow_upstream_mismatch)" in caplog.text
    assert not torch.allclose(swapped(_wavs(), LENS), expected)  # what the check protects against

    shutil.copy(tiny_upstreams["hubert"], upstream)  # another size: named as such
    with pytest.raises(UpstreamMismatchError, match=r"the size differs"):
        load_speaker_model(tmp_path / "model.pt")


def test_an_older_file_without_identity_loads_with_a_warning(tmp_path, tiny_upstreams, caplog):
    cfg = _config(tiny_upstreams["wavlm"])
    model = build_speaker_model(cfg).eval()
    torch.save({"model_config": dataclasses.asdict(cfg), "state_dict": model.model_state_dict()}, tmp_path / "old.pt")
    with caplog.at_level(logging.WARNING):
        loaded, model_file = load_speaker_model(tmp_path / "old.pt")
    assert model_file.upstream_identity is None and "records no upstream identity" in caplog.text
    assert torch.equal(loaded(_wavs(), LENS), model(_wavs(), LENS))


def test_sampled_digest_reads_little_but_tells_same_size_files_apart(tmp_path):
    size = 40 << 20  # past the whole-file limit (16 MiB): 256 sampled blocks
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    generator = torch.Generator().manual_seed(0)
    a.write_bytes(torch.randint(0, 256, (size,), dtype=torch.uint8, generator=generator).numpy().tobytes())
    b.write_bytes(torch.randint(0, 256, (size,), dtype=torch.uint8, generator=generator).numpy().tobytes())
    assert file_digest(a).startswith("sha256-sampled-v1:") and file_digest(a) == file_digest(a)
    assert file_digest(a) != file_digest(b)
    data = bytearray(a.read_bytes())
    data[-1] ^= 0xFF  # the last block is always sampled
    b.write_bytes(bytes(data))
    assert file_digest(a) != file_digest(b)


def test_hf_directory_identity_covers_config_and_weights(tmp_path, tiny_hf_dir):
    folder = tmp_path / "hf"
    shutil.copytree(tiny_hf_dir, folder)
    cfg = UpstreamConfig(name=f"hf:{folder}")
    before = upstream_identity(cfg)
    assert before["file"] == str(folder) and before["size"] == sum(p.stat().st_size for p in folder.iterdir())
    config = folder / "config.json"
    config.write_text(config.read_text().replace('"layer_norm_eps": 1e-05', '"layer_norm_eps": 1e-06'))
    assert upstream_identity(cfg)["digest"] != before["digest"]


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
    cfg = _config(tiny_upstreams["wavlm"])
    mismatched = tmp_path / "mismatched.pt"
    save_speaker_model(mismatched, build_speaker_model(cfg), cfg)
    blob = torch.load(mismatched, weights_only=True)
    blob["model_config"]["backend"]["options"] = {"hidden_dim": 8, "n_heads": 4}
    torch.save(blob, mismatched)
    with pytest.raises(ValueError, match="mismatched.pt: weights do not fit"):
        load_speaker_model(mismatched)
    for key, value, message in [("sample_rate", 8000, "takes 8000 Hz audio"), ("format_version", 99, "is newer"),
                                ("loss_head", {}, "incomplete training extras")]:
        torch.save({**blob, key: value}, mismatched)
        with pytest.raises(ValueError, match=f"mismatched.pt: .*{message}"):
            read_model_file(mismatched)


def test_registered_name_identity_is_the_s3prl_cache_file(tmp_path, tiny_upstreams, other_tiny_upstreams,
                                                          monkeypatch):
    import socket

    from wespeaker_lap.upstream import cache_file, stage_weights

    with socket.socket() as sock:  # no download of the real WavLM Base+: every proxy is a closed port
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
        monkeypatch.setenv(var, closed)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)

    cache = tmp_path / "cache"
    staged = stage_weights("wavlm_base_plus", tiny_upstreams["wavlm"], cache)  # offline stand-in for WavLM Base+
    cfg = ModelConfig(upstream=UpstreamConfig(name="wavlm_base_plus", cache_dir=str(cache)),
                      backend=BackendConfig(name="lap_astp", options={"hidden_dim": 16, "n_heads": 4}))
    save_speaker_model(tmp_path / "model.pt", build_speaker_model(cfg), cfg)
    recorded = read_model_file(tmp_path / "model.pt").upstream_identity
    assert recorded["file"] == str(cache_file("wavlm_base_plus", cache)) == str(staged)
    shutil.copy(other_tiny_upstreams["wavlm"], staged)  # re-staged from another file
    with pytest.raises(UpstreamMismatchError, match=r"wavlm_base_plus from .*wavlm_base_plus\.pt"):
        load_speaker_model(tmp_path / "model.pt")
    staged.unlink()  # gone: the upstream's own loader names the missing file
    with pytest.raises(FileNotFoundError, match="weights not cached"):
        load_speaker_model(tmp_path / "model.pt")
