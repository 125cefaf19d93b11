"""AAM-softmax with sub-centres and inter-top-K against a worked example computed by hand."""
import math

import numpy as np
import pytest
import torch

from wespeaker_lap.losses import AAMSoftmax

# 2-D geometry: every vector is given by its angle, so every cosine is cos(angle difference).
CENTRE_ANGLES = np.array([[0.5, 0.9, 1.4, 0.7], [0.6, 2.0, 2.5, 3.0]])  # [sub-centre, class]
CENTRE_NORMS = np.array([[2.0, 0.5, 1.0, 3.0], [0.7, 1.5, 2.5, 1.0]])  # must not matter
EMBED_ANGLES = np.array([0.0, math.pi + 0.55])  # the second one sits opposite class 0
LABELS = [0, 0]
SCALE, MARGIN, PENALTY, TOP_K = 10.0, 0.2, 0.05, 2


def _head(margin=MARGIN, penalty=PENALTY, top_k=TOP_K) -> AAMSoftmax:
    head = AAMSoftmax(embed_dim=2, n_classes=4, scale=SCALE, margin=margin, sub_centers=2, top_k=top_k,
                      penalty=penalty)
    centres = np.stack([CENTRE_NORMS * np.cos(CENTRE_ANGLES), CENTRE_NORMS * np.sin(CENTRE_ANGLES)], axis=1)
    with torch.no_grad():
        head.weight.copy_(torch.tensor(centres, dtype=torch.float32))  # [K=2, E=2, C=4]
    return head


def _embeddings() -> torch.Tensor:
    return 3.0 * torch.tensor(np.stack([np.cos(EMBED_ANGLES), np.sin(EMBED_ANGLES)], axis=1), dtype=torch.float32)


def _expected_loss(margin: float, penalty_margin: float, top_k: int) -> float:
    """The loss written out: max over sub-centres, ArcFace target, penalised top-K, scaled CE."""
    losses = []
    for angle, label in zip(EMBED_ANGLES, LABELS):
        cosines = np.cos(CENTRE_ANGLES - angle).max(axis=0)  # [C]
        logits = cosines.copy()
        others = [c for c in np.argsort(-cosines) if c != label][:top_k]
        for c in others:
            theta = math.acos(cosines[c])
            logits[c] = math.cos(theta - penalty_margin)
        cos_t = cosines[label]
        if cos_t > math.cos(math.pi - margin):
            logits[label] = math.cos(math.acos(cos_t) + margin)
        else:
            logits[label] = cos_t - margin * math.sin(margin)
        scaled = SCALE * logits
        losses.append(-(scaled[label] - math.log(np.exp(scaled).sum())))
    return float(np.mean(losses))


def test_the_second_sample_takes_the_fallback_branch():
    cos_target = np.cos(CENTRE_ANGLES[:, 0] - EMBED_ANGLES[1]).max()
    assert cos_target <= math.cos(math.pi - MARGIN)


def test_loss_matches_the_worked_example():
    loss, n_correct = _head()(_embeddings(), torch.tensor(LABELS))
    assert loss.item() == pytest.approx(_expected_loss(MARGIN, PENALTY, TOP_K), rel=1e-5)
    assert int(n_correct) == 1  # the first sample's nearest class is its own; the second's is not


def test_without_top_k_only_the_target_changes():
    loss, _ = _head(top_k=0)(_embeddings(), torch.tensor(LABELS))
    assert loss.item() == pytest.approx(_expected_loss(MARGIN, 0.0, 0), rel=1e-5)


def test_set_margin_rescales_the_penalty():
    head = _head()
    head.set_margin(0.1)
    assert head.penalty_margin == pytest.approx(PENALTY * 0.1 / MARGIN)
    loss, _ = head(_embeddings(), torch.tensor(LABELS))
    assert loss.item() == pytest.approx(_expected_loss(0.1, PENALTY * 0.1 / MARGIN, TOP_K), rel=1e-5)
    head.set_margin(0.0005)
    assert head.penalty_margin == 0.0


def test_zero_initial_margin_keeps_the_penalty_off():
    head = _head(margin=0.0)
    head.set_margin(0.3)
    assert head.penalty_margin == 0.0 and head.margin == 0.3


def test_slice_classes_keeps_the_first_ones():
    head = _head()
    full = head.cosines(_embeddings())
    head.slice_classes(3)
    assert head.weight.shape == (2, 2, 3) and head.n_classes == 3
    torch.testing.assert_close(head.cosines(_embeddings()), full[:, :3])
    loss, _ = head(_embeddings(), torch.tensor([0, 2]))
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="cannot slice 3 classes to 4"):
        head.slice_classes(4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cosines_at_plus_minus_one_are_finite_under_autocast(dtype):
    torch.manual_seed(0)
    head = AAMSoftmax(embed_dim=8, n_classes=5, sub_centers=2, top_k=3)
    axis = torch.eye(8)[0]  # unit vector: the cosines below are exactly 1 and -1
    with torch.no_grad():
        head.weight[:, :, 0] = axis
        head.weight[:, :, 1] = axis  # class 1 sits exactly on class 0: a hard negative at cos = 1
    emb = torch.stack([axis, -axis, 2 * axis]).requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        loss, _ = head(emb.to(dtype), torch.tensor([0, 0, 1]))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert bool(torch.isfinite(emb.grad).all()) and bool(torch.isfinite(head.weight.grad).all())
