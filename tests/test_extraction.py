"""Stage 4's shards: a killed or out-of-space extraction resumes, and only with the same settings."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch

from wespeaker_lap.data.kaldi import load_data_dir
from wespeaker_lap.extraction import extract_shard, merge_shards, shard_batches, shard_paths
from wespeaker_lap.inference import Embedder

from tests.extraction_helpers import write_model, write_tone_dir

REPO = Path(__file__).resolve().parents[1]
N_UTTS = 40


def write_data_dir(root: Path, n: int, min_seconds: float, max_seconds: float, seed: int = 0) -> Path:
    """``n`` utterances of 4 speakers, their lengths spread over [min, max] s."""
    rng = np.random.default_rng(seed)
    return write_tone_dir(root, rng.uniform(min_seconds, max_seconds, n), 4, rng)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_data_dir(write_data_dir(tmp_path_factory.mktemp("data"), N_UTTS, 0.3, 2.0))


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, tiny_upstreams):
    root = tmp_path_factory.mktemp("models")
    return [write_model(root / f"model{seed}.pt", tiny_upstreams["wavlm"], seed) for seed in (0, 1)]


@pytest.fixture(scope="module")
def model(model_files):
    from wespeaker_lap.models.model_file import load_speaker_model

    return load_speaker_model(model_files[0])[0]


class ForwardCounter:
    """Counts the utterances the model embeds (a forward pre-hook: the model itself runs)."""

    def __init__(self, model: torch.nn.Module):
        self.utterances = 0
        self.handle = model.register_forward_pre_hook(self._count)

    def _count(self, module, inputs) -> None:
        self.utterances += inputs[0].shape[0]

    def __enter__(self) -> "ForwardCounter":
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def fast(model) -> Embedder:
    """Batches of several utterances (4 s or 6 utterances, at most 30 % padding)."""
    return Embedder(model, "cpu", max_batch_seconds=4.0, max_batch_size=6, max_padding=0.3)


def scp_text(out_dir: Path, rank: int = 0) -> str:
    return shard_paths(out_dir, rank)[1].read_text().replace(str(out_dir), "<out>")


def test_a_damaged_partial_shard_resumes_and_embeds_only_what_is_missing(model, data, tmp_path, caplog):
    """A kill in the middle of a batch: the tail (an entry cut short, an scp line past the ark's end) is dropped,
    the half-written batch embedded again as a whole, and the result equals an uninterrupted run's, byte for byte."""
    embedder = fast(model)
    batches = shard_batches(embedder, data)
    assert max(map(len, batches)) > 2  # the test needs batches of several utterances
    whole, part = tmp_path / "whole", tmp_path / "part"
    extract_shard(embedder, data, whole, num_workers=0)

    extract_shard(embedder, data, part, num_workers=0)
    ark, scp, _ = shard_paths(part, 0)
    lines = scp.read_text().splitlines(keepends=True)
    first_big = next(i for i, batch in enumerate(batches) if len(batch) > 2)
    keep = sum(map(len, batches[:first_big])) + 1  # one entry of a multi-utterance batch survives
    cut = int(lines[keep].rsplit(":", 1)[1]) + 20  # the next entry's data, cut after 20 bytes
    scp.write_text("".join(lines[:keep + 2]))  # ... and an scp line past the ark's end after it
    os.truncate(ark, cut)

    caplog.set_level(logging.INFO)
    with ForwardCounter(model) as counter:
        extract_shard(embedder, data, part, num_workers=0)
    assert f"resuming: {keep} of {N_UTTS} embeddings kept" in caplog.text
    assert counter.utterances == N_UTTS - sum(map(len, batches[:first_big]))  # the broken batch again, then the rest
    assert scp_text(part) == scp_text(whole)
    assert shard_paths(part, 0)[0].read_bytes() == shard_paths(whole, 0)[0].read_bytes()  # each key once, same values

    with ForwardCounter(model) as counter:  # complete: nothing left to embed
        extract_shard(embedder, data, part, num_workers=0)
    assert counter.utterances == 0 and scp_text(part) == scp_text(whole)


def test_a_resumed_shard_with_loader_workers_matches(model, data, tmp_path):
    """The loader's workers and the one-batch pipeline write the same entries as the in-process loader."""
    embedder = fast(model)
    extract_shard(embedder, data, tmp_path / "inline", num_workers=0)
    extract_shard(embedder, data, tmp_path / "workers", num_workers=2)
    assert scp_text(tmp_path / "workers") == scp_text(tmp_path / "inline")
    assert shard_paths(tmp_path / "workers", 0)[0].read_bytes() == shard_paths(tmp_path / "inline", 0)[0].read_bytes()


@pytest.mark.parametrize("change", ["extraction", "model", "world_size", "no signature"])
def test_a_shard_written_with_other_settings_starts_over(model_files, model, data, tmp_path, caplog, change):
    from wespeaker_lap.extraction import model_identity
    from wespeaker_lap.models.model_file import read_model_file

    identity = model_identity(model_files[0], read_model_file(model_files[0]))
    out = tmp_path / "emb"
    extract_shard(Embedder(model, "cpu"), data, out, rank=0, world=1, num_workers=0, identity=identity)
    _, scp, signature = shard_paths(out, 0)
    scp.write_text("".join(scp.read_text().splitlines(keepends=True)[:5]))  # a killed run's shard
    embedder, world = Embedder(model, "cpu"), 1
    if change == "extraction":
        embedder = fast(model)
    elif change == "model":
        identity = model_identity(model_files[1], read_model_file(model_files[1]))
    elif change == "world_size":
        world = 2
    else:
        signature.unlink()
    caplog.set_level(logging.INFO)
    with ForwardCounter(model) as counter:
        extract_shard(embedder, data, out, rank=0, world=world, num_workers=0, identity=identity)
    reason = {"extraction": "it was written with other settings (data, extraction differ)",  # other batches too
              "model": "it was written with other settings (model differ)",
              "world_size": "it was written with other settings (data, world_size differ)",
              "no signature": "it has no signature"}[change]
    assert f"starting this shard over: {reason}" in caplog.text
    expected = sum(map(len, shard_batches(embedder, data, 0, world)))
    assert counter.utterances == expected and len(scp.read_text().splitlines()) == expected


def test_merge_drops_the_shards_of_a_run_with_more_processes(model, data, tmp_path):
    embedder = Embedder(model, "cpu")
    for rank in range(3):
        extract_shard(embedder, data, tmp_path, rank=rank, world=3, num_workers=0)
    for rank in range(2):
        extract_shard(embedder, data, tmp_path, rank=rank, world=2, num_workers=0)
    merged = dict(kaldiio.load_scp(str(merge_shards(data, tmp_path, world=2))))
    assert sorted(merged) == sorted(data.wav_scp)
    assert sorted(p.name for p in tmp_path.glob("xvector.*")) == sorted(
        [f"xvector.{rank}.{ext}" for rank in range(2) for ext in ("ark", "lock", "scp", "signature.json")]
        + ["xvector.scp"])


def test_a_second_extraction_into_a_shard_being_written_stops(model, data, tmp_path):
    import fcntl

    from wespeaker_lap.extraction import ShardBusyError, shard_lock
    from wespeaker_lap.utils.errors import describe

    with shard_lock(tmp_path, 0):  # as a running extraction holds it
        with pytest.raises(ShardBusyError, match=r"xvector.0.lock: another extraction is writing this shard "
                                               rf"\(pid {os.getpid()} on .+\); wait for it") as err:
            extract_shard(Embedder(model, "cpu"), data, tmp_path, num_workers=0)
    assert describe(err.value).startswith(f"{tmp_path}/xvector.0.lock: another extraction")  # one line, no type
    assert not shard_paths(tmp_path, 0)[0].exists()  # nothing was touched
    extract_shard(Embedder(model, "cpu"), data, tmp_path, num_workers=0)  # released: it runs
    with open(tmp_path / "xvector.0.lock") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # and released again at the end


# ----------------------------------------------------------------------------- the real script, killed


def extract_command(model_file: Path, data_dir: Path, out_dir: Path, *overrides: str):
    return [sys.executable, "-m", "wespeaker_lap.bin.extract", "--model", str(model_file), "--data_dir",
            str(data_dir), "--out_dir", str(out_dir), "extraction.num_workers=0", *overrides]


def script_env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def reference_embeddings(model_file: Path, data_dir: Path, out_dir: Path) -> dict:
    subprocess.run(extract_command(model_file, data_dir, out_dir), check=True, env=script_env(), capture_output=True)
    return dict(kaldiio.load_scp(str(out_dir / "xvector.scp")))


@pytest.mark.slow
def test_a_killed_extraction_resumes_its_shard(model_files, tmp_path):
    """SIGKILL ``bin.extract`` once its first entries are on disk; the same command then embeds only the rest."""
    data_dir = write_data_dir(tmp_path / "data", 150, 2.0, 4.0, seed=1)
    reference = reference_embeddings(model_files[0], data_dir, tmp_path / "reference")
    out = tmp_path / "emb"
    scp = shard_paths(out, 0)[1]
    proc = subprocess.Popen(extract_command(model_files[0], data_dir, out), env=script_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if scp.is_file() and len(scp.read_bytes().splitlines()) >= 10:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the extraction ended before it could be killed"
    kept = len(scp.read_bytes().splitlines())
    assert 10 <= kept < 150 and not (out / "xvector.scp").exists()

    run = subprocess.run(extract_command(model_files[0], data_dir, out), env=script_env(), capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"resuming: {kept} of 150 embeddings kept" in (out / "log" / "extract.0.log").read_text()
    resumed = dict(kaldiio.load_scp(str(out / "xvector.scp")))
    assert sorted(resumed) == sorted(reference)
    for key, vector in reference.items():
        np.testing.assert_array_equal(resumed[key], vector)
    assert len(list(kaldiio.load_ark(str(shard_paths(out, 0)[0])))) == 150  # no key embedded twice
    assert scp_text(out) == scp_text(tmp_path / "reference")


# ----------------------------------------------------------------------------- a full disk

FULL_DISK = r"""
import subprocess, sys
from wespeaker_lap.bin.extract import main
from wespeaker_lap.utils.errors import run_main
mount, args = sys.argv[1], sys.argv[2:]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", mount], check=True)
print("FIRST", run_main(main, args, prog="extract"), flush=True)
subprocess.run(["mount", "-o", "remount,size=4m", mount], check=True)  # space freed
print("SECOND", run_main(main, args, prog="extract"), flush=True)
print("LOG", open(mount + "/emb/log/extract.0.log").read().count("resuming: "), flush=True)
subprocess.run(["cp", "-r", mount + "/emb", mount + "/../copy"], check=True)  # the mount ends with this process
"""


@pytest.mark.slow
def test_a_full_disk_names_the_shard_and_the_shard_resumes(model_files, tmp_path):
    """A real ENOSPC: a 32 kB tmpfs in a private mount namespace (skipped where that is not allowed)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare not available")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a mount namespace here: {probe.stderr.decode().strip()}")
    data_dir = write_data_dir(tmp_path / "data", 80, 0.3, 1.0, seed=2)
    reference = reference_embeddings(model_files[0], data_dir, tmp_path / "reference")
    mount = tmp_path / "small"
    mount.mkdir()
    args = extract_command(model_files[0], data_dir, mount / "emb")[3:]
    proc = subprocess.run(["unshare", "-rm", sys.executable, "-c", FULL_DISK, str(mount), *args], env=script_env(),
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "mount" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FIRST 1" in proc.stdout and "SECOND 0" in proc.stdout and "LOG 1" in proc.stdout
    error = [line for line in proc.stderr.splitlines() if line.startswith("extract: error:")]
    assert error == [f"extract: error: {mount}/emb/xvector.0.ark: no space left on device while writing it"]
    copy = tmp_path / "copy"
    resumed = {key: kaldiio.load_mat(spec.replace(str(mount / "emb"), str(copy)))
               for key, spec in (line.split() for line in (copy / "xvector.scp").read_text().splitlines())}
    assert sorted(resumed) == sorted(reference)
    for key, vector in reference.items():
        np.testing.assert_array_equal(resumed[key], vector)
    assert len(list(kaldiio.load_ark(str(copy / "xvector.0.ark")))) == 80
