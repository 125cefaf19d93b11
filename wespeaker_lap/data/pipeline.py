"""Deterministic, resumable training batches (see ``CONTRIBUTING.md``, "Training data") from raw files.

This module reads ``data.format: raw`` (the files of ``wav.scp``); ``shard_loader`` reads tar shards
through the same sample steps (``processors``) and the same interface.

Batches are planned up front. Epoch ``e`` orders all utterances (sorted by key)
by ``np.random.default_rng([seed, e]).permutation``; the order is cut into
global batches of ``global_batch_size`` (the last partial one is dropped), and
rank ``r`` of ``world_size`` takes the ``r``-th contiguous slice of
``batch_size = global_batch_size // world_size``. Sample ``p`` of the epoch
order draws all its randomness from ``np.random.default_rng([seed, e, p])``.
Batch ``b`` of a rank is therefore a pure function of
(seed, epoch, b, rank, world_size), whatever the worker count or timing.

DataLoader worker ``w`` of ``W`` builds batches ``start_batch + w``,
``start_batch + w + W``, ...; the DataLoader's round-robin over workers then
returns them in order. Resuming at ``start_batch`` reads no skipped audio.
Workers persist across epochs: ``set_epoch`` writes the epoch and the first batch
to shared memory, which each worker reads when the loader is iterated again.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from wespeaker_lap.config import ConfigError, DataConfig
from wespeaker_lap.data import processors
from wespeaker_lap.data.audio import SAMPLE_RATE, BadAudioHandler
from wespeaker_lap.data.augment import Augmenter
from wespeaker_lap.data.kaldi import load_data_dir

logger = logging.getLogger(__name__)

Utterance = Tuple[str, str, int]  # (key, wav.scp value, speaker label)


@dataclass(frozen=True)
class Corpus:
    """Training utterances sorted by key; a label is the speaker's index in ``speakers``."""

    utterances: List[Utterance]
    speakers: List[str]

    @classmethod
    def from_dir(cls, path: str) -> "Corpus":
        data = load_data_dir(path)
        speakers = data.speakers
        label = {spk: i for i, spk in enumerate(speakers)}
        utterances = [(key, data.wav_scp[key], label[data.utt2spk[key]]) for key in sorted(data.wav_scp)]
        return cls(utterances, speakers)


def check_batching(cfg: DataConfig, global_batch_size: int, rank: int, world_size: int, seed: int) -> None:
    """The checks shared by the raw and shard datasets."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if global_batch_size < 1 or global_batch_size % world_size:
        raise ValueError(f"global batch size {global_batch_size} is not a positive multiple "
                         f"of world_size={world_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if cfg.crop_seconds <= 0:
        raise ConfigError(f"data.crop_seconds: must be > 0, got {cfg.crop_seconds}")
    if not 0 <= cfg.speed_perturb_prob <= 1:
        raise ConfigError(f"data.speed_perturb_prob: must be in [0, 1], got {cfg.speed_perturb_prob}")


def _n_classes(n_speakers: int, speed_perturb_prob: float) -> int:
    return n_speakers * (1 + len(processors.SPEED_FACTORS)) if speed_perturb_prob > 0 else n_speakers


def n_classes(cfg: DataConfig) -> int:
    """Classifier size: speakers x 3 with speed perturbation (0.9 and 1.1 are new speakers), else speakers."""
    if cfg.format == "shard":
        from wespeaker_lap.data.shard_loader import shard_corpus

        return _n_classes(len(shard_corpus(cfg).speakers), cfg.speed_perturb_prob)
    return _n_classes(len(load_data_dir(cfg.train_dir).speakers), cfg.speed_perturb_prob)


class EpochPosition:
    """The epoch and first batch a dataset yields, shared with persistent DataLoader workers.

    ``set_epoch`` writes them to a small shared-memory tensor (workers forked earlier see it), and
    ``catch_up`` at the start of ``__iter__`` makes a worker's copy use them. Subclasses define
    ``batches_per_epoch`` and ``_use_position(epoch, start_batch)``.
    """

    batches_per_epoch: int

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (its data order) and the first batch to yield."""
        if epoch < 0 or not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"epoch {epoch} / start_batch {start_batch} out of range "
                             f"(batches_per_epoch={self.batches_per_epoch})")
        if not hasattr(self, "_shared_position"):
            self._shared_position = torch.zeros(2, dtype=torch.long).share_memory_()  # (epoch, start_batch)
        self._shared_position.copy_(torch.tensor([epoch, start_batch]))
        self._use_position(epoch, start_batch)

    def catch_up(self) -> None:
        """Use the position the main process set last (a persistent worker's copy lags behind)."""
        self._use_position(*self._shared_position.tolist())

    def _use_position(self, epoch: int, start_batch: int) -> None:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch


