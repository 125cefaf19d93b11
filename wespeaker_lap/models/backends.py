"""Backends: hidden states of all layers ``[B, T, L, D]`` (+ ``lengths[B]``) -> speaker embedding.

``build_backend(name, n_layers, in_dim, **options)`` is the one entry point; the names and
their options live in ``BACKENDS``. Every backend has ``forward(x, lengths=None) ->
[B, embed_dim]`` and an ``embed_dim`` attribute; frames at or past ``lengths[b]`` never
influence utterance ``b``.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional

from torch import Tensor, nn

from wespeaker_lap.models.astp import AttentiveStatsPooling
from wespeaker_lap.models.ecapa import EcapaTdnn
from wespeaker_lap.models.lap import LayerAttentivePooling
from wespeaker_lap.models.mhfa import Mhfa
from wespeaker_lap.models.superb import SuperbWeightedSum


class LapAstp(nn.Module):
    """The proposed backend: LAP (D → ``hidden_dim``) then the authors' ASTP."""

    def __init__(self, n_layers: int, in_dim: int, *, hidden_dim: int = 512, n_heads: int = 16,
                 dropout: float = 0.1, embed_dim: int = 192):
        super().__init__()
        self.embed_dim = embed_dim
        self.lap = LayerAttentivePooling(n_layers, in_dim, hidden_dim, n_heads, dropout)
        self.astp = AttentiveStatsPooling(hidden_dim, embed_dim, dropout=dropout)

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        return self.astp(self.lap(x, lengths), lengths)

    def layer_gates(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """LAP's gates ``[B, n_heads, T, L]`` for ``x[B, T, L, D]`` (for heat maps; call in eval mode).

        Gates of frames at or past ``lengths[b]`` are meaningless.
        """
        return self.lap(x, lengths, return_gates=True)[1]


class SuperbAstp(nn.Module):
    """Baseline: SUPERB weighted sum then the authors' ASTP on the full width D."""

    def __init__(self, n_layers: int, in_dim: int, *, dropout: float = 0.1, embed_dim: int = 192):
        super().__init__()
        self.embed_dim = embed_dim
        self.superb = SuperbWeightedSum(n_layers)
        self.astp = AttentiveStatsPooling(in_dim, embed_dim, dropout=dropout)

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        return self.astp(self.superb(x), lengths)


class SuperbEcapa(nn.Module):
    """Baseline (the WavLM paper's recipe): SUPERB weighted sum then ECAPA-TDNN."""

    def __init__(self, n_layers: int, in_dim: int, *, channels: int = 512, embed_dim: int = 192):
        super().__init__()
        self.embed_dim = embed_dim
        self.superb = SuperbWeightedSum(n_layers)
        self.ecapa = EcapaTdnn(in_dim, channels, embed_dim)

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        return self.ecapa(self.superb(x), lengths)


BACKENDS: Dict[str, Callable[..., nn.Module]] = {
    "lap_astp": LapAstp,
    "superb_astp": SuperbAstp,
    "superb_ecapa": SuperbEcapa,
    "mhfa": Mhfa,
}


def backend_options(name: str) -> Dict[str, Any]:
    """The options of backend ``name`` and their defaults."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")
    parameters = inspect.signature(BACKENDS[name]).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _check_option(name: str, key: str, value: Any, default: Any) -> None:
    """Reject an option whose type does not match its default (an int where an int is due...)."""
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ValueError(f"backend {name!r} option {key}: expected {type(default).__name__}, got {value!r}")


def build_backend(name: str, n_layers: int, in_dim: int, **options: Any) -> nn.Module:
    """Build backend ``name`` for ``n_layers`` hidden states of width ``in_dim``.

    Raises ``ValueError`` for an unknown name or option (listing the valid ones) and for an
    option of the wrong type.
    """
    defaults = backend_options(name)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(
            f"backend {name!r}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)};"
            f" valid options: {', '.join(f'{k}={v!r}' for k, v in defaults.items())}"
        )
    for key, value in options.items():
        _check_option(name, key, value, defaults[key])
    return BACKENDS[name](n_layers, in_dim, **options)
