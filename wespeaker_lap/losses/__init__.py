"""Training loss: AAM-softmax with sub-centres and inter-top-K, and its margin schedule."""
from wespeaker_lap.losses.aam import AAMSoftmax
from wespeaker_lap.losses.margin import RAMP_SHAPES, margin_at

__all__ = ["AAMSoftmax", "RAMP_SHAPES", "margin_at"]
