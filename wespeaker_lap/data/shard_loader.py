"""Training batches from tar shards (``data.format: shard``), with the interface of ``pipeline.TrainDataset``.

The plan of epoch ``e`` is made from the shard list alone (no audio is read for it), so it is the
same in every process and worker, and a resumed run knows what it skips:

1. The shards are permuted by ``default_rng([seed, e])`` and their utterances laid end to end.
2. That sequence is cut into ``R x S`` equal *streams* of ``L = total // (R * S)`` utterances
   (``R`` processes, ``S = data.shard_streams`` per process); stream ``g = rank * S + s`` belongs to
   process ``rank``. A stream may start or end inside a shard: it reads only its own members, so
   each shard's bytes are read by one process, front to back.
3. A stream passes through an in-memory shuffle buffer of ``K = data.shuffle_buffer`` crops: once
   ``K`` are held, each new one takes the place of one drawn at random (``default_rng([seed, e, g])``),
   which is released; at the end of the stream the rest are released in random order. The first
   ``k * B`` released (``k = L // B``, ``B`` the per-process batch) make the stream's ``k`` batches.
4. Batch ``b`` of a process is batch ``b // S`` of its stream ``b % S``. Every process therefore
   yields ``batches_per_epoch = S * k`` batches whatever the shard sizes (DDP needs equal counts);
   fewer than ``R * S * (B + 1)`` utterances an epoch are left unused, different ones each epoch.

Each sample draws its randomness from ``default_rng([seed, e, g, q])`` (``q``: its release position
in the stream), so batch ``b`` is a function of (seed, e, b, rank, R, S). DataLoader worker ``w`` of
``W`` (``W`` must divide ``S``) reads the streams ``s`` with ``s % W == (start_batch + w) % W`` and
builds batches ``start_batch + w``, ``start_batch + w + W``, ...; the loader's round-robin returns
them in order. A run resumed at ``start_batch`` skips, by seeking, the members released before it:
their bytes are neither read nor decoded.

Samples go through the steps of ``processors`` as raw files do (speed perturbation, crop,
augmentation, collate); decoding and cropping happen when a member is read, so the buffer holds
crops, not whole utterances (``K`` x crop length x 4 bytes per stream).
"""
from __future__ import annotations

import collections
import itertools
import logging
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Tuple

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from wespeaker_lap.config import ConfigError, DataConfig
from wespeaker_lap.data import processors
from wespeaker_lap.data.audio import SAMPLE_RATE, BadAudioHandler
from wespeaker_lap.data.augment import Augmenter
from wespeaker_lap.data.kaldi import DataError
from wespeaker_lap.data.pipeline import Corpus, EpochPosition, _n_classes, _one_torch_thread, check_batching
from wespeaker_lap.data.shards import BytesAudio, Shard, default_shard_list, read_shard, read_shard_list, \
    shard_speakers

logger = logging.getLogger(__name__)

Sample = Dict[str, Any]
Segment = Tuple[int, int, int]  # (shard index, first utterance, stop utterance) read by a stream

RECENT_FOR_BAD_AUDIO = 8  # good utterances a stream remembers to stand in for bad audio (skip mode)


def shard_list_path(cfg: DataConfig) -> Path:
    return Path(cfg.shard_list) if cfg.shard_list else default_shard_list(cfg.train_dir)


def shard_corpus(cfg: DataConfig) -> Corpus:
    """The utterances in the shards (``utt2spk`` beside the list), sorted by key, labelled by sorted speaker."""
    utt2spk = shard_speakers(shard_list_path(cfg))
    speakers = sorted(set(utt2spk.values()))
    label = {spk: i for i, spk in enumerate(speakers)}
    return Corpus([(key, "", label[utt2spk[key]]) for key in sorted(utt2spk)], speakers)


def release_order(n: int, buffer_size: int, rng: np.random.Generator) -> np.ndarray:
    """The order in which a shuffle buffer of ``buffer_size`` releases items ``0 .. n-1`` read in order.

    ``order[t]`` is the read index of the ``t``-th item released. An item released at step ``t``
    has been read by step ``t + buffer_size``, so a reader holds at most ``buffer_size + 1`` items.
    """
    held = list(range(min(buffer_size, n)))
    draws = rng.integers(0, buffer_size, size=max(0, n - len(held)))
    order = np.empty(n, dtype=np.int64)
    for step, (read, slot) in enumerate(zip(range(len(held), n), draws)):
        order[step] = held[slot]
        held[slot] = read
    order[n - len(held):] = rng.permutation(held)
    return order


