"""Whole-utterance speaker embeddings: the one code path shared by extraction, the API and the CLI.

``Embedder`` turns waveforms into embeddings, exactly (one utterance per forward in fp32) or fast
(batches of similar length, autocast on a GPU; see ``config.ExtractionConfig``); ``load_model(exp_dir)``
wraps a trained experiment for ``.embed(wav)`` and ``.score(a, b)`` (cosine, or AS-Norm with a cohort).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from wespeaker_lap.data.audio import SAMPLE_RATE

if TYPE_CHECKING:
    from wespeaker_lap.config import ExtractionConfig
    from wespeaker_lap.scoring.asnorm import Cohort

Audio = Union[str, Path, np.ndarray]
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_PRECISION_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


def plan_batches(lengths: Sequence[int], max_batch_samples: int, max_batch_size: int,
                 max_padding: float = 1.0) -> List[List[int]]:
    """Group indices into batches of similar length, longest first.

    A batch's padded size (its longest item times its count) stays within ``max_batch_samples``
    unless a single item alone exceeds it, and every item is at least ``1 - max_padding`` of the
    batch's longest (so at most that fraction of its padded row is zeros).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: List[List[int]] = []
    for i in order:
        if batches:
            batch = batches[-1]
            longest = lengths[batch[0]]
            if (len(batch) < max_batch_size and longest * (len(batch) + 1) <= max_batch_samples
                    and lengths[i] >= (1.0 - max_padding) * longest):
                batch.append(i)
                continue
        batches.append([i])
    return batches


