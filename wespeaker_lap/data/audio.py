"""Reading audio: sound files (soundfile) and Kaldi ark entries (kaldiio).

A ``wav.scp`` value is either a sound file path or ``<file>.ark:<byte offset>``; pipe
commands (``cmd |``) are refused, never run. ``Audio`` checks an entry up front (exists,
readable, not empty, the expected sample rate, one channel unless asked otherwise, a WAV
file as long as its header says, last sample readable) and then reads any sample range on
demand, so a training crop reads only its window. Every range read from a sound file is
checked for NaN/Inf samples (ark entries are PCM). Every problem is a ``DataError``
naming the key and the path; ``BadAudioHandler`` turns it into a counted warning in ``skip``
mode.

Embedding extraction and the inference API refuse audio shorter than ``MIN_EMBED_SECONDS``
(0.1 s = 1600 samples at 16 kHz): past the CNN's 400-sample receptive field that leaves
4-5 frames of 20 ms for the pooling statistics. Shorter input would still give a number
(s3prl pads it), but not a meaningful embedding.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Literal, Optional, Tuple, TypeVar

import numpy as np
import soundfile as sf

from wespeaker_lap.data.kaldi import DataError, is_pipe

MIN_EMBED_SECONDS = 0.1  # shortest audio that extraction and the API embed (see the module docstring)

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # Hz: the rate of every supported upstream; audio at any other rate is refused, not resampled
C = TypeVar("C")
R = TypeVar("R")

_ARK_ENTRY = re.compile(r"(?P<path>.+):(?P<offset>\d+)")


def _bad(key: str, path: str | Path, reason: str) -> DataError:
    return DataError(f"bad audio {key!r} ({path}): {reason}")


def _refuse_pipe(key: str, spec: str) -> None:
    if is_pipe(spec):
        raise _bad(key, spec, "a pipe command; wespeaker-lap does not run commands from data files "
                              "(convert the audio to wav/flac files, or to a Kaldi ark, and list those)")


def check_samples(key: str, path: str | Path, samples: np.ndarray, start: int = 0) -> np.ndarray:
    """Return ``samples`` (``[n]`` or ``[n, C]``) if every value is finite; else a ``DataError`` naming the first."""
    if not np.isfinite(samples).all():
        first = int(np.argmax(~np.isfinite(samples).reshape(len(samples), -1).all(axis=1)))
        value = samples[first] if samples.ndim == 1 else samples[first][~np.isfinite(samples[first])][0]
        raise _bad(key, path, f"non-finite sample ({value}) at sample {start + first}")
    return samples


def check_min_duration(key: str, path: str | Path, n_samples: int, sample_rate: int,
                       min_seconds: float = MIN_EMBED_SECONDS) -> None:
    """A ``DataError`` if ``n_samples`` is shorter than ``min_seconds``."""
    if n_samples < min_seconds * sample_rate:
        raise _bad(key, path, f"too short to embed: {n_samples} samples ({n_samples / sample_rate:.3f} s); "
                              f"at least {min_seconds:g} s ({round(min_seconds * sample_rate)} samples) are needed")


def _wav_data_sizes(path: str) -> Optional[Tuple[int, int]]:
    """``(declared, present)`` bytes of the data chunk of a RIFF/RF64 WAVE file; None for other files.

    A streamed WAV (data size 0 or 0xFFFFFFFF: unknown) also gives None.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            return None
        ds64_data_size, pos = None, 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = f.read(4), int.from_bytes(f.read(4), "little")
            if chunk_id == b"ds64":  # RF64: riff size (8 bytes), then the real data size (8 bytes)
                ds64_data_size = int.from_bytes(f.read(16)[8:16], "little")
            elif chunk_id == b"data":
                if chunk_size == 0xFFFFFFFF and ds64_data_size is not None:
                    chunk_size = ds64_data_size
                if chunk_size in (0, 0xFFFFFFFF):
                    return None
                return chunk_size, size - pos - 8
            pos += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to an even size
    return None


def _check_complete(key: str, path: str) -> None:
    """A WAV file whose header declares more audio data than the file holds is truncated.

    libsndfile reads such a file silently up to where it ends, so this is checked here.
    """
    sizes = _wav_data_sizes(path)
    if sizes is not None and sizes[0] > sizes[1]:
        raise _bad(key, path, f"truncated: the WAV header declares {sizes[0]} bytes of audio data but the file "
                              f"holds {sizes[1]} (an interrupted copy or download?)")


def _check_format(key: str, path: str, rate: int, channels: int, n_samples: int,
                  sample_rate: int, mono: bool) -> None:
    if rate != sample_rate:
        raise _bad(key, path, f"sample rate {rate} Hz, expected {sample_rate} Hz")
    if mono and channels != 1:
        raise _bad(key, path, f"{channels} channels, expected 1")
    if n_samples == 0:
        raise _bad(key, path, "empty (0 samples)")


def _open(key: str, path: str, check_complete: bool = False) -> sf.SoundFile:
    _refuse_pipe(key, path)
    if not Path(path).is_file():
        raise _bad(key, path, "file not found")
    if check_complete:
        _check_complete(key, path)
    try:
        return sf.SoundFile(path)
    except sf.SoundFileError as err:
        raise _bad(key, path, f"unreadable ({err})") from None


def _seek_and_read(key: str, f: sf.SoundFile, start: int, n: int) -> np.ndarray:
    """``n`` samples from ``start`` of an open file, ``[n, C]``; a short read or a NaN/Inf is an error."""
    try:
        f.seek(start)
        samples = f.read(n, dtype="float32", always_2d=True)
    except sf.SoundFileError as err:
        raise _bad(key, f.name, f"unreadable at sample {start} ({err})") from None
    if len(samples) < n:
        raise _bad(key, f.name, f"truncated: {len(samples)} of {n} samples from {start} read")
    return check_samples(key, f.name, samples, start)


