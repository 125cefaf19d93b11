"""A batched, sync-free forward for s3prl's WavLM, HuBERT and wav2vec 2.0 experts.

``S3PRLUpstream.forward`` and the experts under it loop over the batch in Python on the device's
length tensor (``max(wav_lens)``, ``wav[:wav_len]``, ``max(h_len)`` per layer): a handful of device
syncs per utterance and per layer, about 130 for a batch of 16. :func:`hidden_states` computes the
same thing from lengths held on the host: it pads and masks the batch as the expert does, calls the
model's ``extract_features`` once, and collects the expert's own hidden-state hooks. A batch whose
utterances all fill the padded width (training crops) gets no padding mask at all, as the models
would otherwise index with it.

Only the plain experts of these three families qualify (:func:`batched_forward_unsupported` says
why another does not); ``Upstream`` falls back to s3prl's own forward for the rest.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wespeaker_lap.utils.host_syncs import to_device

MIN_SAMPLES = 800  # s3prl's MIN_SECOND * SAMPLE_RATE: shorter batches are zero-padded to this
_EXPERT_MODULES = ("s3prl.upstream.wavlm.expert", "s3prl.upstream.hubert.expert", "s3prl.upstream.wav2vec2.expert")


def batched_forward_unsupported(upstream: nn.Module) -> Optional[str]:
    """Why ``s3prl.nn.S3PRLUpstream`` ``upstream`` cannot use :func:`hidden_states` (None: it can)."""
    expert = upstream.upstream
    kind = type(expert)
    if kind.__name__ != "UpstreamExpert" or kind.__module__ not in _EXPERT_MODULES:
        return f"{kind.__module__}.{kind.__name__} is not a plain WavLM/HuBERT/wav2vec 2.0 expert"
    if upstream.normalize:
        return "S3PRLUpstream(normalize=True)"
    if getattr(expert, "feature_selection", None) is not None or getattr(expert, "numpy_wav_normalize", False) \
            or not getattr(expert, "apply_padding_mask", True):
        return "the expert's feature_selection / numpy_wav_normalize / apply_padding_mask options"
    if not expert.hooks or not all(rate == upstream.downsample_rates[0] for rate in upstream.downsample_rates):
        return "no hidden-state hooks, or layers with different downsample rates"
    return None


def _normalizes_waveform(expert: nn.Module) -> bool:
    """The expert's per-utterance waveform normalisation flag (WavLM: cfg, HuBERT: task_cfg, wav2vec 2.0)."""
    if hasattr(expert, "wav_normalize"):
        return bool(expert.wav_normalize)
    cfg = getattr(expert, "task_cfg", None) or getattr(expert, "cfg")
    return bool(cfg.normalize)


def hidden_states(upstream: nn.Module, wavs: Tensor, lens: Sequence[int]) -> Tuple[List[Tensor], List[int]]:
    """``S3PRLUpstream.forward(wavs, lens)`` without device syncs: ``(L x [B, T, D], frame_lens)``.

    ``lens`` are host ints. Matches s3prl, including its quirks: a batch shorter than 800 samples
    is zero-padded to 800 and the padding counted as signal, and the frame count is
    ``(S - 1) // rate + 1`` (the last real frame repeated where the CNN gives fewer).
    """
    expert = upstream.upstream
    model_lens = list(lens)
    if max(model_lens) < MIN_SAMPLES:
        extra = MIN_SAMPLES - max(model_lens)
        wavs = F.pad(wavs, (0, extra))
        model_lens = [n + extra for n in model_lens]
    width = max(model_lens)
    wavs = wavs[:, :width]  # [B, S]
    padded = min(model_lens) < width
    if padded:
        padding_mask = torch.arange(width, device=wavs.device) >= to_device(torch.tensor(model_lens, dtype=torch.long), wavs.device)[:, None]
        if _normalizes_waveform(expert):  # per utterance, over its own samples, as the expert does
            wavs = torch.stack([F.pad(F.layer_norm(wav[:n], (n,)), (0, width - n)) for wav, n in zip(wavs, model_lens)])
        wavs = wavs.masked_fill(padding_mask, 0.0)
    else:
        padding_mask = None
        if _normalizes_waveform(expert):
            wavs = F.layer_norm(wavs, (width,))

    expert._hook_hiddens.clear()
    try:
        expert.model.extract_features(wavs, padding_mask)
        hooked = list(expert._hook_hiddens)
    finally:
        expert._hook_hiddens.clear()
    if callable(expert.hook_postprocess):
        hooked = expert.hook_postprocess(hooked)
    states = [hidden for _, hidden in hooked]
    if len(states) != upstream.num_layers:
        raise RuntimeError(f"s3prl expert gave {len(states)} hidden states, expected {upstream.num_layers}")

    rate = upstream.downsample_rates[0]
    n_frames = (width - 1) // rate + 1  # len(range(0, width, rate)), s3prl's expected frame count
    frame_lens = [(n - 1) // rate + 1 for n in lens]  # from the lengths before the 800-sample padding
    return [_match_length(h, n_frames)[:, :max(frame_lens)] for h in states], frame_lens


def _match_length(hidden: Tensor, n_frames: int) -> Tensor:
    """Trim ``hidden[B, T, D]`` to ``n_frames`` frames, or repeat its last frame up to it (as s3prl)."""
    if hidden.size(1) >= n_frames:
        return hidden[:, :n_frames]
    return torch.cat([hidden, hidden[:, -1:].expand(-1, n_frames - hidden.size(1), -1)], dim=1)

