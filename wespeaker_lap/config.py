"""Typed, validated experiment configs.

A YAML file is turned into frozen dataclasses; an unknown key, a missing
required key or a value of the wrong type is an error that names the file and
the dotted key. Command-line overrides look like ``optim.lr=1e-4`` and are
parsed as YAML scalars. Configs are never mutated: derived values are computed
where they are needed, and ``dataclasses.replace`` makes modified copies.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Type, TypeVar, Union

import yaml

from wespeaker_lap.utils.io import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override does not match the schema."""


# ----------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class UpstreamConfig:
    """Which pre-trained model gives the hidden states (see ``wespeaker_lap.upstream``)."""

    name: str = "wavlm_base_plus"  # an s3prl name, or "hf:<hub id or local dir>"
    path: Optional[str] = None  # checkpoint file for the *_local names
    cache_dir: Optional[str] = None  # pre-staged s3prl download cache
    frozen: bool = True


@dataclass(frozen=True)
class BackendConfig:
    """Which backend turns ``[B, T, L, D]`` into an embedding; options go to ``build_backend``."""

    name: str = "lap_astp"
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig:
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)


@dataclass(frozen=True)
class MarginScheduleConfig:
    """Margin ramp from ``initial`` to ``loss.margin`` over ``ramp_epochs`` (0: constant)."""

    shape: Literal["log", "exp", "linear", "cos"] = "log"
    initial: float = 0.0
    start_epoch: float = 0.0
    ramp_epochs: float = 0.0


@dataclass(frozen=True)
class LossConfig:
    """AAM-softmax with sub-centers and the inter-top-K penalty (paper.md §3)."""

    scale: float = 30.0
    margin: float = 0.3
    sub_centers: int = 3
    top_k: int = 5
    penalty: float = 0.06
    schedule: MarginScheduleConfig = field(default_factory=MarginScheduleConfig)


@dataclass(frozen=True)
class AugmentConfig:
    """Additive noise and reverberation (paper.md §4)."""

    prob: float = 0.6
    musan_list: Optional[str] = None  # "<key> <path> <type>" lines, type in noise|music|speech
    rir_list: Optional[str] = None  # "<key> <path> <type>" lines
    noise_snr: List[float] = field(default_factory=lambda: [0.0, 15.0])
    music_snr: List[float] = field(default_factory=lambda: [5.0, 15.0])
    babble_snr: List[float] = field(default_factory=lambda: [13.0, 20.0])
    babble_speakers: List[int] = field(default_factory=lambda: [4, 7])


@dataclass(frozen=True)
class DataConfig:
    """Training data: a Kaldi data directory, crops, speed perturbation, augmentation."""

    train_dir: str = "data/vox2_dev"
    crop_seconds: float = 2.0
    sample_rate: int = 16000
    speed_perturb_prob: float = 0.4  # split evenly between 0.9 and 1.1; 0 disables it
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    num_workers: int = 3  # per process (one process per GPU): see benchmarks/bench_data_pipeline.py
    on_bad_audio: Literal["error", "skip"] = "error"