class Audio:
    """One checked audio entry: ``n_samples``, ``channels``, and ``read(start, stop)``.

    A sound file is re-opened by each ``read``, which reads only the requested
    range; an ark entry is loaded whole (kaldiio cannot read part of one). With
    ``mono`` more than one channel is an error and ``read`` returns ``[n]``;
    otherwise it returns ``[n, C]``. Samples are float32 in [-1, 1].
    """

    def __init__(self, key: str, spec: str, sample_rate: int, mono: bool = True):
        self.key, self.spec, self.mono = key, spec, mono
        self._samples: Optional[np.ndarray] = None  # [S, C], ark entries only
        _refuse_pipe(key, spec)
        if _ARK_ENTRY.fullmatch(spec) and not Path(spec).is_file():
            rate, self._samples = self._load_ark()
            self.n_samples, self.channels = self._samples.shape
        else:
            with _open(key, spec, check_complete=True) as f:
                rate, self.n_samples, self.channels = f.samplerate, f.frames, f.channels
                if self.n_samples > 0:
                    _seek_and_read(key, f, self.n_samples - 1, 1)  # a truncated file fails here
        _check_format(key, spec, rate, self.channels, self.n_samples, sample_rate, mono)

    def _load_ark(self) -> Tuple[int, np.ndarray]:
        import kaldiio

        if not Path(_ARK_ENTRY.fullmatch(self.spec).group("path")).is_file():
            raise _bad(self.key, self.spec, "ark file not found")
        try:
            entry = kaldiio.load_mat(self.spec)
        except Exception as err:  # kaldiio raises assorted errors for a bad offset or a corrupt ark
            raise _bad(self.key, self.spec, f"unreadable ark entry ({type(err).__name__}: {err})") from None
        if not isinstance(entry, tuple):
            raise _bad(self.key, self.spec, f"ark entry is a {entry.shape} matrix, not audio")
        rate, samples = entry
        if samples.ndim == 1:
            samples = samples[:, None]  # [S] -> [S, 1]
        if np.issubdtype(samples.dtype, np.integer):
            samples = samples / float(-np.iinfo(samples.dtype).min)  # PCM -> [-1, 1), as soundfile does
        return rate, samples.astype(np.float32)  # kaldiio's wav entries are PCM: always finite

    def read(self, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """Samples ``[start, stop)`` (``stop`` defaults to the end)."""
        stop = self.n_samples if stop is None else stop
        if not 0 <= start <= stop <= self.n_samples:
            raise ValueError(f"{self.key}: range [{start}, {stop}) outside [0, {self.n_samples}]")
        if self._samples is not None:
            samples = self._samples[start:stop]
        else:
            with _open(self.key, self.spec) as f:
                samples = _seek_and_read(self.key, f, start, stop - start)
        return samples[:, 0] if self.mono else samples


def read_audio(key: str, spec: str, sample_rate: int, mono: bool = True, min_seconds: float = 0.0) -> np.ndarray:
    """Read a whole entry (see ``Audio``): float32 ``[S]``, or ``[S, C]`` when not ``mono``.

    Audio shorter than ``min_seconds`` is an error (extraction and the API pass ``MIN_EMBED_SECONDS``).
    """
    audio = Audio(key, spec, sample_rate, mono)
    check_min_duration(key, spec, audio.n_samples, sample_rate, min_seconds)
    return audio.read()


def audio_length(key: str, spec: str, sample_rate: int) -> int:
    """Length in samples of an entry, from its header (checked as ``Audio`` checks it)."""
    return Audio(key, spec, sample_rate).n_samples


def read_random_segment(key: str, path: str, sample_rate: int, length: int,
                        rng: np.random.Generator) -> np.ndarray:
    """A random ``length``-sample window of a mono sound file, float32 ``[length]``.

    The file is opened once and only the window is read; a file shorter than
    ``length`` is read whole and wrap-padded (repeated).
    """
    with _open(key, path, check_complete=True) as f:
        _check_format(key, path, f.samplerate, f.channels, f.frames, sample_rate, mono=True)
        start = int(rng.integers(0, f.frames - length + 1)) if f.frames > length else 0
        samples = _seek_and_read(key, f, start, min(length, f.frames))[:, 0]
    if len(samples) < length:
        samples = np.pad(samples, (0, length - len(samples)), mode="wrap")
    return samples


class BadAudioHandler:
    """What to do with bad audio: re-raise (``error``) or log a counted warning (``skip``).

    ``count`` is the number of bad reads skipped so far in this process (each
    DataLoader worker holds its own copy).
    """

    def __init__(self, on_bad_audio: Literal["error", "skip"]):
        if on_bad_audio not in ("error", "skip"):
            raise ValueError(f"on_bad_audio must be 'error' or 'skip', got {on_bad_audio!r}")
        self.on_bad_audio = on_bad_audio
        self.count = 0

    def handle(self, err: DataError) -> None:
        if self.on_bad_audio == "error":
            raise err
        self.count += 1
        logger.warning("skipped bad audio #%d in this process: %s", self.count, err)

    def first_readable(self, candidates: Iterable[C], read: Callable[[C], R]) -> Tuple[C, R]:
        """Return ``(candidate, read(candidate))`` for the first candidate that reads.

        Each ``DataError`` goes through ``handle``; when every candidate fails, the
        last error is raised.
        """
        last: DataError | None = None
        for candidate in candidates:
            try:
                return candidate, read(candidate)
            except DataError as err:
                self.handle(err)
                last = err
        raise DataError(f"no readable audio left to replace bad audio; last error: {last}")
