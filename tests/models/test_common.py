"""frame_mask: lengths are checked on the host, the mask is built on the features' device."""
import pytest
import torch

from wespeaker_lap.models.common import frame_mask


def test_full_lengths_need_no_mask_and_partial_ones_get_one():
    assert frame_mask(torch.tensor([5, 5]), 5) is None
    assert frame_mask(None, 5) is None
    mask = frame_mask(torch.tensor([5, 2]), 5)
    assert mask.tolist() == [[True] * 5, [True, True, False, False, False]]


def test_the_mask_is_built_on_the_requested_device():
    """Host lengths, features elsewhere (``meta`` stands in for a GPU here): the mask lands beside the features."""
    mask = frame_mask(torch.tensor([5, 2]), 5, device=torch.device("meta"))
    assert mask.device.type == "meta" and mask.shape == (2, 5) and mask.dtype == torch.bool


@pytest.mark.parametrize("lengths, message", [([0, 3], "got 0..3"), ([3, 6], "got 3..6")])
def test_lengths_out_of_range_are_refused(lengths, message):
    with pytest.raises(ValueError, match=rf"1\.\.5 .*{message}"):
        frame_mask(torch.tensor(lengths), 5)


def test_lengths_must_be_one_dimensional():
    with pytest.raises(ValueError, match="shape"):
        frame_mask(torch.tensor([[3]]), 5)
    with pytest.raises(ValueError, match="shape"):
        frame_mask(torch.tensor([], dtype=torch.long), 5)
