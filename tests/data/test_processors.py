"""The sample chain: speed perturbation, cropping, reverberation and additive noise, collation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from wespeaker_lap.data import processors
from wespeaker_lap.data.audio import Audio, BadAudioHandler
from wespeaker_lap.data.augment import AUGMENT_TYPES, Augmenter
from wespeaker_lap.data.kaldi import DataError

SR = 16000
SNR = {"noise": (0.0, 15.0), "music": (5.0, 15.0), "speech": (13.0, 20.0)}


def samples_of(wavs, labels=None):
    labels = labels if labels is not None else [0] * len(wavs)
    return [{"key": f"u{i}", "wav": wav, "label": label, "rng": np.random.default_rng([7, i])}
            for i, (wav, label) in enumerate(zip(wavs, labels))]


def speech_like(n: int, seed: int = 0) -> np.ndarray:
    """A loud-ish signal: two sines plus a little noise."""
    t = np.arange(n) / SR
    noise = np.random.default_rng(seed).normal(0, 0.01, n)
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1300 * t) + noise).astype(np.float32)


def write(path, samples, sr=SR) -> str:
    sf.write(str(path), samples, sr, subtype="FLOAT")
    return str(path)


@pytest.fixture
def sources(tmp_path):
    """Three MUSAN-like clips per type and two RIRs, as (key, path) lists."""
    rng = np.random.default_rng(0)
    musan = {kind: [(f"{kind}{i}", write(tmp_path / f"{kind}{i}.wav", rng.normal(0, 0.05 * (i + 1), 12000)))
                    for i in range(3)] for kind in ("noise", "music", "speech")}
    rirs = []
    for i in range(2):
        rir = np.zeros(800)
        rir[50 + 10 * i] = 1.0
        rir[60 + 10 * i:] = rng.normal(0, 0.05, 740 - 10 * i) * np.exp(-np.arange(740 - 10 * i) / 150)
        rirs.append((f"rir{i}", write(tmp_path / f"rir{i}.wav", rir)))
    return musan, rirs


def augmenter(musan, rirs, on_bad_audio="error") -> Augmenter:
    return Augmenter(musan, rirs, SNR, (4, 7), SR, BadAudioHandler(on_bad_audio))


# ----------------------------------------------------------------------------- crop and speed


def ramp_audio(tmp_path, n: int, name: str = "ramp") -> Audio:
    """A PCM file whose sample i is i / 32768, so a window's first value tells its offset."""
    sf.write(str(tmp_path / f"{name}.wav"), np.arange(n, dtype=np.int16), SR, subtype="PCM_16")
    return Audio(name, str(tmp_path / f"{name}.wav"), SR)


def crop_samples(audios, speeds=None):
    samples = samples_of([None] * len(audios))
    for sample, audio, speed in zip(samples, audios, speeds or [1.0] * len(audios)):
        sample.update(audio=audio, speed=speed)
    return samples


def test_random_crop_takes_contiguous_windows_at_varying_offsets(tmp_path):
    audio = ramp_audio(tmp_path, 5000)
    starts = set()
    for sample in processors.random_crop(crop_samples([audio] * 30), 1200, SR):
        start = round(sample["wav"][0] * 32768)
        np.testing.assert_array_equal(sample["wav"] * 32768, np.arange(start, start + 1200))
        starts.add(start)
        assert "audio" not in sample
    assert len(starts) > 20


def test_random_crop_pads_short_utterances_by_repetition(tmp_path):
    short, exact = ramp_audio(tmp_path, 500, "short"), ramp_audio(tmp_path, 1200, "exact")
    padded, same = processors.random_crop(crop_samples([short, exact]), 1200, SR)
    np.testing.assert_array_equal(padded["wav"] * 32768, np.concatenate([np.arange(500)] * 2 + [np.arange(200)]))
    np.testing.assert_array_equal(same["wav"] * 32768, np.arange(1200))


def peak_hz(wav: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.argmax(spectrum) * SR / len(wav))


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_change_speed_scales_length_and_pitch(factor):
    tone = np.sin(2 * np.pi * 1000 * np.arange(SR) / SR).astype(np.float32)
    out = processors.change_speed(tone, factor, SR)
    assert out.dtype == np.float32 and len(out) == math.ceil(SR / factor)
    assert processors.speed_changed_length(SR, factor, SR) == len(out)
    assert abs(peak_hz(out) - 1000 * factor) < 3


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_changed_window_equals_resampling_everything(tmp_path, factor):
    sf.write(str(tmp_path / "x.wav"), speech_like(7001), SR, subtype="FLOAT")
    audio = Audio("x", str(tmp_path / "x.wav"), SR)
    full = processors.change_speed(audio.read(), factor, SR)
    rng = np.random.default_rng(0)
    for _ in range(40):
        length = int(rng.integers(1, len(full) + 1))
        start = int(rng.integers(0, len(full) - length + 1))
        window = processors.read_speed_changed(audio, factor, SR, start, start + length)
        np.testing.assert_allclose(window, full[start: start + length], atol=1e-6)


