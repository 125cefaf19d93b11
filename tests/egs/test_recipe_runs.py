"""run.sh itself on a tiny mini corpus: several nodes, settings-aware stages, a path with a space.

Everything runs from a copy of the repository under ``.../my repo/`` (its data, tiny upstreams and
experiments then all have a space in their paths). Stages 1-2 make a corpus of 6 speakers x 4
utterances once; stages 3-4 train one short phase and extract the training set (evaluation set
too, to save a launch), as one node with 2 processes
(``exp/lap_tiny``, the default directory) and, at the same time, as 2 nodes with 1 process each
(``exp/two nodes``): two run.sh processes on localhost, c10d rendezvous, gloo.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Dict, List

import kaldiio
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
CORPUS = ["--n_speakers", "6", "--n_test_speakers", "2", "--n_utts", "4"]
TRAIN_OVERRIDES = "train.epochs=1 optim.batch_size=8 train.num_average=1 data.num_workers=0"
# one phase; the training set is also the evaluation set, so stage 4 extracts one set (with the mean)
FAST = ["--phases", "phase1_frozen", "--eval_set", "train", "--train_overrides", TRAIN_OVERRIDES,
        "--eval_overrides", "extraction.num_workers=0"]
STAGES_3_4 = ["--stage", "3", "--stop_stage", "4", *FAST]
JOB = "recipe-test"
TORCHRUN_SHIM = """#!/usr/bin/env bash
# Records each launch's options, then runs the real torchrun.
echo "$*" >> "$TORCHRUN_LOG"
exec python -m torch.distributed.run "$@"
"""


def _copy_ignore(directory: str, names: List[str]) -> List[str]:
    """Leave out caches, and what a recipe wrote into the source tree (egs/<recipe>/{data,exp,...})."""
    skip = {"__pycache__", ".pytest_cache"}
    if Path(directory).parent.name == "egs":
        skip |= {"data", "exp", "tiny_upstream", "s3prl_cache"}
    return [n for n in names if n in skip or n.endswith(".pyc")]


class Recipe:
    """A copy of the repository whose egs/mini/run.sh the tests drive."""

    def __init__(self, root: Path, shim_dir: Path):
        self.root, self.mini, self.shim_dir = root, root / "egs" / "mini", shim_dir

    def env(self, torchrun_log: Path | None = None) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WESPEAKER_LAP_", "SLURM_"))}
        env.update(OMP_NUM_THREADS="1", PYTHONPATH="", PATH=f"{self.shim_dir}{os.pathsep}{env['PATH']}",
                   TORCHRUN_LOG=str(torchrun_log or os.devnull))
        return env

    def command(self, *args: str) -> List[str]:
        return ["bash", str(self.mini / "run.sh"), *args]

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), env=self.env(), capture_output=True, text=True, timeout=timeout)

    def start(self, log: Path, *args: str) -> subprocess.Popen:
        with open(log, "w") as out:
            return subprocess.Popen(self.command(*args), env=self.env(log.with_suffix(".torchrun")), stdout=out,
                                    stderr=subprocess.STDOUT, text=True)


def _check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _wait_all(procs: Dict[str, subprocess.Popen], logs: Dict[str, Path], timeout: float = 600) -> None:
    for name, proc in procs.items():
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in procs.values():
                other.kill()
            raise
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{logs[name].read_text()[-4000:]}"


@pytest.fixture(scope="module")
def recipe(tts_available, tmp_path_factory) -> Recipe:
    base = tmp_path_factory.mktemp("recipe")
    root = base / "my repo"
    for name in ("wespeaker_lap", "tools", "egs"):
        shutil.copytree(REPO / name, root / name, symlinks=True, ignore=_copy_ignore)
    shim_dir = base / "shims"
    shim_dir.mkdir()
    (shim_dir / "torchrun").write_text(TORCHRUN_SHIM)
    (shim_dir / "torchrun").chmod(0o755)
    recipe = Recipe(root, shim_dir)
    _check(recipe.run("--stage", "1", "--stop_stage", "2", *CORPUS))
    return recipe


@pytest.fixture(scope="module")
def runs(recipe, tmp_path_factory) -> Dict[str, Path]:
    """Stages 3-4 as 1 node x 2 processes and, at the same time, as 2 nodes x 1 process; their console logs."""
    logs_dir = tmp_path_factory.mktemp("logs")
    two_nodes = [*STAGES_3_4, "--exp_dir", "exp/two nodes", "--cpu_procs", "1", "--num_nodes", "2",
                 "--rdzv_endpoint", f"localhost:{_free_port()}", "--rdzv_id", JOB]
    logs = {name: logs_dir / f"{name}.log" for name in ("one_node", "node0", "node1")}
    procs = {"one_node": recipe.start(logs["one_node"], *STAGES_3_4, "--cpu_procs", "2"),
             "node0": recipe.start(logs["node0"], *two_nodes, "--node_rank", "0"),
             "node1": recipe.start(logs["node1"], *two_nodes, "--node_rank", "1")}
    _wait_all(procs, logs)
    return logs


def _embeddings(scp: Path) -> Dict[str, np.ndarray]:
    return dict(kaldiio.load_scp(str(scp)))


def _mtimes(directory: Path) -> Dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in directory.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_two_nodes_train_and_extract_exactly_what_one_node_does(recipe, runs, monkeypatch):
    monkeypatch.chdir(recipe.mini)  # the scp files name their arks relative to the recipe
    one, two = recipe.mini / "exp" / "lap_tiny", recipe.mini / "exp" / "two nodes"
    a, b = (torch.load(d / "final_model.pt", weights_only=True) for d in (one, two))
    assert a["state_dict"].keys() == b["state_dict"].keys() and a["loss_head"].keys() == b["loss_head"].keys()
    for part in ("state_dict", "loss_head"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key} differs between 1 x 2 and 2 x 1 processes"
    for dset, n_utts in (("train", 16),):
        emb_one, emb_two = (_embeddings(d / "embeddings" / dset / "xvector.scp") for d in (one, two))
        assert len(emb_one) == n_utts and emb_one.keys() == emb_two.keys()
        for key, value in emb_one.items():
            assert np.array_equal(value, emb_two[key]), f"{dset} {key}"
    means = [np.load(d / "embeddings" / "train_mean.npy") for d in (one, two)]
    assert np.array_equal(*means)


@pytest.mark.slow
def test_node0_alone_runs_the_single_process_steps_and_each_launch_has_its_own_rendezvous(recipe, runs):
    node0, node1 = runs["node0"].read_text(), runs["node1"].read_text()
    averaged = "averaged epoch_0001_step_00000002.pt into exp/two nodes/final_model.pt"
    assert averaged in node0 and averaged not in node1
    for step, sentinel in (("stage 3 phase1_frozen", "phase1_frozen/.done"), ("stage 4 averaging", ".done_average"),
                           ("stage 4", ".done_extract")):
        assert f"{step}: node 1 waits for node 0 (exp/two nodes/{sentinel})" in node1
        assert f"{step}: node 0 is done" in node1 and "waits for node 0" not in node0
        record = json.loads((recipe.mini / "exp" / "two nodes" / sentinel).read_text())
        assert record["job"] == JOB and record["what"] == step
    assert "stage 4 wrote exp/two nodes/final_model.pt, exp/two nodes/embeddings" in node1
    ids = {}
    for node in ("node0", "node1"):
        launches = runs[node].with_suffix(".torchrun").read_text().splitlines()
        ids[node] = [next(w.split("=", 1)[1] for w in line.split() if w.startswith("--rdzv_id=")) for line in launches]
        assert all("--nnodes=2" in line and "--rdzv_backend=c10d" in line for line in launches)
    assert ids["node0"] == ids["node1"] == [f"{JOB}-stage3-phase1_frozen", f"{JOB}-stage4-train"]


@pytest.mark.slow
def test_stages_print_banners_and_a_second_run_skips_every_stage(recipe, runs):
    first = runs["one_node"].read_text()
    for line in ("==== stage 3 phase1_frozen: training -> exp/lap_tiny/phase1_frozen",
                 "---- stage 3 phase1_frozen wrote exp/lap_tiny/phase1_frozen/final_model.pt",
                 "==== stage 4: averaging the last checkpoints of phase1_frozen, extracting embeddings -> exp/lap_tiny",
                 "---- stage 4 wrote exp/lap_tiny/final_model.pt, exp/lap_tiny/embeddings"):
        assert line in first
    exp = recipe.mini / "exp" / "lap_tiny"
    before = _mtimes(exp)
    again = _check(recipe.run(*STAGES_3_4, "--cpu_procs", "2"))
    assert again.stdout.splitlines() == ["stage 3 phase1_frozen: already done", "stage 4: already done"]
    assert _mtimes(exp) == before
    record = json.loads((exp / ".done_extract").read_text())
    model_sha = record["notes"]["final_model_sha256"]
    assert len(model_sha) == 64 and record["after"]["stage 3 phase1_frozen"] == json.loads(
        (exp / "phase1_frozen" / ".done").read_text())["run_id"]


def _assert_stops(proc: subprocess.CompletedProcess, *phrases: str) -> None:
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    for phrase in phrases:
        assert phrase in proc.stderr, proc.stderr


@pytest.mark.slow
def test_another_upstream_in_the_same_exp_dir_stops_naming_the_change(recipe, runs):
    exp = recipe.mini / "exp" / "lap_tiny"
    before = _mtimes(exp)
    proc = recipe.run(*STAGES_3_4, "--upstream", "hubert_local", "--exp_dir", "exp/lap_tiny")
    _assert_stops(proc, "run.sh: stage 3 phase1_frozen was done with other settings; "
                        "use --force true to redo it, or another --exp_dir:",
                  "  upstream=wavlm_local, now hubert_local", '  model.upstream.name="wavlm_local", now "hubert_local"')
    assert "====" not in proc.stdout  # nothing started
    # from stage 4 on, the finished stage 3 is checked too: the model was trained on the other upstream
    proc = recipe.run("--stage", "4", "--stop_stage", "6", *FAST, "--upstream", "hubert_local",
                      "--exp_dir", "exp/lap_tiny")
    _assert_stops(proc, "stage 3 phase1_frozen was done with other settings; run from that stage with --force true",
                  "upstream=wavlm_local, now hubert_local")
    assert _mtimes(exp) == before


@pytest.mark.slow
def test_another_upstream_without_exp_dir_is_a_new_experiment(recipe, runs):
    exp = recipe.mini / "exp" / "lap_tiny"
    before = _mtimes(exp)
    proc = _check(recipe.run("--stage", "3", "--stop_stage", "3", *FAST, "--upstream", "hubert_local"))
    new = recipe.mini / "exp" / "lap_tiny_hubert_local"
    assert "==== stage 3 phase1_frozen: training -> exp/lap_tiny_hubert_local/phase1_frozen" in proc.stdout
    record = json.loads((new / "phase1_frozen" / ".done").read_text())
    assert record["settings"]["upstream"] == "hubert_local"
    assert record["settings"]["model.upstream.path"].endswith('/my repo/egs/mini/tiny_upstream/hubert.pt"')
    model = torch.load(new / "phase1_frozen" / "final_model.pt", weights_only=True)
    assert model["upstream_identity"]["name"] == "hubert_local"
    assert _mtimes(exp) == before


@pytest.mark.slow
def test_other_overrides_stop_naming_them(recipe, runs):
    exp = recipe.mini / "exp" / "lap_tiny"
    before = _mtimes(exp)
    other = TRAIN_OVERRIDES.replace("train.epochs=1", "train.epochs=2")
    proc = recipe.run("--stage", "3", "--stop_stage", "4", "--phases", "phase1_frozen", "--train_overrides", other)
    _assert_stops(proc, f"  train_overrides={TRAIN_OVERRIDES}, now {other}", "  train.epochs=1, now 2")
    proc = recipe.run(*STAGES_3_4[:-1], "extraction.num_workers=0 extraction.mode=fast")
    _assert_stops(proc, 'run.sh: stage 4 was done with extraction.mode="exact", now "fast"; use --force true')
    assert "stage 3 phase1_frozen: already done" in proc.stdout
    assert _mtimes(exp) == before


@pytest.mark.slow
def test_a_failing_node0_stops_the_other_nodes_and_a_missing_one_times_out(recipe, tmp_path):
    """Nothing is trained in exp/untrained: node 0's averaging fails; node 1, waiting for it, stops too."""
    nodes = ["--stage", "4", "--stop_stage", "4", *FAST, "--exp_dir", "exp/untrained", "--num_nodes", "2",
             "--cpu_procs", "1", "--rdzv_endpoint", f"localhost:{_free_port()}", "--rdzv_id", "failing-job"]
    logs = {rank: tmp_path / f"node{rank}.log" for rank in (0, 1)}
    procs = {rank: recipe.start(logs[rank], *nodes, "--node_rank", str(rank)) for rank in (0, 1)}
    for proc in procs.values():
        proc.wait(timeout=300)
    assert procs[0].returncode == 1 and "average_model: error:" in logs[0].read_text()
    assert procs[1].returncode == 1
    node1 = logs[1].read_text()
    assert "stage 4 averaging: node 1 waits for node 0" in node1
    assert "stage 4 averaging: node 0 failed (stage 4 exited with status 1" in node1 and "node 1 stops too" in node1
    proc = recipe.run(*nodes[:-2], "--rdzv_id", "nobody-job", "--node_rank", "1", "--node_wait_timeout", "2")
    _assert_stops(proc, "stage 4 averaging: node 1 waited 2 s for node 0 to write exp/untrained/.done_average",
                  "is node 0 running with --rdzv_id nobody-job?")


