#!/usr/bin/env python3
"""A small synthetic stand-in for MUSAN and RIRS_NOISES, for training-time augmentation.

  make_noise_rir.py --out DIR [--train_dir DIR/train] [--seed 0] [--nj 2]
                    [--n_noise 20] [--n_music 20] [--n_speech 60] [--n_rirs 20] [--clip_seconds 6]

Writes 16 kHz mono 16-bit wavs under ``DIR/noise_rir/<type>/`` and the lists that
``wespeaker_lap.data.augment_lists`` reads (``<key> <path> <type>``, absolute paths):

* ``DIR/musan.list``: ``noise`` (coloured noise, exponent -1..2, some slowly modulated), ``music``
  (tones and chords with envelopes, ``audio_synth.synthetic_music``) and ``speech`` (one TTS
  speaker per clip, for babble; only the voices of the TRAINING speakers in ``--train_dir``, so
  held-out test voices never leak into training);
* ``DIR/rirs.list``: ``smallroom`` and ``mediumroom`` responses, ``--n_rirs`` of each
  (``audio_synth.synthetic_rir``, RT60 drawn per room size from ``audio_synth.ROOM_RT60``).

Deterministic for a given seed and training speaker set, whatever ``--nj``. A finished set leaves
``DIR/.done_noise_rir`` (its options); a re-run with the same options does nothing. ``DIR`` may be
the corpus folder of ``make_tts_corpus.py`` (the default ``--train_dir`` is ``DIR/train``).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from audio_synth import (ROOM_RT60, SAMPLE_RATE, coloured_noise, rng_for, synthetic_music, synthetic_rir, to_pcm16,
                         write_wav)
from tts_engines import SynthesisError, SynthRequest, check_voices, synthesize
from tts_text import draw_text, sentence_pool
from tts_voices import VOICE_BY_SPEAKER
from wespeaker_lap.data.augment_lists import AugmentEntry, write_augment_list
from wespeaker_lap.data.kaldi import DataError, read_map
from wespeaker_lap.utils.io import atomic_write_text
from wespeaker_lap.utils.logging import setup_logging
from wespeaker_lap.utils.parallel import parallel_map

logger = logging.getLogger("make_noise_rir")

CLIP_DBFS = -26.0  # RMS level of noise and music clips
SPEECH_RATE = (0.85, 1.15)
SPEECH_PITCH_SEMITONES = 1.0

Job = Tuple[str, int, str, int, float]  # type, index, path, seed, clip seconds


def training_speakers(train_dir: Path) -> List[str]:
    """Sorted speakers of ``train_dir/utt2spk``; each must be a voice of ``tts_voices.py``."""
    utt2spk = read_map(train_dir / "utt2spk")
    speakers = sorted(set(utt2spk.values()))
    unknown = [s for s in speakers if s not in VOICE_BY_SPEAKER]
    if unknown:
        raise DataError(f"{train_dir / 'utt2spk'}: speaker {unknown[0]!r} is not a TTS voice of tts_voices.py; "
                        "expected a training set made by make_tts_corpus.py")
    return speakers


def _make_signal(job: Job) -> AugmentEntry:
    """One noise, music or RIR file."""
    kind, index, path, seed, seconds = job
    rng = rng_for(seed, kind, str(index))
    n = int(seconds * SAMPLE_RATE)
    if kind == "noise":
        x = coloured_noise(rng, n, rng.uniform(-1.0, 2.0))
        if rng.random() < 0.5:  # slow loudness changes (traffic, wind)
            t = np.arange(n) / SAMPLE_RATE
            x = x * (1 + rng.uniform(0.2, 0.8) * np.sin(2 * np.pi * rng.uniform(0.1, 2.0) * t + rng.uniform(0, 6.3)))
        pcm = to_pcm16(x, CLIP_DBFS)
    elif kind == "music":
        pcm = to_pcm16(synthetic_music(rng, n), CLIP_DBFS)
    else:  # smallroom / mediumroom
        rir = synthetic_rir(rng, rng.uniform(*ROOM_RT60[kind]))
        pcm = np.round(rir / np.abs(rir).max() * 0.9 * 32767).astype(np.int16)
    write_wav(path, pcm)
    return AugmentEntry(f"{kind}/{kind}-{index:04d}", path, kind)


def _speak(job: Tuple[str, List[SynthRequest], str]) -> List[str]:
    speaker, requests, work_dir = job
    return synthesize(VOICE_BY_SPEAKER[speaker], requests, work_dir)


def speech_jobs(seed: int, speakers: List[str], n_clips: int,
                audio_dir: Path) -> List[Tuple[str, List[SynthRequest], str]]:
    """Clip i is spoken by ``speakers[i % len(speakers)]`` (key ``speech/<spk>-<i>``); one job per speaker."""
    pool = sentence_pool()
    by_speaker = {s: [] for s in speakers}
    for index in range(n_clips):
        speaker = speakers[index % len(speakers)]
        rng = rng_for(seed, "speech", str(index))
        texts = tuple(draw_text(rng, pool) for _ in range(4))
        name = f"{speaker}-{index:04d}"
        by_speaker[speaker].append(SynthRequest(
            f"speech/{name}", texts, rng.uniform(*SPEECH_RATE),
            rng.uniform(-SPEECH_PITCH_SEMITONES, SPEECH_PITCH_SEMITONES), str(audio_dir / "speech" / f"{name}.wav")))
    return [(s, requests, str(audio_dir / ".work")) for s, requests in by_speaker.items() if requests]


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--train_dir", help="training data dir of make_tts_corpus.py (default: OUT/train)")
    parser.add_argument("--seed", type=int, default=0, help="non-negative; all randomness derives from it")
    parser.add_argument("--nj", type=int, default=2, help="parallel processes")
    parser.add_argument("--n_noise", type=int, default=20, help="noise clips")
    parser.add_argument("--n_music", type=int, default=20, help="music clips")
    parser.add_argument("--n_speech", type=int, default=60, help="speech clips (babble talkers)")
    parser.add_argument("--n_rirs", type=int, default=20, help="room responses per room size")
    parser.add_argument("--clip_seconds", type=float, default=6.0, help="length of noise and music clips")
    args = parser.parse_args(argv)
    for name in ("nj", "n_noise", "n_music", "n_speech", "n_rirs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.clip_seconds <= 0 or args.seed < 0:
        parser.error("--clip_seconds must be positive and --seed non-negative")
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    setup_logging()
    out = Path(args.out).resolve()
    try:
        speakers = training_speakers(Path(args.train_dir) if args.train_dir else out / "train")
        check_voices([VOICE_BY_SPEAKER[s] for s in speakers])
    except (DataError, SynthesisError, FileNotFoundError) as err:
        sys.exit(f"make_noise_rir.py: {err}")
    options = {k: v for k, v in sorted(vars(args).items()) if k not in ("out", "nj", "train_dir")}
    signature = json.dumps({**options, "speakers": speakers}, sort_keys=True) + "\n"
    sentinel, audio_dir = out / ".done_noise_rir", out / "noise_rir"
    if sentinel.is_file():
        if sentinel.read_text(encoding="utf-8") == signature:
            logger.info("%s: already made with these options; nothing to do", out)
            return
        sys.exit(f"make_noise_rir.py: {out} holds a set made with other options ({sentinel}: "
                 f"{sentinel.read_text(encoding='utf-8').strip()}); remove it or choose another --out")
    shutil.rmtree(audio_dir, ignore_errors=True)  # an interrupted run

    signal_jobs: List[Job] = [(kind, i, str(audio_dir / kind / f"{kind}-{i:04d}.wav"), args.seed, args.clip_seconds)
                              for kind, count in (("noise", args.n_noise), ("music", args.n_music),
                                                  ("smallroom", args.n_rirs), ("mediumroom", args.n_rirs))
                              for i in range(count)]
    entries = list(parallel_map(_make_signal, signal_jobs, args.nj, "noise, music, RIRs"))
    jobs = speech_jobs(args.seed, speakers, args.n_speech, audio_dir)
    try:
        list(parallel_map(_speak, jobs, args.nj, "speech", "clip", total=args.n_speech, advance=len))
    except SynthesisError as err:
        sys.exit(f"make_noise_rir.py: {err}")
    entries += [AugmentEntry(r.key, r.out_path, "speech") for _, requests, _ in jobs for r in requests]
    shutil.rmtree(audio_dir / ".work", ignore_errors=True)

    write_augment_list(out / "musan.list", [e for e in entries if e.type in ("noise", "music", "speech")])
    write_augment_list(out / "rirs.list", [e for e in entries if e.type in ROOM_RT60])
    atomic_write_text(sentinel, signature)
    logger.info("%s: %d noise, %d music, %d speech clips (speech by %d training speakers), %d + %d RIRs",
                out, args.n_noise, args.n_music, args.n_speech, len(speakers), args.n_rirs, args.n_rirs)


if __name__ == "__main__":
    main()
