"""Keeping the caller's global random streams across code that reseeds them."""
from __future__ import annotations

import contextlib
import functools
import random
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def kept_global_rng() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's global RNG states (CPU, and CUDA once initialised) on exit."""
    python, numpy = random.getstate(), np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)


def keeps_global_rng(function: F) -> F:
    """Decorator: ``function`` runs under :func:`kept_global_rng`."""
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with kept_global_rng():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
