"""Typed, validated experiment configs.

A YAML file is turned into frozen dataclasses; an unknown key, a missing
required key, a value of the wrong type or out of range (checked by each
dataclass's ``__post_init__``) is an error that names the file and the dotted
key. Command-line overrides look like ``optim.lr=1e-4`` and are
parsed as YAML scalars. Configs are never mutated: derived values are computed
where they are needed, and ``dataclasses.replace`` makes modified copies.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Type, TypeVar, Union

import yaml

from wespeaker_lap.utils.io import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override does not match the schema."""


# Keys removed from the schema, with the one value they could meaningfully take: files that still carry that
# value (configs and checkpoints written before the removal) load; any other value is an error that says why.
RETIRED_KEYS: Dict[str, Tuple[Any, str]] = {
    "data.sample_rate": (16000, "audio is always 16 kHz, the rate of every supported upstream; resample the data"),
}
def _require(section: str, config: Any, rules: Sequence[tuple]) -> None:
    """Raise ``ConfigError("<section>.<field>: <reason>, got <value>")`` for the first rule that fails.

    Each rule is ``(field, ok, reason)``; a numeric field must also be finite.
    """
    for name, ok, reason in rules:
        value = getattr(config, name)
        numbers = value if isinstance(value, (list, tuple)) else [value]
        finite = all(math.isfinite(v) for v in numbers if isinstance(v, (int, float)) and not isinstance(v, bool))
        if not (finite and ok):
            raise ConfigError(f"{section}.{name}: {reason if finite else 'must be finite'}, got {value!r}")


def _is_range(value: Sequence[float], low: float = -math.inf) -> bool:
    """``[min, max]`` with ``low <= min <= max``."""
    return len(value) == 2 and low <= value[0] <= value[1]


def _optional_path(value: Optional[str]) -> bool:
    return value is None or value.strip() != ""


