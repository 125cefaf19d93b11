"""wespeaker-lap: Layer Attentive Pooling speaker verification on s3prl upstreams."""

__version__ = "0.1.0"


def load_model(exp_dir: str, device: str = "cpu", **options):
    """Load a trained experiment directory for inference; see ``wespeaker_lap.inference.load_model``
    (``options``: ``cohort``, ``top_k``, ``allow_upstream_mismatch``, ``trust_checkpoint``)."""
    from wespeaker_lap.inference import load_model as _load_model

    return _load_model(exp_dir, device=device, **options)
