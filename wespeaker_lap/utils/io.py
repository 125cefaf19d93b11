"""Atomic file writes: readers never see a half-written file.

A write that fails because the disk is full raises ``DiskFullError`` naming the file, whatever
the writer raised (``torch.save`` reports it as "unexpected pos" with the ``ENOSPC`` chained).
A target that is not a regular file (``/dev/stdout``, a named pipe) is written in place: it
cannot be replaced by a rename.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator, Union

from wespeaker_lap.utils.errors import DiskFullError, disk_full_cause

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it over ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched; a full disk
    raises ``DiskFullError(path)``. A ``path`` that exists but is not a regular file (a device,
    a pipe) is opened and written directly.
    """
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        with _naming_full_disk(path), open(path, mode, **kwargs) as f:
            yield f
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with _naming_full_disk(path):
            with os.fdopen(fd, mode, **kwargs) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _naming_full_disk(path: Path) -> Iterator[None]:
    """Turn any exception caused by ``ENOSPC`` (also chained, as torch.save does) into ``DiskFullError(path)``."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as err:
        if disk_full_cause(err) is None:
            raise
        raise DiskFullError(path) from err


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_torch_save(obj, path: PathLike) -> None:
    """``torch.save`` to ``path`` atomically (temporary file, fsync, rename)."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