def test_random_crop_of_speed_changed_audio(tmp_path):
    sf.write(str(tmp_path / "x.wav"), speech_like(4000), SR, subtype="FLOAT")
    audio = Audio("x", str(tmp_path / "x.wav"), SR)
    slow = processors.change_speed(audio.read(), 0.9, SR)  # 4445 samples
    for sample in processors.random_crop(crop_samples([audio] * 5, [0.9] * 5), 1600, SR):
        start = int(np.argmin(np.abs(slow[: len(slow) - 1599] - sample["wav"][0])))
        np.testing.assert_allclose(sample["wav"], slow[start: start + 1600], atol=1e-6)
    padded, = processors.random_crop(crop_samples([audio], [1.1]), 8000, SR)
    fast = processors.change_speed(audio.read(), 1.1, SR)  # 3637 samples, repeated
    np.testing.assert_allclose(padded["wav"], np.tile(fast, 3)[:8000], atol=1e-6)


def test_speed_perturb_labels():
    n_speakers = 5
    out = list(processors.speed_perturb(samples_of([None] * 60, labels=[2] * 60), 1.0, n_speakers))
    labels = {s["speed"]: set() for s in out}
    for sample in out:
        labels[sample["speed"]].add(sample["label"])
    assert labels == {0.9: {2 + n_speakers}, 1.1: {2 + 2 * n_speakers}}  # never unperturbed at prob 1


def test_speed_perturb_probability():
    out = list(processors.speed_perturb(samples_of([None] * 400), 0.4, 10))
    labels = np.array([s["label"] for s in out])
    assert 0.53 < np.mean(labels == 0) < 0.67  # 1 - prob kept
    assert abs(np.mean(labels == 10) - np.mean(labels == 20)) < 0.08
    assert all(s["speed"] == {0: 1.0, 10: 0.9, 20: 1.1}[s["label"]] for s in out)
    untouched = list(processors.speed_perturb(samples_of([None] * 20), 0.0, 10))
    assert all(s["label"] == 0 and s["speed"] == 1.0 for s in untouched)


def test_open_audio_replaces_bad_audio_in_skip_mode(tmp_path):
    good = ramp_audio(tmp_path, 100, "good")
    candidates = [("bad", str(tmp_path / "missing.wav"), 1), ("good", good.spec, 2)]
    with pytest.raises(DataError, match="'bad'.*missing.wav"):
        list(processors.open_audio([{"candidates": iter(candidates)}], SR, BadAudioHandler("error")))
    handler = BadAudioHandler("skip")
    (sample,) = processors.open_audio([{"candidates": iter(candidates)}], SR, handler)
    assert (sample["key"], sample["label"], sample["audio"].n_samples) == ("good", 2, 100)
    assert handler.count == 1


# ----------------------------------------------------------------------------- reverb


def _delayed(wav: np.ndarray, lag: int) -> np.ndarray:
    return np.concatenate([np.zeros(lag, np.float32), wav[:-lag]])


def test_reverb_keeps_the_start_of_the_full_convolution(tmp_path, sources):
    """As the official code: unit-energy RIR, full convolution, the first len(wav) samples (onset delay kept)."""
    musan, _ = sources
    rir = np.zeros(400)
    rir[100], rir[300] = 1.0, 0.5
    aug = augmenter(musan, [("echo", write(tmp_path / "echo.wav", rir))])
    wav = speech_like(2000)
    out = aug.reverb(wav, np.random.default_rng(0))
    expected = (_delayed(wav, 100) + 0.5 * _delayed(wav, 300)) / math.sqrt(1.25)
    assert out.shape == wav.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_reverb_changes_signal_and_keeps_length(sources):
    musan, rirs = sources
    wav = speech_like(4000)
    out = augmenter(musan, rirs).reverb(wav, np.random.default_rng(3))
    assert out.shape == wav.shape and np.all(np.isfinite(out))
    assert np.mean((out - wav) ** 2) > 1e-4 * np.mean(wav ** 2)


def test_reverb_picks_one_channel_of_a_multichannel_rir(tmp_path, sources):
    musan, _ = sources
    rir = np.zeros((300, 2))
    rir[10, :] = 1.0
    rir[210, 1] = 1.0  # channel 1 has an echo, channel 0 has none
    aug = augmenter(musan, [("mc", write(tmp_path / "mc.wav", rir))])
    wav = speech_like(1000)
    dry = _delayed(wav, 10)
    echo = (_delayed(wav, 10) + _delayed(wav, 210)) / math.sqrt(2)
    seen = set()
    for seed in range(12):
        out = aug.reverb(wav, np.random.default_rng(seed))
        seen.add("dry" if np.allclose(out, dry, atol=1e-5) else "echo" if np.allclose(out, echo, atol=1e-5)
                 else "other")
    assert seen == {"dry", "echo"}


