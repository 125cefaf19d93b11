"""Tiny random-init upstream checkpoints for tests and smoke runs.

Each file loads through s3prl's ``wavlm_local``, ``hubert_local`` or ``wav2vec2_local`` (or, for
the HF one, ``transformers.AutoModel``) like the real thing, with 2-3 narrow layers. The CNN keeps
the real kernels and strides, so the hop stays 320 samples and the receptive field 400. The three
s3prl families differ in depth, width and norm placement so that a mix-up of ``L`` and ``D`` or a
Base-vs-Large assumption shows up in tests.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Tuple

import torch

from wespeaker_lap.utils.io import atomic_torch_save



def conv_layers(channels: int) -> str:
    """The real wav2vec2/HuBERT/WavLM CNN (kernel, stride) pairs with ``channels``: hop 5 * 2**6 = 320."""
    return f"[({channels}, 10, 5)] + [({channels}, 3, 2)] * 4 + [({channels}, 2, 2)] * 2"


# family -> (s3prl entry name, number of transformer layers, width)
TINY_FAMILIES: Dict[str, Tuple[str, int, int]] = {
    "wavlm": ("wavlm_local", 3, 32),
    "hubert": ("hubert_local", 2, 48),
    "wav2vec2": ("wav2vec2_local", 2, 40),
}

_TRANSFORMER = dict(encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4)


def _tiny_wavlm(conv_channels: int, width_scale: int) -> dict:
    """WavLM Base+-style (post-LN, group-norm CNN, gated relative positions): ``{"cfg", "model"}``."""
    from s3prl.upstream.wavlm.WavLM import WavLM, WavLMConfig

    _, layers, dim = TINY_FAMILIES["wavlm"]
    dim *= width_scale
    cfg = dict(
        _TRANSFORMER,
        conv_feature_layers=conv_layers(conv_channels),
        extractor_mode="default",
        encoder_layers=layers,
        encoder_embed_dim=dim,
        encoder_ffn_embed_dim=2 * dim,
        layer_norm_first=False,
        normalize=False,
        relative_position_embedding=True,
        num_buckets=32,
        max_distance=128,
        gru_rel_pos=True,
    )
    return {"cfg": cfg, "model": WavLM(WavLMConfig(cfg)).state_dict()}


def _tiny_hubert(conv_channels: int, width_scale: int) -> dict:
    """HuBERT Base-style, in s3prl's converted format."""
    from s3prl.upstream.hubert.hubert_model import HubertConfig, HubertModel, HubertPretrainingConfig

    _, layers, dim = TINY_FAMILIES["hubert"]
    dim *= width_scale
    task_cfg = dict(label_rate=50.0, sample_rate=16000, normalize=False)
    model_cfg = dict(
        _TRANSFORMER,
        conv_feature_layers=conv_layers(conv_channels),
        label_rate=50.0,
        extractor_mode="default",
        encoder_layers=layers,
        encoder_embed_dim=dim,
        encoder_ffn_embed_dim=2 * dim,
        layer_norm_first=False,
        final_dim=16,
    )
    symbols = [[str(i) for i in range(8)]]
    model = HubertModel(HubertConfig(**model_cfg), HubertPretrainingConfig(**task_cfg), symbols)
    return {
        "task_cfg": task_cfg,
        "model_cfg": model_cfg,
        "model_weight": model.state_dict(),
        "dictionaries_symbols": symbols,
    }


def _tiny_wav2vec2(conv_channels: int, width_scale: int) -> dict:
    """wav2vec 2.0 Large-style (pre-LN, layer-norm CNN, waveform normalisation), converted format."""
    from s3prl.upstream.wav2vec2.wav2vec2_model import AudioPretrainingConfig, Wav2Vec2Config, Wav2Vec2Model

    _, layers, dim = TINY_FAMILIES["wav2vec2"]
    dim *= width_scale
    task_cfg = dict(sample_rate=16000, normalize=True)
    model_cfg = dict(
        _TRANSFORMER,
        conv_feature_layers=conv_layers(conv_channels),
        extractor_mode="layer_norm",
        encoder_layers=layers,
        encoder_embed_dim=dim,
        encoder_ffn_embed_dim=2 * dim,
        layer_norm_first=True,
        final_dim=16,
        latent_vars=8,
        latent_groups=2,
    )
    AudioPretrainingConfig(**task_cfg)  # fail here, not at load time, on a bad key
    model = Wav2Vec2Model(Wav2Vec2Config(**model_cfg))
    return {"task_cfg": task_cfg, "model_cfg": model_cfg, "model_weight": model.state_dict()}


_BUILDERS = {"wavlm": _tiny_wavlm, "hubert": _tiny_hubert, "wav2vec2": _tiny_wav2vec2}


def write_tiny_upstreams(out_dir: str | Path, seed: int = 0, conv_channels: int = 32,
                         width_scale: int = 1) -> Dict[str, Path]:
    """Write ``<family>.pt`` for wavlm, hubert and wav2vec2 into ``out_dir``; return family -> path.

    The weights depend only on the arguments (each family gets its own generator state). The
    defaults are the test size; wider CNNs (``conv_channels``) and transformers (``width_scale``
    times the widths of ``TINY_FAMILIES``) give richer random features, e.g. for the mini recipe.
    """
    out_dir = Path(out_dir)
    paths = {}
    for offset, (family, build) in enumerate(_BUILDERS.items()):
        torch.manual_seed(seed * 1000 + offset)
        paths[family] = out_dir / f"{family}.pt"
        atomic_torch_save(build(conv_channels, width_scale), paths[family])
    return paths


def write_tiny_hf_wavlm(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random-init HF ``WavLMModel`` directory (``save_pretrained``); return it.

    Same shape of CNN as the s3prl ones (hop 320), 2 layers of width 32.
    """
    from transformers import WavLMConfig, WavLMModel

    config = WavLMConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        conv_dim=(32,) * 7,
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        num_buckets=32,
        max_bucket_distance=128,
        vocab_size=8,
    )
    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.")
    try:
        WavLMModel(config).save_pretrained(tmp)
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)  # readers see the old directory, none, or the whole new one
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
