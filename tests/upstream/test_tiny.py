"""tools/make_tiny_upstream.py: small, deterministic checkpoints in the formats s3prl expects."""
import torch

from wespeaker_lap.upstream.tiny import write_tiny_upstreams

FORMAT_KEYS = {
    "wavlm": {"cfg", "model"},
    "hubert": {"task_cfg", "model_cfg", "model_weight", "dictionaries_symbols"},
    "wav2vec2": {"task_cfg", "model_cfg", "model_weight"},
}
WEIGHTS_KEY = {"wavlm": "model", "hubert": "model_weight", "wav2vec2": "model_weight"}


def _weights(path, family):
    return torch.load(path, map_location="cpu", weights_only=True)[WEIGHTS_KEY[family]]


def test_files_are_small_and_in_s3prl_formats(tiny_upstreams):
    assert set(tiny_upstreams) == set(FORMAT_KEYS)
    for family, path in tiny_upstreams.items():
        assert path.stat().st_size < 1_000_000, path
        assert set(torch.load(path, map_location="cpu", weights_only=True)) == FORMAT_KEYS[family]


def test_hf_directory_is_small(tiny_hf_dir):
    assert (tiny_hf_dir / "config.json").is_file()
    assert sum(f.stat().st_size for f in tiny_hf_dir.iterdir()) < 1_000_000


def test_weights_depend_only_on_the_seed(tmp_path, tiny_upstreams):
    again = write_tiny_upstreams(tmp_path / "same", seed=0)
    other = write_tiny_upstreams(tmp_path / "other", seed=1)
    for family, path in tiny_upstreams.items():
        reference = _weights(path, family)
        same, different = _weights(again[family], family), _weights(other[family], family)
        assert all(torch.equal(reference[k], same[k]) for k in reference), family
        assert not all(torch.equal(reference[k], different[k]) for k in reference), family


def test_wider_sizes_load_with_their_widths(tmp_path):
    from wespeaker_lap.upstream import Upstream
    from wespeaker_lap.upstream.tiny import TINY_FAMILIES

    paths = write_tiny_upstreams(tmp_path, seed=0, conv_channels=64, width_scale=2)
    up = Upstream("wavlm_local", path=str(paths["wavlm"]))
    name, layers, width = TINY_FAMILIES["wavlm"]
    assert (up.n_layers, up.hidden_dim) == (layers + 1, 2 * width)
    hidden, lens = up(torch.randn(1, 16000), torch.tensor([16000]))
    assert hidden.shape == (1, 50, layers + 1, 2 * width) and lens.tolist() == [50]
    cnn = torch.load(paths["wavlm"], weights_only=True)["model"]["feature_extractor.conv_layers.0.0.weight"]
    assert cnn.shape[0] == 64
