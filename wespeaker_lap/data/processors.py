"""The training-sample chain: small generator steps over sample dicts (WeSpeaker style).

Each step takes an iterable of samples and yields them, reading and writing the
keys its docstring names. Every sample carries its own ``rng``
(``np.random.default_rng([seed, epoch, position])``), so what a step draws does
not depend on worker count or timing. Order, as in the authors' code:
``open_audio -> speed_perturb -> random_crop -> add_reverb_or_noise -> collate``.
Speed perturbation is applied lazily: ``random_crop`` reads and resamples only
the source window its crop needs, which gives the same samples as resampling
the whole utterance first (up to float rounding) at a fraction of the cost.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Dict, Iterable, Iterator, List, Optional

import numpy as np
import torch

from wespeaker_lap.data.audio import Audio, BadAudioHandler
from wespeaker_lap.data.augment import Augmenter
from wespeaker_lap.data.kaldi import DataError

Sample = Dict[str, Any]

SPEED_FACTORS = (0.9, 1.1)  # factor i (0-based) shifts the label by (i + 1) * n_speakers


def open_audio(samples: Iterable[Sample], sample_rate: int, bad_audio: BadAudioHandler) -> Iterator[Sample]:
    """Open and check each sample's audio; bad audio is replaced by the next readable candidate (skip mode).

    Reads ``candidates`` (iterator of ``(key, wav.scp value, label)``, the sample's own
    utterance first; the rest stay there for ``random_crop``). Writes ``key``, ``label``,
    ``base_label`` (the label before speed perturbation) and ``audio`` (an ``Audio``).
    """
    for sample in samples:
        _open_next(sample, sample_rate, bad_audio)
        yield sample


def _open_next(sample: Sample, sample_rate: int, bad_audio: BadAudioHandler) -> None:
    """Open the next readable candidate; a label already shifted by speed perturbation keeps its shift."""
    shift = sample["label"] - sample["base_label"] if "base_label" in sample else 0
    (key, _, label), audio = bad_audio.first_readable(
        sample["candidates"], lambda utt: Audio(utt[0], utt[1], sample_rate))
    sample.update(key=key, label=label + shift, base_label=label, audio=audio)


@functools.lru_cache(maxsize=None)
def _resampler(factor: float, sample_rate: int) -> torch.nn.Module:
    """torchaudio's windowed-sinc resampler from ``factor * sample_rate`` to ``sample_rate``.

    Cached per process: building the filter costs a third of applying it to 8 s.
    torchaudio is about 3x faster here than ``scipy.signal.resample_poly``, with the
    same accuracy class (see ``benchmarks/bench_data_pipeline.py``).
    """
    from torchaudio.transforms import Resample

    source_rate = round(factor * sample_rate)
    common = math.gcd(source_rate, sample_rate)
    return Resample(source_rate // common, sample_rate // common)


def speed_changed_length(n_samples: int, factor: float, sample_rate: int) -> int:
    """Length of ``n_samples`` after ``change_speed``: ``ceil(n_samples / factor)``."""
    resampler = _resampler(factor, sample_rate)
    return -(-n_samples * resampler.new_freq // resampler.orig_freq)


def change_speed(wav: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """Resample ``wav [S]`` from ``factor * sample_rate`` to ``sample_rate``: ``[ceil(S / factor)]``.

    Factor 0.9 gives slower, longer audio.
    """
    return _resampler(factor, sample_rate)(torch.from_numpy(wav)).numpy()


def read_speed_changed(audio: Audio, factor: float, sample_rate: int, start: int, stop: int) -> np.ndarray:
    """Samples ``[start, stop)`` of ``change_speed(audio.read(), factor)``, reading only the source they need."""
    if factor == 1.0:
        return audio.read(start, stop)
    resampler = _resampler(factor, sample_rate)
    up, down = resampler.new_freq, resampler.orig_freq  # output j sits at input j * down / up
    margin = resampler.width + down  # filter half-width, in input samples, plus one block
    first = max(0, (start * down // up - margin) // down * down)  # a whole block: same filter phases
    last = min(audio.n_samples, -(-stop * down // up) + margin)
    shift = first // down * up  # output index of input sample ``first``
    return change_speed(audio.read(first, last), factor, sample_rate)[start - shift: stop - shift]


def speed_perturb(samples: Iterable[Sample], prob: float, n_speakers: int) -> Iterator[Sample]:
    """With probability ``prob`` (split evenly over 0.9 and 1.1) change the speed.

    A perturbed utterance counts as a new speaker: factor 0.9 adds ``n_speakers`` to
    the label, 1.1 adds ``2 * n_speakers``. The resampling itself happens in
    ``random_crop``. Reads ``label``, ``rng``; writes ``label``, ``speed``.
    """
    for sample in samples:
        sample["speed"] = 1.0
        draw = sample["rng"].random()
        if draw < prob:
            index = int(draw >= prob / 2)
            sample["speed"] = SPEED_FACTORS[index]
            sample["label"] += (index + 1) * n_speakers
        yield sample


def random_crop(samples: Iterable[Sample], length: int, sample_rate: int,
                bad_audio: Optional[BadAudioHandler] = None) -> Iterator[Sample]:
    """Cut a random ``length``-sample window of the speed-changed audio; shorter audio is repeated (wrap-padded).

    Only the needed part of the file is read and resampled, and checked (NaN/Inf, short read).
    Bad audio found here goes to ``bad_audio`` (None: raise); in skip mode the sample's next
    candidate (from ``open_audio``) is cropped instead. Reads ``audio``, ``speed``, ``rng``
    (``candidates``, ``key``, ``label`` on a replacement); writes ``wav`` (float32 ``[length]``),
    drops ``audio`` and ``candidates``.
    """
    for sample in samples:
        while True:
            try:
                sample["wav"] = _crop(sample["audio"], sample["speed"], length, sample_rate, sample["rng"])
                break
            except DataError as err:
                if bad_audio is None or "candidates" not in sample:
                    raise
                bad_audio.handle(err)
                _open_next(sample, sample_rate, bad_audio)
        for used in ("audio", "candidates", "base_label"):
            sample.pop(used, None)
        yield sample


def _crop(audio: Audio, speed: float, length: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    n = speed_changed_length(audio.n_samples, speed, sample_rate)
    if n > length:
        start = int(rng.integers(0, n - length + 1))
        return read_speed_changed(audio, speed, sample_rate, start, start + length)
    wav = read_speed_changed(audio, speed, sample_rate, 0, n)
    return np.pad(wav, (0, length - n), mode="wrap")


def add_reverb_or_noise(samples: Iterable[Sample], augmenter: Optional[Augmenter],
                        prob: float) -> Iterator[Sample]:
    """With probability ``prob`` apply one augmentation (see ``wespeaker_lap.data.augment``).

    Reads ``wav``, ``rng``; writes ``wav`` and ``augmentation`` (its type, or None).
    """
    for sample in samples:
        sample["augmentation"] = None
        if augmenter is not None and sample["rng"].random() < prob:
            sample["wav"], sample["augmentation"] = augmenter(sample["wav"], sample["rng"])
        yield sample


def collate(samples: Iterable[Sample]) -> Dict[str, Any]:
    """Stack equal-length samples into ``{"keys", "wavs" float32 [B, S], "labels" int64 [B]}``."""
    samples: List[Sample] = list(samples)
    return {
        "keys": [s["key"] for s in samples],
        "wavs": torch.from_numpy(np.stack([s["wav"] for s in samples]).astype(np.float32, copy=False)),
        "labels": torch.tensor([s["label"] for s in samples], dtype=torch.int64),
    }
