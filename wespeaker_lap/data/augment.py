"""Reverberation and additive MUSAN noise, as in the authors' training code (docs/reproduction.md §RIR pool).

One augmentation per call, chosen uniformly from the available types:

* ``reverb``: as the official code: one RIR drawn uniformly from the list (real
  and simulated alike), a random channel of a multi-channel one, normalised to
  unit energy, convolved with the crop, and the first ``len(crop)`` samples of
  the full convolution kept (so the speech is delayed by the RIR's onset).
* ``noise`` / ``music``: one MUSAN clip of that type at ``noise_snr`` / ``music_snr``.
* ``babble``: ``babble_speakers`` speech clips, each at ``babble_snr``.
* ``television``: full-length babble, then one full-length music clip whose SNR
  is taken against the babbled signal (the authors' fifth type; kept for fidelity).

An additive clip covers a fraction of the crop, drawn per clip from one class
picked once per call: full (1.0), half (0.4-0.6) or third (0.2-0.4); it sits at
a random offset and is scaled so that (crop power) / (clip power) equals the
drawn SNR. The powers are exact mean squares; the authors add 1e-4 to each
before taking dB, which biases the SNR of quiet utterances (our departure).
SNR ranges come from the list's type column (noise, music, speech), never from
keys. The result is not renormalised.
"""
from __future__ import annotations

import math
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from wespeaker_lap.config import AugmentConfig, ConfigError
from wespeaker_lap.data.audio import BadAudioHandler, read_audio, read_random_segment
from wespeaker_lap.data.augment_lists import MUSAN_TYPES, RIR_TYPES, read_augment_list
from wespeaker_lap.data.kaldi import DataError

AUGMENT_TYPES = ("reverb", "noise", "music", "babble", "television")
COVERAGE = {"full": (1.0, 1.0), "half": (0.4, 0.6), "third": (0.2, 0.4)}  # fraction of the crop

Source = Tuple[str, str]  # (key, path)


def _rotated(sources: Sequence[Source], start: int) -> Iterator[Source]:
    """``sources`` from ``start`` on, wrapping around: the fall-backs for a bad file."""
    return (sources[(start + i) % len(sources)] for i in range(len(sources)))


def _range(cfg_value: Sequence[float], key: str, low: float = -math.inf) -> Tuple[float, float]:
    if len(cfg_value) != 2 or not low <= cfg_value[0] <= cfg_value[1]:
        raise ConfigError(f"data.augment.{key}: expected [min, max] with {low} <= min <= max, got {cfg_value}")
    return cfg_value[0], cfg_value[1]


def _read_rir(key: str, path: str, sample_rate: int) -> np.ndarray:
    """A whole RIR as ``[S, C]``; a silent one is bad audio."""
    rir = read_audio(key, path, sample_rate, mono=False)
    if not np.any(rir):
        raise DataError(f"bad audio {key!r} ({path}): silent RIR (all zeros)")
    return rir