class TrainDataset(EpochPosition, IterableDataset):
    """Yields this rank's collated batches ``{"keys", "wavs" [B, S], "labels" [B]}`` of one epoch.

    Attributes: ``batch_size`` (per rank), ``batches_per_epoch``, ``n_speakers``,
    ``n_classes``, ``epoch``, ``start_batch``. Call ``set_epoch`` before iterating
    a new epoch (persistent workers see it through shared memory).
    """

    def __init__(self, cfg: DataConfig, global_batch_size: int, rank: int, world_size: int,
                 seed: int, epoch: int = 0, start_batch: int = 0):
        super().__init__()
        check_batching(cfg, global_batch_size, rank, world_size, seed)
        self.cfg = cfg
        self.corpus = Corpus.from_dir(cfg.train_dir)
        self.global_batch_size = global_batch_size
        self.batch_size = global_batch_size // world_size
        self.rank = rank
        self.seed = seed
        self.n_speakers = len(self.corpus.speakers)
        self.n_classes = _n_classes(self.n_speakers, cfg.speed_perturb_prob)
        self.batches_per_epoch = len(self.corpus.utterances) // global_batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"{cfg.train_dir}: {len(self.corpus.utterances)} utterances do not fill "
                             f"one global batch of {global_batch_size}")
        self.crop_samples = round(cfg.crop_seconds * SAMPLE_RATE)
        self.bad_audio = BadAudioHandler(cfg.on_bad_audio)
        self.augmenter = Augmenter.from_config(cfg.augment, SAMPLE_RATE, self.bad_audio)
        self.set_epoch(epoch, start_batch)
        logger.info("%s: %d utterances, %d speakers, %d classes; rank %d/%d: %d batches of %d per epoch; "
                    "augmentation: %s", cfg.train_dir, len(self.corpus.utterances), self.n_speakers,
                    self.n_classes, rank, world_size, self.batches_per_epoch, self.batch_size,
                    ", ".join(self.augmenter.types) if self.augmenter else "off")

    def _use_position(self, epoch: int, start_batch: int) -> None:
        """The utterance order of ``epoch``, from ``start_batch`` on."""
        if getattr(self, "epoch", None) != epoch:
            self.order = np.random.default_rng([self.seed, epoch]).permutation(len(self.corpus.utterances))
        self.epoch, self.start_batch = epoch, start_batch

    def positions(self, batch: int) -> range:
        """Positions in the epoch order of this rank's samples of ``batch``."""
        first = batch * self.global_batch_size + self.rank * self.batch_size
        return range(first, first + self.batch_size)

    def _candidates(self, position: int) -> Iterator[Utterance]:
        """The utterance at ``position``, then the following ones (replacements for bad audio)."""
        n = len(self.order)
        return (self.corpus.utterances[self.order[(position + i) % n]] for i in range(n))

    def make_batch(self, batch: int) -> Dict[str, Any]:
        """Build this rank's ``batch`` of the current epoch."""
        if not 0 <= batch < self.batches_per_epoch:
            raise IndexError(f"batch {batch} is not in [0, {self.batches_per_epoch})")
        cfg = self.cfg
        samples = ({"rng": np.random.default_rng([self.seed, self.epoch, p]), "candidates": self._candidates(p)}
                   for p in self.positions(batch))
        samples = processors.open_audio(samples, SAMPLE_RATE, self.bad_audio)
        samples = processors.speed_perturb(samples, cfg.speed_perturb_prob, self.n_speakers)
        samples = processors.random_crop(samples, self.crop_samples, SAMPLE_RATE, self.bad_audio)
        samples = processors.add_reverb_or_noise(samples, self.augmenter, cfg.augment.prob)
        with _one_torch_thread():
            return processors.collate(samples)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        self.catch_up()
        worker = get_worker_info()
        worker_id, n_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for batch in range(self.start_batch + worker_id, self.batches_per_epoch, n_workers):
            yield self.make_batch(batch)


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Build batches with one intra-op thread, as DataLoader workers do, so that their bits (resampling
    sums) do not depend on ``num_workers`` or the machine's core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_train_loader(cfg: DataConfig, global_batch_size: int, rank: int, world_size: int, seed: int,
                       epoch: int, start_batch: int = 0) -> Tuple[DataLoader, TrainDataset]:
    """A DataLoader over the training dataset (``cfg.num_workers`` workers) and the dataset itself:
    ``TrainDataset`` for ``data.format: raw``, ``shard_loader.ShardTrainDataset`` for ``shard``.

    For the next epoch call ``dataset.set_epoch(epoch)`` and iterate the loader again. The workers
    are started once and kept (``persistent_workers``); on a GPU, batches arrive in pinned memory,
    so that their copy to the device is asynchronous.
    """
    if cfg.format == "shard":
        from wespeaker_lap.data.shard_loader import ShardTrainDataset

        dataset = ShardTrainDataset(cfg, global_batch_size, rank, world_size, seed, epoch, start_batch)
    else:
        dataset = TrainDataset(cfg, global_batch_size, rank, world_size, seed, epoch, start_batch)
    loader = DataLoader(dataset, batch_size=None, num_workers=cfg.num_workers,
                        pin_memory=torch.cuda.is_available(), persistent_workers=cfg.num_workers > 0)
    return loader, dataset
