"""``Upstream``: a pre-trained speech model (s3prl or HuggingFace) -> all hidden states ``[B, T, L, D]``."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import List, Literal, Optional, Sequence, Tuple

import torch
from torch import nn

from wespeaker_lap.config import FinetuneConfig
from wespeaker_lap.utils.rng import keeps_global_rng
from wespeaker_lap.upstream import s3prl_batch
from wespeaker_lap.upstream.cache import (
    HF_PREFIX,
    UpstreamError,
    close_matches,
    s3prl_download_dir,
    s3prl_names,
    watch_s3prl_requests,
    weights_not_found,
)

logger = logging.getLogger(__name__)

_PROBE_SAMPLES = 8000  # 0.5 s: enough frames to run every layer once


class Upstream(nn.Module):
    """All hidden states of a pre-trained model, stacked: ``(hidden[B, T, L, D], frame_lens[B])``.

    Args:
        name: any ``s3prl.nn.S3PRLUpstream.available_names()`` entry (``wavlm_large``,
            ``hubert_local``, ...) or ``hf:<hub id or local dir>`` for a ``transformers`` model.
        path: checkpoint file of the ``*_local`` / ``*_url`` / ``*_custom`` names, used as given
            (a relative path is relative to the working directory). Registered names take none:
            s3prl would silently ignore it.
        frozen: no gradients (``requires_grad=False``, forward under ``no_grad``) and always in
            eval mode, even inside a model put in train mode: no dropout on frozen features.
            Otherwise the whole model trains, the CNN feature encoder included
            (``feature_grad_mult`` reset to 1; s3prl sets 0).
        cache_dir: s3prl download directory for registered names (pre-stage it with
            ``tools/download_upstream.py``; a staged file is used without network access), or the
            ``transformers`` cache for ``hf:`` names. None: the library's default.
        waveform: ``"raw"`` feeds the waveform as read, as the official code does; ``"checkpoint"``
            normalises it per utterance (zero mean, unit variance) when the checkpoint's own config
            says so, as s3prl does (docs/reproduction.md §Waveform input).
        finetune: the regularisers of a trainable upstream in train mode (span time-masking with
            the learned mask embedding, LayerDrop, dropouts; ``wespeaker_lap.upstream.regularizers``),
            the same on the s3prl and ``hf:`` paths. Masking and LayerDrop never act when frozen or
            in eval mode.
        trust_checkpoint: hand s3prl checkpoints that ``torch.load(weights_only=True)`` refuses
            (they could run code); see ``wespeaker_lap.upstream.trust``.

    ``L`` counts the CNN/input state: 13 for Base models, 25 for Large. A layer skipped by
    LayerDrop repeats the previous hidden state, so ``L`` never changes. When training,
    parameters the forward never uses (pre-training heads; the mask embedding unless time
    masking is on) are frozen, so DDP needs no ``find_unused_parameters``.
    """

    @keeps_global_rng  # s3prl's loaders reseed the global RNGs; the caller's seed must decide what comes next
    def __init__(self, name: str, path: Optional[str] = None, frozen: bool = True, cache_dir: Optional[str] = None,
                 waveform: Literal["raw", "checkpoint"] = "raw", finetune: FinetuneConfig = FinetuneConfig(),
                 trust_checkpoint: bool = False):
        super().__init__()
        from wespeaker_lap.upstream.regularizers import fairseq_regularizers, hf_regularizers

        if waveform not in ("raw", "checkpoint"):
            raise UpstreamError(f"{name}: waveform must be 'raw' or 'checkpoint', got {waveform!r}")
        self.name = name
        self.frozen = frozen
        if name.startswith(HF_PREFIX):
            if path is not None:
                raise UpstreamError(f"{name}: hf: names take no path; give the directory in the name (hf:/path/to/dir)")
            from wespeaker_lap.upstream.hf import HFUpstream

            self.model = HFUpstream(name[len(HF_PREFIX):], cache_dir=cache_dir, waveform=waveform, finetune=finetune)
            self.regularizers = hf_regularizers(self.model.model, finetune, name) if not frozen else None
        else:
            self.model = _load_s3prl(name, path, cache_dir, trust_checkpoint)
            _set_waveform_normalization(self.model.upstream, waveform, name)
            self.regularizers = (fairseq_regularizers(_fairseq_model(self.model.upstream, name), finetune, name)
                                 if not frozen else None)

        unsupported = None if name.startswith(HF_PREFIX) else s3prl_batch.batched_forward_unsupported(self.model)
        if unsupported:
            logger.info("%s: s3prl's per-utterance forward is used (%s)", name, unsupported)
        self._batched_s3prl = not name.startswith(HF_PREFIX) and unsupported is None

        self.n_layers = self.model.num_layers
        self.hidden_dim = _single(self.model.hidden_sizes, name, "hidden sizes")
        self.downsample_rate = _single(self.model.downsample_rates, name, "downsample rates")

        if frozen:
            self.model.requires_grad_(False)
        else:
            for module in self.model.modules():
                if hasattr(module, "feature_grad_mult"):
                    module.feature_grad_mult = 1.0
            self._freeze_unused_parameters()
            _log_regularizers(name, self.regularizers, finetune)
        self.train(self.training)

    def train(self, mode: bool = True) -> "Upstream":
        """Set train/eval mode; a frozen upstream stays in eval mode."""
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``wavs[B, S]`` float, ``wav_lens[B]`` valid samples -> ``(hidden[B, T, L, D], frame_lens[B])``.

        Samples at or past ``wav_lens[b]`` do not reach the model (they are replaced by zeros);
        frames at or past ``frame_lens[b]`` are padding. Frame counts follow s3prl,
        ``(S - 1) // 320 + 1`` (its last real frame repeated), or for ``hf:`` names the real CNN
        output, ``(S - 400) // 320 + 1``. In a padded batch the CNN's group norm and the
        positional convolution see the zero padding, so a short utterance's last few frames (and
        its embedding, slightly) differ from a batch of one; this is how s3prl batches too.

        Lengths live on the host: pass ``wav_lens`` on the CPU (on a GPU it costs one device sync);
        ``frame_lens`` comes back on the CPU, for the backend to check without a sync.
        """
        if wavs.dim() != 2 or wav_lens.shape != wavs.shape[:1]:
            raise ValueError(f"{self.name}: expected wavs [B, S] and wav_lens [B], "
                             f"got {tuple(wavs.shape)} and {tuple(wav_lens.shape)}")
        grad = torch.no_grad() if self.frozen else contextlib.nullcontext()
        lens = wav_lens.tolist()  # on the host: no device sync (on a GPU tensor it costs one)
        regularize = self.regularizers is not None and self.training
        if regularize:
            self.regularizers.begin(lens, wavs.device)
        try:
            with grad:
                hidden_states, frame_lens = self._hidden_states(wavs, lens)
        finally:
            if regularize:
                self.regularizers.end()
        hidden = torch.stack(hidden_states, dim=2)  # L x [B, T, D] -> [B, T, L, D]
        return hidden, torch.tensor(frame_lens, dtype=torch.long)

    def _hidden_states(self, wavs: torch.Tensor, lens: List[int]) -> Tuple[List[torch.Tensor], List[int]]:
        """The model's ``L x [B, T, D]`` hidden states and the frame lengths, from host-side lengths."""
        if self._batched_s3prl:
            return s3prl_batch.hidden_states(self.model, wavs, lens)
        if self.name.startswith(HF_PREFIX):
            hidden_states, lengths = self.model(wavs, lens)
        else:  # s3prl's own forward loops over the batch (a few host reads per utterance)
            hidden_states, lengths = self.model(wavs, torch.tensor(lens, dtype=torch.long))
        return hidden_states, lengths[0].tolist()

    def _freeze_unused_parameters(self) -> None:
        """Run one forward/backward on a short noise wave and freeze the parameters it leaves without gradient.

        The probe runs in eval mode, without masking; the mask embedding stays trainable when the
        regularisers mask (it then takes part in every training step).
        """
        was_training = self.model.training
        self.model.eval()
        generator = torch.Generator().manual_seed(0)
        wavs = torch.randn(1, _PROBE_SAMPLES, generator=generator)
        hidden_states, _ = self._hidden_states(wavs, [_PROBE_SAMPLES])
        torch.stack([h.sum() for h in hidden_states]).sum().backward()
        params = dict(self.model.named_parameters())
        mask_embedding = None if self.regularizers is None else self.regularizers.mask_embedding
        unused = [n for n, p in params.items() if p.requires_grad and p.grad is None and p is not mask_embedding]
        for param_name, param in params.items():
            param.grad = None
            if param_name in unused:
                param.requires_grad_(False)
        if unused:
            logger.info("%s: froze %d parameters the forward does not use: %s",
                        self.name, len(unused), ", ".join(unused))
        self.model.train(was_training)


