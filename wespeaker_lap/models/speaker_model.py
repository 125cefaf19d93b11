"""``SpeakerModel``: waveform -> upstream hidden states ``[B, T, L, D]`` -> backend -> embedding.

``model_state_dict()`` leaves a frozen upstream's weights out: they come from the upstream's own
source (s3prl cache, ``*_local`` checkpoint or HF directory). Model files are written and read by
``wespeaker_lap.models.model_file`` only.
"""
from __future__ import annotations

from typing import Dict, Mapping

import torch
from torch import nn

from wespeaker_lap.config import ModelConfig
from wespeaker_lap.upstream import Upstream

_PARTS = ("upstream", "backend")


class SpeakerModel(nn.Module):
    """``forward(wavs[B, S], wav_lens[B]) -> [B, embed_dim]``: the upstream, then the backend on its frames."""

    def __init__(self, upstream: Upstream, backend: nn.Module):
        super().__init__()
        self.upstream = upstream
        self.backend = backend
        self.embed_dim: int = backend.embed_dim

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
        hidden, frame_lens = self.upstream(wavs, wav_lens)  # [B, T, L, D], [B]
        return self.backend(hidden, frame_lens)

    def layer_gates(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
        """The backend's per-frame layer gates (LAP: ``[B, n_heads, T, L]``); call in eval mode."""
        if not hasattr(self.backend, "layer_gates"):
            raise ValueError(f"backend {type(self.backend).__name__} has no layer gates (LAP backends do)")
        hidden, frame_lens = self.upstream(wavs, wav_lens)
        return self.backend.layer_gates(hidden, frame_lens)

    def model_state_dict(self) -> Dict[str, torch.Tensor]:
        """``state_dict()`` without a frozen upstream's weights."""
        state = self.state_dict()
        if self.upstream.frozen:
            state = {k: v for k, v in state.items() if not k.startswith("upstream.")}
        return state

    def load_model_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load ``model_state_dict()`` output: the backend strictly, the upstream strictly if its keys are present.

        Without upstream keys (a frozen upstream's file) the upstream keeps its pre-trained weights.
        """
        parts: Dict[str, Dict[str, torch.Tensor]] = {part: {} for part in _PARTS}
        for key, value in state.items():
            part, _, rest = key.partition(".")
            if part not in parts:
                raise KeyError(f"unexpected key {key!r}: expected upstream.* or backend.*")
            parts[part][rest] = value
        self.backend.load_state_dict(parts["backend"], strict=True)
        if parts["upstream"]:
            self.upstream.load_state_dict(parts["upstream"], strict=True)


def build_speaker_model(cfg: ModelConfig) -> SpeakerModel:
    """The upstream of ``cfg.upstream``, then ``build_backend(cfg.backend.name, L, D, **cfg.backend.options)``."""
    from wespeaker_lap.models.backends import build_backend

    up = cfg.upstream
    upstream = Upstream(up.name, path=up.path, frozen=up.frozen, cache_dir=up.cache_dir, waveform=up.waveform,
                        finetune=up.finetune, trust_checkpoint=up.trust_checkpoint)
    backend = build_backend(cfg.backend.name, upstream.n_layers, upstream.hidden_dim, **cfg.backend.options)
    return SpeakerModel(upstream, backend)
