"""Kaldi data directories: ``wav.scp``, ``utt2spk``, ``spk2utt``, ``utt2dur`` and trial lists.

Every reader reports a malformed line as ``path:line: reason``. Files are UTF-8 (a byte-order
mark at the start is dropped; any other byte sequence is an error naming the line). Two-column
files (``utt2spk``, ``utt2dur``, ``spk2gender``...) must have exactly two columns; in ``wav.scp``
and embedding ``.scp`` files the value is the rest of the line, so paths may hold spaces.
Pipe entries (``cmd |``, Kaldi's extended filenames) are refused: nothing in this project runs a
command found in a data file (see ``refuse_pipe``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Tuple, TypeVar

from wespeaker_lap.utils.io import atomic_open

V = TypeVar("V")

_BOM = b"\xef\xbb\xbf"


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file and line or key."""


def read_lines(path: str | Path) -> Iterator[Tuple[int, str]]:
    """``(line number, stripped line)`` of each non-blank line of a UTF-8 text file.

    A missing file, or bytes that are not UTF-8, raise ``DataError`` naming the file (and line).
    A byte-order mark at the start of the file is dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column "
                                f"{err.start + 1}); re-encode the file as UTF-8") from None
            if line:
                yield lineno, line


def is_pipe(spec: str) -> bool:
    """Whether a Kaldi rxspecifier runs a command: ``cmd |``, ``| cmd``, also before an ``:offset`` or slice.

    These are the forms ``kaldiio`` hands to a shell (``kaldiio.utils.open_like_kaldi``).
    """
    head = spec.split("[", 1)[0]
    parts = (spec, head, head.rsplit(":", 1)[0])
    return any(part.strip().startswith("|") or part.strip().endswith("|") for part in parts)


def refuse_pipe(spec: str, where: str) -> None:
    """Raise ``DataError`` (prefixed by ``where``) if ``spec`` is a pipe command (see ``is_pipe``)."""
    if is_pipe(spec):
        raise DataError(f"{where}: {spec!r} is a pipe command; wespeaker-lap does not run commands from data "
                        "files (convert the audio to wav/flac files, or to a Kaldi ark, and list those)")


def _read_map(path: str | Path, parse: Callable[[str], V], rest_of_line: bool, form: str) -> Dict[str, V]:
    out: Dict[str, V] = {}
    for lineno, line in read_lines(path):
        parts = line.split(maxsplit=1) if rest_of_line else line.split()
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected '{form}', got {line!r}"
                            + ("" if rest_of_line or len(parts) < 2 else f" ({len(parts)} columns)"))
        key, raw = parts
        if key in out:
            raise DataError(f"{path}:{lineno}: duplicate key {key!r}")
        try:
            out[key] = parse(raw)
        except ValueError as err:
            raise DataError(f"{path}:{lineno}: bad value for {key!r}: {err}") from None
    return out


def read_map(path: str | Path, parse: Callable[[str], V] = str) -> Dict[str, V]:
    """Read a two-column ``<key> <value>`` file (``utt2spk``, ``utt2dur``, ...) into a dict.

    Raises ``DataError`` naming the file and line for a line without exactly two columns, a
    value that ``parse`` rejects, or a duplicated key.
    """
    return _read_map(path, parse, rest_of_line=False, form="<key> <value>")


def read_scp(path: str | Path) -> Dict[str, str]:
    """Read ``<key> <rest of the line>`` lines (``wav.scp``, embedding ``.scp``, ``text``): values may hold spaces."""
    return _read_map(path, str, rest_of_line=True, form="<key> <path or specifier>")


def read_list_map(path: str | Path) -> Dict[str, List[str]]:
    """Read ``<key> <v1> <v2> ...`` lines (e.g. ``spk2utt``) into a dict of lists."""
    return _read_map(path, str.split, rest_of_line=True, form="<key> <value> ...")


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
    wav_scp = read_scp(path / "wav.scp")
    if not wav_scp:
        raise DataError(f"{path / 'wav.scp'}: no utterances (the file is empty)")
    for key, spec in wav_scp.items():
        if "|" in spec:
            refuse_pipe(spec, f"{path / 'wav.scp'}: utterance {key!r}")
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
    """Read Kaldi trials ``<enroll> <test> target|nontarget`` into (enroll, test, label); empty is an error."""
    trials: List[Trial] = []
    for lineno, line in read_lines(path):
        parts = line.split()
        if len(parts) != 3 or parts[2] not in ("target", "nontarget"):
            raise DataError(f"{path}:{lineno}: expected '<enroll> <test> target|nontarget', got {line!r}")
        trials.append((parts[0], parts[1], int(parts[2] == "target")))
    if not trials:
        raise DataError(f"{path}: no trials (the file is empty)")
    return trials


def write_trials(path: str | Path, trials: Iterable[Trial]) -> None:
    """Write Kaldi trials atomically, in the given order."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        for enroll, test, label in trials:
            f.write(f"{enroll} {test} {'target' if label else 'nontarget'}\n")
