"""Tar shards of training utterances: few large files instead of a million small ones.

Layout of a shard folder (written by :func:`write_shards`, ``python -m wespeaker_lap.bin.make_shards``):

* ``shard_000000.tar`` ...: plain (uncompressed, so seekable) tar files of ``utts_per_shard``
  utterances. Each utterance is two members, ``<key>.spk`` (its speaker id, UTF-8) then
  ``<key>.<ext>`` (the sound file's bytes as they are, e.g. ``wav`` or ``flac``; Kaldi ark entries
  are written as wav). Utterances are shuffled once (``seed``) before they are cut into shards, so
  every shard mixes speakers.
* ``shard.list``: one ``<utterances> <tar path>`` line per shard; a relative path is relative to
  the list's folder, so the folder can move.
* ``utt2spk``: the utterances the shards hold (audio that failed the checks is left out in
  ``skip`` mode); the speakers, and so the labels, come from it.

Each tar is written under a temporary name and renamed when complete; ``shard.list`` is written
last. A rerun with the same inputs and settings keeps the shards already written.
"""
from __future__ import annotations

import hashlib
import io
import logging
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import soundfile as sf

from wespeaker_lap.data.audio import SAMPLE_RATE, Audio, _bad, _check_format, check_samples
from wespeaker_lap.data.kaldi import DataError, load_data_dir, read_map, write_map
from wespeaker_lap.utils.io import atomic_open, atomic_write_text
from wespeaker_lap.utils.parallel import parallel_map

logger = logging.getLogger(__name__)

SHARD_LIST = "shard.list"
PLAN_FILE = ".plan"  # the settings and inputs the shards in the folder were written from
SPEAKER_SUFFIX = "spk"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Shard:
    path: Path
    n_utts: int


def default_shard_list(train_dir: Union[str, Path]) -> Path:
    """Where ``make_shards`` puts the list for a training dir by default: ``<train_dir>/shards/shard.list``."""
    return Path(train_dir) / "shards" / SHARD_LIST


def read_shard_list(path: Union[str, Path]) -> List[Shard]:
    """The shards of a ``shard.list``; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: shard list not found (write it with python -m wespeaker_lap.bin.make_shards)")
    shards = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2 or not fields[0].isdigit() or int(fields[0]) < 1:
            raise DataError(f"{path}:{lineno}: expected '<utterances> <tar path>', got {line!r}")
        tar = Path(fields[1].strip())
        shards.append(Shard(tar if tar.is_absolute() else path.parent / tar, int(fields[0])))
    if not shards:
        raise DataError(f"{path}: no shards")
    return shards


def read_shard(shard: Shard, wanted: Optional[Sequence[bool]] = None) -> Iterator[Tuple[int, str, str, bytes]]:
    """``(index, key, speaker, audio bytes)`` of the utterances of ``shard`` in their order.

    With ``wanted`` (one flag per utterance) only those are yielded, and the other members' bytes
    are skipped with a seek, never read. Errors name the shard and the member.
    """
    try:
        tar = tarfile.open(shard.path, mode="r:")
    except FileNotFoundError:
        raise DataError(f"{shard.path}: shard not found") from None
    except tarfile.TarError as err:
        raise DataError(f"{shard.path}: not a readable tar shard: {err}") from None
    index, key, speaker = -1, None, None
    try:
        with tar:
            for member in tar:
                stem, _, suffix = member.name.rpartition(".")
                if not member.isfile() or not stem:
                    raise DataError(f"{shard.path}: unexpected member {member.name!r}")
                if suffix == SPEAKER_SUFFIX:
                    index, key, speaker = index + 1, stem, None
                    if index >= shard.n_utts:
                        raise DataError(f"{shard.path}: more than the {shard.n_utts} utterances its list gives")
                    if wanted is None or wanted[index]:
                        speaker = tar.extractfile(member).read().decode("utf-8").strip()
                elif stem != key:
                    raise DataError(f"{shard.path}: member {member.name!r} does not follow its {stem}.spk")
                elif wanted is None or wanted[index]:
                    yield index, key, speaker, tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as err:
        raise DataError(f"{shard.path}: truncated or corrupt shard after utterance {index}: {err}") from None
    if index + 1 != shard.n_utts:
        raise DataError(f"{shard.path}: holds {index + 1} utterances, its list gives {shard.n_utts}")


def pcm16_wav_layout(data: bytes) -> Optional[Tuple[int, int, int, int]]:
    """``(sample rate, channels, first data byte, frames declared)`` of a 16-bit PCM wav, else None."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        body = pos + 8
        if chunk == b"fmt " and size >= 16 and body + 16 <= len(data):
            fmt = struct.unpack_from("<HHIIHH", data, body)  # format, channels, rate, byte rate, align, bits
        elif chunk == b"data":
            if fmt is None:
                return None
            tag, channels, rate, _, align, bits = fmt
            if tag != 1 or bits != 16 or channels < 1 or align != 2 * channels:  # 1: plain PCM
                return None
            return rate, channels, body, size // align  # may be more frames than the bytes hold: truncated
        pos = body + size + (size & 1)  # chunks are padded to an even size
    return None


