"""Embedding extraction for a Kaldi data directory, sharded over processes, written as Kaldi ark/scp.

``extract_data_dir`` is stage 4 for one set: rank r embeds every ``world``-th length-sorted batch
into ``xvector.<r>.ark``; rank 0 then merges the per-rank scp files into ``xvector.scp`` (failing if
any utterance is missing) and saves the resolved evaluation config as ``eval.yaml`` beside them.
For a training set it also writes the mean embedding and the per-speaker mean embeddings
(``spk_xvector.scp``, a speaker cohort for the Python API).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset

from wespeaker_lap.config import EvalConfig, save_config
from wespeaker_lap.data.audio import SAMPLE_RATE
from wespeaker_lap.data.kaldi import DataDir, DataError, load_data_dir, read_scp, write_map, write_specifier
from wespeaker_lap.inference import Embedder, plan_batches
from wespeaker_lap.utils.console import progress
from wespeaker_lap.utils.io import atomic_open

log = logging.getLogger(__name__)


class _BatchAudio(Dataset):
    """Loads the waveforms of one planned batch per item (so workers read audio in parallel)."""

    def __init__(self, data: DataDir, keys: Sequence[str], batches: Sequence[Sequence[int]]):
        self.data, self.keys, self.batches = data, keys, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        from wespeaker_lap.data.audio import MIN_EMBED_SECONDS, read_audio

        keys = [self.keys[j] for j in self.batches[i]]
        return keys, [read_audio(k, self.data.wav_scp[k], SAMPLE_RATE, min_seconds=MIN_EMBED_SECONDS) for k in keys]


def utterance_lengths(data: DataDir, keys: Sequence[str]) -> List[int]:
    """Lengths in samples, from ``utt2dur`` when present, else from the audio headers (checked as audio)."""
    if data.utt2dur:
        missing = [k for k in keys if k not in data.utt2dur]
        if missing:
            raise DataError(f"{data.path / 'utt2dur'}: no duration for utterance {missing[0]!r}")
        return [int(round(data.utt2dur[k] * SAMPLE_RATE)) for k in keys]
    from wespeaker_lap.data.audio import audio_length

    return [audio_length(k, data.wav_scp[k], SAMPLE_RATE) for k in progress(keys, desc="reading durations", leave=False)]


def extract_shard(embedder: Embedder, data: DataDir, out_dir: Path, rank: int = 0, world: int = 1,
                  num_workers: int = 2) -> Path:
    """Embed this rank's share of ``data`` into ``out_dir/xvector.<rank>.{ark,scp}``."""
    import kaldiio

    keys = sorted(data.wav_scp)
    batches = plan_batches(utterance_lengths(data, keys), embedder.max_batch_samples, embedder.max_batch_size)
    mine = batches[rank::world]
    loader = DataLoader(_BatchAudio(data, keys, mine), batch_size=None, num_workers=num_workers)
    out_dir.mkdir(parents=True, exist_ok=True)
    ark, scp = out_dir / f"xvector.{rank}.ark", out_dir / f"xvector.{rank}.scp"
    with kaldiio.WriteHelper(write_specifier(ark, scp)) as writer:
        for batch_keys, wavs in progress(loader, desc=f"extract rank {rank}", unit="batch", disable=rank != 0):
            for key, emb in zip(batch_keys, embedder.embed_batch(wavs)):
                writer(key, emb)
    return scp


def merge_shards(data: DataDir, out_dir: Path, world: int) -> Path:
    """Concatenate per-rank scp files into ``xvector.scp``; every utterance must be there."""
    merged: Dict[str, str] = {}
    for rank in range(world):
        merged.update(read_scp(out_dir / f"xvector.{rank}.scp"))
    missing = sorted(set(data.wav_scp) - set(merged))
    if missing:
        raise DataError(f"{out_dir}: {len(missing)} utterances of {data.path / 'wav.scp'} have no embedding, "
                        f"e.g. {missing[0]!r}")
    scp = out_dir / "xvector.scp"
    write_map(scp, merged)
    return scp


def write_training_stats(data: DataDir, scp: Path, mean_path: Path, cohort_dir: Path) -> None:
    """Write the mean embedding (``.npy``) and per-speaker mean embeddings (``spk_xvector.{ark,scp}``)."""
    import kaldiio

    from wespeaker_lap.scoring.asnorm import speaker_means
    from wespeaker_lap.scoring.embeddings import read_embeddings

    embeddings = read_embeddings(scp)
    with atomic_open(mean_path, "wb") as f:
        np.save(f, embeddings.matrix.mean(axis=0, dtype=np.float64).astype(np.float32))
    cohort = speaker_means(embeddings, data.utt2spk, str(data.path / "utt2spk"))
    cohort_dir.mkdir(parents=True, exist_ok=True)
    ark, spk_scp = cohort_dir / "spk_xvector.ark", cohort_dir / "spk_xvector.scp"
    with kaldiio.WriteHelper(write_specifier(ark, spk_scp)) as writer:
        for spk, mean in zip(cohort.keys, cohort.matrix):
            writer(spk, mean)
    log.info("training stats: mean of %d utterances -> %s; %d speaker means -> %s",
             len(embeddings.keys), mean_path, len(cohort.keys), spk_scp)


def extract_data_dir(model_path: Path, data_dir: Path, out_dir: Path, cfg: EvalConfig,
                     mean_out: Optional[Path] = None, allow_upstream_mismatch: bool = False) -> Optional[Path]:
    """Embed ``data_dir`` into ``out_dir/xvector.scp`` in this process (one of ``WORLD_SIZE`` under torchrun).

    ``mean_out`` marks a training set: the mean embedding goes there and the speaker means beside the
    embeddings. Returns the merged scp on rank 0 (None elsewhere).
    """
    from wespeaker_lap.models.model_file import load_speaker_model
    from wespeaker_lap.training.distributed import barrier, cleanup_distributed, init_distributed, set_deterministic
    from wespeaker_lap.utils.logging import setup_logging

    ctx = init_distributed()
    out_dir = Path(out_dir)
    try:
        setup_logging(str(out_dir / "log" / f"extract.{ctx.rank}.log"))
        set_deterministic(warn_only=True)  # an op without a deterministic kernel warns instead of stopping
        data = load_data_dir(data_dir, need_spk=mean_out is not None)
        model, _ = load_speaker_model(model_path, device=ctx.device, allow_upstream_mismatch=allow_upstream_mismatch)
        embedder = Embedder.from_config(model, ctx.device, cfg.extraction)
        log.info("%s -> %s: %s", data_dir, out_dir, embedder.description)
        extract_shard(embedder, data, out_dir, ctx.rank, ctx.world_size, cfg.extraction.num_workers)
        barrier()
        if not ctx.is_main:
            return None
        scp = merge_shards(data, out_dir, ctx.world_size)
        if mean_out is not None:
            write_training_stats(data, scp, Path(mean_out), out_dir)
        save_config(cfg, str(out_dir / "eval.yaml"))
        log.info("wrote %d embeddings to %s", len(data.wav_scp), scp)
        return scp
    finally:
        cleanup_distributed()
