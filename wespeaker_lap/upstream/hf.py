"""HuggingFace ``transformers`` speech models with the interface of ``s3prl.nn.S3PRLUpstream``.

The model class comes from the config's ``model_type`` (``wavlm`` -> ``WavLMModel``, ``hubert`` ->
``HubertModel``, ``wav2vec2`` -> ``Wav2Vec2Model``), never from the name: the official LAP code loads
HuBERT as ``Wav2Vec2Model``, which mis-initialises it for some configs (docs/reproduction.md
§Official bugs we do not copy).

The dropouts are set from ``model.upstream.finetune`` before loading; HF's own SpecAugment masking
and LayerDrop are switched off, because ``wespeaker_lap.upstream.regularizers`` applies the same
regularisers on both paths (docs/reproduction.md §Upstream regularisers). The waveform is fed raw
(the official behaviour), or with ``waveform="checkpoint"`` zero-mean/unit-variance normalised per
utterance when the model's feature-extractor config says ``do_normalize``.

Frames: the real CNN output, ``floor((S - 400) / 320) + 1`` for the standard CNN, where s3prl
reports ``(S - 1) // 320 + 1`` by repeating the last frame.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from wespeaker_lap.config import FinetuneConfig
from wespeaker_lap.utils.host_syncs import to_device

logger = logging.getLogger(__name__)

_MODEL_CLASSES = {"wavlm": "WavLMModel", "hubert": "HubertModel", "wav2vec2": "Wav2Vec2Model"}


def conv_output_lengths(lengths: torch.Tensor, kernels: Sequence[int], strides: Sequence[int]) -> torch.Tensor:
    """Frames a stack of unpadded 1-D convolutions produces from ``lengths`` samples (at least 1)."""
    for kernel, stride in zip(kernels, strides):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.clamp(min=1)


def receptive_field(kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Samples one output frame of a stack of 1-D convolutions sees (400 for the standard CNN)."""
    field, jump = 1, 1
    for kernel, stride in zip(kernels, strides):
        field += (kernel - 1) * jump
        jump *= stride
    return field


