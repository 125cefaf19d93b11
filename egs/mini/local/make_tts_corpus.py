#!/usr/bin/env python3
"""Synthesise the mini corpus: real people's voices (Debian TTS) reading fortune sentences.

  make_tts_corpus.py --out DIR [--n_speakers 40] [--n_utts 20] [--n_test_speakers 10] [--seed 0]
                     [--nj 2] [--augment none|light|medium] [--nontarget_ratio 3]

Speakers are drawn from the 48 voices of ``tts_voices.py``; held-out test speakers never occur in
training. Every utterance varies its text (1-3 fortune sentences), speaking rate (the speaker's
habitual rate x0.9-1.1 times x0.88-1.12) and pitch (+-1 semitone), and gets a random level;
``--augment`` then adds reverberation, noise / babble (clean training speech of other speakers) /
music and a channel (``audio_synth.DEGRADE_LEVELS``). Writes

* ``DIR/wav/<spk>/<spk>-<nnnn>.wav``: 16 kHz mono 16-bit;
* ``DIR/{train,test}/{wav.scp,utt2spk,spk2utt,utt2dur}``: keys ``<spk>/<spk>-<nnnn>``, plus
  ``text`` (what was said) and ``utt2augment`` (the degradation, e.g. ``reverb0.42+babble12dB``);
* ``DIR/test/trials``: every target pair and ``--nontarget_ratio`` times as many non-target pairs
  (0: all of them), ``<enroll> <test> target|nontarget``.

All randomness derives from ``--seed`` and the utterance key, so the output is byte-identical for a
given seed whatever ``--nj``. A finished corpus leaves ``DIR/.done_tts_corpus`` (its options); a
re-run with the same options does nothing. Needs the packages of ``install_tts.sh``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import operator
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import soundfile as sf

from audio_synth import DEGRADE_LEVELS, SAMPLE_RATE, degrade, rng_for, to_pcm16, write_wav
from tts_engines import SynthesisError, SynthRequest, check_voices, synthesize
from tts_text import draw_text, sentence_pool
from tts_voices import VOICE_BY_SPEAKER, VOICES, Voice
from wespeaker_lap.data.kaldi import Trial, utt2spk_to_spk2utt, write_map, write_trials
from wespeaker_lap.utils.io import atomic_write_text
from wespeaker_lap.utils.logging import setup_logging
from wespeaker_lap.utils.parallel import parallel_map

logger = logging.getLogger("make_tts_corpus")

TEXT_CANDIDATES = 4  # texts drawn per utterance; a later one is spoken only if the engine fails on the earlier
HABITUAL_RATE = (0.9, 1.1)
UTTERANCE_RATE = (0.88, 1.12)
PITCH_SEMITONES = 1.0
LEVEL_DBFS = (-30.0, -20.0)  # RMS level of the final utterance
BABBLE_SOURCES = 6  # clean training utterances offered to each utterance for babble
ENGINE_ORDER = ("festival", "flite", "pico", "espeak")  # slowest per utterance first


@dataclass(frozen=True)
class Utterance:
    key: str  # <spk>/<spk>-<nnnn>
    speaker: str
    clean_path: str  # the engine's output, before level and degradation
    wav_path: str
    babble: Tuple[str, ...]  # clean training utterances of other speakers


def utterance_key(speaker: str, index: int) -> str:
    return f"{speaker}/{speaker}-{index:04d}"


def split_speakers(seed: int, n_speakers: int, n_test: int) -> Tuple[List[Voice], List[Voice]]:
    """(train, test) voices, each sorted by speaker id; a prefix of one seeded permutation of all voices."""
    order = rng_for(seed, "speakers").permutation(len(VOICES))
    chosen = [VOICES[i] for i in order[:n_speakers]]
    by_id = operator.attrgetter("speaker")
    return sorted(chosen[n_test:], key=by_id), sorted(chosen[:n_test], key=by_id)


def speaker_requests(seed: int, voice: Voice, n_utts: int, pool: Sequence[str], clean_dir: Path) -> List[SynthRequest]:
    """What each utterance of ``voice`` says, how fast and at which pitch."""
    habitual = rng_for(seed, "speaker", voice.speaker).uniform(*HABITUAL_RATE)
    requests = []
    for index in range(n_utts):
        key = utterance_key(voice.speaker, index)
        rng = rng_for(seed, "utterance", key)
        texts = tuple(draw_text(rng, pool) for _ in range(TEXT_CANDIDATES))
        requests.append(SynthRequest(key, texts, habitual * rng.uniform(*UTTERANCE_RATE),
                                     rng.uniform(-PITCH_SEMITONES, PITCH_SEMITONES), str(clean_dir / f"{key}.wav")))
    return requests


def plan_utterances(seed: int, requests: Dict[str, List[SynthRequest]], train_ids: Set[str],
                    wav_dir: Path) -> List[Utterance]:
    """One entry per request, with its babble sources: clean training speech of other speakers."""
    train_clean = sorted(r.out_path for spk in train_ids for r in requests[spk])
    utts = []
    for speaker, speaker_reqs in requests.items():
        others = [path for path in train_clean if Path(path).parent.name != speaker]
        for r in speaker_reqs:
            picks = rng_for(seed, "babble", r.key).permutation(len(others))[:BABBLE_SOURCES]
            utts.append(Utterance(r.key, speaker, r.out_path, str(wav_dir / f"{r.key}.wav"),
                                  tuple(others[i] for i in picks)))
    return utts


def _synthesize_job(job: Tuple[str, List[SynthRequest], str]) -> List[str]:
    speaker, requests, work_dir = job
    return synthesize(VOICE_BY_SPEAKER[speaker], requests, work_dir)


def _finalize_job(job: Tuple[Utterance, int, str]) -> Tuple[int, str]:
    """Degrade, level and write one utterance; returns its number of samples and what was done to it."""
    utt, seed, augment = job
    audio, _ = sf.read(utt.clean_path, dtype="float64")
    rng = rng_for(seed, "augment", utt.key)
    level, done = DEGRADE_LEVELS[augment], "clean"
    if level is not None:
        audio, done = degrade(rng, audio, level, utt.babble)
    pcm = to_pcm16(audio, rng.uniform(*LEVEL_DBFS))
    write_wav(utt.wav_path, pcm)
    return len(pcm), done


def make_trials(seed: int, spk2utt: Dict[str, List[str]], nontarget_ratio: float) -> List[Trial]:
    """Every same-speaker pair, and a seeded sample of ``nontarget_ratio`` times as many
    different-speaker pairs (0: all); sorted."""
    target = [(a, b, 1) for utts in spk2utt.values() for a, b in itertools.combinations(sorted(utts), 2)]
    nontarget = [(a, b, 0) for s1, s2 in itertools.combinations(sorted(spk2utt), 2)
                 for a in spk2utt[s1] for b in spk2utt[s2]]
    if nontarget_ratio > 0 and len(nontarget) > nontarget_ratio * len(target):
        keep = rng_for(seed, "trials").choice(len(nontarget), int(nontarget_ratio * len(target)), replace=False)
        nontarget = [nontarget[i] for i in sorted(keep)]
    return sorted(target + nontarget)


def write_split(out: Path, utts: Sequence[Utterance], samples: Dict[str, int], texts: Dict[str, str],
                degradations: Dict[str, str]) -> None:
    """Kaldi data dir of ``utts``: wav.scp, utt2spk, spk2utt, utt2dur, text and utt2augment."""
    utt2spk = {u.key: u.speaker for u in utts}
    write_map(out / "wav.scp", {u.key: u.wav_path for u in utts})
    write_map(out / "utt2spk", utt2spk)
    write_map(out / "spk2utt", utt2spk_to_spk2utt(utt2spk))
    write_map(out / "utt2dur", {u.key: f"{samples[u.key] / SAMPLE_RATE:.4f}" for u in utts})
    write_map(out / "text", {u.key: texts[u.key] for u in utts})
    write_map(out / "utt2augment", {u.key: degradations[u.key] for u in utts})


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n_speakers", type=int, default=40, help=f"train + test speakers (at most {len(VOICES)})")
    parser.add_argument("--n_utts", type=int, default=20, help="utterances per speaker")
    parser.add_argument("--n_test_speakers", type=int, default=10, help="held-out speakers of DIR/test")
    parser.add_argument("--seed", type=int, default=0, help="non-negative; all randomness derives from it")
    parser.add_argument("--nj", type=int, default=2, help="parallel processes")
    parser.add_argument("--augment", choices=list(DEGRADE_LEVELS), default="medium",
                        help="corpus-level degradation (default: medium)")
    parser.add_argument("--nontarget_ratio", type=float, default=3.0,
                        help="non-target trials per target trial (0: every different-speaker pair)")
    args = parser.parse_args(argv)
    if not 1 <= args.n_speakers <= len(VOICES):
        parser.error(f"--n_speakers must be between 1 and {len(VOICES)} (the real voices), got {args.n_speakers}")
    if not 2 <= args.n_test_speakers < args.n_speakers:
        parser.error(f"--n_test_speakers must be at least 2 and below --n_speakers, got {args.n_test_speakers}")
    if args.n_utts < 2:
        parser.error(f"--n_utts must be at least 2 (target trials need two utterances), got {args.n_utts}")
    if args.nj < 1 or args.seed < 0 or args.nontarget_ratio < 0:
        parser.error("--nj must be positive, --seed and --nontarget_ratio non-negative")
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    setup_logging()
    out = Path(args.out).resolve()
    options = {k: v for k, v in sorted(vars(args).items()) if k not in ("out", "nj")}
    signature = json.dumps(options, sort_keys=True) + "\n"
    sentinel = out / ".done_tts_corpus"
    if sentinel.is_file():
        if sentinel.read_text(encoding="utf-8") == signature:
            logger.info("%s: already made with these options; nothing to do", out)
            return
        sys.exit(f"make_tts_corpus.py: {out} holds a corpus made with other options ({sentinel}: "
                 f"{sentinel.read_text(encoding='utf-8').strip()}); remove it or choose another --out")

    train, test = split_speakers(args.seed, args.n_speakers, args.n_test_speakers)
    try:
        check_voices(train + test)
        pool = sentence_pool()
    except (SynthesisError, FileNotFoundError) as err:
        sys.exit(f"make_tts_corpus.py: {err}")
    work = out / ".work_tts_corpus"
    for stale in ("wav", "train", "test", work.name):  # an interrupted run with other options
        shutil.rmtree(out / stale, ignore_errors=True)
    start = time.time()

    slowest_first = sorted(train + test, key=lambda v: (ENGINE_ORDER.index(v.engine), v.speaker))  # balances the pool
    requests = {v.speaker: speaker_requests(args.seed, v, args.n_utts, pool, work / "clean")
                for v in slowest_first}
    jobs = [(speaker, reqs, str(work)) for speaker, reqs in requests.items()]
    texts: Dict[str, str] = {}
    try:
        spoken = parallel_map(_synthesize_job, jobs, args.nj, "synthesis", "utt",
                              total=len(jobs) * args.n_utts, advance=len)
        for (_, reqs, _), chosen in zip(jobs, spoken, strict=True):
            texts.update((r.key, text) for r, text in zip(reqs, chosen, strict=True))
    except SynthesisError as err:
        sys.exit(f"make_tts_corpus.py: {err}")
    synthesis_seconds = time.time() - start

    train_ids = {v.speaker for v in train}
    utts = plan_utterances(args.seed, requests, train_ids, out / "wav")
    finalized = parallel_map(_finalize_job, [(u, args.seed, args.augment) for u in utts], args.nj,
                             f"augment={args.augment}", "utt")
    samples: Dict[str, int] = {}
    degradations: Dict[str, str] = {}
    for utt, (n_samples, done) in zip(utts, finalized, strict=True):
        samples[utt.key], degradations[utt.key] = n_samples, done

    test_utts = [u for u in utts if u.speaker not in train_ids]
    write_split(out / "train", [u for u in utts if u.speaker in train_ids], samples, texts, degradations)
    write_split(out / "test", test_utts, samples, texts, degradations)
    trials = make_trials(args.seed, utt2spk_to_spk2utt({u.key: u.speaker for u in test_utts}), args.nontarget_ratio)
    write_trials(out / "test" / "trials", trials)
    shutil.rmtree(work)
    atomic_write_text(sentinel, signature)
    hours = sum(samples.values()) / SAMPLE_RATE / 3600
    n_target = sum(label for _, _, label in trials)
    logger.info("%s: %d train + %d test speakers, %d utterances (%.2f h, augment=%s), %d target + %d non-target "
                "trials, in %.1f s (synthesis %.1f s)", out, len(train), len(test), len(utts), hours, args.augment,
                n_target, len(trials) - n_target, time.time() - start, synthesis_seconds)


if __name__ == "__main__":
    main()