class BytesAudio:
    """A sound file held in memory, with :class:`wespeaker_lap.data.audio.Audio`'s interface:
    ``n_samples``, ``channels`` and ``read(start, stop)`` (float32 ``[n]``, mono).

    16-bit PCM wav (what the recipes write) is read straight from the bytes, the same values as
    soundfile gives (``int16 / 32768``) at a fraction of the cost. Other formats are decoded whole
    by soundfile here and checked like ``Audio``'s reads (short read, NaN/Inf), so that ``read``
    cannot fail later: bad audio is found where skip mode can replace it.
    """

    def __init__(self, key: str, data: bytes, sample_rate: int, where: str):
        self.key, self.data, self.where = key, data, where
        self._pcm = pcm16_wav_layout(data)
        self._samples: Optional[np.ndarray] = None  # [S], formats other than 16-bit PCM wav
        if self._pcm is not None:
            rate, self.channels, first, self.n_samples = self._pcm
            if first + 2 * self.channels * self.n_samples > len(data):
                raise _bad(key, where, f"truncated: {self.n_samples} frames declared, "
                                       f"{(len(data) - first) // (2 * self.channels)} present")
        else:
            try:
                with sf.SoundFile(io.BytesIO(data)) as f:
                    rate, self.n_samples, self.channels = f.samplerate, f.frames, f.channels
                    samples = f.read(dtype="float32", always_2d=True)  # [S, C]
            except (sf.SoundFileError, RuntimeError) as err:
                raise _bad(key, where, f"unreadable ({err})") from None
            if len(samples) < self.n_samples:
                raise _bad(key, where, f"truncated: {len(samples)} of {self.n_samples} samples read")
            self._samples = check_samples(key, where, samples)[:, 0]
        _check_format(key, where, rate, self.channels, self.n_samples, sample_rate, mono=True)

    def read(self, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        stop = self.n_samples if stop is None else stop
        if not 0 <= start <= stop <= self.n_samples:
            raise ValueError(f"{self.key}: range [{start}, {stop}) outside [0, {self.n_samples}]")
        if self._samples is not None:
            return self._samples[start:stop]
        first = self._pcm[2] + 2 * start
        return np.frombuffer(self.data, dtype="<i2", count=stop - start, offset=first).astype(np.float32) / 32768


# ----------------------------------------------------------------------------- writing


def _audio_member(key: str, spec: str, sample_rate: int) -> Tuple[str, bytes]:
    """(extension, bytes) of one checked wav.scp entry: the file itself, or an ark entry as a wav."""
    audio = Audio(key, spec, sample_rate)  # checks existence, format, length, last sample
    path = Path(spec)
    if path.is_file():
        return (path.suffix.lstrip(".").lower() or "wav"), path.read_bytes()
    samples = audio.read()
    exact16 = np.array_equal(np.round(samples * 32768), samples * 32768)
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, subtype="PCM_16" if exact16 else "FLOAT", format="WAV")
    return "wav", buffer.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed metadata: equal inputs give equal bytes
    tar.addfile(info, io.BytesIO(data))


ShardJob = Tuple[str, List[Tuple[str, str, str]], int, str]


