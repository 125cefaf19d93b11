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


def test_eval_config_checks_keys_and_ranges(tmp_path):
    from wespeaker_lap.config import EvalConfig

    path = write(tmp_path, "eval.yaml", {"cohort": {"top_k": 300}, "extraction": {"mode": "fast"}})
    cfg = load_config(path, ["calibration.trials=500"], cls=EvalConfig)
    assert (cfg.cohort.top_k, cfg.extraction.mode, cfg.calibration.trials) == (300, "fast", 500)
    assert cfg.averaging.num_average is None and cfg.cohort.source == "train"
    for override, message in [("cohort.topk=3", r"eval\.yaml: unknown key cohort\.topk"),
                              ("cohort.top_k=1", "cohort.top_k: must be >= 2"),
                              ("extraction.mode=quick", "extraction.mode: 'quick' is not one of"),
                              ("extraction.max_batch_seconds=0", "extraction.max_batch_seconds: must be > 0"),
                              ("extraction.max_padding=1.5", r"extraction.max_padding: must be in \[0, 1\]"),
                              ("averaging.num_average=0", "averaging.num_average: must be >= 1 or null"),
                              ("report.lists=[a, a]", "report.lists: must be a non-empty list without repeats"),
                              ("report.n_boot=-1", "report.n_boot: must be >= 0"),
                              ("cohort.source=null", "calibration needs AS-Norm scores")]:
        with pytest.raises(ConfigError, match=message):
            load_config(path, [override], cls=EvalConfig)
    assert load_config(path, ["cohort.source=null", "calibration.enabled=false"], cls=EvalConfig).cohort.source is None


def test_retired_sample_rate_key_loads_only_with_its_one_value(tmp_path):
    old = write(tmp_path, "old.yaml", {"data": {"sample_rate": 16000, "crop_seconds": 3.0}})
    assert load_config(old).data.crop_seconds == 3.0  # configs and checkpoints written before its removal
    assert "sample_rate" not in to_dict(from_dict(ExperimentConfig, {"data": {"sample_rate": 16000}}))["data"]
    with pytest.raises(ConfigError, match=r"new\.yaml: data\.sample_rate was removed: audio is always 16 kHz"):
        load_config(write(tmp_path, "new.yaml", {"data": {"sample_rate": 8000}}))
@pytest.mark.parametrize(
    "override, message",
    [
        ("data.crop_seconds=-1", r"data\.crop_seconds: must be > 0, got -1\.0"),
        ("data.crop_seconds=0", r"data\.crop_seconds: must be > 0, got 0\.0"),
        ("data.speed_perturb_prob=1.5", r"data\.speed_perturb_prob: must be in \[0, 1\], got 1\.5"),
        ("data.num_workers=-1", r"data\.num_workers: must be >= 0, got -1"),
        ("data.train_dir=''", r"data\.train_dir: must be a data directory"),
        ("data.augment.prob=7", r"data\.augment\.prob: must be in \[0, 1\], got 7\.0"),
        ("data.augment.prob=-0.1", r"data\.augment\.prob: must be in \[0, 1\]"),
        ("data.augment.noise_snr=[15,0]", r"data\.augment\.noise_snr: expected \[min, max\] dB with min <= max, "
                                          r"got \[15\.0, 0\.0\]"),
        ("data.augment.music_snr=[5]", r"data\.augment\.music_snr: expected \[min, max\]"),
        ("data.augment.babble_snr=[20,13]", r"data\.augment\.babble_snr: expected \[min, max\]"),
        ("data.augment.babble_speakers=[0,3]", r"data\.augment\.babble_speakers: expected \[min, max\] with 1 <= min"),
        ("data.augment.babble_speakers=[7,4]", r"data\.augment\.babble_speakers: expected \[min, max\]"),
        ("data.augment.musan_list=''", r"data\.augment\.musan_list: must be a non-empty path or null"),
        ("loss.scale=0", r"loss\.scale: must be > 0, got 0\.0"),
        ("loss.scale=.inf", r"loss\.scale: must be finite, got inf"),
        ("loss.margin=-0.1", r"loss\.margin: must be in \[0, pi/2\) \(radians\), got -0\.1"),
        ("loss.margin=2", r"loss\.margin: must be in \[0, pi/2\)"),
        ("loss.penalty=-0.06", r"loss\.penalty: must be >= 0, got -0\.06"),
        ("loss.sub_centers=0", r"loss\.sub_centers: must be >= 1, got 0"),
        ("loss.top_k=-1", r"loss\.top_k: must be >= 0, got -1"),
        ("loss.schedule.initial=-1", r"loss\.schedule\.initial: must be in \[0, pi/2\)"),
        ("loss.schedule.start_epoch=-1", r"loss\.schedule\.start_epoch: must be >= 0"),
        ("loss.schedule.ramp_epochs=-2", r"loss\.schedule\.ramp_epochs: must be >= 0"),
        ("optim.lr=.nan", r"optim\.lr: must be finite, got nan"),
        ("optim.weight_decay=-1", r"optim\.weight_decay: must be >= 0"),
        ("train.seed=-1", r"train\.seed: must be >= 0, got -1"),
        ("train.epochs=0", r"train\.epochs: must be >= 1, got 0"),
        ("train.init_from=''", r"train\.init_from: must be a non-empty path or null"),
        ("model.upstream.name=''", r"model\.upstream\.name: must name an s3prl upstream or hf:<id>"),
        ("model.upstream.path=''", r"model\.upstream\.path: must be a non-empty path or null"),
        ("model.backend.name=''", r"model\.backend\.name: must name a backend"),
    ],
)
def test_out_of_range_values_name_file_and_key(tmp_path, override, message):
    path = write(tmp_path, "c.yaml", {})
    with pytest.raises(ConfigError, match=rf"c\.yaml: {message}"):
        load_config(path, [override])


def test_ranges_are_checked_in_the_file_too(tmp_path):
    path = write(tmp_path, "bad.yaml", {"data": {"augment": {"noise_snr": [15, 0]}}})
    with pytest.raises(ConfigError, match=r"bad\.yaml: data\.augment\.noise_snr"):
        load_config(path)


def test_hf_names_take_no_path(tmp_path):
    path = write(tmp_path, "c.yaml", {"model": {"upstream": {"name": "hf:/models/wavlm", "path": "x.pt"}}})
    with pytest.raises(ConfigError, match=r"model\.upstream\.path: hf: names take no path"):
        load_config(path)


def test_boundary_values_are_accepted():
    cfg = from_dict(ExperimentConfig, {"loss": {"margin": 0.0, "penalty": 0.0, "top_k": 0, "sub_centers": 1},
                                       "data": {"speed_perturb_prob": 1.0, "num_workers": 0,
                                                "augment": {"prob": 0.0, "noise_snr": [5, 5]}}})
    assert cfg.loss.margin == 0.0 and cfg.data.augment.noise_snr == [5.0, 5.0]
