"""Fine-tuning regularisers of a pre-trained model: span time-masking, LayerDrop and dropouts.

The official code fine-tunes HuggingFace models in train mode, so they mask spans of the
projected CNN features with the learned mask embedding, skip transformer layers (LayerDrop)
and apply their dropouts, all with the values of each checkpoint's ``config.json``
(docs/reproduction.md §Upstream regularisers). :class:`Regularizers` does the same on both of
our paths, on the modules every wav2vec 2.0-style model has:

* the projection of the CNN features (fairseq/s3prl: ``dropout_input``, the last step before the
  masking; HF: ``feature_projection``): a forward hook replaces the frames of random spans
  (:func:`span_mask`, HuggingFace's span sampling) by the model's mask embedding
  (``mask_emb`` / ``masked_spec_embed``);
* every transformer layer: a forward hook replaces the layer's output by its input with
  probability ``layerdrop``, one draw per layer and batch (WavLM's first layer, which computes the
  relative position bias, is never dropped, as in HuggingFace). The dropped layer still runs, so
  that every parameter takes part in every step (DDP needs no unused-parameter search) and every
  hidden state is recorded (a skipped layer repeats the previous state, as in HuggingFace);
* the dropout probabilities: set on the modules (s3prl) or in the config before loading (HF).

The models' own masking and LayerDrop stay off. Masking and LayerDrop act only while the
upstream is trainable and in train mode; dropout follows the train/eval mode, and a frozen
upstream is always in eval mode. All random draws are made on the device (no host sync).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from wespeaker_lap.config import FinetuneConfig
from wespeaker_lap.upstream.cache import HF_PREFIX, UpstreamError
from wespeaker_lap.utils.host_syncs import to_device

logger = logging.getLogger(__name__)

# The HuggingFace checkpoint the official code loads for each s3prl name.
HF_CHECKPOINTS = {
    "wavlm_base_plus": "microsoft/wavlm-base-plus",
    "wavlm_large": "microsoft/wavlm-large",
    "hubert_large_ll60k": "facebook/hubert-large-ll60k",
    "wav2vec2_large_ll60k": "facebook/wav2vec2-large-lv60",
}

# The values the official code gets from each checkpoint's config.json (keys absent from a file take
# the transformers class default); sources in docs/reproduction.md §Upstream regularisers.
OFFICIAL_FINETUNE: Dict[str, FinetuneConfig] = {
    "microsoft/wavlm-base-plus": FinetuneConfig(
        mask_time_prob=0.05, mask_time_length=10, mask_time_min_masks=2, layerdrop=0.05, hidden_dropout=0.1,
        attention_dropout=0.1, activation_dropout=0.0, feat_proj_dropout=0.1),
    "microsoft/wavlm-large": FinetuneConfig(
        mask_time_prob=0.075, mask_time_length=10, mask_time_min_masks=2, layerdrop=0.1, hidden_dropout=0.1,
        attention_dropout=0.1, activation_dropout=0.0, feat_proj_dropout=0.1),
    "facebook/hubert-large-ll60k": FinetuneConfig(
        mask_time_prob=0.05, mask_time_length=10, mask_time_min_masks=2, layerdrop=0.1, hidden_dropout=0.1,
        attention_dropout=0.1, activation_dropout=0.0, feat_proj_dropout=0.1),
    "facebook/wav2vec2-large-lv60": FinetuneConfig(
        mask_time_prob=0.05, mask_time_length=10, mask_time_min_masks=2, layerdrop=0.0, hidden_dropout=0.1,
        attention_dropout=0.1, activation_dropout=0.1, feat_proj_dropout=0.1),
}


def official_finetune(name: str) -> Optional[FinetuneConfig]:
    """The official values for an upstream name (s3prl name or ``hf:<id>``), or None if unknown."""
    hub_id = name[len(HF_PREFIX):] if name.startswith(HF_PREFIX) else HF_CHECKPOINTS.get(name)
    return OFFICIAL_FINETUNE.get(hub_id) if hub_id is not None else None


def span_mask(lengths: Tensor, n_frames: int, prob: float, span: int, min_spans: int) -> Tensor:
    """``[B, T]`` boolean mask of random spans, sampled as HuggingFace's ``_compute_mask_indices``.

    Utterance ``b`` (``lengths[b]`` valid frames) gets ``int(prob * lengths[b] / span + u)`` spans
    (``u`` uniform in [0, 1), one draw per batch), at least ``min_spans``, at most
    ``n_frames // span`` and ``lengths[b] - span + 1``; their starts are distinct and uniform over
    ``0 .. lengths[b] - span``, and spans may overlap. Padded frames are never masked. Nothing is
    masked when ``n_frames < span``.
    """
    batch, device = lengths.shape[0], lengths.device
    if n_frames < span or (prob <= 0 and min_spans <= 0):
        return torch.zeros(batch, n_frames, dtype=torch.bool, device=device)
    lengths = lengths.clamp(max=n_frames)
    rounding = torch.rand((), device=device)
    n_spans = torch.floor(prob * lengths / span + rounding).long().clamp(min=min_spans, max=n_frames // span)
    n_starts = (lengths - span + 1).clamp(min=0)  # [B] possible start positions
    n_spans = torch.minimum(n_spans, n_starts)
    positions = torch.arange(n_frames, device=device)
    scores = torch.rand(batch, n_frames, device=device).masked_fill(positions >= n_starts[:, None], 2.0)
    ranks = scores.argsort(dim=1).argsort(dim=1)  # [B, T]: the possible starts come first, in random order
    starts = (ranks < n_spans[:, None]).long()  # [B, T], n_spans[b] distinct starts
    covered = starts.cumsum(dim=1)
    covered = covered - F.pad(covered, (span, 0))[:, :n_frames]  # [B, T]: starts within the last `span` frames
    return covered > 0


def _output_tensor(output: Any) -> Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _replace_output(output: Any, tensor: Tensor) -> Any:
    if isinstance(output, (tuple, list)):
        return type(output)([tensor, *output[1:]])
    return tensor


def conv_kernels_and_strides(feature_extractor: nn.Module) -> List[tuple]:
    """``(kernel, stride)`` of every Conv1d of a CNN feature encoder, in order."""
    return [(m.kernel_size[0], m.stride[0]) for m in feature_extractor.modules() if isinstance(m, nn.Conv1d)]


class Regularizers:
    """Installs the hooks described in the module doc on a loaded wav2vec 2.0-style model.

    Args:
        projection: the module whose output (or its first element) is the projected CNN features
            ``[B, T, D]`` entering the transformer.
        mask_embedding: the model's learned mask vector ``[D]`` (None: masking is not possible).
        layers: the transformer layers; each takes the hidden state as its first argument and
            returns it (or a tuple starting with it).
        conv: ``(kernel, stride)`` of the CNN, to turn sample counts into frame counts.
        first_droppable: index of the first layer LayerDrop may skip.
        settings: the probabilities (``model.upstream.finetune``).
    """

    def __init__(self, projection: nn.Module, mask_embedding: Optional[nn.Parameter], layers: Sequence[nn.Module],
                 conv: Sequence[tuple], first_droppable: int, settings: FinetuneConfig, name: str):
        self.settings, self.name = settings, name
        self.masks = settings.mask_time_prob > 0 or settings.mask_time_min_masks > 0
        if self.masks and mask_embedding is None:
            raise UpstreamError(f"{name}: the checkpoint has no mask embedding, so it cannot be fine-tuned with "
                                f"time masking; set model.upstream.finetune.mask_time_prob=0 and mask_time_min_masks=0")
        self.mask_embedding = mask_embedding if self.masks else None
        self.conv = list(conv)
        self.first_droppable = first_droppable
        self.active = False
        self._frame_lens: Optional[Tensor] = None
        self._drop: Optional[Tensor] = None
        self._handles = []
        if self.masks:
            self._handles.append(projection.register_forward_hook(self._mask_hook))
        if settings.layerdrop > 0:
            for index, layer in enumerate(layers):
                if index >= first_droppable:
                    self._handles.append(layer.register_forward_hook(self._layerdrop_hook(index), prepend=True))
        self.n_layers = len(layers)

    def begin(self, wav_lens: Sequence[int], device: torch.device) -> None:
        """Draw this batch's LayerDrop decisions and note its frame counts; call before the forward.

        ``wav_lens`` are host ints; the frame counts reach the device by one asynchronous copy.
        """
        self.active = True
        frame_lens = list(wav_lens)
        for kernel, stride in self.conv:
            frame_lens = [max((n - kernel) // stride + 1, 0) for n in frame_lens]
        self._frame_lens = to_device(torch.tensor(frame_lens, dtype=torch.long), device)
        if self.settings.layerdrop > 0:
            self._drop = torch.rand(self.n_layers, device=device) < self.settings.layerdrop  # [L], on the device

    def end(self) -> None:
        self.active = False
        self._frame_lens = self._drop = None

    def _mask_hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        if not self.active:
            return None
        features = _output_tensor(output)  # [B, T, D]
        mask = span_mask(self._frame_lens, features.shape[1], self.settings.mask_time_prob,
                         self.settings.mask_time_length, self.settings.mask_time_min_masks)  # [B, T]
        masked = torch.where(mask[..., None], self.mask_embedding.to(features.dtype), features)
        return _replace_output(output, masked)

    def _layerdrop_hook(self, index: int):
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if not self.active:
                return None
            hidden_in, hidden_out = args[0], _output_tensor(output)
            return _replace_output(output, torch.where(self._drop[index], hidden_in, hidden_out))

        return hook

    def describe(self) -> str:
        s = self.settings
        return (f"time masking p={s.mask_time_prob} x {s.mask_time_length} frames (min {s.mask_time_min_masks}), "
                f"LayerDrop {s.layerdrop} (from layer {self.first_droppable}), dropout hidden {s.hidden_dropout}, "
                f"attention {s.attention_dropout}, activation {s.activation_dropout}, "
                f"feature projection {s.feat_proj_dropout}")


def set_fairseq_dropouts(model: nn.Module, settings: FinetuneConfig, name: str) -> None:
    """Set the dropout probabilities of a fairseq-style (s3prl) WavLM / HuBERT / wav2vec 2.0 model."""
    try:
        model.dropout_input.p = settings.feat_proj_dropout
        model.encoder.dropout = settings.hidden_dropout  # after the positional convolution (a float there)
        for layer in model.encoder.layers:
            layer.dropout1.p = settings.hidden_dropout  # after attention
            layer.dropout2.p = settings.activation_dropout  # after the feed-forward activation
            layer.dropout3.p = settings.hidden_dropout  # after the feed-forward output
            layer.self_attn.dropout_module.p = settings.attention_dropout
    except AttributeError as err:
        raise UpstreamError(f"{name}: not a wav2vec 2.0-style model ({err}); its fine-tuning regularisers cannot "
                            f"be set") from None


def fairseq_regularizers(model: nn.Module, settings: FinetuneConfig, name: str) -> Regularizers:
    """Dropouts set and hooks installed on the fairseq-style model inside an s3prl expert."""
    set_fairseq_dropouts(model, settings, name)
    model.encoder.layerdrop = 0.0  # ours replaces it (s3prl's hidden-state hooks need every layer to run)
    return Regularizers(model.dropout_input, getattr(model, "mask_emb", None), list(model.encoder.layers),
                        conv_kernels_and_strides(model.feature_extractor),
                        first_droppable=1 if type(model).__name__.lower().startswith("wavlm") else 0,
                        settings=settings, name=name)


def hf_config_overrides(settings: FinetuneConfig) -> Dict[str, Any]:
    """HF config values to set before ``from_pretrained``: our dropouts, and HF's own masking and LayerDrop off."""
    return {"hidden_dropout": settings.hidden_dropout, "attention_dropout": settings.attention_dropout,
            "activation_dropout": settings.activation_dropout, "feat_proj_dropout": settings.feat_proj_dropout,
            "layerdrop": 0.0, "apply_spec_augment": False}


def hf_regularizers(model: nn.Module, settings: FinetuneConfig, name: str) -> Regularizers:
    """Hooks on a ``transformers`` WavLM / HuBERT / wav2vec 2.0 model loaded with :func:`hf_config_overrides`."""
    return Regularizers(model.feature_projection, getattr(model, "masked_spec_embed", None),
                        list(model.encoder.layers), conv_kernels_and_strides(model.feature_extractor),
                        first_droppable=1 if model.config.model_type == "wavlm" else 0, settings=settings, name=name)
