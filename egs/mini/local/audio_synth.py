"""Synthetic degradations for the mini corpus: coloured noise, music, room responses, channels.

Every function takes its randomness from a ``numpy.random.Generator``; :func:`rng_for` derives one
from the seed and names (e.g. the utterance key), so a result never depends on the order or the
process in which it was made. Signals are float64 ``[S]`` at ``SAMPLE_RATE``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from scipy.fft import irfft, next_fast_len, rfft, rfftfreq
from scipy.signal import butter, fftconvolve, lfilter, sosfilt

from wespeaker_lap.utils.io import atomic_open

SAMPLE_RATE = 16000
LN_1000 = np.log(1000.0)  # a 60 dB amplitude decay is a factor 1000
ROOM_RT60: Dict[str, Tuple[float, float]] = {"smallroom": (0.15, 0.45), "mediumroom": (0.4, 0.9)}  # seconds


def rng_for(seed: int, *names: str) -> np.random.Generator:
    """A generator that depends only on ``seed`` and ``names``."""
    digest = hashlib.sha256("\0".join(names).encode("utf-8")).digest()
    return np.random.default_rng([seed, *np.frombuffer(digest[:16], dtype=np.uint32).tolist()])


def unit_rms(x: np.ndarray) -> np.ndarray:
    rms = np.sqrt(np.mean(x ** 2))
    return x / rms if rms > 0 else x


def coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power spectrum ~ 1 / f**exponent (0 white, 1 pink, 2 brown, -1 blue), unit RMS."""
    size = next_fast_len(n, real=True)  # an FFT of a large prime length would be slow
    spectrum = rfft(rng.standard_normal(size))
    freqs = rfftfreq(size, 1 / SAMPLE_RATE)
    freqs[0] = freqs[1]  # no infinite gain at DC
    noise = irfft(spectrum * freqs ** (-exponent / 2), size)[:n]
    return unit_rms(noise - noise.mean())


