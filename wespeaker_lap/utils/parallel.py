"""A process pool that maps a function over items in order, with a progress bar."""
from __future__ import annotations

import contextlib
import multiprocessing
from typing import Callable, Iterator, Optional, Sequence, TypeVar

from wespeaker_lap.utils.console import progress

T = TypeVar("T")
R = TypeVar("R")


def parallel_map(fn: Callable[[T], R], items: Sequence[T], nj: int, desc: str, unit: str = "file",
                 total: Optional[int] = None, advance: Callable[[R], int] = lambda result: 1) -> Iterator[R]:
    """``map(fn, items)`` in order over ``nj`` processes (in this process when ``nj`` is 1), with a bar.

    The bar counts ``advance(result)`` per item up to ``total`` (default: one per item). The first
    exception raised by ``fn`` stops the pool and propagates.
    """
    parallel = nj > 1 and len(items) > 1
    with progress(total=len(items) if total is None else total, desc=desc, unit=unit) as bar, \
            (multiprocessing.Pool(nj) if parallel else contextlib.nullcontext()) as pool:
        results = pool.imap(fn, items, max(1, min(64, len(items) // (8 * nj)))) if parallel else map(fn, items)
        for result in results:
            bar.update(advance(result))
            yield result