def _log_regularizers(name: str, regularizers, finetune: FinetuneConfig) -> None:
    from wespeaker_lap.upstream.regularizers import official_finetune

    logger.info("%s: fine-tuning regularisers: %s", name, regularizers.describe())
    official = official_finetune(name)
    if official is not None and official != finetune:
        differ = [f"{key}={getattr(finetune, key)} (official {getattr(official, key)})"
                  for key in official.__dataclass_fields__ if getattr(finetune, key) != getattr(official, key)]
        logger.warning("%s: model.upstream.finetune differs from the official code's values for this checkpoint: %s",
                       name, ", ".join(differ))


# Where s3prl's experts keep their "normalise the waveform" flag (read at every forward).
_NORMALIZE_FLAGS = (("cfg", "normalize"), ("task_cfg", "normalize"), (None, "wav_normalize"))


def _set_waveform_normalization(expert: nn.Module, waveform: str, name: str) -> None:
    """``raw``: switch off the expert's per-utterance normalisation; ``checkpoint``: leave it as configured."""
    for holder_name, flag in _NORMALIZE_FLAGS:
        holder = expert if holder_name is None else getattr(expert, holder_name, None)
        if holder is not None and getattr(holder, flag, None) is not None:
            if waveform == "raw" and getattr(holder, flag):
                setattr(holder, flag, False)
                logger.info("%s: the checkpoint normalises the waveform; fed raw instead (waveform: raw)", name)
            return


