"""MUSAN and RIRS_NOISES lists for augmentation: ``<key> <path> <type>`` lines.

The key is the first field and the type the last, so the path between them may hold spaces.

The type is a column of the list, written here from the corpus layout and never inferred from the
key at training time (a re-split corpus with one more directory level then cannot silently change
the SNR ranges, WeSpeaker issue #263).

* MUSAN (``musan/{music,noise,speech}/<source>/*.wav``): like the official code, each file is cut
  into 5 s windows with a 3 s hop (files shorter than one window are dropped), so a random entry is a
  uniformly drawn stretch of MUSAN rather than a favoured short file. Types ``music``, ``noise`` and
  ``speech`` (speech is used for babble). Keys: ``music/fma/music-fma-0000/0002`` (the third window).
* RIRS_NOISES: the pool of the official code (docs/reproduction.md §RIR pool): the real RIRs listed in
  ``real_rirs_isotropic_noises/rir_list`` (type ``real``, one entry per line, keys ``real/<rir-id>``;
  some are multi-channel) and every simulated one, ``simulated_rirs/{smallroom,mediumroom,largeroom}/
  RoomNNN/*.wav`` (typed by room size, keys ``smallroom/Room001/Room001-00001``). Training draws one
  entry uniformly, as the official code draws one file of its combined list.

Sources are the archives ``musan.tar.gz`` and ``rirs_noises.zip`` (md5 checked, then extracted under
``raw_dir``) or already extracted ``musan/`` and ``RIRS_NOISES/`` folders in the archive folder.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

from wespeaker_lap.data.archives import MUSAN, RIRS_NOISES, ArchiveDir, Step, extract_archive, run_steps
from wespeaker_lap.data.audio import SAMPLE_RATE
from wespeaker_lap.data.kaldi import DataError, read_lines
from wespeaker_lap.utils.io import atomic_open
from wespeaker_lap.utils.parallel import parallel_map

logger = logging.getLogger(__name__)

MUSAN_TYPES = ("music", "noise", "speech")
RIR_TYPES = ("real", "smallroom", "mediumroom", "largeroom")
REAL_RIR_LIST = "real_rirs_isotropic_noises/rir_list"


class AugmentEntry(NamedTuple):
    """One augmentation source: a unique key, an audio file, and its type (see the module doc)."""

    key: str
    path: str
    type: str


def read_augment_list(path: Union[str, Path], types: Sequence[str] = MUSAN_TYPES + RIR_TYPES) -> List[AugmentEntry]:
    """Read ``<key> <path> <type>`` lines (the path may hold spaces); ``types`` are those allowed.

    A line with a missing column, an unknown type, a duplicated key or an audio file that does not
    exist is an error naming the list and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: augmentation list not found")
    entries: List[AugmentEntry] = []
    seen = set()
    for lineno, line in read_lines(path):
        fields = line.split(maxsplit=1)
        fields = [fields[0], *fields[1].rsplit(maxsplit=1)] if len(fields) == 2 else fields
        if len(fields) != 3:
            raise DataError(f"{path}:{lineno}: expected '<key> <path> <type>', got {line!r}")
        key, audio, kind = fields
        if kind not in types:
            raise DataError(f"{path}:{lineno}: unknown type {kind!r} (allowed: {', '.join(types)})")
        if key in seen:
            raise DataError(f"{path}:{lineno}: duplicate key {key!r}")
        if not Path(audio).is_file():
            raise DataError(f"{path}:{lineno}: audio file {audio} not found")
        seen.add(key)
        entries.append(AugmentEntry(key, audio, kind))
    if not entries:
        raise DataError(f"{path}: no entries")
    return entries


