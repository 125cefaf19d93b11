"""``SpeakerModel``: waveform -> upstream hidden states ``[B, T, L, D]`` -> backend -> embedding.

Model files hold ``{"model_config": ModelConfig as a dict, "state_dict": model_state_dict(), ...}``.
A frozen upstream's weights are left out of them: they come from the upstream's own source (s3prl
cache, ``*_local`` checkpoint or HF directory), which must therefore be reachable when the file is
loaded. A fine-tuned upstream's weights are saved, but its source is still needed to build it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

import torch
from torch import nn

from wespeaker_lap.config import ConfigError, ModelConfig, from_dict, to_dict
from wespeaker_lap.upstream import Upstream
from wespeaker_lap.utils.io import PathLike, atomic_torch_save

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
    upstream = Upstream(up.name, path=up.path, frozen=up.frozen, cache_dir=up.cache_dir,
                        trust_checkpoint=up.trust_checkpoint)
    backend = build_backend(cfg.backend.name, upstream.n_layers, upstream.hidden_dim, **cfg.backend.options)
    return SpeakerModel(upstream, backend)


def save_speaker_model(path: PathLike, model: SpeakerModel, model_cfg: ModelConfig, **extra: Any) -> None:
    """Write ``{"model_config", "state_dict", **extra}`` to ``path`` atomically."""
    reserved = {"model_config", "state_dict"} & set(extra)
    if reserved:
        raise ValueError(f"{path}: extra keys {sorted(reserved)} are reserved")
    blob = {"model_config": to_dict(model_cfg), "state_dict": model.model_state_dict(), **extra}
    atomic_torch_save(blob, path)


def load_speaker_model(path: PathLike, device: str | torch.device = "cpu",
                       trust_checkpoint: bool = False) -> Tuple[SpeakerModel, Dict[str, Any]]:
    """Rebuild the model saved by ``save_speaker_model`` in eval mode on ``device``; return it and the file's dict.

    The upstream is rebuilt from the saved config: a relative ``upstream.path`` or ``cache_dir`` is
    taken as given, i.e. relative to the current working directory. Its checkpoint is trusted only
    if ``trust_checkpoint`` says so: the flag saved in the file is ignored (a shared file could set it).
    """
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
    try:
        cfg = from_dict(ModelConfig, blob["model_config"])
    except ConfigError as err:
        raise ConfigError(f"{path}: model_config: {err}") from None
    cfg = dataclasses.replace(cfg, upstream=dataclasses.replace(cfg.upstream, trust_checkpoint=trust_checkpoint))
    model = build_speaker_model(cfg)
    try:
        model.load_model_state_dict(blob["state_dict"])
    except (KeyError, RuntimeError) as err:
        raise ValueError(f"{path}: weights do not fit the saved model config: {err}") from err
    return model.to(device).eval(), blob