def _write_shard(job: ShardJob) -> List[str]:
    """Write one shard atomically; return the keys it holds (bad audio is raised or left out)."""
    path, utterances, sample_rate, on_bad_audio = job
    if Path(path).is_file():  # written by an interrupted earlier run with the same plan
        return _shard_keys(path)
    kept = []
    with atomic_open(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for key, speaker, spec in utterances:
            try:
                ext, data = _audio_member(key, spec, sample_rate)
            except DataError as err:
                if on_bad_audio == "error":
                    raise
                logger.warning("left out of %s: %s", Path(path).name, err)
                continue
            _add_member(tar, f"{key}.{SPEAKER_SUFFIX}", speaker.encode("utf-8"))
            _add_member(tar, f"{key}.{ext}", data)
            kept.append(key)
    return kept


def _shard_keys(path: str) -> List[str]:
    """The keys in a shard, from its member headers only."""
    with tarfile.open(path, mode="r:") as tar:
        return [m.name[:-len(SPEAKER_SUFFIX) - 1] for m in tar if m.name.endswith(f".{SPEAKER_SUFFIX}")]


def _plan_signature(data_dir: Path, utts_per_shard: int, seed: int, sample_rate: int, on_bad_audio: str) -> str:
    digest = hashlib.sha256()
    for name in ("wav.scp", "utt2spk"):
        digest.update((data_dir / name).read_bytes())
    digest.update(f"{FORMAT_VERSION} {utts_per_shard} {seed} {sample_rate} {on_bad_audio}".encode())
    return digest.hexdigest()


def write_shards(data_dir: Union[str, Path], out_dir: Union[str, Path], utts_per_shard: int = 1000, seed: int = 0,
                 nj: int = 1, on_bad_audio: Literal["error", "skip"] = "error") -> List[Shard]:
    """Pack the Kaldi dir ``data_dir`` (``wav.scp``, ``utt2spk``) into tar shards in ``out_dir`` (see module doc).

    Every audio entry is checked as training would read it (``Audio``); a bad one is an error
    naming it, or in ``skip`` mode left out with a warning and counted. Returns the shards.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if utts_per_shard < 1:
        raise ValueError(f"utts_per_shard must be >= 1, got {utts_per_shard}")
    if on_bad_audio not in ("error", "skip"):
        raise ValueError(f"on_bad_audio must be 'error' or 'skip', got {on_bad_audio!r}")
    data = load_data_dir(data_dir)
    signature = _plan_signature(data_dir, utts_per_shard, seed, SAMPLE_RATE, on_bad_audio)
    plan_file, list_file = out_dir / PLAN_FILE, out_dir / SHARD_LIST
    same_plan = plan_file.is_file() and plan_file.read_text(encoding="utf-8") == signature
    if same_plan and list_file.is_file():
        logger.info("%s: already written from %s with these settings", list_file, data_dir)
        return read_shard_list(list_file)
    if not same_plan:
        for old in [*out_dir.glob("shard_*.tar"), list_file, out_dir / "utt2spk"]:
            old.unlink(missing_ok=True)  # another plan's shards must not be mixed in
        atomic_write_text(plan_file, signature)

    keys = sorted(data.wav_scp)
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    jobs: List[ShardJob] = []
    for start in range(0, len(order), utts_per_shard):
        chunk = order[start:start + utts_per_shard]
        jobs.append((str(out_dir / f"shard_{len(jobs):06d}.tar"),
                     [(key, data.utt2spk[key], data.wav_scp[key]) for key in chunk], SAMPLE_RATE, on_bad_audio))
    shards, kept = [], {}
    for (path, utterances, _, _), keys_in in zip(jobs, parallel_map(_write_shard, jobs, nj, desc="shards",
                                                                   unit="shard")):
        if keys_in:
            shards.append(Shard(Path(path), len(keys_in)))
            kept.update((key, data.utt2spk[key]) for key in keys_in)
        else:
            Path(path).unlink(missing_ok=True)
    left_out = len(order) - len(kept)
    if not shards:
        raise DataError(f"{data_dir}: no readable audio to shard")
    write_map(out_dir / "utt2spk", kept)
    atomic_write_text(list_file, "".join(f"{s.n_utts} {s.path.name}\n" for s in shards))
    logger.info("%s: %d shards of up to %d utterances, %d utterances of %d speakers%s", list_file, len(shards),
                utts_per_shard, len(kept), len(set(kept.values())),
                f"; {left_out} with bad audio left out (on_bad_audio=skip)" if left_out else "")
    return shards


def shard_speakers(list_file: Union[str, Path]) -> dict:
    """``utt2spk`` of the utterances in the shards of ``list_file`` (the file beside it)."""
    return read_map(Path(list_file).parent / "utt2spk")