def write_augment_list(path: Union[str, Path], entries: Sequence[AugmentEntry]) -> None:
    """Write entries sorted by key, atomically; whitespace in a key or type, a line break in a path, or a
    path starting or ending with whitespace is an error."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        for entry in sorted(entries):
            bad_path = not entry.path or entry.path != entry.path.strip() or "\n" in entry.path or "\r" in entry.path
            if bad_path or any(len(field.split()) != 1 for field in (entry.key, entry.type)):
                raise DataError(f"{path}: cannot write {entry} (an empty field, whitespace in the key or type, "
                                "or a path with a line break or surrounding whitespace)")
            f.write(f"{entry.key} {entry.path} {entry.type}\n")


def _split_file(job: Tuple[str, str, str, str, float, float]) -> List[AugmentEntry]:
    """Cut one MUSAN file into windows; returns the entries written (none for a short file)."""
    import soundfile as sf

    src, out_dir, key, kind, chunk_s, hop_s = job
    try:
        audio, rate = sf.read(src, dtype="int16", always_2d=True)  # [S, C]
    except RuntimeError as err:
        raise DataError(f"{src}: unreadable audio: {err}") from None
    if rate != SAMPLE_RATE or audio.shape[1] != 1:
        raise DataError(f"{src}: {rate} Hz, {audio.shape[1]} channels; expected {SAMPLE_RATE} Hz mono")
    chunk, hop = round(chunk_s * rate), round(hop_s * rate)
    entries = []
    for index, start in enumerate(range(0, len(audio) - chunk + 1, hop)):
        wav = Path(out_dir) / f"{index:04d}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        tmp = wav.with_name(f".{wav.name}.tmp")  # a window appears only complete
        sf.write(tmp, audio[start:start + chunk], rate, subtype="PCM_16", format="WAV")
        tmp.replace(wav)
        entries.append(AugmentEntry(f"{key}/{index:04d}", str(wav), kind))
    return entries


def split_musan(musan_root: Union[str, Path], out_root: Union[str, Path], nj: int = 1,
                chunk_s: float = 5.0, hop_s: float = 3.0) -> List[AugmentEntry]:
    """Cut every ``musan_root/<type>/<source>/<file>.wav`` into ``chunk_s`` windows every ``hop_s``.

    Windows go to ``out_root/<type>/<source>/<file>/<index>.wav`` (``out_root`` is emptied first);
    returns their entries.
    """
    if chunk_s <= 0 or hop_s <= 0:
        raise ValueError(f"chunk_s and hop_s must be positive, got {chunk_s} and {hop_s}")
    musan_root, out_root = Path(musan_root).resolve(), Path(out_root).resolve()
    if out_root.exists():
        shutil.rmtree(out_root)  # no window of an earlier run with other settings survives
    jobs = []
    for kind in MUSAN_TYPES:
        files = sorted((musan_root / kind).glob("*/*.wav"))
        if not files:
            raise DataError(f"{musan_root / kind}: no <source>/<file>.wav files; is MUSAN complete?")
        for wav in files:
            key = wav.relative_to(musan_root).with_suffix("").as_posix()  # music/fma/music-fma-0000
            jobs.append((str(wav), str(out_root / key), key, kind, chunk_s, hop_s))
    per_file = list(parallel_map(_split_file, jobs, nj, desc="split MUSAN"))
    dropped = sum(not entries for entries in per_file)
    if dropped:
        logger.info("MUSAN: %d of %d files are shorter than %g s and were left out", dropped, len(jobs), chunk_s)
    return [entry for entries in per_file for entry in entries]


def list_rirs(rirs_root: Union[str, Path], sets: Sequence[str] = RIR_TYPES) -> List[AugmentEntry]:
    """Entries of the RIR sets ``sets`` (``real`` and room sizes) of the ``rirs_root`` (``RIRS_NOISES``) folder."""
    rirs_root = Path(rirs_root).resolve()
    entries = []
    for rir_set in sets:
        if rir_set not in RIR_TYPES:
            raise ValueError(f"unknown RIR set {rir_set!r} (allowed: {', '.join(RIR_TYPES)})")
        if rir_set == "real":
            entries += _real_rirs(rirs_root)
            continue
        room_dir = rirs_root / "simulated_rirs" / rir_set
        wavs = sorted(room_dir.glob("*/*.wav"))
        if not wavs:
            raise DataError(f"{room_dir}: no Room*/<rir>.wav files; is RIRS_NOISES complete?")
        entries += [AugmentEntry(wav.relative_to(rirs_root / "simulated_rirs").with_suffix("").as_posix(),
                                 str(wav), rir_set) for wav in wavs]
    return entries


def _real_rirs(rirs_root: Path) -> List[AugmentEntry]:
    """The real RIRs of ``rir_list`` (``--rir-id <id> --room-id <room> RIRS_NOISES/<path>`` lines), in its order.

    The last field is relative to the folder holding ``RIRS_NOISES``, as the official code reads it.
    A line listed twice stays twice (``-2`` is added to its key), so the draw matches the official one.
    """
    rir_list = rirs_root / REAL_RIR_LIST
    if not rir_list.is_file():
        raise DataError(f"{rir_list}: not found; is RIRS_NOISES complete?")
    entries, seen = [], {}
    with open(rir_list, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if "--rir-id" not in fields[:-1] or not fields[-1].endswith(".wav"):
                raise DataError(f"{rir_list}:{lineno}: expected '--rir-id <id> ... <path>.wav', got {line.strip()!r}")
            rir_id = fields[fields.index("--rir-id") + 1]
            wav = rirs_root.parent / fields[-1]
            if not wav.is_file():
                raise DataError(f"{rir_list}:{lineno}: {wav} not found")
            seen[rir_id] = seen.get(rir_id, 0) + 1
            key = f"real/{rir_id}" + (f"-{seen[rir_id]}" if seen[rir_id] > 1 else "")
            entries.append(AugmentEntry(key, str(wav), "real"))
    if not entries:
        raise DataError(f"{rir_list}: no RIRs listed")
    return entries


def prepare_augment(archives: ArchiveDir, data_dir: Union[str, Path], raw_dir: Optional[Union[str, Path]] = None,
                    nj: int = 1, rir_sets: Sequence[str] = RIR_TYPES, chunk_s: float = 5.0,
                    hop_s: float = 3.0) -> List[str]:
    """Write ``data_dir/musan.list`` and ``data_dir/rirs.list``; returns the names of the steps that ran.

    ``rir_sets``: the RIRs listed; the default is the official pool (real RIRs and all room sizes).

    Archives are extracted under ``raw_dir`` (default ``data_dir/raw_data``) unless the archive folder
    already holds extracted ``musan/`` or ``RIRS_NOISES/`` folders, which are then used in place.
    """
    data_dir = Path(data_dir)
    raw = Path(raw_dir) if raw_dir is not None else data_dir / "raw_data"
    rir_sets = tuple(rir_sets)
    steps = []

    musan_root = archives.path / "musan"
    if not musan_root.is_dir():
        musan_root = raw / "musan"
        steps.append(Step("extract_musan", raw / ".done_extract_musan",
                          lambda: extract_archive(archives.verified(MUSAN), raw, MUSAN.name, nj), (MUSAN,)))
    rirs_root = archives.path / "RIRS_NOISES"
    if not rirs_root.is_dir():
        rirs_root = raw / "RIRS_NOISES"
        steps.append(Step("extract_rirs", raw / ".done_extract_rirs",
                          lambda: extract_archive(archives.verified(RIRS_NOISES), raw, RIRS_NOISES.name, nj),
                          (RIRS_NOISES,)))

    def musan_list() -> None:
        entries = split_musan(musan_root, raw / "musan_split", nj, chunk_s, hop_s)
        write_augment_list(data_dir / "musan.list", entries)
        counts = {kind: sum(e.type == kind for e in entries) for kind in MUSAN_TYPES}
        logger.info("%s: %s windows", data_dir / "musan.list", counts)

    def rirs_list() -> None:
        entries = list_rirs(rirs_root, rir_sets)
        write_augment_list(data_dir / "rirs.list", entries)
        counts = {rir_set: sum(e.type == rir_set for e in entries) for rir_set in rir_sets}
        logger.info("%s: %s", data_dir / "rirs.list", counts)

    steps.append(Step("list_musan", data_dir / ".done_list_musan", musan_list,
                      signature=f"{musan_root} chunk={chunk_s} hop={hop_s}"))
    steps.append(Step("list_rirs", data_dir / ".done_list_rirs", rirs_list,
                      signature=f"{rirs_root} sets={','.join(rir_sets)}"))
    return run_steps(steps, archives)
