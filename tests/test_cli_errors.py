"""Bad input through the real ``wespeaker-lap`` command and stage scripts: one error line, exit 1, no traceback.

The model is a tiny random-init one (nothing here needs a trained model: each case fails, or is
refused, before a score would mean anything).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import kaldiio
import numpy as np
import pytest
import soundfile as sf

from wespeaker_lap.data.kaldi import write_map, write_trials

REPO = Path(__file__).resolve().parents[1]
SR = 16000


def run(module: str, *args: str, debug: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WESPEAKER_LAP_")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    if debug:
        env["WESPEAKER_LAP_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def one_error(proc: subprocess.CompletedProcess, prog: str) -> str:
    """The one ``<prog>: error: ...`` line of a failed run (its log lines aside), without the prefix."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines: List[str] = [line for line in proc.stderr.splitlines() if line.startswith(f"{prog}: error: ")]  # \r too
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0][len(f"{prog}: error: "):]


def wav(path: Path, seconds: float = 0.5, seed: int = 0) -> str:
    sf.write(str(path), np.random.default_rng(seed).normal(0, 0.1, int(seconds * SR)), SR, subtype="PCM_16")
    return str(path)


def nan_wav(path: Path, at: int = 1234) -> str:
    samples = np.random.default_rng(0).normal(0, 0.1, SR // 2).astype(np.float32)
    samples[at] = np.nan
    sf.write(str(path), samples, SR, subtype="FLOAT")
    return str(path)


def truncated_wav(path: Path) -> str:
    wav(path, 1.0)
    path.write_bytes(path.read_bytes()[:20000])
    return str(path)


@pytest.fixture(scope="module")
def exp_dir(tmp_path_factory, tiny_upstreams):
    """An experiment dir with a random-init ``final_model.pt`` on the tiny WavLM."""
    from wespeaker_lap.config import ModelConfig, from_dict
    from wespeaker_lap.models import build_speaker_model, save_speaker_model

    exp = tmp_path_factory.mktemp("exp")
    cfg = from_dict(ModelConfig, {"upstream": {"name": "wavlm_local", "path": str(tiny_upstreams["wavlm"])},
                                  "backend": {"name": "lap_astp", "options": {"hidden_dim": 32, "n_heads": 4}}})
    save_speaker_model(exp / "final_model.pt", build_speaker_model(cfg), cfg)
    return exp


# ----------------------------------------------------------------------------- wespeaker-lap
def test_cli_refuses_nan_audio(tmp_path, exp_dir):
    bad = nan_wav(tmp_path / "nan.wav")
    proc = run("wespeaker_lap", "similarity", "--exp_dir", str(exp_dir), wav(tmp_path / "a.wav"), bad)
    assert one_error(proc, "wespeaker-lap") == f"bad audio 'input' ({bad}): non-finite sample (nan) at sample 1234"
    assert proc.stdout == ""  # no "nan" score


def test_cli_refuses_truncated_audio(tmp_path, exp_dir):
    bad = truncated_wav(tmp_path / "cut.wav")
    proc = run("wespeaker_lap", "embed", "--exp_dir", str(exp_dir), bad)
    assert one_error(proc, "wespeaker-lap") == (f"bad audio 'input' ({bad}): truncated: the WAV header declares "
                                                "32000 bytes of audio data but the file holds 19956 (an interrupted "
                                                "copy or download?)")


def test_cli_refuses_too_short_audio(tmp_path, exp_dir):
    short = wav(tmp_path / "short.wav", 0.05)
    proc = run("wespeaker_lap", "embed", "--exp_dir", str(exp_dir), short)
    assert one_error(proc, "wespeaker-lap") == (f"bad audio 'input' ({short}): too short to embed: 800 samples "
                                                "(0.050 s); at least 0.1 s (1600 samples) are needed")


def test_cli_debug_shows_the_traceback(tmp_path, exp_dir):
    bad = nan_wav(tmp_path / "nan.wav")
    for proc in (run("wespeaker_lap", "embed", "--exp_dir", str(exp_dir), bad, "--debug"),
                 run("wespeaker_lap", "embed", "--exp_dir", str(exp_dir), bad, debug=True)):
        assert proc.returncode == 1
        assert "Traceback (most recent call last)" in proc.stderr and "DataError: bad audio 'input'" in proc.stderr


def test_cli_refuses_a_nan_training_mean(tmp_path, exp_dir):
    exp = tmp_path / "exp"
    (exp / "embeddings").mkdir(parents=True)
    (exp / "final_model.pt").symlink_to(exp_dir / "final_model.pt")
    mean = np.zeros(192, np.float32)
    mean[5] = np.nan
    np.save(exp / "embeddings" / "train_mean.npy", mean)
    proc = run("wespeaker_lap", "similarity", "--exp_dir", str(exp), wav(tmp_path / "a.wav"), wav(tmp_path / "b.wav"))
    assert one_error(proc, "wespeaker-lap") == (f"{exp}/embeddings/train_mean.npy: the mean embedding is not "
                                                "finite (NaN or Inf)")


def test_cli_names_a_full_disk(tmp_path, exp_dir):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    proc = run("wespeaker_lap", "embed", "--exp_dir", str(exp_dir), wav(tmp_path / "a.wav"), "--out", "/dev/full")
    assert one_error(proc, "wespeaker-lap") == "/dev/full: no space left on device while writing it"


# ----------------------------------------------------------------------------- stage scripts
def data_dir(root: Path, entries: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_map(root / "wav.scp", entries)
    return root


def test_extract_refuses_an_empty_wav_scp(tmp_path, exp_dir):
    data = data_dir(tmp_path / "data", {})
    proc = run("wespeaker_lap.bin.extract", "--model", str(exp_dir / "final_model.pt"), "--data_dir", str(data),
               "--out_dir", str(tmp_path / "emb"))
    assert one_error(proc, "extract") == f"{data}/wav.scp: no utterances (the file is empty)"


def test_extract_without_utt2dur_reads_lengths_through_the_audio_checks(tmp_path, exp_dir):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really a wav file")
    data = data_dir(tmp_path / "data", {"u1": wav(tmp_path / "a.wav"), "u2": str(garbage)})
    proc = run("wespeaker_lap.bin.extract", "--model", str(exp_dir / "final_model.pt"), "--data_dir", str(data),
               "--out_dir", str(tmp_path / "emb"))
    assert one_error(proc, "extract").startswith(f"bad audio 'u2' ({garbage}): unreadable (")


def test_extract_names_nan_audio_read_in_a_worker(tmp_path, exp_dir):
    bad = nan_wav(tmp_path / "nan.wav")
    data = data_dir(tmp_path / "data", {"u1": wav(tmp_path / "a.wav"), "u2": bad})
    proc = run("wespeaker_lap.bin.extract", "--model", str(exp_dir / "final_model.pt"), "--data_dir", str(data),
               "--out_dir", str(tmp_path / "emb"), "extraction.num_workers=1")
    assert one_error(proc, "extract") == f"bad audio 'u2' ({bad}): non-finite sample (nan) at sample 1234"
    assert not (tmp_path / "emb" / "xvector.scp").exists()


def embeddings(tmp_path: Path, vectors: dict, mean=(0.0, 0.0)) -> Path:
    """The stage-4 layout under ``tmp_path/emb``: ``eval/xvector.scp`` of ``vectors`` and ``train_mean.npy``."""
    scp = tmp_path / "emb" / "eval" / "xvector.scp"
    scp.parent.mkdir(parents=True, exist_ok=True)
    with kaldiio.WriteHelper(f"ark,scp:{scp.with_suffix('.ark')},{scp}") as writer:
        for key, vector in vectors.items():
            writer(key, np.asarray(vector, np.float32))
    np.save(tmp_path / "emb" / "train_mean.npy", np.asarray(mean, np.float32))
    return scp


def score(tmp_path: Path, trials: Path) -> subprocess.CompletedProcess:
    """Cosine scoring only (no cohort, no calibration), as stage 5 runs it."""
    return run("wespeaker_lap.bin.score", "--trials", str(trials), "--data_dir", str(tmp_path / "data"),
               "--embeddings_dir", str(tmp_path / "emb"), "--train_set", "train", "--eval_set", "eval",
               "--out_dir", str(tmp_path / "scores"), "cohort.source=null", "calibration.enabled=false")


def test_score_refuses_an_empty_trials_file(tmp_path):
    embeddings(tmp_path, {"a": [1, 0], "b": [0, 1]})
    (tmp_path / "trials").write_text("")
    proc = score(tmp_path, tmp_path / "trials")
    assert one_error(proc, "score") == f"{tmp_path}/trials: no trials (the file is empty)"


def test_score_refuses_non_finite_embeddings_and_means(tmp_path):
    write_trials(tmp_path / "trials", [("a", "b", 1), ("a", "c", 0)])
    scp = embeddings(tmp_path, {"a": [1, 0], "b": [0, np.nan], "c": [1, 1]})
    proc = score(tmp_path, tmp_path / "trials")
    assert one_error(proc, "score") == (f"{scp}: the embedding of 'b' is not finite (NaN or Inf; "
                                        "1 of 3 embeddings are)")
    good = tmp_path / "good"
    embeddings(good, {"a": [1, 0], "b": [0, 1], "c": [1, 1]}, mean=(np.inf, 0))
    proc = score(good, tmp_path / "trials")
    assert one_error(proc, "score") == f"{good}/emb/train_mean.npy: the mean embedding is not finite (NaN or Inf)"
    assert not (good / "scores" / "cosine" / "trials.score").exists()


def test_score_refuses_pipe_entries_without_running_them(tmp_path):
    marker = tmp_path / "ran"
    write_trials(tmp_path / "trials", [("a", "b", 1)])
    scp = embeddings(tmp_path, {"a": [1, 0]})
    with open(scp, "a", encoding="utf-8") as f:
        f.write(f"b touch {marker} |\n")
    proc = score(tmp_path, tmp_path / "trials")
    assert one_error(proc, "score") == (f"{scp}: 'b': 'touch {marker} |' is a pipe command; wespeaker-lap does "
                                        "not run commands from data files (convert the audio to wav/flac files, "
                                        "or to a Kaldi ark, and list those)")
    assert not marker.exists()


def test_average_model_and_plot_gates_errors_are_one_line(tmp_path):
    proc = run("wespeaker_lap.bin.average_model", "--exp_dir", str(tmp_path), "averaging.num_average=2")
    assert one_error(proc, "average_model")
    proc = run("wespeaker_lap.bin.plot_gates", "--model", str(tmp_path / "nope.pt"), "--wav", "a.wav",
               "--out", str(tmp_path / "g.png"))
    assert one_error(proc, "plot_gates") == f"{tmp_path}/nope.pt: speaker model file not found"


def test_make_shards_error_is_one_line_and_its_traceback_goes_to_the_log(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_map(data / "wav.scp", {"a": str(tmp_path / "missing.wav")})
    write_map(data / "utt2spk", {"a": "s"})
    proc = run("wespeaker_lap.bin.make_shards", "--data_dir", str(data), "--nj", "1")
    assert one_error(proc, "make_shards") == f"bad audio 'a' ({tmp_path}/missing.wav): file not found"
    log = (data / "shards" / "make_shards.log").read_text()
    assert "make_shards failed" in log and "Traceback" in log
    assert not (data / "shards" / "shard.list").exists()


def test_plot_gates_skips_only_a_backend_without_gates_when_asked(tmp_path, tiny_upstreams, exp_dir):
    """The recipe's stage 6 passes --skip_without_gates: a SUPERB backend is a note, any other problem an error."""
    from wespeaker_lap.config import ModelConfig, from_dict
    from wespeaker_lap.models import build_speaker_model, save_speaker_model

    cfg = from_dict(ModelConfig, {"upstream": {"name": "wavlm_local", "path": str(tiny_upstreams["wavlm"])},
                                  "backend": {"name": "superb_astp"}})
    model = tmp_path / "superb.pt"
    save_speaker_model(model, build_speaker_model(cfg), cfg)
    audio, out = wav(tmp_path / "a.wav"), tmp_path / "g.png"
    proc = run("wespeaker_lap.bin.plot_gates", "--model", str(model), "--wav", audio, "--out", str(out),
               "--skip_without_gates")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "backend has no LAP gates to plot" in proc.stdout and not out.exists()
    proc = run("wespeaker_lap.bin.plot_gates", "--model", str(model), "--wav", audio, "--out", str(out))
    assert one_error(proc, "plot_gates").endswith("backend has no LAP gates to plot")
    proc = run("wespeaker_lap.bin.plot_gates", "--model", str(exp_dir / "final_model.pt"), "--wav",
               str(tmp_path / "none.wav"), "--out", str(out), "--skip_without_gates")
    assert "none.wav" in one_error(proc, "plot_gates")  # a LAP model with a missing wav is still an error


# ----------------------------------------------------------------------------- the API
def test_api_checks_arrays_like_files():
    from wespeaker_lap.data.kaldi import DataError
    from wespeaker_lap.inference import to_waveform

    samples = np.zeros(SR, np.float32)
    samples[10] = np.inf
    with pytest.raises(DataError, match=r"bad audio 'input' \(array\): non-finite sample \(inf\) at sample 10"):
        to_waveform(samples)
    with pytest.raises(DataError, match=r"too short to embed: 1599 samples"):
        to_waveform(np.zeros(1599, np.float32))
    assert to_waveform(np.zeros(1600, np.float32)).shape == (1600,)
