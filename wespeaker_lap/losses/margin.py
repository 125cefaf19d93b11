"""Margin schedules: the ramp of the AAM margin over training (``docs/reproduction.md`` §Phase defaults).

Each shape is a curve on a fixed grid, min-max normalised to [0, 1] over the ramp:

* ``log``: log of a linear grid 0.005..1, fast early (57 % of the way at 10 % of the ramp);
* ``exp``: exp of a linear grid 0.1..5, slow early;
* ``linear``: a straight line;
* ``cos``: half a cosine, cos on [−π, 0].
"""
from __future__ import annotations

import math
from typing import Callable, Dict


def _normalised(curve: Callable[[float], float], start: float, stop: float) -> Callable[[float], float]:
    """``fraction -> [0, 1]``: ``curve`` on ``start + fraction * (stop - start)``, min-max normalised."""
    low, high = curve(start), curve(stop)
    return lambda fraction: (curve(start + fraction * (stop - start)) - low) / (high - low)


RAMP_SHAPES: Dict[str, Callable[[float], float]] = {
    "log": _normalised(math.log, 0.005, 1.0),
    "exp": _normalised(math.exp, 0.1, 5.0),
    "linear": lambda fraction: fraction,
    "cos": _normalised(math.cos, -math.pi, 0.0),
}


def margin_at(progress_epochs: float, final: float, initial: float = 0.0, start_epoch: float = 0.0,
              ramp_epochs: float = 0.0, shape: str = "log") -> float:
    """The margin after ``progress_epochs`` (fractional) epochs of training.

    ``initial`` before ``start_epoch``, then a ``shape`` ramp to ``final`` over
    ``ramp_epochs``, then ``final``. With ``ramp_epochs == 0`` the margin is ``final`` throughout.
    """
    if shape not in RAMP_SHAPES:
        raise ValueError(f"unknown margin schedule shape {shape!r}; valid shapes: {', '.join(RAMP_SHAPES)}")
    if ramp_epochs < 0:
        raise ValueError(f"ramp_epochs must be >= 0, got {ramp_epochs}")
    if ramp_epochs == 0:
        return final
    fraction = min(max((progress_epochs - start_epoch) / ramp_epochs, 0.0), 1.0)
    return initial + (final - initial) * RAMP_SHAPES[shape](fraction)