# ----------------------------------------------------------------------------- additive noise


def snr_db(clean: np.ndarray, noise: np.ndarray) -> float:
    return 10 * math.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))


@pytest.mark.parametrize("kind", ["noise", "music"])
def test_full_coverage_snr_is_within_the_type_range(sources, kind):
    aug = augmenter(*sources)
    wav = speech_like(4000)
    snrs = [snr_db(wav, aug.add_noise(wav, np.random.default_rng(s), kind, coverage="full") - wav)
            for s in range(40)]
    low, high = SNR[kind]
    assert low - 0.01 <= min(snrs) and max(snrs) <= high + 0.01
    assert max(snrs) - min(snrs) > 0.5 * (high - low)  # drawn, not fixed


def test_partial_clip_covers_a_fraction_at_the_drawn_snr(sources):
    aug = augmenter(*sources)
    wav = speech_like(4000)
    for seed in range(20):
        added = aug.add_noise(wav, np.random.default_rng(seed), "noise", coverage="third") - wav
        active = np.flatnonzero(np.abs(added) > 0)
        span = active[-1] - active[0] + 1
        assert 0.2 * 4000 - 1 <= span <= 0.4 * 4000
        clip_snr = 10 * math.log10(np.mean(wav.astype(np.float64) ** 2)
                                   / np.mean(added[active[0]: active[-1] + 1].astype(np.float64) ** 2))
        assert -0.01 <= clip_snr <= 15.01


def test_babble_mixes_several_speech_clips(sources):
    aug = augmenter(*sources)
    wav = speech_like(4000)
    snrs = [snr_db(wav, aug.add_noise(wav, np.random.default_rng(s), "speech", coverage="full") - wav)
            for s in range(30)]
    # 4-7 roughly uncorrelated clips at 13-20 dB each: the total SNR lies 6-8.5 dB below a single clip's
    assert 13 - 10 * math.log10(7) - 0.7 <= min(snrs) and max(snrs) <= 20 - 10 * math.log10(4) + 0.7
    assert np.mean(snrs) < 13


def test_augmenter_draws_types_uniformly(sources):
    aug = augmenter(*sources)
    assert aug.types == AUGMENT_TYPES
    wav = speech_like(800)
    counts = {t: 0 for t in AUGMENT_TYPES}
    for seed in range(250):
        out, kind = aug(wav, np.random.default_rng(seed))
        assert out.shape == wav.shape and not np.array_equal(out, wav)
        counts[kind] += 1
    assert min(counts.values()) > 30


def test_augmenter_types_follow_the_available_sources(sources):
    musan, rirs = sources
    assert augmenter({}, rirs).types == ("reverb",)
    assert augmenter(musan, []).types == ("noise", "music", "babble", "television")
    with pytest.raises(ValueError, match="needs RIRs or MUSAN"):
        augmenter({"noise": musan["noise"]}, [])


def test_bad_noise_file_errors_or_is_replaced(tmp_path, sources):
    musan, rirs = sources
    musan = dict(musan, noise=[("broken-noise", str(tmp_path / "missing.wav"))] + musan["noise"][:1])
    wav = speech_like(1000)
    strict = augmenter(musan, rirs, "error")
    with pytest.raises(DataError, match="broken-noise.*missing.wav"):
        for seed in range(20):
            strict.add_noise(wav, np.random.default_rng(seed), "noise")
    lenient = augmenter(musan, rirs, "skip")
    for seed in range(20):
        assert not np.array_equal(lenient.add_noise(wav, np.random.default_rng(seed), "noise"), wav)
    assert lenient.bad_audio.count > 0


def test_add_reverb_or_noise_probability(sources):
    aug = augmenter(*sources)
    wavs = [speech_like(400, seed=i) for i in range(200)]
    out = list(processors.add_reverb_or_noise(samples_of([w.copy() for w in wavs]), aug, 0.6))
    applied = [s["augmentation"] is not None for s in out]
    assert 0.5 < np.mean(applied) < 0.7
    for sample, wav, was_applied in zip(out, wavs, applied):
        assert np.array_equal(sample["wav"], wav) != was_applied
    plain = list(processors.add_reverb_or_noise(samples_of(wavs[:5]), None, 0.6))
    assert all(s["augmentation"] is None for s in plain)


# ----------------------------------------------------------------------------- collate


def test_collate_stacks_a_batch():
    batch = processors.collate(samples_of([np.ones(5, np.float32), np.zeros(5, np.float32)], labels=[3, 1]))
    assert batch["keys"] == ["u0", "u1"]
    assert batch["wavs"].dtype == torch.float32 and batch["wavs"].shape == (2, 5)
    assert batch["labels"].dtype == torch.int64 and batch["labels"].tolist() == [3, 1]