def pad_batch(wavs: Sequence[np.ndarray]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad waveforms into one batch: ``(padded[N, S_max] float32, lengths[N] int64)``."""
    lens = torch.tensor([len(w) for w in wavs], dtype=torch.long)
    padded = torch.zeros(len(wavs), int(lens.max()))  # [N, S_max], zero padding past each length
    for i, w in enumerate(wavs):
        padded[i, : len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
    return padded, lens


@contextlib.contextmanager
def _numerics(device: torch.device, fast: bool, dtype: Optional[torch.dtype]) -> Iterator[None]:
    """Autocast at ``dtype`` (None: fp32) on ``device``; on CUDA also TF32 on (fast) or off (exact), restored on exit."""
    autocast = torch.autocast(device.type, dtype=dtype, enabled=True) if dtype is not None else contextlib.nullcontext()
    if device.type != "cuda":
        with autocast:
            yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = fast
    try:
        with autocast:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


class PendingEmbeddings:
    """One batch's embeddings on their way to the host; ``result()`` waits for them (the batch's one sync)."""

    def __init__(self, host: torch.Tensor, ready: Optional["torch.cuda.Event"] = None):
        self._host, self._ready = host, ready

    def result(self) -> np.ndarray:
        """``[N, E]`` float32."""
        if self._ready is not None:
            self._ready.synchronize()
        return self._host.numpy()


class Embedder:
    """Embeds whole utterances with a ``SpeakerModel`` in eval mode, deterministically.

    ``max_batch_seconds == 0`` (the default) is the exact mode: one utterance per forward in fp32, so an
    embedding never depends on what else is extracted. Otherwise (fast) utterances of similar length
    share a zero-padded forward of at most ``max_batch_seconds`` of audio and ``max_batch_size``
    utterances, each padded by at most ``max_padding`` of the batch's longest (``plan_batches``),
    with TF32 allowed on CUDA and, given ``autocast``, under ``torch.autocast`` at that dtype
    (``from_config`` asks for it on CUDA only; on a CPU it serves as a measured proxy).

    ``start(padded, lengths)`` queues one batch and returns at once on CUDA: the waveforms go to the
    device without blocking (from pinned memory, as extraction's loader gives them), the lengths stay
    on the host, and the embeddings come back through pinned memory when ``result()`` is called.
    """

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu", max_batch_seconds: float = 0.0,
                 max_batch_size: int = 64, autocast: Optional[torch.dtype] = None, max_padding: float = 0.02):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.fast = max_batch_seconds > 0
        self.max_batch_samples = int(max_batch_seconds * SAMPLE_RATE)
        self.max_batch_size = max_batch_size if self.fast else 1
        self.max_padding = max_padding if self.fast else 0.0
        self.autocast = autocast if self.fast else None

    @classmethod
    def from_config(cls, model: torch.nn.Module, device: str | torch.device, cfg: "ExtractionConfig") -> "Embedder":
        """The embedder of ``extraction.mode`` on ``device`` (``auto``: fast on CUDA, exact elsewhere).

        ``precision`` applies on CUDA only: fast mode on a CPU runs in fp32.
        """
        device = torch.device(device)
        if cfg.mode == "exact" or (cfg.mode == "auto" and device.type != "cuda"):
            return cls(model, device)
        dtype = _DTYPES[cfg.precision] if device.type == "cuda" else None
        return cls(model, device, cfg.max_batch_seconds, cfg.max_batch_size, dtype, cfg.max_padding)

    @property
    def settings(self) -> Dict[str, object]:
        """What decides the numbers this embedder gives (for resume signatures and logs)."""
        return {"mode": "fast" if self.fast else "exact", "device": self.device.type,
                "precision": _PRECISION_NAMES[self.autocast], "tf32": self.fast and self.device.type == "cuda",
                "max_batch_samples": self.max_batch_samples, "max_batch_size": self.max_batch_size,
                "max_padding": self.max_padding}

    @property
    def description(self) -> str:
        if not self.fast:
            return "exact: one utterance per forward, fp32"
        return (f"fast: up to {self.max_batch_samples / SAMPLE_RATE:g} s and {self.max_batch_size} utterances "
                f"per forward, at most {100 * self.max_padding:g} % padding, {_PRECISION_NAMES[self.autocast]}"
                + (", TF32" if self.device.type == "cuda" else ""))

    @torch.inference_mode()
    def start(self, padded: torch.Tensor, lengths: torch.Tensor) -> PendingEmbeddings:
        """Queue the forward of ``padded[N, S]`` (valid samples ``lengths[N]``, on the host)."""
        wavs = padded.to(self.device, non_blocking=True)
        with _numerics(self.device, self.fast, self.autocast):
            emb = self.model(wavs, lengths)  # [N, E]
        emb = emb.float()
        if self.device.type != "cuda":
            return PendingEmbeddings(emb)
        host = torch.empty(emb.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(emb, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return PendingEmbeddings(host, ready)

    def embed_batch(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        """Embed one padded batch; returns ``[N, E]`` float32."""
        return self.start(*pad_batch(wavs)).result()

    def embed_many(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        """Embed utterances of any lengths; returns ``[N, E]`` in input order."""
        lengths = [len(w) for w in wavs]
        out: Optional[np.ndarray] = None
        for batch in plan_batches(lengths, self.max_batch_samples, self.max_batch_size, self.max_padding):
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
    """A trained model for inference: ``embed(wav)`` and ``score(wav_a, wav_b)``.

    ``score`` is the recipe's: cosine after subtracting the training mean (when there is one), then
    AS-Norm against ``cohort`` when one is given (``scoring.asnorm.Cohort``, centred with the same mean).
    """

    def __init__(self, embedder: Embedder, mean: Optional[np.ndarray] = None, cohort: Optional["Cohort"] = None):
        self.embedder = embedder
        self.mean = mean
        self.cohort = cohort

    def embed(self, wav: Audio) -> np.ndarray:
        """The raw embedding, identical to the one extraction writes to the ark."""
        return self.embedder.embed_many([to_waveform(wav)])[0]

    def score(self, wav_a: Audio, wav_b: Audio) -> float:
        """Cosine similarity of the centred embeddings, AS-Norm-ed when the verifier has a cohort."""
        from wespeaker_lap.scoring.asnorm import as_norm
        from wespeaker_lap.scoring.cosine import center_and_normalize

        pair = np.stack([self.embed(wav_a), self.embed(wav_b)])  # [2, E]
        mean = self.mean if self.mean is not None else np.zeros(pair.shape[1], dtype=np.float32)
        normalized = center_and_normalize(pair, mean)  # the recipe's cosine scoring, on one trial
        cosine = normalized[:1] @ normalized[1]  # [1]
        if self.cohort is None:
            return float(cosine[0])
        mu, sigma = self.cohort.statistics(normalized)  # [2], [2]: enroll, test
        return float(as_norm(cosine, mu[:1], sigma[:1], mu[1:], sigma[1:])[0])


def load_model(exp_dir: Union[str, Path], device: str = "cpu", cohort: Union[str, Path, None] = None,
               top_k: Optional[int] = None, allow_upstream_mismatch: bool = False,
               trust_checkpoint: bool = False) -> SpeakerVerifier:
    """Load ``exp_dir/final_model.pt`` (and ``exp_dir/embeddings/train_mean.npy`` if present).

    ``cohort``: an scp of cohort embeddings, one row per cohort entry (the recipe writes the training
    speakers' means to ``exp_dir/embeddings/<train_set>/spk_xvector.scp``); ``score`` then applies
    AS-Norm with the ``top_k`` highest cohort scores (default: ``CohortConfig.top_k``).
    ``allow_upstream_mismatch`` loads even when the upstream checkpoint is not the one trained with.
    ``trust_checkpoint``: see ``load_speaker_model`` (the upstream checkpoint must otherwise pass
    ``torch.load(weights_only=True)``).
    """
    from wespeaker_lap.models.model_file import load_speaker_model
    from wespeaker_lap.scoring.embeddings import load_mean

    exp_dir = Path(exp_dir)
    model_path = exp_dir / "final_model.pt"
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: no final model; run the recipe's stage 4 (averaging) first")
    model, _ = load_speaker_model(model_path, device=device, allow_upstream_mismatch=allow_upstream_mismatch,
                                  trust_checkpoint=trust_checkpoint)
    mean_path = exp_dir / "embeddings" / "train_mean.npy"
    mean = load_mean(mean_path) if mean_path.is_file() else None  # checked: a vector of finite values
    verifier_cohort = None
    if cohort is not None:
        from wespeaker_lap.config import CohortConfig
        from wespeaker_lap.scoring.asnorm import Cohort
        from wespeaker_lap.scoring.embeddings import read_embeddings

        rows = read_embeddings(cohort, progress=False)
        dim_mean = mean if mean is not None else np.zeros(rows.matrix.shape[1], dtype=np.float32)
        verifier_cohort = Cohort.from_embeddings(rows, dim_mean, top_k or CohortConfig().top_k)
    return SpeakerVerifier(Embedder(model, device), mean, verifier_cohort)