def synthetic_music(rng: np.random.Generator, n: int) -> np.ndarray:
    """Chords, a melody and a bass line of harmonic tones with attack-decay envelopes, unit RMS."""
    beat = 60.0 / rng.uniform(70, 150)  # seconds
    root = int(rng.integers(45, 57))  # MIDI note
    scale = np.array([0, 2, 4, 5, 7, 9, 11] if rng.random() < 0.5 else [0, 2, 3, 5, 7, 8, 10])
    rolloff = rng.uniform(0.8, 2.0)  # harmonic k has amplitude 1 / k**rolloff
    table_size = 8192
    phase = np.arange(table_size) / table_size
    tables: Dict[int, np.ndarray] = {}  # number of harmonics -> one period of the tone
    out = np.zeros(n)

    def tone(midi: int, start: int, seconds: float, gain: float) -> None:
        decay = rng.uniform(0.15, 0.8)  # seconds
        length = min(int(min(seconds, 5 * decay) * SAMPLE_RATE), n - start)
        if length <= 0:
            return
        freq = 440.0 * 2 ** ((midi - 69) / 12)
        count = max(1, min(6, int(SAMPLE_RATE / 2 // freq)))  # harmonics below Nyquist
        if count not in tables:
            k = np.arange(1, count + 1)[:, None]
            tables[count] = (np.sin(2 * np.pi * k * phase) / k ** rolloff).sum(0)
        t = np.arange(length) / SAMPLE_RATE
        index = (freq * t * table_size).astype(np.int64) % table_size
        envelope = np.minimum(t / 0.01, 1.0) * np.exp(-t / decay)
        out[start:start + length] += gain * tables[count][index] * envelope

    def note(degree: int, octave: int) -> int:
        return root + 12 * (octave + degree // 7) + int(scale[degree % 7])

    start = 0
    while start < n:  # one chord per bar of 2 or 4 beats, a melody note per half or whole beat
        bar = beat * int(rng.choice([2, 4]))
        chord = int(rng.integers(0, 7))
        for third in (0, 2, 4):
            tone(note(chord + third, 0), start, bar, 0.3)
        tone(note(chord, -1), start, bar, 0.5)
        t = 0.0
        while t < bar:
            step = beat * float(rng.choice([0.5, 1.0]))
            tone(note(int(rng.integers(0, 10)), 1), start + int(t * SAMPLE_RATE), step * 1.5, 0.6)
            t += step
        start += int(bar * SAMPLE_RATE)
    return unit_rms(out)


def synthetic_rir(rng: np.random.Generator, rt60: float) -> np.ndarray:
    """A room impulse response: a direct path, a few early reflections, then exponentially decaying
    noise that loses 60 dB in ``rt60`` seconds below 2 kHz and twice as fast above; unit energy."""
    onset = int(rng.uniform(0.001, 0.005) * SAMPLE_RATE)  # direct path
    length = onset + int(1.2 * rt60 * SAMPLE_RATE)
    t = np.arange(length - onset) / SAMPLE_RATE
    low_sos = butter(2, 2000, btype="lowpass", fs=SAMPLE_RATE, output="sos")
    high_sos = butter(2, 2000, btype="highpass", fs=SAMPLE_RATE, output="sos")
    tail = (sosfilt(low_sos, rng.standard_normal(len(t))) * np.exp(-LN_1000 * t / rt60)
            + sosfilt(high_sos, rng.standard_normal(len(t))) * np.exp(-2 * LN_1000 * t / rt60))
    tail[: int(rng.uniform(0.002, 0.008) * SAMPLE_RATE)] = 0.0  # the diffuse field builds up after the direct sound
    for _ in range(int(rng.integers(3, 8))):  # early reflections within 30 ms
        tail[int(rng.uniform(0.002, 0.03) * SAMPLE_RATE)] += rng.choice([-1, 1]) * rng.uniform(0.2, 0.6)
    direct_to_reverb_db = rng.uniform(-2.0, 8.0)
    direct = np.sqrt(np.sum(tail ** 2) * 10 ** (direct_to_reverb_db / 10))
    rir = np.zeros(length)
    rir[onset] = max(direct, 1.1 * np.abs(tail).max())  # the direct path stays the largest tap
    rir[onset:] += tail
    return rir / np.sqrt(np.sum(rir ** 2))


def reverberate(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with ``rir``, aligned to its largest tap (the direct path), same length as ``x``."""
    peak = int(np.argmax(np.abs(rir)))
    return fftconvolve(x, rir)[peak:peak + len(x)]


def channel(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """A random transmission channel: band limits, spectral tilt and, sometimes, soft clipping."""
    low, high = rng.uniform(60, 300), rng.uniform(3400, 7600)
    y = sosfilt(butter(4, [low, high], btype="bandpass", fs=SAMPLE_RATE, output="sos"), x)
    y = lfilter([1.0, -rng.uniform(-0.5, 0.7)], [1.0], y)  # > 0 thins the lows, < 0 muffles the highs
    if rng.random() < 0.3:
        drive = rng.uniform(1.5, 4.0)
        peak = np.abs(y).max()
        if peak > 0:
            y = np.tanh(drive * y / peak) * peak / np.tanh(drive)
    return y


def window(rng: np.random.Generator, x: np.ndarray, n: int) -> np.ndarray:
    """A random ``n``-sample stretch of ``x``, repeated (wrap-padded) when ``x`` is shorter."""
    if len(x) >= n:
        start = int(rng.integers(0, len(x) - n + 1))
        return x[start:start + n]
    return np.pad(x, (0, n - len(x)), mode="wrap")


def add_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech + g * noise`` with ``g`` such that mean-square(speech) / mean-square(g * noise) is ``snr_db``."""
    speech_power, noise_power = np.mean(speech ** 2), np.mean(noise ** 2)
    if noise_power == 0:
        return speech
    return speech + noise * np.sqrt(speech_power / (noise_power * 10 ** (snr_db / 10)))


def write_wav(path: str | Path, pcm: np.ndarray) -> None:
    """Write int16 ``pcm`` as a 16 kHz mono wav, atomically (parent folders are made)."""
    import soundfile as sf

    with atomic_open(path, "wb") as f:
        sf.write(f, pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")


def to_pcm16(x: np.ndarray, rms_dbfs: float) -> np.ndarray:
    """Scale to ``rms_dbfs`` (lowered where the peak would pass -1 dBFS) and quantise to int16."""
    gain = 10 ** (rms_dbfs / 20) / max(np.sqrt(np.mean(x ** 2)), 1e-9)
    gain = min(gain, 10 ** (-1 / 20) / max(np.abs(x).max(), 1e-9))
    return np.round(x * gain * 32767).astype(np.int16)


# ----------------------------------------------------------------------------- corpus degradation


@dataclass(frozen=True)
class DegradeLevel:
    """How strongly the corpus is degraded (``make_tts_corpus.py --augment``)."""

    prob: float  # fraction of utterances degraded beyond the noise floor
    additive_prob: float  # of those: additive noise, babble or music
    additive_weights: Tuple[float, float, float]  # noise, babble, music
    snr_db: Tuple[float, float]
    reverb_prob: float
    rt60: Tuple[float, float]
    channel_prob: float
    floor_snr_db: Tuple[float, float] = (35.0, 55.0)  # white noise under every utterance: no digital silence


DEGRADE_LEVELS: Dict[str, Optional[DegradeLevel]] = {
    "none": None,
    "light": DegradeLevel(0.5, 0.7, (0.6, 0.2, 0.2), (10.0, 25.0), 0.3, (0.15, 0.5), 0.3),
    "medium": DegradeLevel(0.8, 0.8, (0.4, 0.4, 0.2), (5.0, 20.0), 0.5, (0.15, 0.9), 0.6),
}
NOISE_EXPONENTS = (-1.0, 0.0, 1.0, 2.0)  # blue, white, pink, brown


def babble_noise(rng: np.random.Generator, n: int, sources: Sequence[str]) -> np.ndarray:
    """3-6 talkers: random ``n``-sample stretches of ``sources`` (16 kHz wavs) at +-3 dB, summed."""
    import soundfile as sf

    talkers = rng.choice(len(sources), size=min(len(sources), int(rng.integers(3, 7))), replace=False)
    out = np.zeros(n)
    for i in talkers:
        speech, rate = sf.read(sources[i], dtype="float64")
        if rate != SAMPLE_RATE or speech.ndim != 1:
            raise ValueError(f"{sources[i]}: {rate} Hz with shape {speech.shape}; expected {SAMPLE_RATE} Hz mono")
        out += unit_rms(window(rng, speech, n)) * 10 ** (rng.uniform(-3, 3) / 20)
    return out


def degrade(rng: np.random.Generator, x: np.ndarray, level: DegradeLevel,
            babble_sources: Sequence[str]) -> Tuple[np.ndarray, str]:
    """Reverberate, add noise/babble/music and pass through a channel, each at random per ``level``;
    every utterance also gets a faint white noise floor (no digital silence, whatever the engine).

    ``babble_sources`` are wavs of other speakers' clean speech (none: noise instead of babble).
    Returns the signal and what was done beyond the floor, e.g. ``reverb0.42+babble12dB+channel``
    or ``clean``.
    """
    x = add_at_snr(x, rng.standard_normal(len(x)), rng.uniform(*level.floor_snr_db))
    if rng.random() >= level.prob:
        return x, "clean"
    steps = {"reverb": rng.random() < level.reverb_prob, "additive": rng.random() < level.additive_prob,
             "channel": rng.random() < level.channel_prob}
    if not any(steps.values()):
        steps["additive"] = True
    done = []
    if steps["reverb"]:
        rt60 = rng.uniform(*level.rt60)
        x = reverberate(x, synthetic_rir(rng, rt60))
        done.append(f"reverb{rt60:.2f}")
    if steps["additive"]:
        kind = str(rng.choice(["noise", "babble", "music"], p=np.array(level.additive_weights)))
        if kind == "babble" and not babble_sources:
            kind = "noise"
        snr = rng.uniform(*level.snr_db)
        if kind == "noise":
            noise = coloured_noise(rng, len(x), float(rng.choice(NOISE_EXPONENTS)))
        elif kind == "music":
            noise = synthetic_music(rng, len(x))
        else:
            noise = babble_noise(rng, len(x), babble_sources)
        x = add_at_snr(x, noise, snr)
        done.append(f"{kind}{snr:.0f}dB")
    if steps["channel"]:
        x = channel(rng, x)
        done.append("channel")
    return x, "+".join(done)
