"""The sub-centre cosines and their hand-written gradients equal autograd through F.normalize."""
import torch
from torch.nn import functional as F

from wespeaker_lap.losses.cosine import sub_center_cosines


def test_values_and_gradients_match_autograd_through_normalize():
    generator = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(5, 7, generator=generator, dtype=torch.double), dim=1).requires_grad_()
    weight = (3.0 * torch.randn(3, 7, 11, generator=generator, dtype=torch.double)).requires_grad_()
    probe = torch.randn(3, 5, 11, generator=generator, dtype=torch.double)
    expected = torch.matmul(emb, F.normalize(weight, dim=1))
    got = sub_center_cosines(emb, weight)
    torch.testing.assert_close(got, expected)
    for a, b in zip(torch.autograd.grad((got * probe).sum(), (emb, weight)),
                    torch.autograd.grad((expected * probe).sum(), (emb, weight))):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(sub_center_cosines, (emb, weight))
