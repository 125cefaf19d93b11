"""Extraction to ark/scp, the inference API and the CLI agree on every embedding."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch

from wespeaker_lap import cli
from wespeaker_lap.config import ExtractionConfig
from wespeaker_lap.data.kaldi import DataError, load_data_dir, write_map
from wespeaker_lap.extraction import extract_shard, merge_shards, write_training_stats
from wespeaker_lap.inference import Embedder, load_model, plan_batches

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A Kaldi dir of 6 utterances (3 speakers) of different lengths."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    wav_scp, utt2spk, utt2dur = {}, {}, {}
    for i, seconds in enumerate([1.0, 2.5, 1.7, 3.1, 0.6, 2.0]):
        key, spk = f"spk{i % 3}/utt{i}", f"spk{i % 3}"
        t = np.arange(int(seconds * 16000)) / 16000
        wav = 0.3 * np.sin(2 * np.pi * (150 + 70 * i) * t) + 0.05 * rng.standard_normal(len(t))
        path = root / f"utt{i}.wav"
        sf.write(path, wav.astype(np.float32), 16000, subtype="PCM_16")
        wav_scp[key], utt2spk[key], utt2dur[key] = str(path), spk, len(t) / 16000
    write_map(root / "wav.scp", wav_scp)
    write_map(root / "utt2spk", utt2spk)
    write_map(root / "utt2dur", utt2dur)
    return root


@pytest.fixture(scope="module")
def exp_dir(tmp_path_factory, tiny_upstreams, data_dir):
    """An experiment dir whose ``final_model.pt`` comes from a short run of the real trainer on ``data_dir``."""
    from wespeaker_lap.config import ExperimentConfig, from_dict
    from wespeaker_lap.training.distributed import DistContext
    from wespeaker_lap.training.trainer import Trainer

    exp = tmp_path_factory.mktemp("exp")
    cfg = from_dict(ExperimentConfig, {
        "model": {"upstream": {"name": "wavlm_local", "path": str(tiny_upstreams["wavlm"])},
                  "backend": {"name": "lap_astp", "options": {"hidden_dim": 32, "n_heads": 4}}},
        "data": {"train_dir": str(data_dir), "crop_seconds": 0.5, "speed_perturb_prob": 0.0,
                 "augment": {"prob": 0.0}, "num_workers": 0},
        "optim": {"batch_size": 3, "lr": 1e-2, "min_lr": 1e-3},
        "train": {"epochs": 3, "num_average": 2, "save_every_steps": 0},
    })
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(cfg, exp, DistContext(0, 0, 1, torch.device("cpu"))).run()
    finally:
        torch.set_num_threads(threads)
    assert (exp / "final_model.pt").is_file()
    return exp


def test_plan_batches_covers_every_item_within_limits():
    lengths = [5, 9, 1, 9, 3, 7, 2, 8]
    batches = plan_batches(lengths, max_batch_samples=20, max_batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3 and max(lengths[i] for i in batch) * len(batch) <= 20
    assert [lengths[b[0]] for b in batches] == sorted((lengths[b[0]] for b in batches), reverse=True)
    capped = plan_batches(lengths, max_batch_samples=100, max_batch_size=8, max_padding=0.25)
    assert sorted(i for b in capped for i in b) == list(range(len(lengths)))
    assert all(min(lengths[i] for i in b) >= 0.75 * lengths[b[0]] for b in capped)  # at most 25 % of a row padded
    assert [[lengths[i] for i in b] for b in capped] == [[9, 9, 8, 7], [5], [3], [2], [1]]


def extract(exp_dir, data_dir, out_dir, max_batch_seconds=0.0):
    from wespeaker_lap.models import load_speaker_model

    model, _ = load_speaker_model(exp_dir / "final_model.pt")
    data = load_data_dir(data_dir)
    extract_shard(Embedder(model, "cpu", max_batch_seconds), data, out_dir, num_workers=0)
    return merge_shards(data, out_dir, world=1)


def test_api_equals_ark_and_training_stats(exp_dir, data_dir, tmp_path):
    scp = extract(exp_dir, data_dir, tmp_path / "emb")
    ark = dict(kaldiio.load_scp(str(scp)))
    data = load_data_dir(data_dir)
    assert sorted(ark) == sorted(data.wav_scp)
    api = load_model(exp_dir)
    for key, path in data.wav_scp.items():
        np.testing.assert_array_equal(api.embed(path), ark[key])
        wav, _ = sf.read(path, dtype="float32")
        np.testing.assert_array_equal(api.embed(wav), ark[key])  # array input is preprocessed identically

    write_training_stats(data, scp, tmp_path / "mean.npy", tmp_path / "emb")
    matrix = np.stack([ark[k] for k in sorted(ark)])
    np.testing.assert_allclose(np.load(tmp_path / "mean.npy"), matrix.mean(0), rtol=1e-5, atol=1e-6)
    spk_means = dict(kaldiio.load_scp(str(tmp_path / "emb" / "spk_xvector.scp")))
    for spk, utts in data.spk2utt.items():
        np.testing.assert_allclose(spk_means[spk], np.mean([ark[u] for u in utts], 0), rtol=1e-5, atol=1e-6)


def test_extraction_is_deterministic_and_batching_stays_close(exp_dir, data_dir, tmp_path):
    first = dict(kaldiio.load_scp(str(extract(exp_dir, data_dir, tmp_path / "a"))))
    again = dict(kaldiio.load_scp(str(extract(exp_dir, data_dir, tmp_path / "b"))))
    batched = dict(kaldiio.load_scp(str(extract(exp_dir, data_dir, tmp_path / "c", max_batch_seconds=10))))
    keys = sorted(first)
    for key in keys:
        np.testing.assert_array_equal(first[key], again[key])
    # Padding shifts the upstream's normalisation statistics, so batched embeddings differ a little,
    # but each stays nearest to its own utterance's exact embedding (the batch order is restored).
    exact = np.stack([first[k] / np.linalg.norm(first[k]) for k in keys])
    near = np.stack([batched[k] / np.linalg.norm(batched[k]) for k in keys])
    cos = near @ exact.T  # [N, N]
    np.testing.assert_array_equal(cos.argmax(axis=1), np.arange(len(keys)))


def test_missing_embedding_fails_extraction(exp_dir, data_dir, tmp_path):
    extract(exp_dir, data_dir, tmp_path)
    scp = tmp_path / "xvector.0.scp"
    lines = scp.read_text().splitlines()
    scp.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(DataError, match="1 utterances of .*wav.scp have no embedding"):
        merge_shards(load_data_dir(data_dir), tmp_path, world=1)


def test_score_subtracts_training_mean(exp_dir, data_dir):
    data = load_data_dir(data_dir)
    a, b = data.wav_scp["spk0/utt0"], data.wav_scp["spk1/utt1"]
    api = load_model(exp_dir)
    ea, eb = api.embed(a), api.embed(b)
    raw = float(ea @ eb / np.linalg.norm(ea) / np.linalg.norm(eb))
    assert api.score(a, b) == pytest.approx(raw, abs=1e-6)
    mean = np.full_like(ea, 0.5)
    (exp_dir / "embeddings").mkdir(exist_ok=True)
    np.save(exp_dir / "embeddings" / "train_mean.npy", mean)
    try:
        centred = load_model(exp_dir).score(a, b)
        ca, cb = ea - mean, eb - mean
        assert centred == pytest.approx(float(ca @ cb / np.linalg.norm(ca) / np.linalg.norm(cb)), abs=1e-6)
    finally:
        (exp_dir / "embeddings" / "train_mean.npy").unlink()


def test_cli_round_trip(exp_dir, data_dir, tmp_path, capsys):
    data = load_data_dir(data_dir)
    wavs = [data.wav_scp["spk0/utt0"], data.wav_scp["spk2/utt2"]]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "emb.npy"
    subprocess.run([sys.executable, "-m", "wespeaker_lap", "embed", "--exp_dir", str(exp_dir), *wavs,
                    "--out", str(out)], check=True, env=env, capture_output=True)
    api = load_model(exp_dir)
    # Another process with another thread count rounds differently in the last bits.
    np.testing.assert_allclose(np.load(out), np.stack([api.embed(w) for w in wavs]), rtol=1e-5, atol=1e-6)
    sim = subprocess.run([sys.executable, "-m", "wespeaker_lap", "similarity", "--exp_dir", str(exp_dir), *wavs],
                         check=True, env=env, capture_output=True, text=True)
    assert float(sim.stdout) == pytest.approx(api.score(*wavs), abs=1e-5)
    cohort = tmp_path / "cohort"
    write_training_stats(data, extract(exp_dir, data_dir, cohort), tmp_path / "mean.npy", cohort)
    capsys.readouterr()
    cli.main(["similarity", "--exp_dir", str(exp_dir), *wavs, "--cohort", str(cohort / "spk_xvector.scp"),
              "--top_k", "2"])
    as_norm = load_model(exp_dir, cohort=cohort / "spk_xvector.scp", top_k=2).score(*wavs)
    assert float(capsys.readouterr().out) == pytest.approx(as_norm, abs=1e-5)
    assert as_norm != pytest.approx(api.score(*wavs))


def test_cli_names_missing_model(tmp_path, data_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    wavs = [str(data_dir / "utt0.wav"), str(data_dir / "utt1.wav")]  # readable: the wavs are checked first
    run = subprocess.run([sys.executable, "-m", "wespeaker_lap", "similarity", "--exp_dir", str(tmp_path),
                          *wavs], env=env, capture_output=True, text=True)
    assert run.returncode != 0 and "final_model.pt: no final model" in run.stderr


def test_gate_heat_map(exp_dir, data_dir, tmp_path):
    from wespeaker_lap.models import load_speaker_model
    from wespeaker_lap.models.gates import layer_gates, plot_gates

    model, _ = load_speaker_model(exp_dir / "final_model.pt")
    wav, _ = sf.read(load_data_dir(data_dir).wav_scp["spk0/utt3"], dtype="float32")
    gates = layer_gates(model, wav)
    assert gates.shape[0] == model.upstream.n_layers and gates.shape[1] >= len(wav) // 320 - 1
    assert np.all((gates > 0) & (gates < 1))
    plot_gates(gates, tmp_path / "gates.png")
    assert (tmp_path / "gates.png").read_bytes()[:4] == b"\x89PNG"


def test_extraction_modes_from_the_eval_config(exp_dir):
    from wespeaker_lap.models import load_speaker_model

    model, _ = load_speaker_model(exp_dir / "final_model.pt")
    exact = Embedder.from_config(model, "cpu", ExtractionConfig(mode="exact"))
    assert (exact.max_batch_samples, exact.max_batch_size, exact.autocast) == (0, 1, None)
    assert Embedder.from_config(model, "cpu", ExtractionConfig(mode="auto")).max_batch_size == 1  # CPU: exact
    fast = Embedder.from_config(model, "cpu", ExtractionConfig(mode="fast", max_batch_seconds=2.5, max_batch_size=3,
                                                               precision="bf16"))
    assert (fast.max_batch_samples, fast.max_batch_size, fast.max_padding) == (40000, 3, 0.02)
    assert fast.autocast is None and "fp32" in fast.description  # autocast only on CUDA
    assert fast.settings == {"mode": "fast", "device": "cpu", "precision": "fp32", "tf32": False,
                             "max_batch_samples": 40000, "max_batch_size": 3, "max_padding": 0.02}
    if torch.cuda.is_available():
        gpu = Embedder.from_config(model, "cuda", ExtractionConfig(mode="auto", precision="fp16"))
        assert gpu.fast and gpu.autocast is torch.float16


def _recipe_layout(exp_dir, data_dir, tmp_path):
    """Stage 4 by hand into ``tmp_path/emb/<set>`` (the data dir is both the training and the test set)."""
    name = data_dir.name
    scp = extract(exp_dir, data_dir, tmp_path / "emb" / name)
    write_training_stats(load_data_dir(data_dir), scp, tmp_path / "emb" / "train_mean.npy", tmp_path / "emb" / name)
    (exp_dir / "embeddings").mkdir(exist_ok=True)
    (exp_dir / "embeddings" / "train_mean.npy").write_bytes((tmp_path / "emb" / "train_mean.npy").read_bytes())
    return name


def test_api_score_agrees_with_recipe_scoring(exp_dir, data_dir, tmp_path):
    """``load_model(exp).score(a, b)`` equals the cosine and the AS-Norm scores ``bin.score`` writes for the trial."""
    from wespeaker_lap.data.kaldi import write_trials

    name = _recipe_layout(exp_dir, data_dir, tmp_path)
    try:
        trials = [("spk0/utt0", "spk0/utt3", 1), ("spk1/utt1", "spk2/utt5", 0)]
        write_trials(tmp_path / "trials", trials)
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-m", "wespeaker_lap.bin.score", "--trials", str(tmp_path / "trials"),
                        "--data_dir", str(data_dir.parent), "--embeddings_dir", str(tmp_path / "emb"),
                        "--train_set", name, "--eval_set", name, "--out_dir", str(tmp_path / "scores"),
                        "cohort.top_k=2", "calibration.enabled=false"], check=True, env=env, capture_output=True)
        wav = load_data_dir(data_dir).wav_scp
        cohort = tmp_path / "emb" / name / "spk_xvector.scp"
        for variant, api in [("cosine", load_model(exp_dir)), ("asnorm", load_model(exp_dir, cohort=cohort, top_k=2))]:
            lines = (tmp_path / "scores" / variant / "trials.score").read_text().split("\n")
            recipe = {(e, t): float(score) for e, t, score, _ in (line.split() for line in lines if line)}
            for enroll, test, _ in trials:
                assert api.score(wav[enroll], wav[test]) == pytest.approx(recipe[enroll, test], abs=1e-5), variant
        assert "top_k: 2" in (tmp_path / "scores" / "eval.yaml").read_text()
        with pytest.raises(ValueError, match=r"cohort.top_k=5 must be between 2 and the size of the cohort \(3 rows"):
            load_model(exp_dir, cohort=cohort, top_k=5)
    finally:
        (exp_dir / "embeddings" / "train_mean.npy").unlink()


def test_extract_script_runs_fast_mode_from_the_eval_config(exp_dir, data_dir, tmp_path):
    """``bin.extract`` takes its settings from ``--config`` + overrides and saves the resolved copy."""
    exact = dict(kaldiio.load_scp(str(extract(exp_dir, data_dir, tmp_path / "exact"))))
    config = tmp_path / "eval.yaml"
    config.write_text("extraction:\n  mode: fast\n  num_workers: 0\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "wespeaker_lap.bin.extract", "--model", str(exp_dir / "final_model.pt"),
                          "--data_dir", str(data_dir), "--out_dir", str(tmp_path / "fast"), "--config", str(config),
                          "extraction.max_batch_seconds=10", "extraction.max_padding=1"],  # lengths differ a lot
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    saved = (tmp_path / "fast" / "eval.yaml").read_text()
    assert "mode: fast" in saved and "max_batch_seconds: 10.0" in saved and "max_padding: 1.0" in saved
    fast = dict(kaldiio.load_scp(str(tmp_path / "fast" / "xvector.scp")))
    assert sorted(fast) == sorted(exact)
    keys = sorted(exact)
    assert any(not np.array_equal(fast[k], exact[k]) for k in keys)  # batched: padding shifts the statistics
    cos = np.stack([fast[k] / np.linalg.norm(fast[k]) for k in keys]) @ np.stack(
        [exact[k] / np.linalg.norm(exact[k]) for k in keys]).T  # [N, N]
    np.testing.assert_array_equal(cos.argmax(axis=1), np.arange(len(keys)))  # each still nearest its own
    bad = subprocess.run([sys.executable, "-m", "wespeaker_lap.bin.extract", "--model", "m.pt", "--data_dir", "d",
                          "--out_dir", "o", "extraction.mode=quick"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "extraction.mode: 'quick' is not one of" in bad.stderr
