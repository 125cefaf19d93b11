"""Margin schedule shapes."""
import math

import numpy as np
import pytest

from wespeaker_lap.losses import RAMP_SHAPES, margin_at

FINAL, START, RAMP = 0.3, 2.0, 20.0


@pytest.mark.parametrize("shape", sorted(RAMP_SHAPES))
def test_endpoints_and_hold(shape):
    kwargs = dict(final=FINAL, initial=0.1, start_epoch=START, ramp_epochs=RAMP, shape=shape)
    assert margin_at(0.0, **kwargs) == pytest.approx(0.1)
    assert margin_at(START, **kwargs) == pytest.approx(0.1)
    assert margin_at(START + RAMP, **kwargs) == pytest.approx(FINAL)
    assert margin_at(START + 3 * RAMP, **kwargs) == pytest.approx(FINAL)


@pytest.mark.parametrize("shape", sorted(RAMP_SHAPES))
def test_monotonic(shape):
    values = [margin_at(e, FINAL, start_epoch=START, ramp_epochs=RAMP, shape=shape) for e in np.linspace(0, 30, 301)]
    assert all(b > a for a, b in zip(values[20:220], values[21:221]))  # strictly rising on the ramp
    assert all(b >= a for a, b in zip(values, values[1:]))


def test_log_rises_fast_and_exp_slow():
    at = lambda fraction, shape: margin_at(fraction * RAMP, 1.0, ramp_epochs=RAMP, shape=shape)
    expected_log = (math.log(0.005 + 0.1 * 0.995) - math.log(0.005)) / -math.log(0.005)
    assert at(0.1, "log") == pytest.approx(expected_log)
    assert at(0.1, "log") == pytest.approx(0.57, abs=0.01)
    assert at(0.5, "log") == pytest.approx(0.87, abs=0.01)
    assert at(0.5, "cos") == pytest.approx(0.5)
    assert at(0.5, "linear") == pytest.approx(0.5)
    assert at(0.5, "exp") < 0.1


def test_no_ramp_means_constant_final():
    assert margin_at(0.0, FINAL) == FINAL
    assert margin_at(7.5, FINAL, initial=0.1, start_epoch=START) == FINAL


def test_bad_arguments():
    with pytest.raises(ValueError, match="valid shapes: log, exp, linear, cos"):
        margin_at(1.0, FINAL, ramp_epochs=RAMP, shape="sigmoid")
    with pytest.raises(ValueError, match="ramp_epochs"):
        margin_at(1.0, FINAL, ramp_epochs=-1.0)