def stream_segments(counts: np.ndarray, permutation: np.ndarray, stream: int, length: int) -> List[Segment]:
    """The shard ranges that stream ``stream`` reads: utterances ``[stream * length, (stream + 1) * length)``
    of the shards laid end to end in ``permutation`` order."""
    ends = np.cumsum(counts[permutation])
    starts = ends - counts[permutation]
    lo, hi = stream * length, (stream + 1) * length
    first, last = np.searchsorted(ends, lo, side="right"), np.searchsorted(starts, hi, side="left")
    return [(int(permutation[i]), int(max(lo, starts[i]) - starts[i]), int(min(hi, ends[i]) - starts[i]))
            for i in range(first, last)]


class ShardTrainDataset(EpochPosition, IterableDataset):
    """Yields this process's collated batches ``{"keys", "wavs" [B, S], "labels" [B]}`` of one epoch from shards.

    Same attributes and ``set_epoch`` as ``pipeline.TrainDataset``; also ``streams`` (per process),
    ``stream_length`` and ``shards``.
    """

    def __init__(self, cfg: DataConfig, global_batch_size: int, rank: int, world_size: int,
                 seed: int, epoch: int = 0, start_batch: int = 0):
        super().__init__()
        check_batching(cfg, global_batch_size, rank, world_size, seed)
        workers = max(1, cfg.num_workers)
        self.streams = cfg.shard_streams or workers
        if self.streams % workers:
            raise ConfigError(f"data.shard_streams: {self.streams} is not a multiple of data.num_workers={workers}")
        self.cfg, self.rank, self.world_size, self.seed = cfg, rank, world_size, seed
        self.list_file = shard_list_path(cfg)
        self.shards: List[Shard] = read_shard_list(self.list_file)
        self.corpus = shard_corpus(cfg)
        self.counts = np.array([shard.n_utts for shard in self.shards], dtype=np.int64)
        total = int(self.counts.sum())
        if total != len(self.corpus.utterances):
            raise DataError(f"{self.list_file}: its shards hold {total} utterances, but "
                            f"{self.list_file.parent / 'utt2spk'} lists {len(self.corpus.utterances)}")
        self.label = {spk: i for i, spk in enumerate(self.corpus.speakers)}
        self.global_batch_size = global_batch_size
        self.batch_size = global_batch_size // world_size
        self.n_speakers = len(self.corpus.speakers)
        self.n_classes = _n_classes(self.n_speakers, cfg.speed_perturb_prob)
        self.stream_length = total // (world_size * self.streams)
        self.stream_batches = self.stream_length // self.batch_size
        self.batches_per_epoch = self.streams * self.stream_batches
        if self.batches_per_epoch == 0:
            raise ValueError(f"{self.list_file}: {total} utterances make {world_size} x {self.streams} streams "
                             f"of {self.stream_length}, less than one batch of {self.batch_size}; "
                             "lower data.shard_streams")
        self.crop_samples = round(cfg.crop_seconds * SAMPLE_RATE)
        self.bad_audio = BadAudioHandler(cfg.on_bad_audio)
        self.augmenter = Augmenter.from_config(cfg.augment, SAMPLE_RATE, self.bad_audio)
        self.set_epoch(epoch, start_batch)
        unused = total - world_size * self.batches_per_epoch * self.batch_size
        logger.info("%s: %d shards, %d utterances, %d speakers, %d classes; rank %d/%d: %d stream(s) of %d "
                    "utterances (shuffle buffer %d), %d batches of %d per epoch (%d utterances an epoch unused); "
                    "augmentation: %s", self.list_file, len(self.shards), total, self.n_speakers, self.n_classes,
                    rank, world_size, self.streams, self.stream_length, cfg.shuffle_buffer,
                    self.batches_per_epoch, self.batch_size, unused,
                    ", ".join(self.augmenter.types) if self.augmenter else "off")

    def _use_position(self, epoch: int, start_batch: int) -> None:
        """The shard order of ``epoch``, from ``start_batch`` on."""
        if getattr(self, "epoch", None) != epoch:
            self.permutation = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        self.epoch, self.start_batch = epoch, start_batch

    def stream_samples(self, stream: int, first_batch: int) -> Iterator[Sample]:
        """Cropped samples of this process's stream ``stream`` in release order, from its batch ``first_batch``."""
        g = self.rank * self.streams + stream
        cfg = self.cfg
        samples = self._read_stream(g, first_batch * self.batch_size)
        samples = open_shard_audio(samples, SAMPLE_RATE, self.bad_audio)
        samples = processors.speed_perturb(samples, cfg.speed_perturb_prob, self.n_speakers)
        samples = processors.random_crop(samples, self.crop_samples, SAMPLE_RATE)
        return shuffle_buffer(samples, first_batch * self.batch_size, self.stream_batches * self.batch_size)

    def _read_stream(self, g: int, first: int) -> Iterator[Sample]:
        """The members of stream ``g`` released at position ``first`` or later, in read order.

        Writes ``key``, ``label``, ``data`` (the audio bytes), ``where``, ``position`` (in the
        release order) and ``rng``.
        """
        n_released = self.stream_batches * self.batch_size
        order = release_order(self.stream_length, self.cfg.shuffle_buffer,
                              np.random.default_rng([self.seed, self.epoch, g]))
        position = np.full(self.stream_length, -1, dtype=np.int64)  # read index -> release position
        position[order[:n_released]] = np.arange(n_released)
        offset = 0
        for shard_index, start, stop in stream_segments(self.counts, self.permutation, g, self.stream_length):
            shard = self.shards[shard_index]
            here = position[offset:offset + stop - start]
            offset += stop - start
            wanted = np.zeros(shard.n_utts, dtype=bool)
            wanted[start:stop] = here >= first
            if not wanted.any():
                continue  # nothing of this shard is needed: it is not even opened
            for index, key, speaker, data in read_shard(shard, wanted):
                if speaker not in self.label:
                    raise DataError(f"{shard.path}: speaker {speaker!r} of {key!r} is not in "
                                    f"{self.list_file.parent / 'utt2spk'}")
                q = int(here[index - start])
                yield {"key": key, "label": self.label[speaker], "data": data, "where": f"{shard.path}",
                       "position": q, "rng": np.random.default_rng([self.seed, self.epoch, g, q])}

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        self.catch_up()
        worker = get_worker_info()
        worker_id, n_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        S, first = self.streams, self.start_batch
        mine = [s for s in range(S) if s % n_workers == (first + worker_id) % n_workers]
        # stream s's first batch to yield: the number of batches b < start_batch with b % S == s
        streams = {s: self.stream_samples(s, max(0, -(-(first - s) // S))) for s in mine}
        try:
            for batch in range(first + worker_id, self.batches_per_epoch, n_workers):
                samples = itertools.islice(streams[batch % S], self.batch_size)
                samples = processors.add_reverb_or_noise(samples, self.augmenter, self.cfg.augment.prob)
                with _one_torch_thread():
                    yield processors.collate(samples)
        finally:
            for stream in streams.values():
                stream.close()


def open_shard_audio(samples: Iterable[Sample], sample_rate: int, bad_audio: BadAudioHandler) -> Iterator[Sample]:
    """Decode each sample's audio bytes; bad audio (skip mode) is replaced by one of the stream's last good ones.

    Reads ``key``, ``label``, ``data``, ``where``; writes ``key``, ``label``, ``audio`` (a ``BytesAudio``).
    """
    recent: collections.deque = collections.deque(maxlen=RECENT_FOR_BAD_AUDIO)
    for sample in samples:
        own = (sample["key"], sample["label"], sample.pop("data"), sample.pop("where"))
        chosen, audio = bad_audio.first_readable(
            [own, *reversed(recent)], lambda utt: BytesAudio(utt[0], utt[2], sample_rate, utt[3]))
        if chosen is own:
            recent.append(own)
        sample.update(key=chosen[0], label=chosen[1], audio=audio)
        yield sample


def shuffle_buffer(samples: Iterable[Sample], first: int, stop: int) -> Iterator[Sample]:
    """The in-memory shuffle buffer: hold samples as they are read and release them by ``position``.

    ``samples`` bring positions ``first .. stop-1`` in read order (planned by ``release_order``, so at
    most ``data.shuffle_buffer + 1`` are held at a time); they leave in position order. Reads ``position``.
    """
    held: Dict[int, Sample] = {}
    upcoming = first
    for sample in samples:
        held[sample["position"]] = sample
        while upcoming in held:
            yield held.pop(upcoming)
            upcoming += 1
        if upcoming == stop:
            return
    if upcoming != stop:
        raise DataError(f"a shard stream ended at position {upcoming} of {stop}; are the shards complete?")
