"""Typed config loading: merging, overrides, and errors that name the file and key."""
import pytest
import yaml

from wespeaker_lap.config import (
    ConfigError,
    ExperimentConfig,
    from_dict,
    load_config,
    save_config,
    to_dict,
)


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_defaults_match_paper_phase1():
    cfg = ExperimentConfig()
    assert cfg.model.backend.name == "lap_astp"
    assert (cfg.loss.scale, cfg.loss.margin, cfg.loss.sub_centers, cfg.loss.top_k) == (30.0, 0.3, 3, 5)
    assert cfg.optim.batch_size == 512 and cfg.data.crop_seconds == 2.0


def test_later_files_and_overrides_win(tmp_path):
    a = write(tmp_path, "a.yaml", {"optim": {"lr": 0.1, "batch_size": 64}, "model": {"upstream": {"name": "x"}}})
    b = write(tmp_path, "b.yaml", {"optim": {"lr": 0.2}})
    cfg = load_config([a, b], ["train.epochs=3", "model.backend.options={n_heads: 8}"])
    assert cfg.optim.lr == 0.2 and cfg.optim.batch_size == 64
    assert cfg.model.upstream.name == "x" and cfg.train.epochs == 3
    assert cfg.model.backend.options == {"n_heads": 8}


def test_unknown_key_names_file_and_key(tmp_path):
    good = write(tmp_path, "good.yaml", {"optim": {"lr": 0.1}})
    bad = write(tmp_path, "bad.yaml", {"optim": {"lrr": 0.1}})
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key optim\.lrr"):
        load_config([good, bad])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=x", "train.epochs: expected an integer"),
        ("train.amp=fp32", "train.amp: 'fp32' is not one of"),
        ("model.upstream.frozen=3", "model.upstream.frozen: expected true or false"),
        ("data.augment.noise_snr=5", "data.augment.noise_snr: expected a list"),
        ("epochs", "expected key=value"),
    ],
)
def test_type_errors_name_the_key(tmp_path, override, message):
    path = write(tmp_path, "c.yaml", {})
    with pytest.raises(ConfigError, match=message):
        load_config(path, [override])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, "c.yaml", {"loss": {"margin": 0.5, "top_k": 0}}))
    save_config(cfg, str(tmp_path / "out" / "config.yaml"))
    again = from_dict(ExperimentConfig, yaml.safe_load((tmp_path / "out" / "config.yaml").read_text()))
    assert again == cfg and to_dict(again)["loss"]["margin"] == 0.5


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