class Augmenter:
    """Applies one random reverb / noise / music / babble / television augmentation."""

    def __init__(self, musan: Mapping[str, Sequence[Source]], rirs: Sequence[Source],
                 snr: Mapping[str, Tuple[float, float]], babble_speakers: Tuple[int, int],
                 sample_rate: int, bad_audio: BadAudioHandler):
        self.musan = {kind: list(musan.get(kind, ())) for kind in MUSAN_TYPES}
        self.rirs = list(rirs)
        self.snr = dict(snr)  # MUSAN type -> (min dB, max dB)
        self.clip_counts = {"noise": (1, 1), "music": (1, 1), "speech": babble_speakers}
        self.sample_rate = sample_rate
        self.bad_audio = bad_audio
        has_musan = all(self.musan.values())
        self.types = tuple(t for t in AUGMENT_TYPES if (self.rirs if t == "reverb" else has_musan))
        if not self.types:
            raise ValueError("Augmenter needs RIRs or MUSAN clips of every type (noise, music, speech)")

    @classmethod
    def from_config(cls, cfg: AugmentConfig, sample_rate: int,
                    bad_audio: BadAudioHandler) -> Optional["Augmenter"]:
        """Read the MUSAN and RIR lists; ``None`` when ``cfg.prob`` is 0."""
        if not 0 <= cfg.prob <= 1:
            raise ConfigError(f"data.augment.prob: must be in [0, 1], got {cfg.prob}")
        if cfg.prob == 0:
            return None
        if cfg.musan_list is None and cfg.rir_list is None:
            raise ConfigError("data.augment.prob > 0 but neither data.augment.musan_list nor "
                              "data.augment.rir_list is set; set them, or set data.augment.prob=0")
        musan: Dict[str, List[Source]] = {kind: [] for kind in MUSAN_TYPES}
        if cfg.musan_list is not None:
            for key, path, kind in read_augment_list(cfg.musan_list, types=MUSAN_TYPES):
                musan[kind].append((key, path))
            missing = [kind for kind in MUSAN_TYPES if not musan[kind]]
            if missing:
                raise DataError(f"{cfg.musan_list}: no entries of type {', '.join(missing)}")
        rirs: List[Source] = []
        if cfg.rir_list is not None:
            rirs = [(key, path) for key, path, _ in read_augment_list(cfg.rir_list, types=RIR_TYPES)]
        snr = {"noise": _range(cfg.noise_snr, "noise_snr"), "music": _range(cfg.music_snr, "music_snr"),
               "speech": _range(cfg.babble_snr, "babble_snr")}
        low, high = _range(cfg.babble_speakers, "babble_speakers", low=1)
        return cls(musan, rirs, snr, (int(low), int(high)), sample_rate, bad_audio)

    def __call__(self, wav: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, str]:
        """Apply one augmentation of a uniformly drawn type; return ``(wav, type)``."""
        kind = self.types[rng.integers(len(self.types))]
        if kind == "reverb":
            return self.reverb(wav, rng), kind
        if kind == "television":
            babbled = self.add_noise(wav, rng, "speech", coverage="full")
            return self.add_noise(babbled, rng, "music", coverage="full"), kind
        return self.add_noise(wav, rng, "speech" if kind == "babble" else kind), kind

    def reverb(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Convolve ``wav [S]`` with a random unit-energy RIR; the first ``S`` samples of the full convolution."""
        start = int(rng.integers(len(self.rirs)))
        _, rir = self.bad_audio.first_readable(
            _rotated(self.rirs, start), lambda src: _read_rir(src[0], src[1], self.sample_rate))
        rir = rir[:, rng.integers(rir.shape[1])]  # [S_rir, C] -> [S_rir], one channel
        rir = rir / np.sqrt(np.dot(rir, rir))
        rir = rir[: len(wav)]  # later taps cannot reach the outputs we keep
        from scipy.signal import fftconvolve  # imported here: scipy.signal costs ~1 s per process to load

        return fftconvolve(wav, rir)[: len(wav)].astype(np.float32)

    def add_noise(self, wav: np.ndarray, rng: np.random.Generator, kind: str,
                  coverage: Optional[str] = None) -> np.ndarray:
        """Add random MUSAN clips of ``kind`` (noise, music or speech) to ``wav [S]``; ``[S]``.

        ``coverage`` (a ``COVERAGE`` name) is drawn when not given.
        """
        low, high = self.clip_counts[kind]
        n_clips = int(rng.integers(low, high + 1))
        if coverage is None:
            coverage = list(COVERAGE)[rng.integers(len(COVERAGE))]
        sources = self.musan[kind]
        clean_power = float(np.dot(wav, wav)) / len(wav)
        noise = np.zeros(len(wav), dtype=np.float32)
        for _ in range(n_clips):
            length = max(1, int(rng.uniform(*COVERAGE[coverage]) * len(wav)))
            start = int(rng.integers(len(sources)))
            _, clip = self.bad_audio.first_readable(
                _rotated(sources, start),
                lambda src, n=length: read_random_segment(src[0], src[1], self.sample_rate, n, rng))
            snr_db = rng.uniform(*self.snr[kind])
            clip_power = max(float(np.dot(clip, clip)) / length, 1e-20)
            gain = math.sqrt(clean_power / (clip_power * 10 ** (snr_db / 10)))
            offset = int(rng.integers(0, len(wav) - length + 1))
            noise[offset: offset + length] += np.float32(gain) * clip
        return wav + noise
