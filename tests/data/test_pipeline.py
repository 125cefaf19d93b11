"""Batch planning: determinism, resume, DDP split, worker independence, bad audio, augmentation lists."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wespeaker_lap.config import AugmentConfig, ConfigError, DataConfig
from wespeaker_lap.data.audio import BadAudioHandler
from wespeaker_lap.data.augment import Augmenter
from wespeaker_lap.data.kaldi import DataError
from wespeaker_lap.data.pipeline import TrainDataset, build_train_loader, n_classes

from .batch_helpers import SR, assert_same_batches, write_wav

N_SPEAKERS, UTTS_PER_SPEAKER = 4, 6


@pytest.fixture
def train_dir(tmp_path) -> Path:
    """24 utterances of 0.05-0.3 s from 4 speakers; speakers listed out of order."""
    data = tmp_path / "train"
    data.mkdir()
    wav_scp, utt2spk = [], []
    for s, spk in enumerate(["spk_c", "spk_a", "spk_d", "spk_b"]):
        for u in range(UTTS_PER_SPEAKER):
            key = f"{spk}-{u:02d}"
            n = 800 + 800 * ((s * UTTS_PER_SPEAKER + u) % 6)
            wav_scp.append(f"{key} {write_wav(tmp_path / f'{key}.wav', n, seed=s * 100 + u)}")
            utt2spk.append(f"{key} {spk}")
    (data / "wav.scp").write_text("\n".join(wav_scp) + "\n")
    (data / "utt2spk").write_text("\n".join(utt2spk) + "\n")
    return data


def config(train_dir: Path, **changes) -> DataConfig:
    base = DataConfig(train_dir=str(train_dir), crop_seconds=0.1, speed_perturb_prob=0.4,
                      augment=AugmentConfig(prob=0.0), num_workers=0)
    return dataclasses.replace(base, **changes)


def all_batches(dataset: TrainDataset) -> list:
    return [dataset.make_batch(b) for b in range(dataset.start_batch, dataset.batches_per_epoch)]


def test_batches_shapes_and_labels(train_dir):
    dataset = TrainDataset(config(train_dir), global_batch_size=5, rank=0, world_size=1, seed=3)
    assert dataset.batches_per_epoch == 4 and len(dataset) == 4  # 24 // 5: the partial batch is dropped
    assert dataset.n_speakers == 4 and dataset.n_classes == 12 == n_classes(config(train_dir))
    assert n_classes(config(train_dir, speed_perturb_prob=0.0)) == 4
    speakers = ["spk_a", "spk_b", "spk_c", "spk_d"]
    keys = []
    for batch in all_batches(dataset):
        assert batch["wavs"].shape == (5, 1600) and batch["wavs"].dtype == torch.float32
        for key, label in zip(batch["keys"], batch["labels"].tolist()):
            assert speakers[label % 4] == key.split("-")[0]  # sorted-speaker index, + 4 or 8 when perturbed
        keys += batch["keys"]
    assert len(set(keys)) == 20  # no utterance twice in an epoch


def test_same_seed_same_batches_other_epoch_other_order(train_dir):
    cfg = config(train_dir)
    first = all_batches(TrainDataset(cfg, 6, 0, 1, seed=11, epoch=2))
    assert_same_batches(first, all_batches(TrainDataset(cfg, 6, 0, 1, seed=11, epoch=2)))
    other_epoch = TrainDataset(cfg, 6, 0, 1, seed=11, epoch=0)
    other_epoch.set_epoch(3)
    assert [b["keys"] for b in first] != [b["keys"] for b in all_batches(other_epoch)]
    other_seed = all_batches(TrainDataset(cfg, 6, 0, 1, seed=12, epoch=2))
    assert [b["keys"] for b in first] != [b["keys"] for b in other_seed]


def test_ranks_split_the_global_batch(train_dir):
    cfg = config(train_dir)
    whole = TrainDataset(cfg, 8, rank=0, world_size=1, seed=5, epoch=1)
    ranks = [TrainDataset(cfg, 8, rank=r, world_size=4, seed=5, epoch=1) for r in range(4)]
    assert all(d.batch_size == 2 and d.batches_per_epoch == 3 for d in ranks)
    for b in range(3):
        parts = [d.make_batch(b) for d in ranks]
        keys = [k for p in parts for k in p["keys"]]
        assert len(set(keys)) == 8  # disjoint
        reference = whole.make_batch(b)
        assert keys == reference["keys"]  # covering, in order
        assert torch.equal(torch.cat([p["wavs"] for p in parts]), reference["wavs"])  # same randomness
    with pytest.raises(ValueError, match="multiple of world_size"):
        TrainDataset(cfg, 6, rank=0, world_size=4, seed=5)
    with pytest.raises(ValueError, match="rank 4"):
        TrainDataset(cfg, 8, rank=4, world_size=4, seed=5)


def test_start_batch_equals_skipping(train_dir):
    cfg = config(train_dir)
    full = all_batches(TrainDataset(cfg, 4, 0, 1, seed=2, epoch=1))
    resumed = TrainDataset(cfg, 4, 0, 1, seed=2, epoch=1, start_batch=3)
    assert len(resumed) == 3
    assert_same_batches(full[3:], list(resumed))


def test_start_batch_reads_no_skipped_audio(train_dir):
    dataset = TrainDataset(config(train_dir), 4, 0, 1, seed=2, epoch=1)
    expected = all_batches(dataset)
    for batch in expected[:3]:
        for key in batch["keys"]:  # later batches must not need these files
            (train_dir.parent / f"{key}.wav").unlink()
    dataset.set_epoch(1, start_batch=3)
    assert_same_batches(expected[3:], list(dataset))


def test_worker_count_does_not_change_batches(train_dir):
    single, _ = build_train_loader(config(train_dir), 4, 0, 1, seed=9, epoch=0)
    expected = list(single)
    loader, dataset = build_train_loader(config(train_dir, num_workers=2), 4, 0, 1, seed=9, epoch=0)
    assert_same_batches(expected, list(loader))
    dataset.set_epoch(0, start_batch=1)  # resume with workers: still in order
    assert_same_batches(expected[1:], list(loader))


def test_bad_audio_error_names_key_and_path(train_dir):
    (train_dir.parent / "spk_b-03.wav").write_bytes(b"not audio")
    dataset = TrainDataset(config(train_dir), 24, 0, 1, seed=1)
    with pytest.raises(DataError, match=r"spk_b-03.*spk_b-03\.wav"):
        dataset.make_batch(0)


def test_bad_audio_skip_replaces_with_next_good_one(train_dir, caplog):
    bad = ["spk_a-01", "spk_d-04"]
    for key in bad:
        (train_dir.parent / f"{key}.wav").unlink()
    cfg = config(train_dir, on_bad_audio="skip")
    dataset = TrainDataset(cfg, 12, 0, 1, seed=4)
    with caplog.at_level(logging.WARNING, logger="wespeaker_lap.data.audio"):
        batches = all_batches(dataset)
    keys = [k for b in batches for k in b["keys"]]
    assert all(b["wavs"].shape == (12, 1600) for b in batches)
    assert not set(bad) & set(keys)
    n_bad_positions = sum(dataset.corpus.utterances[i][0] in bad for i in dataset.order[:24])
    assert dataset.bad_audio.count >= n_bad_positions == 2
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == dataset.bad_audio.count and "#1" in warnings[0]
    assert_same_batches(batches, all_batches(TrainDataset(cfg, 12, 0, 1, seed=4)))  # deterministic


def nan_inside(path: Path, n: int) -> None:
    """Overwrite ``path`` with a float wav of NaNs but a finite last sample (opening it succeeds; a crop does not)."""
    samples = np.full(n, np.nan, dtype=np.float32)
    samples[-1] = 0.0
    sf.write(str(path), samples, SR, subtype="FLOAT")


def test_nan_in_a_crop_is_bad_audio(train_dir):
    nan_inside(train_dir.parent / "spk_b-03.wav", 1600)
    dataset = TrainDataset(config(train_dir), 24, 0, 1, seed=1)
    with pytest.raises(DataError, match=r"bad audio 'spk_b-03' \(.*spk_b-03\.wav\): non-finite sample \(nan\)"):
        dataset.make_batch(0)


def test_nan_in_a_crop_is_a_counted_skip(train_dir):
    bad = ["spk_a-01", "spk_d-04"]
    for key in bad:
        nan_inside(train_dir.parent / f"{key}.wav", 2400)
    cfg = config(train_dir, on_bad_audio="skip")
    dataset = TrainDataset(cfg, 24, 0, 1, seed=4)
    (batch,) = all_batches(dataset)
    assert torch.isfinite(batch["wavs"]).all() and not set(bad) & set(batch["keys"])
    assert dataset.bad_audio.count == 2
    speakers = dataset.corpus.speakers
    for key, label in zip(batch["keys"], batch["labels"].tolist()):  # a replacement keeps its speed shift
        assert speakers[label % len(speakers)] == key.split("-")[0]
    assert batch["labels"].max() >= len(speakers)  # speed-perturbed classes are in there
    assert_same_batches([batch], all_batches(TrainDataset(cfg, 24, 0, 1, seed=4)))  # deterministic


def test_truncated_training_wav_is_bad_audio(train_dir):
    path = train_dir.parent / "spk_c-02.wav"
    path.write_bytes(path.read_bytes()[:-100])
    dataset = TrainDataset(config(train_dir), 24, 0, 1, seed=1)
    with pytest.raises(DataError, match=r"'spk_c-02'.*truncated: the WAV header declares"):
        dataset.make_batch(0)


def write_augment_lists(tmp_path: Path) -> tuple[str, str]:
    musan, rirs = [], []
    for i, kind in enumerate(["noise", "music", "speech", "speech"]):
        # keys deliberately misleading: the SNR range follows the type column
        musan.append(f"music-{i} {write_wav(tmp_path / f'm{i}.wav', 8000, seed=900 + i)} {kind}")
    rir = np.zeros(400)
    rir[20], rir[120] = 1.0, 0.4
    sf.write(str(tmp_path / "rir.wav"), rir, SR, subtype="FLOAT")
    rirs.append(f"room-1 {tmp_path / 'rir.wav'} mediumroom")
    (tmp_path / "musan.lst").write_text("\n".join(musan) + "\n")
    (tmp_path / "rir.lst").write_text("\n".join(rirs) + "\n")
    return str(tmp_path / "musan.lst"), str(tmp_path / "rir.lst")


def test_augmented_batches_are_deterministic(train_dir, tmp_path):
    musan, rir = write_augment_lists(tmp_path)
    cfg = config(train_dir, augment=AugmentConfig(prob=0.6, musan_list=musan, rir_list=rir))
    augmented = TrainDataset(cfg, 8, 0, 1, seed=8)
    plain = TrainDataset(dataclasses.replace(cfg, augment=AugmentConfig(prob=0.0)), 8, 0, 1, seed=8)
    assert_same_batches(all_batches(augmented), all_batches(TrainDataset(cfg, 8, 0, 1, seed=8)))
    changed = []
    for epoch in range(4):
        augmented.set_epoch(epoch)
        plain.set_epoch(epoch)
        for x, y in zip(all_batches(augmented), all_batches(plain)):
            assert x["keys"] == y["keys"]  # augmentation draws do not move crops or the order
            changed += [not torch.equal(a, p) for a, p in zip(x["wavs"], y["wavs"])]
    assert 0.4 < np.mean(changed) < 0.8  # about augment.prob of 96 samples


def test_augment_config_errors(train_dir, tmp_path):
    musan, rir = write_augment_lists(tmp_path)
    with pytest.raises(ConfigError, match="musan_list.*rir_list"):
        TrainDataset(config(train_dir, augment=AugmentConfig(prob=0.6)), 8, 0, 1, seed=0)
    with pytest.raises(DataError, match="musan.lst:1: unknown type"):  # a MUSAN list given as the RIR list
        TrainDataset(config(train_dir, augment=AugmentConfig(prob=0.6, rir_list=musan)), 8, 0, 1, seed=0)
    Path(musan).write_text(Path(musan).read_text().replace(" music\n", " noise\n"))
    with pytest.raises(DataError, match="musan.lst: no entries of type music"):
        TrainDataset(config(train_dir, augment=AugmentConfig(prob=0.6, musan_list=musan)), 8, 0, 1, seed=0)
    with pytest.raises(ConfigError, match="babble_snr"):
        TrainDataset(config(train_dir, augment=AugmentConfig(prob=0.6, rir_list=rir, babble_snr=[20.0, 13.0])),
                     8, 0, 1, seed=0)


def test_snr_range_follows_the_type_column(train_dir, tmp_path):
    musan, _ = write_augment_lists(tmp_path)  # "music-0" has type noise
    cfg = AugmentConfig(prob=0.6, musan_list=musan, noise_snr=[30.0, 31.0], music_snr=[0.0, 1.0])
    aug = Augmenter.from_config(cfg, SR, BadAudioHandler("error"))
    assert [key for key, _ in aug.musan["noise"]] == ["music-0"]
    wav = np.random.default_rng(0).normal(0, 0.1, 1600).astype(np.float32)
    for seed in range(5):
        added = aug.add_noise(wav, np.random.default_rng(seed), "noise", coverage="full") - wav
        snr = 10 * np.log10(np.mean(wav.astype(np.float64) ** 2) / np.mean(added.astype(np.float64) ** 2))
        assert 29.99 <= snr <= 31.01


def test_persistent_workers_follow_set_epoch(train_dir):
    """Workers are started once; each new epoch (and resume point) still reaches them."""
    reference = TrainDataset(config(train_dir), 4, 0, 1, seed=9, epoch=0)
    loader, dataset = build_train_loader(config(train_dir, num_workers=2), 4, 0, 1, seed=9, epoch=0)
    assert loader.persistent_workers
    assert_same_batches(all_batches(reference), list(loader))
    workers = loader._iterator._workers  # the processes of epoch 0
    for epoch, start in ((1, 0), (2, 2)):
        dataset.set_epoch(epoch, start)
        reference.set_epoch(epoch, start)
        assert_same_batches(all_batches(reference), list(loader))
    assert loader._iterator._workers == workers  # not re-forked
