"""One optimizer step: accumulation equals one big batch, non-finite losses skip and stop the run."""
import math

import pytest
import torch
from torch import nn

from wespeaker_lap.training.step import NonFiniteGuard, NonFiniteLossError, resolve_amp, train_step


class LinearClassifier(nn.Module):
    """A tiny real model with the trainer's ``(wavs, wav_lens, labels) -> (loss, n_correct)`` interface."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(6, 3)

    def forward(self, wavs, wav_lens, labels):
        logits = self.linear(wavs)
        return nn.functional.cross_entropy(logits, labels), (logits.argmax(1) == labels).sum()


def batches(wavs, labels, size):
    for i in range(0, len(labels), size):
        yield wavs[i:i + size], torch.full((len(labels[i:i + size]),), 6), labels[i:i + size]


def make(lr=0.1):
    model = LinearClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return model, opt, torch.amp.GradScaler("cpu", enabled=False)


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)


def test_accumulated_micro_batches_match_one_full_batch():
    wavs, labels = data()
    full, opt_full, scaler = make()
    r_full = train_step(full, batches(wavs, labels, 8), 1, opt_full, scaler, None, None)
    accum, opt_accum, scaler = make()
    r_accum = train_step(accum, batches(wavs, labels, 2), 4, opt_accum, scaler, None, None)
    assert r_full.applied and r_accum.applied
    assert r_accum.loss == pytest.approx(r_full.loss)
    assert r_accum.accuracy == r_full.accuracy
    assert r_accum.grad_norm == pytest.approx(r_full.grad_norm, rel=1e-5)
    for a, b in zip(full.parameters(), accum.parameters()):
        torch.testing.assert_close(a, b)


def test_non_finite_loss_skips_the_update():
    wavs, labels = data()
    wavs[3, 0] = float("nan")  # one bad sample in the second micro-batch
    model, opt, scaler = make()
    before = [p.detach().clone() for p in model.parameters()]
    result = train_step(model, batches(wavs, labels, 4), 2, opt, scaler, None, None)
    assert not result.finite and not result.applied and math.isnan(result.loss)
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p) and p.grad is None
    good = train_step(model, batches(*data(), 4), 2, opt, scaler, None, None)
    assert good.finite and good.applied
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_gradient_clipping_caps_the_update_but_reports_the_raw_norm():
    wavs, labels = data()
    model, opt, scaler = make(lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    result = train_step(model, batches(wavs * 100, labels, 8), 1, opt, scaler, None, 0.01)
    assert result.grad_norm > 0.01
    moved = torch.sqrt(sum(((p - b) ** 2).sum() for b, p in zip(before, model.parameters())))
    assert moved.item() == pytest.approx(0.01, rel=1e-3)  # SGD, lr 1: the step is the clipped gradient


def test_guard_stops_after_too_many_non_finite_steps_in_a_row():
    guard = NonFiniteGuard(max_in_row=3)
    for step, finite in enumerate([False, False, True, False, False], 1):
        guard.record(finite, step)
    assert (guard.in_row, guard.total) == (2, 4)
    restored = NonFiniteGuard(3)
    restored.load_state_dict(guard.state_dict())
    with pytest.raises(NonFiniteLossError, match="3 optimizer steps in a row.*max_nonfinite_steps=3"):
        restored.record(False, 6)


def test_amp_is_off_on_the_cpu_whatever_the_setting():
    for setting in ("auto", "bf16", "fp16", "off"):
        assert resolve_amp(setting, torch.device("cpu")) is None