# ----------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class FinetuneConfig:
    """Regularisers of a trainable upstream in train mode; never applied when frozen or in eval mode.

    The names and meanings are those of the HuggingFace configs, whose values the official code
    fine-tunes with (docs/reproduction.md §Upstream regularisers lists them per checkpoint; the
    defaults are microsoft/wavlm-base-plus's). The same mechanism runs on the s3prl and the
    ``hf:`` paths (``wespeaker_lap.upstream.regularizers``).
    """

    mask_time_prob: float = 0.05  # span starts per frame: about prob * T / length spans per utterance
    mask_time_length: int = 10  # frames per masked span
    mask_time_min_masks: int = 2  # at least this many spans per utterance
    layerdrop: float = 0.05  # probability to skip each transformer layer (per batch)
    hidden_dropout: float = 0.1  # after the positional convolution, attention and feed-forward outputs
    attention_dropout: float = 0.1  # on the attention weights
    activation_dropout: float = 0.0  # inside the feed-forward block, after the activation
    feat_proj_dropout: float = 0.1  # on the projected CNN features

    def __post_init__(self) -> None:
        for key in ("mask_time_prob", "layerdrop", "hidden_dropout", "attention_dropout", "activation_dropout",
                    "feat_proj_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"model.upstream.finetune.{key}: must be in [0, 1), got {getattr(self, key)}")
        if self.mask_time_length < 1:
            raise ConfigError(f"model.upstream.finetune.mask_time_length: must be >= 1, got {self.mask_time_length}")
        if self.mask_time_min_masks < 0:
            raise ConfigError(
                f"model.upstream.finetune.mask_time_min_masks: must be >= 0, got {self.mask_time_min_masks}")


@dataclass(frozen=True)
class UpstreamConfig:
    """Which pre-trained model gives the hidden states (see ``wespeaker_lap.upstream``)."""

    name: str = "wavlm_base_plus"  # an s3prl name, or "hf:<hub id or local dir>"
    path: Optional[str] = None  # checkpoint file for the *_local names
    cache_dir: Optional[str] = None  # pre-staged s3prl download cache
    frozen: bool = True
    # "raw": the waveform as read (the official code); "checkpoint": normalised per utterance when
    # the checkpoint's own config says so (s3prl's behaviour)
    waveform: Literal["raw", "checkpoint"] = "raw"
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    # Hand the checkpoint to s3prl even if torch.load(weights_only=True) refuses it (it holds pickled
    # objects that could run code). Never taken from a model file: see wespeaker_lap.upstream.trust.
    trust_checkpoint: bool = False

    def __post_init__(self) -> None:
        _require("model.upstream", self, (
            ("name", self.name.strip() != "" and self.name.strip() != "hf:", "must name an s3prl upstream or hf:<id>"),
            ("path", _optional_path(self.path), "must be a non-empty path or null"),
            ("path", not (self.name.startswith("hf:") and self.path is not None),
             "hf: names take no path; give the directory in the name (hf:/path/to/dir)"),
            ("cache_dir", _optional_path(self.cache_dir), "must be a non-empty path or null"),
        ))


@dataclass(frozen=True)
class BackendConfig:
    """Which backend turns ``[B, T, L, D]`` into an embedding; options go to ``build_backend``.

    ``name`` is ``<aggregation>_<network>``: ``lap`` or ``superb`` with ``astp``, ``ecapa``,
    ``xvector`` or ``mhfa`` (``mhfa`` alone is the original MHFA, ``superb_mhfa``); see
    ``wespeaker_lap.models.backends``.
    """

    name: str = "lap_astp"
    options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:  # names and options are checked by build_backend
        _require("model.backend", self, (("name", self.name.strip() != "", "must name a backend"),))


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

    def __post_init__(self) -> None:
        _require("loss.schedule", self, (
            ("initial", 0 <= self.initial < math.pi / 2, "must be in [0, pi/2) (radians)"),
            ("start_epoch", self.start_epoch >= 0, "must be >= 0"),
            ("ramp_epochs", self.ramp_epochs >= 0, "must be >= 0"),
        ))


@dataclass(frozen=True)
class LossConfig:
    """AAM-softmax with sub-centers and the inter-top-K penalty (docs/reproduction.md §Phase defaults)."""

    scale: float = 30.0
    margin: float = 0.3
    sub_centers: int = 3
    top_k: int = 5
    penalty: float = 0.06
    schedule: MarginScheduleConfig = field(default_factory=MarginScheduleConfig)

    def __post_init__(self) -> None:
        _require("loss", self, (
            ("scale", self.scale > 0, "must be > 0"),
            ("margin", 0 <= self.margin < math.pi / 2, "must be in [0, pi/2) (radians)"),
            ("sub_centers", self.sub_centers >= 1, "must be >= 1"),
            ("top_k", self.top_k >= 0, "must be >= 0"),
            ("penalty", self.penalty >= 0, "must be >= 0"),
        ))


@dataclass(frozen=True)
class AugmentConfig:
    """Additive noise and reverberation (docs/reproduction.md §RIR pool)."""

    prob: float = 0.6
    musan_list: Optional[str] = None  # "<key> <path> <type>" lines, type in noise|music|speech
    rir_list: Optional[str] = None  # "<key> <path> <type>" lines
    noise_snr: List[float] = field(default_factory=lambda: [0.0, 15.0])
    music_snr: List[float] = field(default_factory=lambda: [5.0, 15.0])
    babble_snr: List[float] = field(default_factory=lambda: [13.0, 20.0])
    babble_speakers: List[int] = field(default_factory=lambda: [4, 7])

    def __post_init__(self) -> None:
        _require("data.augment", self, (
            ("prob", 0 <= self.prob <= 1, "must be in [0, 1]"),
            ("musan_list", _optional_path(self.musan_list), "must be a non-empty path or null"),
            ("rir_list", _optional_path(self.rir_list), "must be a non-empty path or null"),
            ("noise_snr", _is_range(self.noise_snr), "expected [min, max] dB with min <= max"),
            ("music_snr", _is_range(self.music_snr), "expected [min, max] dB with min <= max"),
            ("babble_snr", _is_range(self.babble_snr), "expected [min, max] dB with min <= max"),
            ("babble_speakers", _is_range(self.babble_speakers, low=1), "expected [min, max] with 1 <= min <= max"),
        ))


@dataclass(frozen=True)
class DataConfig:
    """Training data: a Kaldi data directory (raw files) or its tar shards, crops, speed perturbation, augmentation.

    Audio is 16 kHz (``wespeaker_lap.data.audio.SAMPLE_RATE``), the rate of every supported upstream;
    a file at another rate is refused, naming it.

    ``format: shard`` reads the shards that ``wespeaker_lap.bin.make_shards`` wrote (``shard_list``,
    default ``<train_dir>/shards/shard.list``). Each process reads ``shard_streams`` streams of shards
    (default: one per DataLoader worker; the workers must divide it), each through an in-memory
    shuffle buffer of ``shuffle_buffer`` crops. The data order depends on ``shard_streams``, so set it
    to keep the order when ``num_workers`` changes (see ``wespeaker_lap.data.shard_loader``).
    """

    train_dir: str = "data/vox2_dev"
    format: Literal["raw", "shard"] = "raw"
    shard_list: Optional[str] = None
    shard_streams: Optional[int] = None
    shuffle_buffer: int = 500
    crop_seconds: float = 2.0
    speed_perturb_prob: float = 0.4  # split evenly between 0.9 and 1.1; 0 disables it
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    num_workers: int = 3  # per process (one process per GPU): see benchmarks/bench_data_pipeline.py
    on_bad_audio: Literal["error", "skip"] = "error"

    def __post_init__(self) -> None:
        _require("data", self, (
            ("train_dir", self.train_dir.strip() != "", "must be a data directory"),
            ("crop_seconds", self.crop_seconds > 0, "must be > 0"),
            ("speed_perturb_prob", 0 <= self.speed_perturb_prob <= 1, "must be in [0, 1]"),
            ("num_workers", self.num_workers >= 0, "must be >= 0"),
            ("shard_list", _optional_path(self.shard_list), "must be a non-empty path or null"),
            ("shard_streams", self.shard_streams is None or self.shard_streams >= 1, "must be >= 1 or null"),
            ("shard_streams", self.shard_streams is None or self.num_workers <= 1
             or self.shard_streams % self.num_workers == 0,
             f"must be a multiple of data.num_workers={self.num_workers} (each worker reads whole streams)"),
            ("shuffle_buffer", self.shuffle_buffer >= 1, "must be >= 1"),
        ))


@dataclass(frozen=True)
class OptimConfig:
    """Adam, coupled weight decay, warmup then cosine per optimizer step (docs/reproduction.md §Phase defaults).

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
        _require("optim", self, (
            ("lr", True, ""), ("min_lr", True, ""), ("weight_decay", True, ""), ("grad_clip", True, ""),
        ))  # finite
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
    # drop classifier rows of classes the data cannot produce; off: keep every speed-perturbed class, as the
    # official code (they act as negatives that never get a positive; docs/reproduction.md §Classifier)
    slice_classes: bool = False
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
        _require("train", self, (("init_from", _optional_path(self.init_from), "must be a non-empty path or null"),))
        for key, value, minimum in (
            ("train.epochs", self.epochs, 1),
            ("train.seed", self.seed, 0),
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


# ----------------------------------------------------------------------------- evaluation (stages 4-6)


def _check_ranges(checks: Sequence[Tuple[str, bool, str]]) -> None:
    for key, ok, reason in checks:
        if not ok:
            raise ConfigError(f"{key}: {reason}")


@dataclass(frozen=True)
class AveragingConfig:
    """Which epochs of the last training phase make the evaluated model."""

    num_average: Optional[int] = None  # last N epochs; null: the last phase's train.num_average (its final_model.pt)

    def __post_init__(self) -> None:
        _check_ranges([("averaging.num_average", self.num_average is None or self.num_average >= 1,
                        f"must be >= 1 or null, got {self.num_average}")])


@dataclass(frozen=True)
class ExtractionConfig:
    """How whole utterances are embedded (stage 4).

    ``exact``: one utterance per forward in fp32 (TF32 off), bit-identical with the Python API.
    ``fast``: utterances batched by length (at most ``max_batch_seconds`` of padded audio and
    ``max_batch_size`` utterances per forward, each at least ``1 - max_padding`` of its batch's
    longest); on a GPU under autocast at ``precision`` with TF32
    allowed (on the CPU in fp32). Padding shifts the upstream's normalisation statistics a little
    (WavLM/HuBERT Base's CNN group norm sees the zeros), so embeddings differ slightly from exact
    ones; the README states by how much. ``auto`` (the default): fast on CUDA, exact on the CPU.
    ``num_workers`` processes per extraction process read and pad the audio ahead of the model.
    """

    mode: Literal["exact", "fast", "auto"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"  # fast mode on a GPU only
    max_batch_seconds: float = 120.0
    max_batch_size: int = 64
    max_padding: float = 0.02  # an utterance may be padded by at most this fraction of its batch's longest
    num_workers: int = 4  # audio-reading worker processes per extraction process (per GPU)

    def __post_init__(self) -> None:
        _check_ranges([
            ("extraction.max_batch_seconds", self.max_batch_seconds > 0, f"must be > 0, got {self.max_batch_seconds}"),
            ("extraction.max_batch_size", self.max_batch_size >= 1, f"must be >= 1, got {self.max_batch_size}"),
            ("extraction.max_padding", 0 <= self.max_padding <= 1, f"must be in [0, 1], got {self.max_padding}"),
            ("extraction.num_workers", self.num_workers >= 0, f"must be >= 0, got {self.num_workers}"),
        ])


@dataclass(frozen=True)
class CohortConfig:
    """The AS-Norm cohort: whose embeddings, one per speaker or per utterance, and how many top scores."""

    source: Optional[str] = "train"  # "train": the training set; another data set's name; null: no AS-Norm
    type: Literal["speaker", "utterance"] = "speaker"  # speaker: each speaker's mean embedding
    top_k: int = 600  # highest cohort scores kept per embedding

    def __post_init__(self) -> None:
        _check_ranges([
            ("cohort.source", self.source is None or bool(self.source.strip()), "must be a data set name or null"),
            ("cohort.top_k", self.top_k >= 2, f"must be >= 2 (a std needs two scores), got {self.top_k}"),
        ])


@dataclass(frozen=True)
class CalibrationConfig:
    """Quality-aware calibration, trained on trials sampled from the training set (needs a cohort)."""

    enabled: bool = True
    trials: int = 30000  # sampled training trials, half target, half non-target
    seed: int = 7
    standardize: bool = False  # standardise the features (an ablation; not the paper)

    def __post_init__(self) -> None:
        _check_ranges([
            ("calibration.trials", self.trials >= 2, f"must be >= 2, got {self.trials}"),
            ("calibration.seed", self.seed >= 0, f"must be >= 0, got {self.seed}"),
        ])


@dataclass(frozen=True)
class ReportConfig:
    """The results table: which trial lists (score-file stems, in this order) and the EER's bootstrap CI."""

    lists: Optional[List[str]] = None  # null: every list that was scored
    n_boot: int = 1000  # bootstrap replicates for the 95 % CI (0: no CI)

    def __post_init__(self) -> None:
        _check_ranges([
            ("report.lists", self.lists is None or (len(self.lists) > 0 and len(set(self.lists)) == len(self.lists)),
             f"must be a non-empty list without repeats, or null, got {self.lists}"),
            ("report.n_boot", self.n_boot >= 0, f"must be >= 0, got {self.n_boot}"),
        ])


@dataclass(frozen=True)
class EvalConfig:
    """Stages 4-6: averaging, extraction, scoring (cosine, AS-Norm, calibration) and the report."""

    averaging: AveragingConfig = field(default_factory=AveragingConfig)
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    cohort: CohortConfig = field(default_factory=CohortConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def __post_init__(self) -> None:
        _check_ranges([("calibration.enabled", not (self.calibration.enabled and self.cohort.source is None),
                        "calibration needs AS-Norm scores: set cohort.source, or calibration.enabled: false")])


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
    data = _without_retired(cls, data, where)
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


def _without_retired(cls: Any, data: Dict[str, Any], where: str) -> Dict[str, Any]:
    """``data`` (the section ``where`` of a ``cls``) without its :data:`RETIRED_KEYS`, whose values are checked."""
    kept = dict(data)
    for dotted, (value, reason) in RETIRED_KEYS.items():
        section, _, key = dotted.rpartition(".")
        if section == where and key in kept and key not in {f.name for f in dataclasses.fields(cls)}:
            if kept.pop(key) != value:
                raise ConfigError(f"{dotted} was removed: {reason}")
    return kept


def _check_keys(cls: Any, data: Any, where: str) -> None:
    """Reject keys that are not in the schema (types are checked after merging)."""
    if not isinstance(data, dict) or not dataclasses.is_dataclass(cls):
        return
    data = _without_retired(cls, data, where)
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
