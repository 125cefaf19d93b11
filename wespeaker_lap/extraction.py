"""Embedding extraction for a Kaldi data directory, sharded over processes, written as Kaldi ark/scp.

``extract_data_dir`` is stage 4 for one set: rank r embeds every ``world``-th length-sorted batch
into ``xvector.<r>.ark``/``.scp``; rank 0 then merges the per-rank scp files into ``xvector.scp``
(failing if any utterance is missing) and saves the resolved evaluation config as ``eval.yaml``
beside them. For a training set it also writes the mean embedding and the per-speaker mean
embeddings (``spk_xvector.scp``, a speaker cohort for the Python API).

DataLoader workers read and pad each batch (pinned memory on CUDA, a few batches ahead); the
embedder queues batch b+1 before collecting batch b, so the one host sync per batch overlaps
with the next forward.

**Resume.** A killed (or out-of-space) run is started again with the same command: each rank keeps
the complete entries of its shard (``utils.ark.recover_ark`` drops a partial tail) and embeds only
the batches with a missing entry (a batch that was half written is embedded again as a whole, so
its values equal an uninterrupted run's, and only its missing entries are written). Each shard
has a signature beside it, ``xvector.<r>.signature.json``: the model file's digest and its
upstream's, the embedder's settings (mode, precision, batching, device type), the data (a digest
of this rank's keys, wav entries and batches, so also the world size) and the rank. A shard whose
signature differs from the current run's is started over, with a log line saying what changed.
While a process writes a shard it holds ``xvector.<r>.lock``: a second run into the same directory
stops with an error instead of mixing its entries in.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from wespeaker_lap.config import EvalConfig, save_config
from wespeaker_lap.data.audio import SAMPLE_RATE
from wespeaker_lap.data.kaldi import DataDir, DataError, load_data_dir, read_scp, write_map
from wespeaker_lap.inference import Embedder, PendingEmbeddings, pad_batch, plan_batches
from wespeaker_lap.utils.ark import ArkWriter, recover_ark
from wespeaker_lap.utils.console import progress
from wespeaker_lap.utils.io import atomic_write_text

log = logging.getLogger(__name__)

SIGNATURE_VERSION = 1
PREFETCH_BATCHES = 4  # batches each loader worker reads ahead


class _BatchAudio(Dataset):
    """Item i: the keys, zero-padded waveforms ``[N, S]`` and lengths ``[N]`` of planned batch i (read in workers)."""

    def __init__(self, data: DataDir, batches: Sequence[Sequence[str]]):
        self.wav_scp, self.batches = data.wav_scp, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> Tuple[List[str], torch.Tensor, torch.Tensor]:
        from wespeaker_lap.data.audio import MIN_EMBED_SECONDS, read_audio

        keys = list(self.batches[i])
        wavs = [read_audio(k, self.wav_scp[k], SAMPLE_RATE, min_seconds=MIN_EMBED_SECONDS) for k in keys]
        return (keys, *pad_batch(wavs))


def utterance_lengths(data: DataDir, keys: Sequence[str]) -> List[int]:
    """Lengths in samples, from ``utt2dur`` when present, else from the audio headers (checked as audio)."""
    if data.utt2dur:
        missing = [k for k in keys if k not in data.utt2dur]
        if missing:
            raise DataError(f"{data.path / 'utt2dur'}: no duration for utterance {missing[0]!r}")
        return [int(round(data.utt2dur[k] * SAMPLE_RATE)) for k in keys]
    from wespeaker_lap.data.audio import audio_length

    return [audio_length(k, data.wav_scp[k], SAMPLE_RATE) for k in progress(keys, desc="reading durations", leave=False)]


def shard_batches(embedder: Embedder, data: DataDir, rank: int = 0, world: int = 1) -> List[List[str]]:
    """This rank's batches of keys: every ``world``-th batch of the whole set's length-sorted plan."""
    keys = sorted(data.wav_scp)
    batches = plan_batches(utterance_lengths(data, keys), embedder.max_batch_samples, embedder.max_batch_size,
                           embedder.max_padding)
    return [[keys[i] for i in batch] for batch in batches[rank::world]]


def shard_paths(out_dir: Path, rank: int) -> Tuple[Path, Path, Path]:
    """``xvector.<rank>.ark``, ``.scp`` and ``.signature.json`` in ``out_dir``."""
    stem = Path(out_dir) / f"xvector.{rank}"
    return tuple(stem.with_name(f"{stem.name}.{ext}") for ext in ("ark", "scp", "signature.json"))


class ShardBusyError(RuntimeError):
    """Another process holds the shard's lock."""