@dataclass(frozen=True)
class OptimConfig:
    """Adam with coupled weight decay, warmup then cosine, per optimizer step (paper.md §4).

    ``batch_size`` and ``lr`` are global: each process gets ``batch_size / (world_size * accum_steps)``
    utterances per micro-batch, and the LR is never rescaled. The LR rises linearly from ``min_lr`` to
    ``lr`` over ``warmup_ratio`` of the steps, then follows a cosine to ``min_lr`` (``lr == min_lr``: constant).
    """

    batch_size: int = 512  # global, over all processes and accumulation steps
    accum_steps: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 5e-5
    grad_clip: Optional[float] = None  # max global grad norm; None: no clipping (the norm is still logged)

    def __post_init__(self) -> None:
        for key, ok, reason in (
            ("optim.accum_steps", self.accum_steps >= 1, "must be >= 1"),
            ("optim.batch_size", self.batch_size >= 1 and self.batch_size % max(self.accum_steps, 1) == 0,
             f"{self.batch_size} is not a positive multiple of optim.accum_steps={self.accum_steps}"),
            ("optim.lr", self.lr > 0, "must be > 0"),
            ("optim.min_lr", 0 <= self.min_lr <= self.lr, f"must be in [0, optim.lr={self.lr}]"),
            ("optim.warmup_ratio", 0 <= self.warmup_ratio < 1, "must be in [0, 1)"),
            ("optim.weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("optim.grad_clip", self.grad_clip is None or self.grad_clip > 0, "must be > 0 or null"),
        ):
            if not ok:
                raise ConfigError(f"{key}: {reason}")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40
    seed: int = 42
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # GPU only; "auto": bf16 if supported, else fp16
    init_from: Optional[str] = None  # the previous phase's final model
    slice_classes: bool = True  # drop classifier rows of classes the data cannot produce
    keep_checkpoints: int = 3
    num_average: int = 2  # last N epochs averaged into the final model
    save_every_steps: int = 1000  # mid-epoch checkpoint every N optimizer steps; 0: epoch ends only
    max_nonfinite_steps: int = 20  # this many non-finite steps in a row stop the run
    log_every: int = 10  # optimizer steps between train.log lines (metrics.jsonl gets every step)
    sync_batchnorm: bool = True  # SyncBatchNorm across GPUs as the authors; ignored on CPU
    deterministic: bool = False  # deterministic kernels; also turns cuDNN autotuning off
    micro_batch_size: Optional[int] = None  # utterances per process and micro-batch; sets the accumulation
    tf32: bool = True  # TF32 for fp32 matmuls/convolutions on GPUs (Ampere and newer)
    compile: Literal["off", "backend", "upstream", "all"] = "off"  # torch.compile these parts of the model

    def __post_init__(self) -> None:
        for key, value, minimum in (
            ("train.epochs", self.epochs, 1),
            ("train.keep_checkpoints", self.keep_checkpoints, 1),
            ("train.num_average", self.num_average, 1),
            ("train.save_every_steps", self.save_every_steps, 0),
            ("train.max_nonfinite_steps", self.max_nonfinite_steps, 1),
            ("train.log_every", self.log_every, 1),
        ):
            if value < minimum:
                raise ConfigError(f"{key}: must be >= {minimum}, got {value}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ConfigError(f"train.micro_batch_size: must be >= 1 or null, got {self.micro_batch_size}")


@dataclass(frozen=True)
class ExperimentConfig:
    """One training phase."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ----------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return the typed value."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (list, List, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_tp, val_tp = typing.get_args(tp) or (Any, Any)
        return {k: _convert(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported annotation {_type_name(tp)}")


def _build(cls: Type[T], data: Any, where: str) -> T:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(prefix + k for k in unknown)}"
            f" (allowed: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.name in data:
            kwargs[f.name] = _convert(data[f.name], hints[f.name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {key}")
    return cls(**kwargs)


def from_dict(cls: Type[T], data: Dict[str, Any]) -> T:
    """Build and validate a config dataclass from plain data."""
    return _build(cls, data, "")


def to_dict(config: Any) -> Dict[str, Any]:
    """Plain nested dict of a config dataclass."""
    return dataclasses.asdict(config)


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Return a copy of ``data`` with ``a.b.c=value`` overrides applied (values parsed as YAML)."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. optim.lr=1e-4")
        dotted, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else None
        node = data
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return data


def _check_keys(cls: Any, data: Any, where: str) -> None:
    """Reject keys that are not in the schema (types are checked after merging)."""
    if not isinstance(data, dict) or not dataclasses.is_dataclass(cls):
        return
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown key {prefix}{unknown[0]} (allowed: {', '.join(sorted(names))})")
    for name, value in data.items():
        _check_keys(hints[name], value, f"{where}.{name}" if where else name)


def _merge(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    """Deep-merge ``extra`` into a copy of ``base``; mappings merge, other values replace."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    paths: Union[str, Sequence[str]], overrides: Sequence[str] = (), cls: Type[T] = ExperimentConfig
) -> T:
    """Read one or more YAML files (later ones win), apply overrides, and validate.

    Errors name the file (and the dotted key) that caused them.
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    merged: Dict[str, Any] = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from None
        try:
            if not isinstance(data, dict):
                raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}")
            _check_keys(cls, data, "")
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        merged = _merge(merged, data)
    source = " + ".join(map(str, paths)) or "defaults"
    try:
        return from_dict(cls, apply_overrides(merged, overrides))
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def save_config(config: Any, path: str) -> None:
    """Write the resolved config as YAML, atomically."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
