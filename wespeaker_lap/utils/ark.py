"""Kaldi ark/scp files of float32 vectors that survive a kill or a full disk, and can be resumed.

``ArkWriter`` appends groups of entries: each group's ark bytes in one write, then its scp lines
(``<key> <ark>:<offset>``, the format of ``kaldiio.WriteHelper('ark,scp:...')``) in another, so an scp
line only ever names bytes that were written before it. ``recover_ark`` is the other half: it keeps
the complete leading entries of a pair left by a killed writer, truncates the ark after the last one
and rewrites the scp with them, dropping a truncated ark entry, a partial scp line or a line that
points past the ark's end. A write that fails because the disk is full raises ``DiskFullError``
naming the file; what was written stays recoverable.
"""
from __future__ import annotations

import io
import logging
import os
import struct
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

import numpy as np

from wespeaker_lap.utils.errors import DiskFullError, disk_full_cause
from wespeaker_lap.utils.io import atomic_open

log = logging.getLogger(__name__)

# Kaldi's binary float vector: "\0B" (binary), "FV " (float vector), "\4" + int32 length, then the values.
_VECTOR_HEADER = b"\0BFV \x04"
_HEADER_SIZE = len(_VECTOR_HEADER) + 4


def _write_all(f: io.RawIOBase, data: bytes, path: Path) -> None:
    """Write all of ``data`` to the unbuffered ``f``; a full disk raises ``DiskFullError(path)``."""
    view = memoryview(data)
    try:
        while view:
            written = f.write(view)
            view = view[written:]
    except OSError as err:
        if disk_full_cause(err) is None:
            raise
        raise DiskFullError(path) from err


class ArkWriter:
    """Appends float32 vectors to ``ark`` and their scp lines to ``scp`` (a context manager).

    ``append`` continues a pair that ``recover_ark`` left consistent; otherwise both files start
    empty. The scp names the ark as ``ark_name`` (default ``str(ark)``, as ``kaldiio.WriteHelper``
    does): a pair written under temporary names can name its final ark.
    """

    def __init__(self, ark: str | os.PathLike, scp: str | os.PathLike, append: bool = False,
                 ark_name: Optional[str] = None):
        from wespeaker_lap.data.kaldi import DataError, is_pipe

        self.ark, self.scp = Path(ark), Path(scp)
        self.ark_name = str(ark) if ark_name is None else ark_name
        if is_pipe(self.ark_name):
            raise DataError(f"{self.ark_name}: an ark named in an scp may not start or end with '|' (a reader "
                            "would run it)")
        mode = "ab" if append else "wb"
        self._ark = open(self.ark, mode, buffering=0)
        try:
            self._scp = open(self.scp, mode, buffering=0)
        except BaseException:
            self._ark.close()
            raise
        self._offset = self._ark.seek(0, os.SEEK_END)

    def write(self, entries: Iterable[Tuple[str, np.ndarray]]) -> None:
        """Append ``(key, vector)`` entries: their ark bytes first, then their scp lines."""
        from kaldiio.matio import write_array

        chunk = io.BytesIO()
        lines: List[str] = []
        for key, vector in entries:
            vector = np.asarray(vector, dtype=np.float32)
            if vector.ndim != 1 or not key or any(c.isspace() for c in key):
                raise ValueError(f"{self.ark}: expected a key without whitespace and a 1-D vector, "
                                 f"got {key!r} and shape {vector.shape}")
            chunk.write(f"{key} ".encode("utf-8"))
            lines.append(f"{key} {self.ark_name}:{self._offset + chunk.tell()}\n")
            write_array(chunk, vector)
        data = chunk.getvalue()
        _write_all(self._ark, data, self.ark)
        self._offset += len(data)
        _write_all(self._scp, "".join(lines).encode("utf-8"), self.scp)

    def close(self, sync: bool = True) -> None:
        """Close both files (after an ``fsync`` when ``sync``: a finished shard survives a power loss)."""
        try:
            for f, path in ((self._ark, self.ark), (self._scp, self.scp)):
                if sync and not f.closed:
                    try:
                        os.fsync(f.fileno())
                    except OSError as err:
                        if disk_full_cause(err) is None:
                            raise
                        raise DiskFullError(path) from err
        finally:
            self._ark.close()
            self._scp.close()

    def __enter__(self) -> "ArkWriter":
        return self

    def __exit__(self, kind, err, tb) -> None:
        self.close(sync=err is None)


def _parse_scp_line(raw: bytes) -> Optional[Tuple[str, str, int]]:
    """``(key, ark path, offset)`` of one ``<key> <ark>:<offset>`` line, or None if it is not one."""
    try:
        key, spec = raw.decode("utf-8").split(" ", 1)
        path, offset = spec.rsplit(":", 1)
        return key, path, int(offset)
    except ValueError:  # also UnicodeDecodeError
        return None


def recover_ark(ark: str | os.PathLike, scp: str | os.PathLike) -> List[str]:
    """Make an interrupted ``ArkWriter`` pair consistent; return the keys of the entries kept, in order.

    An entry is kept while the scp lines run in write order, each complete (newline-terminated),
    naming this ark at the offset right after its key, which follows the previous entry, with a
    whole float vector of the first entry's size inside the file. The first line that fails ends
    the kept part: the ark is truncated after the last kept entry and the scp rewritten with the
    kept lines (naming the ark as ``str(ark)``). Missing files count as empty.
    """
    ark, scp = Path(ark), Path(scp)
    pieces = scp.read_bytes().split(b"\n") if scp.is_file() else [b""]
    raw_lines, partial_line = pieces[:-1], pieces[-1]  # the last piece is what follows the last newline
    ark_size = ark.stat().st_size if ark.is_file() else 0
    kept: List[Tuple[str, int]] = []
    seen = set()
    end, dim = 0, None
    with (open(ark, "rb") if ark_size else io.BytesIO()) as f:
        for raw in raw_lines:
            parsed = _parse_scp_line(raw)
            if parsed is None:
                break
            key, path, offset = parsed
            head = f"{key} ".encode("utf-8")
            if key in seen or offset != end + len(head) or not _same_file(path, ark) or \
                    offset + _HEADER_SIZE > ark_size:
                break
            f.seek(end)
            header = f.read(len(head) + _HEADER_SIZE)
            if header[:len(head)] != head or header[len(head):-4] != _VECTOR_HEADER:
                break
            (size,) = struct.unpack("<i", header[-4:])
            entry_end = offset + _HEADER_SIZE + 4 * size
            if size < 1 or (dim is not None and size != dim) or entry_end > ark_size:
                break
            dim, end = size, entry_end
            kept.append((key, offset))
            seen.add(key)
    dropped_lines = len(raw_lines) - len(kept) + (1 if partial_line else 0)
    if end < ark_size or dropped_lines:
        log.info("%s: kept %d complete entries; dropped %d bytes of the ark and %d scp lines after them",
                 ark, len(kept), ark_size - end, dropped_lines)
    if ark.is_file():
        os.truncate(ark, end)
    with atomic_open(scp, "w", encoding="utf-8") as out:
        out.writelines(f"{key} {ark}:{offset}\n" for key, offset in kept)
    return [key for key, _ in kept]


def _same_file(path: str, ark: Path) -> bool:
    """Whether the ark path of an scp line is ``ark`` (spelled differently, e.g. relative to another directory)."""
    if path == str(ark):
        return True
    try:
        return os.path.samefile(path, ark)
    except OSError:
        return False