def _fairseq_model(expert: nn.Module, name: str) -> nn.Module:
    model = getattr(expert, "model", None)
    if model is None or not hasattr(model, "encoder"):
        raise UpstreamError(f"{name}: only wav2vec 2.0-style upstreams (WavLM, HuBERT, wav2vec 2.0, ...) can be "
                            f"fine-tuned here; use model.upstream.frozen: true")
    return model


def _single(values: Sequence[int], name: str, what: str) -> int:
    if len(set(values)) != 1:
        raise UpstreamError(f"{name}: hidden states differ in {what} ({sorted(set(values))}); they cannot be stacked")
    return values[0]


def _load_s3prl(name: str, path: Optional[str], cache_dir: Optional[str], trust_checkpoint: bool = False) -> nn.Module:
    """Build ``s3prl.nn.S3PRLUpstream(name)``, turning s3prl's bare failures into errors that say what to do.

    Unless trusted, the checkpoint must load with ``torch.load(weights_only=True)`` first, and
    every ``torch.load`` during the build is forced to ``weights_only=True`` (``upstream.trust``).
    """
    from s3prl.nn import S3PRLUpstream
    from s3prl.util.download import _urls_to_filepaths

    from wespeaker_lap.upstream.trust import UntrustedCheckpointError, check_checkpoint, trusted, weights_only_loads

    if name not in s3prl_names():
        raise UpstreamError(f"{name}: not an s3prl upstream name{close_matches(name)} (or use hf:<hub id or dir>)")
    registered = name in s3prl_names(only_registered=True)
    if registered and path is not None:
        raise UpstreamError(
            f"{name}: a registered name downloads its own weights and s3prl ignores a path ({path}); "
            f"for a local checkpoint use the family's *_local name (e.g. wavlm_local)"
        )
    if not registered and path is None:
        raise UpstreamError(f"{name}: needs a checkpoint path (upstream.path)")
    if path is not None and not path.startswith(("http://", "https://")):
        path = str(Path(path).expanduser())
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: upstream checkpoint for {name} not found")
    trust = trusted(trust_checkpoint)
    if path is not None and not path.startswith(("http://", "https://")) and not trust:
        check_checkpoint(path, name)

    guard = contextlib.nullcontext() if trust else weights_only_loads(name)
    with s3prl_download_dir(cache_dir), watch_s3prl_requests() as urls, guard:
        try:
            return S3PRLUpstream(name, path_or_url=path)
        except UntrustedCheckpointError:
            raise
        except Exception as err:
            fetched = [(url, Path(_urls_to_filepaths(url, download=False))) for url in urls]
            for url, target in fetched:
                if not target.is_file():
                    raise weights_not_found(name, url, target, err, registered) from err
            source = ", ".join(str(target) for _, target in fetched) or path
            if source is None:
                raise
            raise UpstreamError(f"{source}: could not load as {name}: {type(err).__name__}: {err}") from err
