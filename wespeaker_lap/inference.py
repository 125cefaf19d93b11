"""Whole-utterance speaker embeddings: the one code path shared by extraction, the API and the CLI.

``Embedder`` turns waveforms into embeddings in batches of similar length with padding masks;
``load_model(exp_dir)`` wraps a trained experiment for ``.embed(wav)`` and ``.score(a, b)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

SAMPLE_RATE = 16000
Audio = Union[str, Path, np.ndarray]


def plan_batches(lengths: Sequence[int], max_batch_samples: int, max_batch_size: int) -> List[List[int]]:
    """Group indices into batches of similar length, longest first.

    A batch's padded size (its longest item times its count) stays within
    ``max_batch_samples`` unless a single item alone exceeds it.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: List[List[int]] = []
    for i in order:
        if batches:
            batch = batches[-1]
            longest = lengths[batch[0]]
            if len(batch) < max_batch_size and longest * (len(batch) + 1) <= max_batch_samples:
                batch.append(i)
                continue
        batches.append([i])
    return batches


class Embedder:
    """Embeds whole utterances with a ``SpeakerModel`` in eval mode, deterministically."""

    def __init__(self, model: torch.nn.Module, device: str = "cpu", max_batch_seconds: float = 0.0,
                 max_batch_size: int = 64):
        # max_batch_seconds == 0: one utterance per forward (bit-identical to the API on any batch mix).
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.max_batch_samples = int(max_batch_seconds * SAMPLE_RATE)
        self.max_batch_size = max_batch_size if max_batch_seconds > 0 else 1

    @torch.inference_mode()
    def embed_batch(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        """Embed one padded batch; returns ``[N, E]`` float32."""
        lens = torch.tensor([len(w) for w in wavs], dtype=torch.long)
        padded = torch.zeros(len(wavs), int(lens.max()))  # [N, S_max], zero padding past each length
        for i, w in enumerate(wavs):
            padded[i, : len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
        emb = self.model(padded.to(self.device), lens.to(self.device))
        return emb.float().cpu().numpy()

    def embed_many(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        """Embed utterances of any lengths; returns ``[N, E]`` in input order."""
        lengths = [len(w) for w in wavs]
        out: Optional[np.ndarray] = None
        for batch in plan_batches(lengths, self.max_batch_samples, self.max_batch_size):
            emb = self.embed_batch([wavs[i] for i in batch])
            if out is None:
                out = np.zeros((len(wavs), emb.shape[1]), dtype=np.float32)
            out[batch] = emb
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def to_waveform(audio: Audio, key: str = "input") -> np.ndarray:
    """A wav path (read and checked exactly as extraction reads it) or a 16 kHz 1-D float array."""
    from wespeaker_lap.data.audio import MIN_EMBED_SECONDS, check_min_duration, check_samples, read_audio

    if isinstance(audio, (str, Path)):
        return read_audio(key, str(audio), SAMPLE_RATE, min_seconds=MIN_EMBED_SECONDS)
    wav = np.asarray(audio, dtype=np.float32)
    if wav.ndim != 1 or wav.size == 0:
        raise ValueError(f"{key}: expected a non-empty 1-D 16 kHz waveform, got shape {wav.shape}")
    check_min_duration(key, "array", len(wav), SAMPLE_RATE)
    return check_samples(key, "array", wav)


class SpeakerVerifier:
    """A trained model for inference: ``embed(wav)`` and ``score(wav_a, wav_b)``."""

    def __init__(self, embedder: Embedder, mean: Optional[np.ndarray] = None):
        self.embedder = embedder
        self.mean = mean

    def embed(self, wav: Audio) -> np.ndarray:
        """The raw embedding, identical to the one extraction writes to the ark."""
        return self.embedder.embed_many([to_waveform(wav)])[0]

    def score(self, wav_a: Audio, wav_b: Audio) -> float:
        """Cosine similarity, after subtracting the training-set mean when the experiment has one."""
        from wespeaker_lap.scoring.cosine import center_and_normalize

        pair = np.stack([self.embed(wav_a), self.embed(wav_b)])  # [2, E]
        mean = self.mean if self.mean is not None else np.zeros(pair.shape[1], dtype=np.float32)
        a, b = center_and_normalize(pair, mean)  # the recipe's cosine scoring, on one trial
        return float(a @ b)


def load_model(exp_dir: Union[str, Path], device: str = "cpu", trust_checkpoint: bool = False) -> SpeakerVerifier:
    """Load ``exp_dir/final_model.pt`` (and ``exp_dir/embeddings/train_mean.npy`` if present).

    ``trust_checkpoint``: see ``load_speaker_model`` (the upstream checkpoint must otherwise pass
    ``torch.load(weights_only=True)``).
    """
    from wespeaker_lap.models import load_speaker_model
    from wespeaker_lap.scoring.embeddings import load_mean

    exp_dir = Path(exp_dir)
    model_path = exp_dir / "final_model.pt"
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: no final model; run the recipe's stage 4 (averaging) first")
    model, _ = load_speaker_model(str(model_path), device=device, trust_checkpoint=trust_checkpoint)
    mean_path = exp_dir / "embeddings" / "train_mean.npy"
    mean = load_mean(mean_path) if mean_path.is_file() else None  # checked: a vector of finite values
    return SpeakerVerifier(Embedder(model, device), mean)
