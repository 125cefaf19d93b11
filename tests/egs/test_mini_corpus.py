"""The offline real-voice mini corpus (egs/mini/local): determinism, format, splits, trials, augmentation sets.

The corpus tests drive the real scripts and TTS engines on a tiny corpus (5 speakers x 3 utterances);
they are skipped when the Debian TTS packages are absent (see egs/mini/local/install_tts.sh).
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import soundfile as sf

from wespeaker_lap.data.augment_lists import read_augment_list
from wespeaker_lap.data.kaldi import load_data_dir, read_list_map, read_map, read_scp, read_trials

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "egs" / "mini" / "local"
# Seed 4 draws fest_it_lp, flite_awb, mbrola_br3 (train) and mbrola_de5, pico_eses (test): all four engines.
CORPUS_ARGS = ["--n_speakers", "5", "--n_utts", "3", "--n_test_speakers", "2", "--seed", "4", "--augment", "medium"]
NOISE_ARGS = ["--seed", "0", "--n_noise", "2", "--n_music", "2", "--n_speech", "4", "--n_rirs", "2",
              "--clip_seconds", "2"]
ENGINE_PREFIXES = {"fest_", "flite_", "mbrola_", "pico_"}


def _run(script: str, *args: str, path_env: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if path_env is not None:
        env["PATH"] = path_env
    return subprocess.run([sys.executable, str(LOCAL / script), *args], env=env, capture_output=True, text=True,
                          check=False)


def _check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def corpora(tts_available, tmp_path_factory) -> Tuple[Path, Path]:
    """The same tiny corpus made twice, with --nj 1 and --nj 2."""
    root = tmp_path_factory.mktemp("mini_corpus")
    for name, nj in (("nj1", "1"), ("nj2", "2")):
        _check(_run("make_tts_corpus.py", "--out", str(root / name), "--nj", nj, *CORPUS_ARGS))
    return root / "nj1", root / "nj2"


@pytest.fixture(scope="module")
def noise_sets(corpora, tmp_path_factory) -> Tuple[Path, Path]:
    """The augmentation set made twice from the first corpus's training speakers: with --nj 1 in a
    folder holding the corpus's train dir (the recipe's layout, default --train_dir), and with --nj 2
    elsewhere (explicit --train_dir)."""
    root = tmp_path_factory.mktemp("noise_rir")
    shutil.copytree(corpora[0] / "train", root / "nj1" / "train")
    _check(_run("make_noise_rir.py", "--out", str(root / "nj1"), "--nj", "1", *NOISE_ARGS))
    _check(_run("make_noise_rir.py", "--out", str(root / "nj2"), "--train_dir", str(corpora[0] / "train"),
                "--nj", "2", *NOISE_ARGS))
    return root / "nj1", root / "nj2"


def _files(root: Path) -> Dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _frames_of_wav(path: str | Path) -> int:
    """Number of samples of a wav that must be 16 kHz mono 16-bit PCM."""
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), f"{path}: {info}"
    return info.frames


# ----------------------------------------------------------------------------- corpus


def test_corpus_is_byte_identical_for_a_seed_whatever_nj(corpora):
    a, b = corpora
    files_a, files_b = _files(a), _files(b)
    assert files_a.keys() == files_b.keys()
    for name in files_a:
        if name.endswith("wav.scp"):  # absolute paths differ by the root only
            assert files_a[name].decode().replace(str(a), "ROOT") == files_b[name].decode().replace(str(b), "ROOT")
        else:
            assert files_a[name] == files_b[name], f"{name} differs between --nj 1 and --nj 2"
    speakers = set(read_map(a / "train" / "utt2spk").values()) | set(read_map(a / "test" / "utt2spk").values())
    engines = {prefix for prefix in ENGINE_PREFIXES for s in speakers if s.startswith(prefix)}
    assert engines == ENGINE_PREFIXES, f"the test corpus should cover every engine, got {sorted(speakers)}"
    assert not (a / ".work_tts_corpus").exists()


def test_corpus_audio_is_16k_mono_pcm16_with_matching_utt2dur(corpora):
    for split in ("train", "test"):
        data = load_data_dir(corpora[0] / split)
        for key, path in data.wav_scp.items():
            assert Path(path) == corpora[0] / "wav" / f"{key}.wav"
            assert data.utt2dur[key] == pytest.approx(_frames_of_wav(path) / 16000, abs=1e-4)
            audio, _ = sf.read(path)
            assert 0.01 < np.abs(audio).max() < 1.0, f"{path}: silent or clipped"


def test_corpus_splits_are_speaker_disjoint_kaldi_dirs(corpora):
    train, test = load_data_dir(corpora[0] / "train"), load_data_dir(corpora[0] / "test")
    assert len(train.speakers) == 3 and len(test.speakers) == 2
    assert not set(train.speakers) & set(test.speakers)
    for data in (train, test):
        assert read_list_map(data.path / "spk2utt") == data.spk2utt
        for key, spk in data.utt2spk.items():
            assert key.startswith(f"{spk}/{spk}-"), key
        assert all(len(utts) == 3 for utts in data.spk2utt.values())
        augment = read_map(data.path / "utt2augment")
        assert augment.keys() == data.wav_scp.keys()
    degraded = [v for d in (train, test) for v in read_map(d.path / "utt2augment").values() if v != "clean"]
    assert degraded, "--augment medium degraded no utterance"


def test_trials_reference_test_utterances_with_correct_labels(corpora):
    test = load_data_dir(corpora[0] / "test")
    trials = read_trials(corpora[0] / "test" / "trials")
    assert len(set(trials)) == len(trials)
    for enroll, probe, label in trials:
        assert enroll in test.wav_scp and probe in test.wav_scp and enroll != probe
        assert label == int(test.utt2spk[enroll] == test.utt2spk[probe])
    n_target = sum(label for _, _, label in trials)
    assert n_target == 2 * 3  # every same-speaker pair of 2 speakers x 3 utterances
    assert len(trials) - n_target == 9  # every different-speaker pair (fewer than 3 per target)


def test_utterances_vary_in_text_and_duration(corpora):
    for split in ("train", "test"):
        data = load_data_dir(corpora[0] / split)
        text = read_scp(corpora[0] / split / "text")
        for spk, utts in data.spk2utt.items():
            assert len({text[u] for u in utts}) == len(utts), f"{spk} repeats a text"
            assert len({data.utt2dur[u] for u in utts}) == len(utts), f"{spk} repeats a duration"
            for u in utts:
                assert 5 <= len(text[u].split()) <= 3 * 22


def test_rerun_with_same_options_skips_and_other_options_are_refused(corpora):
    a = corpora[0]
    before = {p: p.stat().st_mtime_ns for p in a.rglob("*") if p.is_file()}
    proc = _check(_run("make_tts_corpus.py", "--out", str(a), "--nj", "2", *CORPUS_ARGS))
    assert "nothing to do" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in a.rglob("*") if p.is_file()} == before
    other = [*CORPUS_ARGS[:3], "4", *CORPUS_ARGS[4:]]  # --n_utts 4
    proc = _run("make_tts_corpus.py", "--out", str(a), *other)
    assert proc.returncode != 0 and "other options" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in a.rglob("*") if p.is_file()} == before


def test_missing_engines_name_the_packages_and_the_installer(tmp_path):
    proc = _run("make_tts_corpus.py", "--out", str(tmp_path / "c"), *CORPUS_ARGS, path_env=str(tmp_path))
    assert proc.returncode != 0
    assert "install_tts.sh" in proc.stderr and "sox" in proc.stderr and "festival" in proc.stderr
    assert not (tmp_path / "c" / ".done_tts_corpus").exists()


# ----------------------------------------------------------------------------- noise and RIRs


def test_noise_rir_lists_parse_and_hold_16k_mono_audio(noise_sets, corpora):
    a, b = noise_sets
    musan = read_augment_list(a / "musan.list", ("noise", "music", "speech"))
    rirs = read_augment_list(a / "rirs.list", ("smallroom", "mediumroom"))
    counts = {kind: sum(e.type == kind for e in musan + rirs) for kind in ("noise", "music", "speech",
                                                                          "smallroom", "mediumroom")}
    assert counts == {"noise": 2, "music": 2, "speech": 4, "smallroom": 2, "mediumroom": 2}
    for entry in musan + rirs:
        frames = _frames_of_wav(entry.path)
        if entry.type in ("noise", "music"):
            assert frames == 2 * 16000
    train_speakers = set(read_map(corpora[0] / "train" / "utt2spk").values())
    speech_speakers = {e.key.split("/")[1].rsplit("-", 1)[0] for e in musan if e.type == "speech"}
    assert speech_speakers == train_speakers  # 4 clips over 3 training speakers; no test voice
    assert _files(a / "noise_rir") == _files(b / "noise_rir"), "audio differs between --nj 1 and --nj 2"
    for name in ("musan.list", "rirs.list"):
        assert (a / name).read_text().replace(str(a), "ROOT") == (b / name).read_text().replace(str(b), "ROOT")


def test_synthetic_rirs_start_with_the_direct_path_and_decay(noise_sets):
    for entry in read_augment_list(noise_sets[0] / "rirs.list", ("smallroom", "mediumroom")):
        rir, _ = sf.read(entry.path)
        peak = int(np.argmax(np.abs(rir)))
        assert peak < 0.01 * 16000, f"{entry.path}: direct path at sample {peak}"
        tail = rir[peak + 1:]
        quarters = [np.sum(q ** 2) for q in np.array_split(tail, 4)]
        assert all(x > y for x, y in itertools.pairwise(quarters)), f"{entry.path}: no decay {quarters}"
        assert quarters[-1] < 1e-2 * quarters[0]


# ----------------------------------------------------------------------------- installer


def _source_installer(command: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f'set -euo pipefail; source "{LOCAL / "install_tts.sh"}"; {command}'],
                          cwd=tmp_path, capture_output=True, text=True, check=False)


def test_installer_adds_contrib_nonfree_to_debian_archive_entries_only(tmp_path):
    (tmp_path / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n")
    (tmp_path / "sources.list").write_text(
        "deb http://deb.debian.org/debian bookworm main # archive\n"
        "deb-src http://ftp.us.debian.org/debian/ bookworm main contrib\n"
        "deb http://security.debian.org/debian-security bookworm-security main\n"
        "deb https://download.docker.com/linux/debian bookworm stable\n"
        "# deb http://deb.debian.org/debian bookworm main\n")
    proc = _source_installer("add_components debian.sources; add_components sources.list", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "Types: deb", "URIs: http://deb.debian.org/debian", "Suites: bookworm bookworm-updates",
        "Components: main contrib non-free", "",
        "Types: deb", "URIs: http://deb.debian.org/debian-security", "Suites: bookworm-security", "Components: main",
        "deb http://deb.debian.org/debian bookworm main contrib non-free # archive",
        "deb-src http://ftp.us.debian.org/debian/ bookworm main contrib non-free",
        "deb http://security.debian.org/debian-security bookworm-security main",
        "deb https://download.docker.com/linux/debian bookworm stable",
        "# deb http://deb.debian.org/debian bookworm main",
    ]


def test_installer_rejects_an_unknown_option_with_its_usage(tmp_path):
    proc = subprocess.run(["bash", str(LOCAL / "install_tts.sh"), "--no-such-flag"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown option '--no-such-flag'" in proc.stderr and "--enable-contrib-nonfree" in proc.stderr


def test_voice_table_has_the_48_real_voices_and_their_packages():
    probe = subprocess.run([sys.executable, str(LOCAL / "tts_voices.py"), "packages", "contrib"],
                           capture_output=True, text=True, check=True)
    contrib = probe.stdout.split()
    assert contrib[0] == "mbrola" and len(contrib) == len(set(contrib)) == 1 + 33 + 4
    speakers = subprocess.run([sys.executable, str(LOCAL / "tts_voices.py"), "speakers", "mbrola"],
                              capture_output=True, text=True, check=True).stdout.split()
    assert len(speakers) == 33 and all(s.startswith("mbrola_") for s in speakers)
