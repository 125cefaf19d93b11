"""wespeaker-lap: Layer Attentive Pooling speaker verification on s3prl upstreams."""

__version__ = "0.1.0"


def load_model(exp_dir: str, device: str = "cpu", trust_checkpoint: bool = False):
    """Load a trained experiment directory for inference; see ``wespeaker_lap.inference``."""
    from wespeaker_lap.inference import load_model as _load_model

    return _load_model(exp_dir, device=device, trust_checkpoint=trust_checkpoint)
