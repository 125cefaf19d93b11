"""Audio reading: wav files, kaldiio ark entries, partial reads and bad-audio handling."""
from __future__ import annotations

import logging

import kaldiio
import numpy as np
import pytest
import soundfile as sf

from wespeaker_lap.data.audio import (
    MIN_EMBED_SECONDS,
    Audio,
    BadAudioHandler,
    audio_length,
    read_audio,
    read_random_segment,
)
from wespeaker_lap.data.kaldi import DataError

SR = 16000


def pcm(n: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    shape = (n,) if channels == 1 else (n, channels)
    return np.random.default_rng(seed).integers(-20000, 20000, shape).astype(np.int16)


def write_wav(path, samples: np.ndarray, sr: int = SR) -> str:
    sf.write(str(path), samples, sr, subtype="PCM_16")
    return str(path)


def test_reads_wav_as_float(tmp_path):
    samples = pcm(1234)
    wav = read_audio("u1", write_wav(tmp_path / "a.wav", samples), SR)
    assert wav.dtype == np.float32 and wav.shape == (1234,)
    np.testing.assert_array_equal(wav, samples / 32768.0)


def test_reads_kaldiio_ark_entry_like_the_wav_file(tmp_path):
    samples = pcm(999, seed=1)
    kaldiio.save_ark(str(tmp_path / "a.ark"), {"u1": (SR, samples), "u2": (SR, pcm(50, 2))},
                     scp=str(tmp_path / "a.scp"))
    specs = dict(line.split() for line in (tmp_path / "a.scp").read_text().splitlines())
    assert specs["u1"].startswith(str(tmp_path / "a.ark") + ":")
    from_ark = read_audio("u1", specs["u1"], SR)
    from_wav = read_audio("u1", write_wav(tmp_path / "a.wav", samples), SR)
    np.testing.assert_array_equal(from_ark, from_wav)
    assert read_audio("u2", specs["u2"], SR).shape == (50,)


def test_audio_reads_only_the_requested_range(tmp_path):
    samples = pcm(3000, seed=5)
    kaldiio.save_ark(str(tmp_path / "a.ark"), {"u1": (SR, samples)}, scp=str(tmp_path / "a.scp"))
    ark_spec = (tmp_path / "a.scp").read_text().split()[1]
    for spec in (write_wav(tmp_path / "a.wav", samples), ark_spec):
        audio = Audio("u1", spec, SR)
        assert (audio.n_samples, audio.channels) == (3000, 1)
        np.testing.assert_array_equal(audio.read(1000, 1500), samples[1000:1500] / 32768.0)
        np.testing.assert_array_equal(audio.read(), samples / 32768.0)
        with pytest.raises(ValueError, match="u1: range"):
            audio.read(2000, 3001)


def test_truncated_compressed_file_is_caught_when_opened(tmp_path):
    path = tmp_path / "cut.flac"
    sf.write(str(path), np.random.default_rng(0).normal(0, 0.1, 16000), SR)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=r"'cut'.*cut\.flac.*unreadable at sample 15999"):
        Audio("cut", str(path), SR)


def test_multichannel_allowed_when_not_mono(tmp_path):
    path = write_wav(tmp_path / "st.wav", pcm(100, channels=3))
    assert read_audio("r", path, SR, mono=False).shape == (100, 3)
    assert read_audio("m", write_wav(tmp_path / "m.wav", pcm(100)), SR, mono=False).shape == (100, 1)


def _bad_wav_cases(tmp_path):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really a wav file")
    return {
        "missing": (str(tmp_path / "nope.wav"), "not found"),
        "unreadable": (str(garbage), "unreadable"),
        "empty": (write_wav(tmp_path / "empty.wav", np.zeros(0, np.int16)), "empty"),
        "rate": (write_wav(tmp_path / "8k.wav", pcm(100), sr=8000), "sample rate 8000"),
        "stereo": (write_wav(tmp_path / "st.wav", pcm(100, channels=2)), "2 channels"),
    }


@pytest.mark.parametrize("case", ["missing", "unreadable", "empty", "rate", "stereo"])
def test_bad_wav_names_key_and_path(tmp_path, case):
    path, reason = _bad_wav_cases(tmp_path)[case]
    with pytest.raises(DataError) as err:
        read_audio(f"utt-{case}", path, SR)
    assert f"utt-{case}" in str(err.value) and path in str(err.value) and reason in str(err.value)


