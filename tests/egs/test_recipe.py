"""The shared recipe script: option parsing, hooks and loud failures (no training here)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_recipe(recipe: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "egs" / recipe / "run.sh"), *args],
                          capture_output=True, text=True, timeout=120)


def test_help_lists_systems():
    out = run_recipe("voxceleb", "--help")
    assert out.returncode == 0
    for system in ("lap_wavlm_base_plus", "lap_wavlm_large", "superb_ecapa_wavlm_large", "mhfa_wavlm_large"):
        assert system in out.stdout


def test_unknown_option_is_an_error():
    out = run_recipe("voxceleb", "--stgae", "3")
    assert out.returncode != 0 and "unknown option --stgae" in out.stderr


def test_unknown_system_is_an_error():
    out = run_recipe("voxceleb", "--system", "nope", "--stage", "7")
    assert out.returncode != 0 and "no system config conf/systems/nope.yaml" in out.stderr


def test_missing_archives_stop_stage_one(tmp_path):
    out = run_recipe("voxceleb", "--stage", "1", "--stop_stage", "1", "--archive_dir", str(tmp_path / "none"),
                     "--force", "true")
    assert out.returncode != 0
    assert f"archive folder {tmp_path / 'none'} not found" in out.stderr and "vox2_dev_aac" in out.stderr


def test_mini_rejects_a_non_local_upstream():
    out = run_recipe("mini", "--upstream", "wavlm_large", "--stage", "7")
    assert out.returncode != 0 and "--upstream must be wavlm_local, hubert_local or wav2vec2_local" in out.stderr


def test_every_system_config_is_valid():
    from wespeaker_lap.config import load_config
    from wespeaker_lap.models import backend_options

    for recipe in ("voxceleb", "mini"):
        conf = REPO / "egs" / recipe / "conf"
        for phase in sorted(conf.glob("phase*.yaml")):
            for system in sorted((conf / "systems").glob("*.yaml")):
                cfg = load_config([str(phase), str(system)])
                assert set(cfg.model.backend.options) <= set(backend_options(cfg.model.backend.name)), system


def test_eval_configs_are_valid_and_hold_every_evaluation_setting():
    from wespeaker_lap.config import EvalConfig, load_config

    top_k = {"voxceleb": 600, "mini": 20}
    mode = {"voxceleb": "auto", "mini": "exact"}  # VoxCeleb: fast on GPUs; mini: equal to load_model everywhere
    for recipe in ("voxceleb", "mini"):
        conf = REPO / "egs" / recipe / "conf"
        cfg = load_config(str(conf / "eval.yaml"), cls=EvalConfig)
        assert cfg.cohort.top_k == top_k[recipe] and cfg.extraction.mode == mode[recipe]
        settings = (conf / "recipe.sh").read_text()
        for gone in ("num_average=", "top_k=", "calib_trials=", "extract_batch_seconds="):
            assert gone not in settings, (recipe, gone)


def test_exp_dir_follows_the_chosen_system(tmp_path):
    """``--system`` without ``--exp_dir`` writes to exp/<system> (stage 4 fails at once: nothing trained)."""
    out = run_recipe("voxceleb", "--system", "lap_wavlm_large", "--stage", "4", "--stop_stage", "4",
                     "--force", "true")
    assert out.returncode != 0 and "exp/lap_wavlm_large/phase3_lmft" in out.stdout + out.stderr


def test_node_options_are_checked_and_the_rendezvous_id_defaults_to_the_slurm_job():
    out = run_recipe("voxceleb", "--num_nodes", "2", "--stage", "7")
    assert out.returncode != 0 and "--num_nodes 2 needs --rdzv_id ID" in out.stderr
    out = run_recipe("voxceleb", "--num_nodes", "2", "--node_rank", "2", "--rdzv_id", "j", "--stage", "7")
    assert out.returncode != 0 and "--node_rank must be in 0..1 (--num_nodes 2), got 2" in out.stderr
    for bad in (("--num_nodes", "0"), ("--node_rank", "-1"), ("--node_rank", "one")):
        out = run_recipe("voxceleb", *bad, "--stage", "7")
        assert out.returncode != 0 and "must be a positive and --node_rank a non-negative integer" in out.stderr
    out = subprocess.run(["bash", str(REPO / "egs" / "voxceleb" / "run.sh"), "--num_nodes", "2", "--node_rank", "1",
                          "--gpus", "", "--stage", "7"], env={**os.environ, "SLURM_JOB_ID": "77"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("run.sh: node 1 of 2 (rendezvous localhost:29400, job 77), 1 processes per node")
