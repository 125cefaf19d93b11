"""Backends: hidden states of all layers ``[B, T, L, D]`` (+ ``lengths[B]``) -> speaker embedding.

The official ablation grid, composed from parts (docs/reproduction.md §Backends): a layer
aggregation (``lap``: Layer Attentive Pooling, D -> ``hidden_dim``; ``superb``: the weighted
layer sum, width D) followed by a speaker network (``astp``, ``ecapa``: ECAPA-TDNN, ``xvector``),
or MHFA, which owns two aggregations (keys and values). A backend's name is
``<aggregation>_<network>``: ``lap_astp`` (the paper's), ``lap_ecapa``, ``lap_xvector``,
``lap_mhfa``, ``superb_astp``, ``superb_ecapa``, ``superb_xvector``, ``superb_mhfa``; ``mhfa``
is an alias of ``superb_mhfa`` (the original MHFA).

``build_backend(name, n_layers, in_dim, **options)`` is the one entry point; the options are
those of the two parts (``backend_options(name)`` lists them with their defaults; ``dropout``
is shared by LAP and ASTP, as in the official code). Every backend has ``forward(x, lengths=None)
-> [B, embed_dim]`` and an ``embed_dim`` attribute; frames at or past ``lengths[b]`` never
influence utterance ``b``.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional, Tuple

from torch import Tensor, nn

from wespeaker_lap.models.astp import AttentiveStatsPooling
from wespeaker_lap.models.ecapa import EcapaTdnn
from wespeaker_lap.models.lap import LayerAttentivePooling
from wespeaker_lap.models.mhfa import Mhfa
from wespeaker_lap.models.superb import SuperbWeightedSum
from wespeaker_lap.models.xvector import XVector


# ----------------------------------------------------------------------------- parts
# Each part is built by a function whose keyword-only arguments are its options (with defaults).


def _lap(n_layers: int, in_dim: int, *, hidden_dim: int = 512, n_heads: int = 16,
         dropout: float = 0.1) -> LayerAttentivePooling:
    return LayerAttentivePooling(n_layers, in_dim, hidden_dim, n_heads, dropout)


def _superb(n_layers: int, in_dim: int) -> SuperbWeightedSum:
    return SuperbWeightedSum(n_layers)


def _astp(in_dim: int, *, embed_dim: int = 192, dropout: float = 0.1) -> AttentiveStatsPooling:
    return AttentiveStatsPooling(in_dim, embed_dim, dropout=dropout)


def _ecapa(in_dim: int, *, channels: int = 512, embed_dim: int = 192) -> EcapaTdnn:
    return EcapaTdnn(in_dim, channels, embed_dim)


def _xvector(in_dim: int, *, channels: int = 512, stats_channels: int = 1500, embed_dim: int = 512) -> XVector:
    return XVector(in_dim, channels, stats_channels, embed_dim)


def _mhfa_options(*, head_nb: int = 64, compression_dim: int = 128, embed_dim: int = 256) -> Dict[str, Any]:
    return {"head_nb": head_nb, "compression_dim": compression_dim, "embed_dim": embed_dim}


AGGREGATIONS: Dict[str, Callable[..., nn.Module]] = {"lap": _lap, "superb": _superb}
NETWORKS: Dict[str, Callable[..., Any]] = {"astp": _astp, "ecapa": _ecapa, "xvector": _xvector,
                                           "mhfa": _mhfa_options}
ALIASES = {"mhfa": "superb_mhfa"}
BACKENDS: Tuple[str, ...] = tuple(f"{a}_{n}" for a in AGGREGATIONS for n in NETWORKS) + tuple(ALIASES)


class ComposedBackend(nn.Module):
    """A layer aggregation (``[B, T, L, D] -> [B, C, T]``) then a speaker network (``[B, C, T] -> [B, E]``).

    The parts are registered under their names (``lap``/``superb``, ``astp``/``ecapa``/``xvector``),
    so the weights of ``lap_astp`` are ``lap.*`` and ``astp.*``.
    """

    def __init__(self, aggregation: str, aggregation_module: nn.Module, network: str, network_module: nn.Module):
        super().__init__()
        self.aggregation_name, self.network_name = aggregation, network
        self.add_module(aggregation, aggregation_module)
        self.add_module(network, network_module)
        self.embed_dim: int = network_module.embed_dim

    @property
    def aggregation(self) -> nn.Module:
        return getattr(self, self.aggregation_name)

    @property
    def network(self) -> nn.Module:
        return getattr(self, self.network_name)

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        return self.network(self.aggregation(x, lengths), lengths)

    @property
    def layer_gates(self) -> Callable[..., Tensor]:
        """LAP's gates ``[B, n_heads, T, L]`` for ``x[B, T, L, D]`` (heat maps; call in eval mode).

        Only LAP backends have per-frame gates (``hasattr`` is False for the others). Gates of
        frames at or past ``lengths[b]`` are meaningless.
        """
        if self.aggregation_name != "lap":
            raise AttributeError(f"{self.aggregation_name}_{self.network_name} has no per-frame layer gates")
        return lambda x, lengths=None: self.aggregation(x, lengths, return_gates=True)[1]


def _parts(name: str) -> Tuple[str, str]:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")
    aggregation, network = ALIASES.get(name, name).split("_")
    return aggregation, network


def _keyword_defaults(function: Callable[..., Any]) -> Dict[str, Any]:
    parameters = inspect.signature(function).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def backend_options(name: str) -> Dict[str, Any]:
    """The options of backend ``name`` (those of its aggregation, then its network) and their defaults."""
    aggregation, network = _parts(name)
    return {**_keyword_defaults(AGGREGATIONS[aggregation]), **_keyword_defaults(NETWORKS[network])}


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
    aggregation, network = _parts(name)
    make_aggregation = AGGREGATIONS[aggregation]
    aggregation_options = {k: v for k, v in options.items() if k in _keyword_defaults(make_aggregation)}
    network_options = {k: v for k, v in options.items() if k in _keyword_defaults(NETWORKS[network])}

    def new_aggregation() -> nn.Module:
        return make_aggregation(n_layers, in_dim, **aggregation_options)

    first = new_aggregation()
    width = first.out_dim if isinstance(first, LayerAttentivePooling) else in_dim  # LAP projects, SUPERB keeps D
    if network == "mhfa":
        return Mhfa(first, new_aggregation(), width, **_mhfa_options(**network_options))
    return ComposedBackend(aggregation, first, network, NETWORKS[network](width, **network_options))
