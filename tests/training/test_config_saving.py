"""``config.yaml`` is written only once the run is set up; a failing start leaves a good one alone."""
from __future__ import annotations

import subprocess

import yaml

from .training_helpers import REPO, run_in_process, tiny_config, train_command, train_env, write_config


def run_train(config, exp_dir, *extra):
    return subprocess.run(train_command(config, exp_dir, extra=list(extra)), cwd=REPO, env=train_env(),
                          capture_output=True, text=True, timeout=300)


def error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.startswith("train: error:")]


def test_an_out_of_range_value_stops_before_anything_is_written(tmp_path, tiny_train_dir, tiny_upstreams):
    config = write_config(tmp_path / "c.yaml", tiny_config(tiny_train_dir, tiny_upstreams["wavlm"]))
    proc = run_train(config, tmp_path / "exp", "loss.scale=0")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert error_lines(proc) == [f"train: error: {config}: loss.scale: must be > 0, got 0.0"]
    assert not (tmp_path / "exp").exists()


def test_a_failed_allow_config_change_run_keeps_the_good_config(tmp_path, tiny_train_dir, tiny_upstreams,
                                                               in_process_torch):
    cfg = tiny_config(tiny_train_dir, tiny_upstreams["wavlm"], train={"epochs": 1, "save_every_steps": 0})
    exp_dir = tmp_path / "exp"
    run_in_process(cfg, exp_dir)  # a finished run with checkpoints
    good = (exp_dir / "config.yaml").read_text()
    config = write_config(tmp_path / "c.yaml", cfg)
    proc = run_train(config, exp_dir, "--allow_config_change", "model.backend.options.bogus=1", "optim.lr=0.01")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = error_lines(proc)
    assert "ValueError: backend 'lap_astp': unknown option bogus" in line
    assert (exp_dir / "config.yaml").read_text() == good  # model setup failed: the old config stays
    assert yaml.safe_load(good)["optim"]["lr"] == cfg["optim"]["lr"]
