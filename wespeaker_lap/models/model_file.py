"""Model files (``final_model.pt``): the one place that writes and reads them.

A model file is a ``torch.save``\\ d dict that loads with ``torch.load(weights_only=True)``:

* ``format_version`` (int), ``model_config`` (a ``ModelConfig`` as a dict), ``sample_rate`` (Hz of the
  audio the model takes: always ``SAMPLE_RATE``, 16 kHz);
* ``state_dict``: ``SpeakerModel.model_state_dict()``, without a frozen upstream's weights;
* ``upstream_identity``: ``{"name", "file", "size", "digest"}`` of the upstream's checkpoint
  (``wespeaker_lap.upstream.identity``), which loading compares with the checkpoint the config now
  points at: a frozen upstream's weights, and any upstream's architecture, come from there;
* with training extras (the files training and averaging write, which a later phase's
  ``train.init_from`` needs): ``loss_head`` (state dict), ``n_classes``, ``speakers`` (the class labels,
  in order), ``train_config`` (the resolved training config) and ``averaged_checkpoints`` (file names).

Files written before ``format_version`` existed (no version, rate or identity) still load; their
upstream cannot be checked, which is logged.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from wespeaker_lap.config import ConfigError, ModelConfig, UpstreamConfig, from_dict, to_dict
from wespeaker_lap.data.audio import SAMPLE_RATE
from wespeaker_lap.utils.io import PathLike, atomic_torch_save

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_TRAINING_KEYS = ("loss_head", "n_classes", "speakers", "train_config", "averaged_checkpoints")


class UpstreamMismatchError(ValueError):
    """The upstream checkpoint a model file's config points at is not the one it was trained with."""


@dataclass(frozen=True)
class TrainingExtras:
    """What a later training phase needs from a model file besides the model."""

    loss_head: Dict[str, torch.Tensor]
    n_classes: int
    speakers: List[str]
    train_config: Dict[str, Any]
    averaged_checkpoints: List[str]


@dataclass(frozen=True)
class ModelFile:
    """The contents of a model file (no model built yet)."""

    path: Path
    model_config: ModelConfig
    state_dict: Dict[str, torch.Tensor]
    sample_rate: int
    upstream_identity: Optional[Dict[str, Any]]  # None: written before identities were recorded
    training: Optional[TrainingExtras]  # None: an inference-only file


def save_speaker_model(path: PathLike, model: torch.nn.Module, model_cfg: ModelConfig,
                    training: Optional[TrainingExtras] = None) -> None:
    """Write ``model`` (a ``SpeakerModel`` built from ``model_cfg``) and the optional extras, atomically."""
    from wespeaker_lap.upstream.identity import upstream_identity

    blob: Dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model_config": to_dict(model_cfg),
        "sample_rate": SAMPLE_RATE,
        "upstream_identity": upstream_identity(model_cfg.upstream),
        "state_dict": model.model_state_dict(),
    }
    if training is not None:
        blob.update({key: getattr(training, key) for key in _TRAINING_KEYS})
    atomic_torch_save(blob, path)


def read_model_file(path: PathLike) -> ModelFile:
    """Read and check a model file's contents; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: speaker model file not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable model file ({type(err).__name__}: {err})") from err
    missing = [key for key in ("model_config", "state_dict") if not isinstance(blob, dict) or key not in blob]
    if missing:
        raise ValueError(f"{path}: not a speaker model file (no {', '.join(missing)})")
    version = blob.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path}: model file format {version!r} is newer than this version reads "
                         f"({FORMAT_VERSION}); update wespeaker-lap")
    rate = blob.get("sample_rate", SAMPLE_RATE)
    if rate != SAMPLE_RATE:
        raise ValueError(f"{path}: the model takes {rate} Hz audio; this version supports {SAMPLE_RATE} Hz only")
    try:
        cfg = from_dict(ModelConfig, blob["model_config"])
    except ConfigError as err:
        raise ConfigError(f"{path}: model_config: {err}") from None
    present = [key for key in _TRAINING_KEYS if key in blob]
    absent = [key for key in _TRAINING_KEYS if key not in blob]
    if present and absent:
        raise ValueError(f"{path}: incomplete training extras (no {', '.join(absent)})")
    training = TrainingExtras(**{key: blob[key] for key in _TRAINING_KEYS}) if present else None
    return ModelFile(path, cfg, blob["state_dict"], rate, blob.get("upstream_identity"), training)


_ALLOW_HINT = ("Point the upstream at the original checkpoint, or pass --allow_upstream_mismatch "
               "(load_model(..., allow_upstream_mismatch=True)) to go on anyway")


def check_upstream(model_file: ModelFile, upstream: Optional[UpstreamConfig] = None,
                   allow_mismatch: bool = False, hint: str = _ALLOW_HINT) -> None:
    """Compare the recorded upstream identity with the checkpoint ``upstream`` (default: the file's) points at.

    A mismatch raises ``UpstreamMismatchError`` naming both (and ``hint``), or only warns with ``allow_mismatch``.
    A checkpoint that is not there is left to the upstream's own loader, whose error says where to put it.
    """
    from wespeaker_lap.upstream.identity import describe, identity_mismatch, upstream_identity

    upstream = upstream or model_file.model_config.upstream
    recorded = model_file.upstream_identity
    if recorded is None:
        logger.warning("%s records no upstream identity (an older file): %s is not checked",
                       model_file.path, upstream.name)
        return
    try:
        current = upstream_identity(upstream)
    except FileNotFoundError:  # building the upstream then says what is missing and how to get it
        return
    why = identity_mismatch(recorded, current) if recorded.get("name") == current["name"] else "the name differs"
    if why is None:
        return
    role = "its frozen weights" if upstream.frozen else "its architecture and preprocessing"
    message = (f"{model_file.path}: upstream mismatch ({why}): the model was trained with "
               f"{describe(recorded)}, but {describe(current)} is configured now ({role} come from there)")
    if not allow_mismatch:
        raise UpstreamMismatchError(f"{message}. {hint}")
    logger.warning("%s; going on (--allow_upstream_mismatch)", message)


def load_speaker_model(path: PathLike, device: str | torch.device = "cpu", allow_upstream_mismatch: bool = False,
                       trust_checkpoint: bool = False) -> Tuple[torch.nn.Module, ModelFile]:
    """Rebuild the ``SpeakerModel`` of a model file in eval mode on ``device``; return it and the file.

    The upstream is checked against the recorded identity first, then rebuilt from the saved config:
    a relative ``upstream.path`` or ``cache_dir`` is taken as given (relative to the working directory).
    Its checkpoint is trusted only if ``trust_checkpoint`` says so: the flag saved in the file is
    ignored (a shared file could set it; see ``wespeaker_lap.upstream.trust``).
    """
    from wespeaker_lap.models.speaker_model import build_speaker_model

    model_file = read_model_file(path)
    check_upstream(model_file, allow_mismatch=allow_upstream_mismatch)
    upstream = dataclasses.replace(model_file.model_config.upstream, trust_checkpoint=trust_checkpoint)
    model = build_speaker_model(dataclasses.replace(model_file.model_config, upstream=upstream))
    try:
        model.load_model_state_dict(model_file.state_dict)
    except (KeyError, RuntimeError) as err:
        raise ValueError(f"{path}: weights do not fit the saved model config: {err}") from err
    return model.to(device).eval(), model_file