@pytest.mark.slow
def test_help_and_option_errors_from_a_path_with_a_space(recipe):
    proc = _check(recipe.run("--help"))
    assert "lap_tiny" in proc.stdout and "--node_rank R" in proc.stdout
    proc = recipe.run("--stgae", "3")
    assert proc.returncode == 1 and "unknown option --stgae" in proc.stderr
    proc = recipe.run("--num_nodes", "2", "--stage", "7")
    assert proc.returncode == 1 and "--num_nodes 2 needs --rdzv_id ID" in proc.stderr
    proc = recipe.run("--train_overrides", "train.init_from='/a b", "--stage", "3")
    assert proc.returncode == 1 and "--train_overrides: No closing quotation" in proc.stderr


SRUN_SHIM = """#!/usr/bin/env bash
# srun for one task per node: runs the command once per node, in turn, with that node's SLURM_NODEID.
while [ "${1#-}" != "$1" ]; do shift; done
for ((node = 0; node < SLURM_NNODES; node++)); do SLURM_NODEID=$node "$@" || exit; done
"""
SCONTROL_SHIM = """#!/usr/bin/env bash
[ "$1 $2" = "show hostnames" ] && [ "$3" = "gpu[07-08]" ] && printf 'gpu07\\ngpu08\\n'
"""


def _slurm_run(recipe: Recipe, shims: Path, *args: str) -> subprocess.CompletedProcess:
    for name, text in (("srun", SRUN_SHIM), ("scontrol", SCONTROL_SHIM)):
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    env = {**recipe.env(), "SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    env["PATH"] = f"{shims}{os.pathsep}{env['PATH']}"
    return subprocess.run(["bash", "local/slurm.sbatch", *args], cwd=recipe.root / "egs" / "voxceleb", env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_slurm_example_gives_each_node_its_rank_and_the_first_host_as_endpoint(recipe, tmp_path):
    proc = _check(_slurm_run(recipe, tmp_path, "--stage", "7", "--gpus", ""))  # --stage 7: the setup only
    assert proc.stdout.splitlines() == [
        "slurm.sbatch: job 4242 on 2 nodes (gpu[07-08]), rendezvous gpu07:29400",
        "run.sh: node 0 of 2 (rendezvous gpu07:29400, job slurm-4242), 1 processes per node, "
        "experiment exp/lap_wavlm_base_plus",
        "run.sh: node 1 of 2 (rendezvous gpu07:29400, job slurm-4242), 1 processes per node, "
        "experiment exp/lap_wavlm_base_plus"]