class HFUpstream(nn.Module):
    """All hidden states of a ``transformers`` WavLM / HuBERT / wav2vec 2.0 model.

    ``source`` is a hub id (``microsoft/wavlm-base-plus``) or a local ``save_pretrained``
    directory; ``cache_dir`` goes to ``from_pretrained``. Like ``S3PRLUpstream``,
    ``forward(wavs[B, S], wav_lens[B])`` returns a list of ``[B, T, D]`` hidden states (the CNN /
    projection output, then every Transformer layer) and a list of frame lengths per state.
    """

    def __init__(self, source: str, cache_dir: str | None = None, waveform: str = "raw",
                 finetune: Optional[FinetuneConfig] = None):
        super().__init__()
        import transformers

        from wespeaker_lap.upstream.regularizers import hf_config_overrides

        try:
            config = transformers.AutoConfig.from_pretrained(source, cache_dir=cache_dir)
        except OSError as err:
            raise OSError(
                f"hf:{source}: no config found locally or on the hub ({err}). Offline, pass a local "
                f"directory (hf:/path/to/dir) or pre-stage it with "
                f"`python tools/download_upstream.py hf:{source} --cache_dir DIR`."
            ) from err
        if config.model_type not in _MODEL_CLASSES:
            raise ValueError(
                f"hf:{source}: model_type {config.model_type!r} is not supported "
                f"(expected one of {', '.join(_MODEL_CLASSES)})"
            )
        for key, value in hf_config_overrides(finetune or FinetuneConfig()).items():
            setattr(config, key, value)
        model_class = getattr(transformers, _MODEL_CLASSES[config.model_type])
        self.model = model_class.from_pretrained(source, config=config, cache_dir=cache_dir)
        self.normalize_waveform = waveform == "checkpoint" and _feature_extractor_normalizes(source, cache_dir)
        self._kernels = list(config.conv_kernel)
        self._strides = list(config.conv_stride)
        self._receptive_field = receptive_field(self._kernels, self._strides)
        self._num_layers = config.num_hidden_layers + 1
        self._hidden_size = config.hidden_size
        logger.info(
            "hf:%s: %s, %d hidden states of %d, waveform normalisation %s",
            source, model_class.__name__, self._num_layers, self._hidden_size,
            "on" if self.normalize_waveform else "off",
        )

    @property
    def num_layers(self) -> int:
        return self._num_layers

    @property
    def hidden_sizes(self) -> List[int]:
        return [self._hidden_size] * self._num_layers

    @property
    def downsample_rates(self) -> List[int]:
        rate = 1
        for stride in self._strides:
            rate *= stride
        return [rate] * self._num_layers

    def forward(self, wavs: torch.Tensor,
                wav_lens: torch.Tensor | Sequence[int]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """``wav_lens`` as host ints (or a tensor, read once): a batch whose utterances all fill ``wavs``
        runs without an attention mask, so without the device syncs the model's masking costs."""
        lens = wav_lens.tolist() if isinstance(wav_lens, torch.Tensor) else list(wav_lens)
        if wavs.size(1) < self._receptive_field:  # too short for one frame: zero-pad
            wavs = nn.functional.pad(wavs, (0, self._receptive_field - wavs.size(1)))
        if min(lens) >= wavs.size(1):
            if self.normalize_waveform:
                wavs = _normalize_valid(wavs, None)
            out = self.model(wavs, output_hidden_states=True)
        else:
            host_lens = torch.tensor(lens, dtype=torch.long)
            valid = torch.arange(wavs.size(1), device=wavs.device) < to_device(host_lens, wavs.device)[:, None]
            wavs = wavs * valid  # [B, S]
            if self.normalize_waveform:
                wavs = _normalize_valid(wavs, valid)
            out = self.model(wavs, attention_mask=valid.long(), output_hidden_states=True)
        frame_lens = conv_output_lengths(torch.tensor(lens, dtype=torch.long), self._kernels, self._strides)  # host
        hidden_states = list(out.hidden_states)
        # transformers 5 records the last layer's output before a stable-layer-norm (Large) model's final
        # LayerNorm; transformers 4 (the official code's) and s3prl give the normalised output.
        hidden_states[-1] = out.last_hidden_state
        return hidden_states, [frame_lens] * len(hidden_states)


def _normalize_valid(wavs: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Zero mean and unit variance per utterance over its valid samples (all if ``valid`` is None);
    padding stays 0."""
    if valid is None:
        mean = wavs.mean(dim=1, keepdim=True)
        var = (wavs - mean).pow(2).mean(dim=1, keepdim=True)
        return (wavs - mean) / torch.sqrt(var + 1e-7)
    count = valid.sum(dim=1, keepdim=True).clamp(min=1)
    mean = (wavs * valid).sum(dim=1, keepdim=True) / count
    var = (((wavs - mean) * valid) ** 2).sum(dim=1, keepdim=True) / count
    return (wavs - mean) / torch.sqrt(var + 1e-7) * valid


def _feature_extractor_normalizes(source: str, cache_dir: str | None) -> bool:
    """The ``do_normalize`` flag of the model's feature-extractor config (False when it has none)."""
    from transformers import Wav2Vec2FeatureExtractor

    try:
        extractor = Wav2Vec2FeatureExtractor.from_pretrained(source, cache_dir=cache_dir)
    except OSError:
        return False
    return bool(extractor.do_normalize)


def hf_local_dir(source: str, cache_dir: str | None = None, download: bool = False) -> Path:
    """The directory holding ``source``'s files: itself if local, else its snapshot in the hub cache.

    With ``download`` the config, weights and feature-extractor config are fetched first
    (``from_pretrained``); without it a missing snapshot raises ``WeightsNotFoundError``.
    """
    from transformers.utils import cached_file

    from wespeaker_lap.upstream.cache import WeightsNotFoundError

    if Path(source).is_dir():
        return Path(source)
    if download:
        HFUpstream(source, cache_dir=cache_dir)
    try:
        config_file = cached_file(source, "config.json", cache_dir=cache_dir, local_files_only=True)
    except OSError as err:
        raise WeightsNotFoundError(
            f"hf:{source}: not in the cache {cache_dir or '(transformers default)'}; download it with "
            f"`python tools/download_upstream.py hf:{source} --cache_dir DIR` or pass a local directory"
        ) from err
    return Path(config_file).parent