@contextlib.contextmanager
def shard_lock(out_dir: Path, rank: int) -> Iterator[None]:
    """Hold ``xvector.<rank>.lock`` (``flock``): a second extraction into the same shard stops instead of mixing in."""
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"xvector.{rank}.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ShardBusyError(f"{path}: another extraction is writing this shard ({holder}); wait for it to "
                               "finish or stop it, then run this command again") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def shard_signature(embedder: Embedder, data: DataDir, batches: Sequence[Sequence[str]], rank: int, world: int,
                    identity: Mapping[str, Any]) -> Dict[str, Any]:
    """What decides a shard's contents: ``identity`` (the model's), the embedder, the data and batches, the rank."""
    plan = hashlib.sha256()
    for batch in batches:
        plan.update("".join(f"{key}\t{data.wav_scp[key]}\n" for key in batch).encode("utf-8") + b"\n")
    return {"version": SIGNATURE_VERSION, **identity, "extraction": embedder.settings,
            "data": {"dir": str(Path(data.path).resolve()), "utterances": sum(map(len, batches)),
                     "plan": plan.hexdigest()},
            "world_size": world, "rank": rank}


def _read_signature(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def open_shard(out_dir: Path, rank: int, signature: Mapping[str, Any]) -> Set[str]:
    """Prepare this rank's ark/scp for appending; return the keys already embedded (kept from a killed run).

    A shard with the same signature is recovered (its partial tail dropped); any other shard
    files are removed and the signature written first, so a shard never exists without one.
    """
    ark, scp, sig = shard_paths(out_dir, rank)
    name = Path(out_dir) / f"xvector.{rank}"
    previous = _read_signature(sig) if sig.is_file() else None
    if previous == dict(signature):
        kept = recover_ark(ark, scp)
        total = signature["data"]["utterances"]
        if kept:
            log.info("%s: resuming: %d of %d embeddings kept from an earlier run; embedding the other %d", name,
                     len(kept), total, total - len(kept))
        return set(kept)
    if previous is not None or ark.exists() or scp.exists():
        if previous is None:
            why = "it has no signature (written by an older version?)"
        else:
            changed = sorted(k for k in set(previous) | set(signature) if previous.get(k) != signature.get(k))
            why = f"it was written with other settings ({', '.join(changed)} differ)"
        log.info("%s: starting this shard over: %s", name, why)
        for path in (ark, scp):
            path.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sig, json.dumps(signature, indent=1, sort_keys=True) + "\n")
    return set()


def extract_shard(embedder: Embedder, data: DataDir, out_dir: Path, rank: int = 0, world: int = 1,
                  num_workers: int = 2, identity: Optional[Mapping[str, Any]] = None) -> Path:
    """Embed this rank's share of ``data`` into ``out_dir/xvector.<rank>.{ark,scp}``, resuming a killed run.

    ``identity`` (e.g. the model file's digest) joins the shard's signature.
    """
    out_dir = Path(out_dir)
    batches = shard_batches(embedder, data, rank, world)
    with shard_lock(out_dir, rank):
        if rank == 0:  # an earlier run's merged list would point into shards that are about to change
            (out_dir / "xvector.scp").unlink(missing_ok=True)
        done = open_shard(out_dir, rank, shard_signature(embedder, data, batches, rank, world, identity or {}))
        _embed_missing(embedder, data, out_dir, rank, batches, done, num_workers)
    return shard_paths(out_dir, rank)[1]


def _embed_missing(embedder: Embedder, data: DataDir, out_dir: Path, rank: int, batches: Sequence[Sequence[str]],
                   done: Set[str], num_workers: int) -> None:
    """Append the entries of ``batches`` not in ``done`` to this rank's (open, consistent) shard."""
    todo = [batch for batch in batches if any(key not in done for key in batch)]
    ark, scp, _ = shard_paths(out_dir, rank)
    loader = DataLoader(_BatchAudio(data, todo), batch_size=None, num_workers=num_workers,
                        pin_memory=embedder.device.type == "cuda",
                        prefetch_factor=PREFETCH_BATCHES if num_workers > 0 else None)
    bar = progress(total=sum(map(len, batches)), initial=len(done), desc=f"extract rank {rank}", unit="utt",
                   disable=rank != 0)
    pending: Optional[Tuple[List[str], PendingEmbeddings]] = None

    def write(keys: List[str], embeddings: PendingEmbeddings) -> None:
        vectors = embeddings.result()  # [N, E]; waits for this batch only
        writer.write((key, vector) for key, vector in zip(keys, vectors) if key not in done)
        bar.update(sum(key not in done for key in keys))

    try:
        with ArkWriter(ark, scp, append=True) as writer:
            for keys, padded, lengths in (loader if todo else ()):
                queued = (keys, embedder.start(padded, lengths))
                if pending is not None:
                    write(*pending)
                pending = queued
            if pending is not None:
                write(*pending)
    finally:
        bar.close()


