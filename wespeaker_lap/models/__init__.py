"""Backends (LAP, SUPERB, ASTP, ECAPA-TDNN, MHFA), ``build_backend``, the speaker model and its files.

``SpeakerModel`` and ``build_speaker_model`` live in ``wespeaker_lap.models.speaker_model``;
``save_speaker_model`` and ``load_speaker_model`` in ``wespeaker_lap.models.model_file`` (the only
module that writes and reads model files); ``gates`` draws LAP gate heat maps. They are imported on
first use, so importing the backends never pulls in the upstream code.
"""
from __future__ import annotations

from typing import Any

from wespeaker_lap.models.backends import BACKENDS, backend_options, build_backend
from wespeaker_lap.models.lap import LayerAttentivePooling

_LAZY = {"SpeakerModel": "speaker_model", "build_speaker_model": "speaker_model",
         "load_speaker_model": "model_file", "save_speaker_model": "model_file"}

__all__ = ["BACKENDS", "LayerAttentivePooling", "backend_options", "build_backend", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"wespeaker_lap.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