@pytest.mark.parametrize("case", ["missing", "offset", "matrix", "rate", "stereo", "empty"])
def test_bad_ark_entry_names_key_and_path(tmp_path, case):
    ark = str(tmp_path / "a.ark")
    entries = {"ok": (SR, pcm(10)), "matrix": np.zeros((3, 4), np.float32), "rate": (8000, pcm(10)),
               "stereo": (SR, pcm(10, channels=2)), "empty": (SR, np.zeros(0, np.int16))}
    kaldiio.save_ark(ark, entries, scp=str(tmp_path / "a.scp"))
    specs = dict(line.split() for line in (tmp_path / "a.scp").read_text().splitlines())
    spec, reason = {
        "missing": (str(tmp_path / "other.ark:12"), "not found"),
        "offset": (f"{ark}:5", "unreadable"),
        "matrix": (specs["matrix"], "matrix"),
        "rate": (specs["rate"], "sample rate 8000"),
        "stereo": (specs["stereo"], "2 channels"),
        "empty": (specs["empty"], "empty"),
    }[case]
    with pytest.raises(DataError) as err:
        read_audio("utt7", spec, SR)
    assert "utt7" in str(err.value) and spec in str(err.value) and reason in str(err.value)


def test_pipe_command_is_rejected(tmp_path):
    with pytest.raises(DataError, match="utt1.*pipe"):
        read_audio("utt1", "sox a.flac -t wav - |", SR)


def test_random_segment_is_a_slice_of_the_file(tmp_path):
    ramp = np.arange(5000, dtype=np.int16)  # each sample's value is its index
    path = write_wav(tmp_path / "n.wav", ramp)
    starts = set()
    for seed in range(20):
        seg = read_random_segment("n1", path, SR, 700, np.random.default_rng(seed))
        assert seg.shape == (700,) and seg.dtype == np.float32
        start = round(seg[0] * 32768)
        np.testing.assert_array_equal(seg * 32768, np.arange(start, start + 700))
        starts.add(start)
    assert len(starts) > 10  # the offset varies with the rng


def test_random_segment_of_short_file_is_wrap_padded(tmp_path):
    samples = pcm(300, seed=4)
    path = write_wav(tmp_path / "short.wav", samples)
    seg = read_random_segment("s", path, SR, 700, np.random.default_rng(0))
    np.testing.assert_array_equal(seg, np.tile(samples / 32768.0, 3)[:700])


def test_random_segment_rejects_bad_files(tmp_path):
    for case, (path, reason) in _bad_wav_cases(tmp_path).items():
        with pytest.raises(DataError) as err:
            read_random_segment(f"noise-{case}", path, SR, 50, np.random.default_rng(0))
        assert f"noise-{case}" in str(err.value) and path in str(err.value) and reason in str(err.value)


def test_handler_error_mode_raises():
    handler = BadAudioHandler("error")
    with pytest.raises(DataError, match="boom"):
        handler.handle(DataError("boom"))


def test_handler_skip_mode_counts_and_warns(caplog):
    handler = BadAudioHandler("skip")
    reads = {"a": None, "b": None, "c": 3.0}

    def read(name):
        if reads[name] is None:
            raise DataError(f"bad audio {name!r} (/x/{name}.wav): file not found")
        return reads[name]

    with caplog.at_level(logging.WARNING, logger="wespeaker_lap.data.audio"):
        assert handler.first_readable(["a", "b", "c"], read) == ("c", 3.0)
    assert handler.count == 2
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "#1" in messages[0] and "/x/a.wav" in messages[0]
    assert "#2" in messages[1] and "/x/b.wav" in messages[1]


def test_handler_raises_when_nothing_is_readable():
    handler = BadAudioHandler("skip")

    def read(name):
        raise DataError(f"bad audio {name!r}: unreadable")

    with pytest.raises(DataError, match="no readable audio.*'b'"):
        handler.first_readable(["a", "b"], read)
    assert handler.count == 2


def test_handler_rejects_unknown_mode():
    with pytest.raises(ValueError, match="on_bad_audio"):
        BadAudioHandler("ignore")


