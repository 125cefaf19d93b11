"""Backends (LAP, SUPERB, ASTP, ECAPA-TDNN, MHFA), ``build_backend`` and the speaker model.

``SpeakerModel``, ``build_speaker_model``, ``save_speaker_model`` and ``load_speaker_model`` live in
``wespeaker_lap.models.speaker_model`` and are imported on first use, so importing the
backends never pulls in the upstream code.
"""
from __future__ import annotations

from typing import Any

from wespeaker_lap.models.backends import BACKENDS, backend_options, build_backend
from wespeaker_lap.models.lap import LayerAttentivePooling

_SPEAKER_MODEL_NAMES = ("SpeakerModel", "build_speaker_model", "load_speaker_model", "save_speaker_model")

__all__ = ["BACKENDS", "LayerAttentivePooling", "backend_options", "build_backend", *_SPEAKER_MODEL_NAMES]


def __getattr__(name: str) -> Any:
    if name in _SPEAKER_MODEL_NAMES:
        from wespeaker_lap.models import speaker_model

        return getattr(speaker_model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