def merge_shards(data: DataDir, out_dir: Path, world: int) -> Path:
    """Concatenate per-rank scp files into ``xvector.scp``; every utterance must be there.

    Shard files of ranks at or beyond ``world`` (left by a run with more processes) are removed.
    """
    merged: Dict[str, str] = {}
    for rank in range(world):
        merged.update(read_scp(shard_paths(out_dir, rank)[1]))
    missing = sorted(set(data.wav_scp) - set(merged))
    if missing:
        raise DataError(f"{out_dir}: {len(missing)} utterances of {data.path / 'wav.scp'} have no embedding, "
                        f"e.g. {missing[0]!r}")
    scp = out_dir / "xvector.scp"
    write_map(scp, merged)
    for path in Path(out_dir).glob("xvector.*.*"):
        rank = path.name.split(".")[1]
        if rank.isdigit() and int(rank) >= world:
            path.unlink()
    return scp


def write_training_stats(data: DataDir, scp: Path, mean_path: Path, cohort_dir: Path) -> None:
    """Write the mean embedding (``.npy``) and per-speaker mean embeddings (``spk_xvector.{ark,scp}``)."""
    from wespeaker_lap.scoring.asnorm import speaker_means
    from wespeaker_lap.scoring.embeddings import read_embeddings
    from wespeaker_lap.utils.io import atomic_open

    embeddings = read_embeddings(scp)
    with atomic_open(mean_path, "wb") as f:
        np.save(f, embeddings.matrix.mean(axis=0, dtype=np.float64).astype(np.float32))
    cohort = speaker_means(embeddings, data.utt2spk, str(data.path / "utt2spk"))
    cohort_dir.mkdir(parents=True, exist_ok=True)
    ark, spk_scp = cohort_dir / "spk_xvector.ark", cohort_dir / "spk_xvector.scp"
    tmp_ark, tmp_scp = ark.with_name(f".{ark.name}.tmp"), spk_scp.with_name(f".{spk_scp.name}.tmp")
    try:
        with ArkWriter(tmp_ark, tmp_scp, ark_name=str(ark)) as writer:  # the scp names the final ark
            writer.write(zip(cohort.keys, cohort.matrix))
        os.replace(tmp_ark, ark)
        os.replace(tmp_scp, spk_scp)
    finally:
        tmp_ark.unlink(missing_ok=True)
        tmp_scp.unlink(missing_ok=True)
    log.info("training stats: mean of %d utterances -> %s; %d speaker means -> %s",
             len(embeddings.keys), mean_path, len(cohort.keys), spk_scp)


def model_identity(model_path: Path, model_file) -> Dict[str, Any]:
    """The model file's digest and its upstream checkpoint's (None where it cannot be found), for signatures.

    Contents, not paths: the same file copied elsewhere resumes; another file with other weights does not.
    """
    from wespeaker_lap.upstream.identity import file_digest, upstream_identity

    try:
        upstream = upstream_identity(model_file.model_config.upstream)["digest"]
    except (OSError, ValueError):
        upstream = None
    return {"model": file_digest(Path(model_path)), "upstream": upstream}


def extract_data_dir(model_path: Path, data_dir: Path, out_dir: Path, cfg: EvalConfig,
                     mean_out: Optional[Path] = None, allow_upstream_mismatch: bool = False) -> Optional[Path]:
    """Embed ``data_dir`` into ``out_dir/xvector.scp`` in this process (one of ``WORLD_SIZE`` under torchrun).

    ``mean_out`` marks a training set: the mean embedding goes there and the speaker means beside the
    embeddings. Returns the merged scp on rank 0 (None elsewhere). Run it again after a kill: it resumes.
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
        model, model_file = load_speaker_model(model_path, device=ctx.device,
                                               allow_upstream_mismatch=allow_upstream_mismatch)
        embedder = Embedder.from_config(model, ctx.device, cfg.extraction)
        log.info("%s -> %s: %s", data_dir, out_dir, embedder.description)
        extract_shard(embedder, data, out_dir, ctx.rank, ctx.world_size, cfg.extraction.num_workers,
                      model_identity(model_path, model_file))
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