# ----------------------------------------------------------------------------- non-finite, truncated, short, pipes
def float_wav(path, samples: np.ndarray) -> str:
    sf.write(str(path), samples.astype(np.float32), SR, subtype="FLOAT")
    return str(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_bad_audio(tmp_path, bad):
    samples = np.zeros(4000, np.float32)
    samples[3210] = bad
    path = float_wav(tmp_path / "nan.wav", samples)
    with pytest.raises(DataError, match=rf"bad audio 'u1' \({path}\): non-finite sample \({bad}\) at sample 3210"):
        read_audio("u1", path, SR)  # a whole-utterance read checks the whole signal
    audio = Audio("u1", path, SR)
    np.testing.assert_array_equal(audio.read(0, 3000), 0)  # a window without the NaN reads fine ...
    with pytest.raises(DataError, match="at sample 3210"):
        audio.read(3000, 3500)  # ... one that holds it does not
    with pytest.raises(DataError, match="non-finite sample"):
        read_random_segment("noise1", path, SR, 4000, np.random.default_rng(0))


def truncated_pcm_wav(tmp_path, n: int = 16000, keep: float = 0.5) -> str:
    """A real PCM wav cut to ``keep`` of its size: its header still declares all ``n`` samples."""
    path = write_wav(tmp_path / "cut.wav", pcm(n))
    data = (tmp_path / "cut.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: int(len(data) * keep)])
    return path


def test_truncated_pcm_wav_is_an_error(tmp_path):
    path = truncated_pcm_wav(tmp_path)
    assert sf.info(path).frames < 16000  # libsndfile alone reads the shorter file without complaint
    message = rf"bad audio 'cut' \({path}\): truncated: the WAV header declares 32000 bytes of audio data but the " \
              r"file holds 15978"
    with pytest.raises(DataError, match=message):
        read_audio("cut", path, SR)
    with pytest.raises(DataError, match="truncated"):
        read_random_segment("cut", path, SR, 100, np.random.default_rng(0))


def test_streamed_wav_of_unknown_size_is_read(tmp_path):
    """A WAV written to a pipe declares its data size as 0xFFFFFFFF (unknown): not truncated."""
    path = write_wav(tmp_path / "s.wav", pcm(500))
    data = bytearray((tmp_path / "s.wav").read_bytes())
    at = data.index(b"data") + 4
    data[at: at + 4] = (0xFFFFFFFF).to_bytes(4, "little")
    (tmp_path / "s.wav").write_bytes(bytes(data))
    np.testing.assert_array_equal(read_audio("s", path, SR), pcm(500) / 32768.0)


def test_minimum_duration(tmp_path):
    short = write_wav(tmp_path / "short.wav", pcm(round(MIN_EMBED_SECONDS * SR) - 1))
    assert read_audio("s", short, SR).shape == (1599,)  # training and augmentation reads have no minimum
    with pytest.raises(DataError, match=r"'s'.*too short to embed: 1599 samples \(0.100 s\); at least 0.1 s "
                                        r"\(1600 samples\) are needed"):
        read_audio("s", short, SR, min_seconds=MIN_EMBED_SECONDS)
    ok = write_wav(tmp_path / "ok.wav", pcm(1600))
    assert read_audio("s", ok, SR, min_seconds=MIN_EMBED_SECONDS).shape == (1600,)


def test_audio_length_reads_the_header_through_the_checks(tmp_path):
    assert audio_length("a", write_wav(tmp_path / "a.wav", pcm(1234)), SR) == 1234
    with pytest.raises(DataError, match="'cut'.*truncated"):
        audio_length("cut", truncated_pcm_wav(tmp_path), SR)
    garbage = tmp_path / "g.wav"
    garbage.write_bytes(b"not audio at all")
    with pytest.raises(DataError, match=r"bad audio 'g' .*g\.wav\): unreadable"):
        audio_length("g", str(garbage), SR)


@pytest.mark.parametrize("spec", ["touch {marker} |", "| touch {marker}", "touch {marker} |:12"])
def test_pipe_entries_never_run(tmp_path, spec):
    marker = tmp_path / "ran"
    with pytest.raises(DataError, match="pipe command; wespeaker-lap does not run commands"):
        read_audio("u1", spec.format(marker=marker), SR)
    with pytest.raises(DataError, match="pipe command"):
        read_random_segment("n1", spec.format(marker=marker), SR, 10, np.random.default_rng(0))
    assert not marker.exists()
