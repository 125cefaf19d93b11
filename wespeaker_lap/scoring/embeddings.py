"""Kaldi ark/scp embeddings (as written by ``kaldiio.WriteHelper('ark,scp:x.ark,x.scp')``) in one matrix.

Each ark that the scp points into is read once, front to back, with ``kaldiio.load_ark``;
the scp's ``<ark>:<offset>`` entries are matched to the byte offsets met on the way (no
random seek per key; ~2-3 s for 145k x 192). Entries of any other form (slices) and
offsets that are not the start of an ark item are read with ``kaldiio.load_mat``. Pipe
entries (``cmd |``) are refused, never run. A NaN or Inf in an embedding or a mean is an error
naming the key: it would turn every score it touches into NaN.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Sequence, Tuple, TypeVar

import numpy as np

from wespeaker_lap.data.kaldi import DataError, Trial, refuse_pipe, read_scp
from wespeaker_lap.utils.console import progress as progress_bar

logger = logging.getLogger(__name__)
V = TypeVar("V")

_PLAIN_ARK_ENTRY = re.compile(r"^(?P<ark>[^|\[\]]+):(?P<offset>\d+)$")


@dataclass(frozen=True)
class Embeddings:
    """Embeddings in scp order: ``matrix[i]`` belongs to ``keys[i]``."""

    keys: List[str]
    matrix: np.ndarray  # [N, D] float32
    source: str  # the scp they came from, for error messages
    index: Dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {key: i for i, key in enumerate(self.keys)})

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """Row index ``[K]`` of each key; raises ``KeyError`` with the first unknown key."""
        return np.fromiter((self.index[key] for key in keys), dtype=np.int64, count=len(keys))

    def trial_rows(self, trials: Sequence[Trial], trials_path: str | Path) -> Tuple[np.ndarray, np.ndarray]:
        """Row indices ``([T], [T])`` of the enroll and test side of each trial.

        A key without an embedding raises ``DataError`` naming the trial file, line and key.
        """
        try:
            return self.rows([t[0] for t in trials]), self.rows([t[1] for t in trials])
        except KeyError as err:
            key = err.args[0]
            line = _first_line_naming(trials_path, key)
            raise DataError(f"{trials_path}:{line}: no embedding for {key!r} in {self.source}") from None


def lookup_keys(mapping: Mapping[str, V], keys: Sequence[str], mapping_path: str, what: str) -> List[V]:
    """``[mapping[k] for k in keys]``; a missing key raises ``DataError`` naming ``mapping_path``."""
    missing = next((key for key in keys if key not in mapping), None)
    if missing is not None:
        raise DataError(f"{mapping_path}: no {what} for utterance {missing!r}")
    return [mapping[key] for key in keys]


def _first_line_naming(path: str | Path, key: str) -> int | str:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if key in line.split()[:2]:
                return lineno
    return "?"


def _scan_ark(ark: str, wanted_offsets: set, bar) -> Dict[int, np.ndarray]:
    """Read ``ark`` front to back; return the arrays whose data starts at one of ``wanted_offsets``."""
    import kaldiio

    found: Dict[int, np.ndarray] = {}
    with open(ark, "rb") as f:
        item_start = f.tell()
        for key, array in kaldiio.load_ark(f):
            data_offset = item_start + len(key.encode("utf-8")) + 1  # "<key> " precedes the data
            if data_offset in wanted_offsets:
                found[data_offset] = array
                bar.update()
            item_start = f.tell()
    return found


def read_embeddings(scp: str | Path, progress: bool = True) -> Embeddings:
    """Read every embedding of ``scp`` into an ``[N, D]`` float32 matrix, in scp order.

    Raises ``DataError`` naming the scp (and key) for a missing file, an entry that is not
    a vector, or vectors of different sizes.
    """
    import kaldiio

    scp = Path(scp)
    entries = list(read_scp(scp).items())  # (key, rxspecifier) in file order
    if not entries:
        raise DataError(f"{scp}: no embeddings")
    by_ark: Dict[str, List[Tuple[int, int]]] = {}  # ark -> [(entry position, offset)]
    others: List[int] = []
    for pos, (_, spec) in enumerate(entries):
        match = _PLAIN_ARK_ENTRY.match(spec)
        if match:
            by_ark.setdefault(match["ark"], []).append((pos, int(match["offset"])))
        else:
            others.append(pos)

    vectors: List[np.ndarray | None] = [None] * len(entries)
    bar = progress_bar(total=len(entries), desc=f"read {scp.name}", unit="emb", disable=not progress, leave=False)
    for ark, wanted in by_ark.items():
        if not Path(ark).is_file():
            raise DataError(
                f"{scp}: ark file {ark} (of key {entries[wanted[0][0]][0]!r}) not found"
                " (relative paths are taken from the current directory, as in Kaldi)"
            )
        try:
            found = _scan_ark(ark, {offset for _, offset in wanted}, bar)
        except Exception as err:  # kaldiio raises many types for a corrupt ark
            raise DataError(f"{scp}: cannot read ark file {ark}: {err!r}") from None
        for pos, offset in wanted:
            if offset in found:
                vectors[pos] = found[offset]
            else:
                others.append(pos)
    for pos in others:
        key, spec = entries[pos]
        refuse_pipe(spec, f"{scp}: {key!r}")
        try:
            vectors[pos] = kaldiio.load_mat(spec)
        except Exception as err:  # kaldiio raises many types for a bad specifier
            raise DataError(f"{scp}: cannot read {key!r} from {spec!r}: {err}") from None
        bar.update()
    bar.close()

    dim = None
    for (key, _), vector in zip(entries, vectors):
        if vector.ndim != 1:
            raise DataError(f"{scp}: {key!r} is not a vector (shape {vector.shape})")
        if dim is None:
            dim = vector.shape[0]
        elif vector.shape[0] != dim:
            raise DataError(f"{scp}: {key!r} has {vector.shape[0]} dimensions, earlier ones have {dim}")
    matrix = np.stack(vectors).astype(np.float32, copy=False)  # [N, D]
    finite = np.isfinite(matrix).all(axis=1)  # [N]
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise DataError(f"{scp}: the embedding of {entries[bad[0]][0]!r} is not finite (NaN or Inf; "
                        f"{len(bad)} of {len(entries)} embeddings are)")
    logger.info("read %d embeddings of dimension %d from %s", matrix.shape[0], dim, scp)
    return Embeddings([key for key, _ in entries], matrix, str(scp))


def load_mean(path: str | Path, read: Callable[[str | Path], Embeddings] = read_embeddings) -> np.ndarray:
    """The mean embedding ``[D]``: a ``.npy`` file, or the average of the embeddings of an scp.

    ``read`` reads the scp (pass a caching reader when the same scp is needed again).
    """
    path = Path(path)
    if path.suffix != ".npy":
        return read(path).matrix.mean(axis=0, dtype=np.float64).astype(np.float32)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        mean = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: not a readable .npy array ({err})") from None
    if mean.ndim != 1 or not np.issubdtype(mean.dtype, np.number):
        raise DataError(f"{path}: expected a vector of numbers, got shape {mean.shape} of {mean.dtype}")
    if not np.isfinite(mean).all():
        raise DataError(f"{path}: the mean embedding is not finite (NaN or Inf)")
    return mean.astype(np.float32)
