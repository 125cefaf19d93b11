"""Kaldi data directories: ``wav.scp``, ``utt2spk``, ``spk2utt``, ``utt2dur`` and trial lists.

Every reader reports a malformed line as ``path:line: reason``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Tuple, TypeVar

from wespeaker_lap.utils.io import atomic_open

V = TypeVar("V")


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file and line or key."""


def _lines(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if line:
                yield lineno, line


def read_map(path: str | Path, parse: Callable[[str], V] = str) -> Dict[str, V]:
    """Read ``<key> <value>`` lines into a dict (the value is the rest of the line).

    Raises ``DataError`` naming the file and line for a missing value, a value that
    ``parse`` rejects, or a duplicated key.
    """
    out: Dict[str, V] = {}
    for lineno, line in _lines(path):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected '<key> <value>', got {line!r}")
        key, raw = parts
        if key in out:
            raise DataError(f"{path}:{lineno}: duplicate key {key!r}")
        try:
            out[key] = parse(raw)
        except ValueError as err:
            raise DataError(f"{path}:{lineno}: bad value for {key!r}: {err}") from None
    return out


def read_list_map(path: str | Path) -> Dict[str, List[str]]:
    """Read ``<key> <v1> <v2> ...`` lines (e.g. ``spk2utt``) into a dict of lists."""
    return read_map(path, str.split)


def write_map(path: str | Path, items: Mapping[str, object] | Iterable[Tuple[str, object]]) -> None:
    """Write ``<key> <value>`` lines sorted by key, atomically. List values are space-joined."""
    pairs = items.items() if isinstance(items, Mapping) else items
    with atomic_open(path, "w", encoding="utf-8") as f:
        for key, value in sorted(pairs, key=lambda kv: kv[0]):
            if isinstance(value, (list, tuple)):
                value = " ".join(map(str, value))
            f.write(f"{key} {value}\n")


def utt2spk_to_spk2utt(utt2spk: Mapping[str, str]) -> Dict[str, List[str]]:
    """Invert ``utt2spk``; utterances of a speaker are sorted."""
    spk2utt: Dict[str, List[str]] = {}
    for utt in sorted(utt2spk):
        spk2utt.setdefault(utt2spk[utt], []).append(utt)
    return spk2utt


@dataclass(frozen=True)
class DataDir:
    """A loaded Kaldi data directory. ``utt2dur`` is empty when the file is absent."""

    path: Path
    wav_scp: Dict[str, str]
    utt2spk: Dict[str, str]
    utt2dur: Dict[str, float]

    @property
    def speakers(self) -> List[str]:
        """Sorted speaker ids; a speaker's label is its index here."""
        return sorted(set(self.utt2spk.values()))

    @property
    def spk2utt(self) -> Dict[str, List[str]]:
        return utt2spk_to_spk2utt(self.utt2spk)


def load_data_dir(path: str | Path, need_spk: bool = True) -> DataDir:
    """Load ``wav.scp`` (+ ``utt2spk``, + optional ``utt2dur``) and check they agree."""
    path = Path(path)
    wav_scp = read_map(path / "wav.scp")
    utt2spk: Dict[str, str] = {}
    if need_spk or (path / "utt2spk").is_file():
        utt2spk = read_map(path / "utt2spk")
        missing = sorted(set(wav_scp) - set(utt2spk))
        if missing:
            raise DataError(f"{path / 'utt2spk'}: no speaker for utterance {missing[0]!r} "
                            f"({len(missing)} utterances of wav.scp are missing)")
        extra = sorted(set(utt2spk) - set(wav_scp))
        if extra:
            raise DataError(f"{path / 'wav.scp'}: no audio for utterance {extra[0]!r} "
                            f"({len(extra)} utterances of utt2spk are missing)")
    utt2dur: Dict[str, float] = {}
    if (path / "utt2dur").is_file():
        utt2dur = read_map(path / "utt2dur", float)
    return DataDir(path, wav_scp, utt2spk, utt2dur)


Trial = Tuple[str, str, int]


def read_trials(path: str | Path) -> List[Trial]:
    """Read Kaldi trials ``<enroll> <test> target|nontarget`` into (enroll, test, label)."""
    trials: List[Trial] = []
    for lineno, line in _lines(path):
        parts = line.split()
        if len(parts) != 3 or parts[2] not in ("target", "nontarget"):
            raise DataError(f"{path}:{lineno}: expected '<enroll> <test> target|nontarget', got {line!r}")
        trials.append((parts[0], parts[1], int(parts[2] == "target")))
    return trials


def write_trials(path: str | Path, trials: Iterable[Trial]) -> None:
    """Write Kaldi trials atomically, in the given order."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        for enroll, test, label in trials:
            f.write(f"{enroll} {test} {'target' if label else 'nontarget'}\n")
