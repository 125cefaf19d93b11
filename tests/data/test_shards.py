"""Tar shards: writing (atomic, resumable, checked) and the shard loader (plan, DDP split, workers, resume)."""
from __future__ import annotations

import dataclasses
import io
import logging
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wespeaker_lap.config import AugmentConfig, ConfigError, DataConfig
from wespeaker_lap.data import processors
from wespeaker_lap.data.kaldi import DataError, read_map
from wespeaker_lap.data.pipeline import build_train_loader, n_classes
from wespeaker_lap.data.shard_loader import ShardTrainDataset, release_order, shuffle_buffer, stream_segments
from wespeaker_lap.data.shards import Shard, read_shard, read_shard_list, write_shards

from .batch_helpers import SR, assert_same_batches, write_wav

N_SPEAKERS, UTTS_PER_SPEAKER, UTTS_PER_SHARD = 5, 12, 7  # 60 utterances: 8 shards of 7 and one of 4
REPO = Path(__file__).resolve().parents[2]


def make_train_dir(root: Path) -> Path:
    data = root / "train"
    data.mkdir(parents=True)
    wav_scp, utt2spk = [], []
    for s in range(N_SPEAKERS):
        for u in range(UTTS_PER_SPEAKER):
            key = f"spk{s}/vid/{u:05d}"
            (root / "wav" / key).parent.mkdir(parents=True, exist_ok=True)
            n = 800 + 400 * ((s * UTTS_PER_SPEAKER + u) % 7)
            wav_scp.append(f"{key} {write_wav(root / 'wav' / f'{key}.wav', n, seed=s * 100 + u)}")
            utt2spk.append(f"{key} spk{s}")
    (data / "wav.scp").write_text("\n".join(wav_scp) + "\n")
    (data / "utt2spk").write_text("\n".join(utt2spk) + "\n")
    return data


@pytest.fixture
def train_dir(tmp_path) -> Path:
    data = make_train_dir(tmp_path)
    write_shards(data, data / "shards", UTTS_PER_SHARD, seed=1)
    return data


def config(train_dir: Path, **changes) -> DataConfig:
    base = DataConfig(train_dir=str(train_dir), format="shard", crop_seconds=0.05, speed_perturb_prob=0.4,
                      augment=AugmentConfig(prob=0.0), num_workers=0, shuffle_buffer=5)
    return dataclasses.replace(base, **changes)


def epoch_batches(dataset, epoch=0, start_batch=0) -> list:
    dataset.set_epoch(epoch, start_batch)
    return list(dataset)


def keys_of(batches) -> list:
    return [k for b in batches for k in b["keys"]]


# ----------------------------------------------------------------------------- writing


def test_shards_hold_every_utterance_once_with_its_bytes_and_speaker(train_dir):
    shards = read_shard_list(train_dir / "shards" / "shard.list")
    assert [s.n_utts for s in shards] == [7] * 8 + [4]
    wav_scp, utt2spk = read_map(train_dir / "wav.scp"), read_map(train_dir / "utt2spk")
    seen = []
    for shard in shards:
        for _, key, speaker, data in read_shard(shard):
            assert data == Path(wav_scp[key]).read_bytes() and speaker == utt2spk[key]
            seen.append(key)
    assert sorted(seen) == sorted(wav_scp)
    assert seen != sorted(seen)  # shuffled before sharding: a shard mixes speakers
    assert read_map(train_dir / "shards" / "utt2spk") == utt2spk
    assert not list((train_dir / "shards").glob(".*.tmp"))
    # relative paths: the folder can move
    assert all(not Path(line.split(maxsplit=1)[1]).is_absolute()
               for line in (train_dir / "shards" / "shard.list").read_text().splitlines())


def test_rerun_keeps_shards_and_a_changed_plan_rewrites_them(train_dir, caplog):
    out = train_dir / "shards"
    tars = sorted(out.glob("shard_*.tar"))
    mtimes = [p.stat().st_mtime_ns for p in tars]
    with caplog.at_level(logging.INFO):
        write_shards(train_dir, out, UTTS_PER_SHARD, seed=1)
    assert "already written" in caplog.text and [p.stat().st_mtime_ns for p in tars] == mtimes
    # interrupted: the list and two shards are missing; the rest are kept, the two rewritten identically
    before = {p.name: p.read_bytes() for p in tars}
    (out / "shard.list").unlink()
    tars[2].unlink()
    tars[5].unlink()
    write_shards(train_dir, out, UTTS_PER_SHARD, seed=1)
    assert {p.name: p.read_bytes() for p in sorted(out.glob("shard_*.tar"))} == before
    assert tars[0].stat().st_mtime_ns == mtimes[0]
    write_shards(train_dir, out, 25, seed=1)  # another plan: no old shard survives
    assert [s.n_utts for s in read_shard_list(out / "shard.list")] == [25, 25, 10]
    assert len(list(out.glob("shard_*.tar"))) == 3


def test_bad_audio_is_an_error_or_left_out(tmp_path, caplog):
    data = make_train_dir(tmp_path)
    (tmp_path / "wav" / "spk3" / "vid" / "00004.wav").write_bytes(b"not audio at all")
    with pytest.raises(DataError, match=r"spk3/vid/00004.*00004\.wav"):
        write_shards(data, data / "shards", UTTS_PER_SHARD)
    assert not (data / "shards" / "shard.list").exists()
    with caplog.at_level(logging.WARNING):
        shards = write_shards(data, data / "shards", UTTS_PER_SHARD, on_bad_audio="skip")
    assert sum(s.n_utts for s in shards) == 59
    assert "spk3/vid/00004" not in read_map(data / "shards" / "utt2spk")
    assert "left out" in caplog.text


def test_corrupt_or_mismatched_shards_are_errors_naming_the_shard(train_dir):
    shard = read_shard_list(train_dir / "shards" / "shard.list")[3]
    with pytest.raises(DataError, match=r"shard_000003.tar: holds 7 utterances, its list gives 8"):
        list(read_shard(Shard(shard.path, 8)))
    data = shard.path.read_bytes()
    shard.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"shard_000003.tar: (truncated or corrupt|holds)"):
        list(read_shard(shard))
    (train_dir / "shards" / "shard.list").write_text("seven shard_000000.tar\n")
    with pytest.raises(DataError, match=r"shard.list:1: expected '<utterances> <tar path>'"):
        read_shard_list(train_dir / "shards" / "shard.list")


def test_make_shards_script(tmp_path):
    data = make_train_dir(tmp_path)
    result = subprocess.run([sys.executable, "-m", "wespeaker_lap.bin.make_shards", "--data_dir", str(data),
                             "--utts_per_shard", "20", "--nj", "2"], capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "3 shards of 60 utterances" in result.stdout
    assert (data / "shards" / "make_shards.log").is_file()


# ----------------------------------------------------------------------------- the plan


def test_release_order_is_a_permutation_that_holds_at_most_the_buffer():
    for n, size in [(1, 4), (3, 10), (50, 1), (200, 16), (1000, 64)]:
        order = release_order(n, size, np.random.default_rng([n, size]))
        assert sorted(order) == list(range(n))
        if size > 1 and n > 2 * size:
            assert not np.array_equal(order, np.arange(n))  # it does shuffle
        position_of_read = np.argsort(order)  # read index -> release position
        reads = []

        def read_in_order():
            for i, p in enumerate(position_of_read):
                reads.append(i)
                yield {"position": int(p)}

        peak = 0
        for released, sample in enumerate(shuffle_buffer(read_in_order(), 0, n)):
            assert sample["position"] == released
            peak = max(peak, len(reads) - released)  # read but not yet released, this one included
        assert released == n - 1 and peak <= size + 1


def test_streams_cover_equal_disjoint_ranges_of_the_permuted_shards():
    counts = np.array([7, 7, 3, 7, 1, 7, 5])
    permutation = np.random.default_rng(0).permutation(len(counts))
    sequence = [(int(i), u) for i in permutation for u in range(counts[i])]  # utterances end to end
    for n_streams in (1, 2, 3, 5, 8):
        length = counts.sum() // n_streams
        covered = []
        for g in range(n_streams):
            segments = stream_segments(counts, permutation, g, length)
            assert sum(stop - start for _, start, stop in segments) == length
            covered += [(shard, u) for shard, start, stop in segments for u in range(start, stop)]
        assert covered == sequence[:n_streams * length]


# ----------------------------------------------------------------------------- the loader


def test_batches_shapes_labels_and_speed_perturbation(train_dir):
    dataset = ShardTrainDataset(config(train_dir), 6, rank=0, world_size=1, seed=3)
    assert dataset.n_speakers == 5 and dataset.n_classes == 15 == n_classes(config(train_dir))
    assert dataset.batches_per_epoch == 10 and len(dataset) == 10  # one stream of 60: 10 batches of 6
    batches = epoch_batches(dataset)
    speakers = [f"spk{i}" for i in range(5)]
    labels = []
    for batch in batches:
        assert batch["wavs"].shape == (6, 800) and batch["wavs"].dtype == torch.float32
        for key, label in zip(batch["keys"], batch["labels"].tolist()):
            assert speakers[label % 5] == key.split("/")[0]
            labels.append(label)
    assert len(set(keys_of(batches))) == 60
    assert any(label >= 5 for label in labels)  # some speed-perturbed (new speakers)


def test_same_seed_same_batches_other_epoch_other_order(train_dir):
    cfg = config(train_dir)
    first = epoch_batches(ShardTrainDataset(cfg, 6, 0, 1, seed=11), epoch=2)
    assert_same_batches(first, epoch_batches(ShardTrainDataset(cfg, 6, 0, 1, seed=11), epoch=2))
    assert keys_of(first) != keys_of(epoch_batches(ShardTrainDataset(cfg, 6, 0, 1, seed=11), epoch=3))
    assert keys_of(first) != keys_of(epoch_batches(ShardTrainDataset(cfg, 6, 0, 1, seed=12), epoch=2))


@pytest.mark.parametrize("world_size,streams,global_batch", [(1, 1, 4), (2, 1, 4), (2, 2, 4), (3, 2, 3),
                                                              (4, 1, 8), (5, 2, 5), (8, 1, 8), (6, 1, 6)])
def test_every_rank_yields_the_same_number_of_disjoint_batches(train_dir, world_size, streams, global_batch):
    cfg = config(train_dir, shard_streams=streams)
    ranks = [ShardTrainDataset(cfg, global_batch, r, world_size, seed=5) for r in range(world_size)]
    per_rank = global_batch // world_size
    expected = streams * ((60 // (world_size * streams)) // per_rank)
    assert {d.batches_per_epoch for d in ranks} == {expected} and expected > 0
    for epoch in (0, 1):
        batches = [epoch_batches(d, epoch) for d in ranks]
        assert [len(b) for b in batches] == [expected] * world_size
        keys = [k for b in batches for k in keys_of(b)]
        assert len(keys) == len(set(keys)) == expected * global_batch  # no utterance twice in an epoch
    assert 60 - expected * global_batch < world_size * streams * (per_rank + 1)  # little is left unused


def test_each_shard_is_read_by_one_rank(train_dir):
    cfg = config(train_dir, shard_streams=2)
    ranks = [ShardTrainDataset(cfg, 2, r, 2, seed=5) for r in range(2)]
    shard_of = {key: shard.path.name for shard in ranks[0].shards for _, key, _, _ in read_shard(shard)}
    shards = [{shard_of[k] for k in keys_of(epoch_batches(d))} for d in ranks]
    assert len(shards[0] & shards[1]) <= 1  # only a shard cut by the boundary between the ranks' streams


def test_worker_count_does_not_change_batches_with_fixed_streams(train_dir):
    cfg = config(train_dir, shard_streams=2)
    single, _ = build_train_loader(cfg, 4, 0, 1, seed=9, epoch=0)
    expected = list(single)
    loader, dataset = build_train_loader(dataclasses.replace(cfg, num_workers=2), 4, 0, 1, seed=9, epoch=0)
    assert isinstance(dataset, ShardTrainDataset)
    assert_same_batches(expected, list(loader))
    dataset.set_epoch(0, start_batch=3)  # resume with workers: still in order
    assert_same_batches(expected[3:], list(loader))
    with pytest.raises(ConfigError, match="data.shard_streams: must be a multiple of data.num_workers=2"):
        dataclasses.replace(cfg, num_workers=2, shard_streams=3)


def test_resume_skips_to_its_position_without_reading_the_skipped_audio(train_dir):
    cfg = config(train_dir, shard_streams=2)
    full = epoch_batches(ShardTrainDataset(cfg, 4, 0, 1, seed=2), epoch=1)
    start = 6
    skipped = set(keys_of(full[:start])) - set(keys_of(full[start:]))
    # overwrite the skipped members' audio bytes in place with zeros: decoding any of them would fail
    for shard in read_shard_list(train_dir / "shards" / "shard.list"):
        with tarfile.open(shard.path) as tar:
            spans = [(m.offset_data, m.size) for m in tar if m.name.endswith(".wav") and m.name[:-4] in skipped]
        with open(shard.path, "r+b") as f:
            for offset, size in spans:
                f.seek(offset)
                f.write(b"\0" * size)
    resumed = ShardTrainDataset(cfg, 4, 0, 1, seed=2, epoch=1, start_batch=start)
    assert len(resumed) == len(full) - start
    assert_same_batches(full[start:], list(resumed))
    with pytest.raises(DataError, match="bad audio"):  # the check is real: from the start it fails
        epoch_batches(ShardTrainDataset(cfg, 4, 0, 1, seed=2), epoch=1)


def test_bad_member_in_skip_mode_is_replaced(train_dir, caplog):
    shard = read_shard_list(train_dir / "shards" / "shard.list")[4]
    with tarfile.open(shard.path) as tar:
        member = [m for m in tar if m.name.endswith(".wav")][3]
    with open(shard.path, "r+b") as f:
        f.seek(member.offset_data)
        f.write(b"\0" * member.size)
    bad_key = member.name[:-4]
    with pytest.raises(DataError, match=rf"bad audio '{bad_key}' \(.*shard_000004.tar\)"):
        epoch_batches(ShardTrainDataset(config(train_dir), 6, 0, 1, seed=1))
    dataset = ShardTrainDataset(config(train_dir, on_bad_audio="skip"), 6, 0, 1, seed=1)
    with caplog.at_level(logging.WARNING):
        batches = epoch_batches(dataset)
    assert len(batches) == 10 and bad_key not in keys_of(batches)
    assert dataset.bad_audio.count == 1 and "skipped bad audio #1" in caplog.text


def test_crops_and_speed_perturbation_are_those_of_the_raw_pipeline(train_dir):
    """Each shard crop is a window of the utterance's (speed-changed) audio, as the raw pipeline cuts."""
    cfg = config(train_dir, crop_seconds=0.06, speed_perturb_prob=0.6)
    wav_scp = read_map(train_dir / "wav.scp")
    n_windows = {1.0: 0, 0.9: 0, 1.1: 0}
    for batch in epoch_batches(ShardTrainDataset(cfg, 6, 0, 1, seed=4)):
        for key, label, wav in zip(batch["keys"], batch["labels"].tolist(), batch["wavs"].numpy()):
            factor = (1.0, *processors.SPEED_FACTORS)[label // 5]
            source, _ = sf.read(wav_scp[key], dtype="float32")
            full = source if factor == 1.0 else processors.change_speed(source, factor, SR)
            if len(full) <= len(wav):
                assert np.allclose(wav, np.pad(full, (0, len(wav) - len(full)), mode="wrap"), atol=1e-4)
            else:
                windows = np.lib.stride_tricks.sliding_window_view(full, len(wav))
                assert np.abs(windows - wav).max(axis=1).min() < 1e-4, key
            n_windows[factor] += 1
    assert min(n_windows.values()) > 0


def test_augmented_shard_batches_are_deterministic(train_dir, tmp_path):
    musan, rirs = tmp_path / "musan.lst", tmp_path / "rir.lst"
    lines = [f"m{i} {write_wav(tmp_path / f'm{i}.wav', 4000, 900 + i)} {kind}"
             for i, kind in enumerate(["noise", "music", "speech", "speech"])]
    musan.write_text("\n".join(lines) + "\n")
    rir = np.zeros(200)
    rir[10], rir[60] = 1.0, 0.4
    sf.write(str(tmp_path / "rir.wav"), rir, SR, subtype="FLOAT")
    rirs.write_text(f"room-1 {tmp_path / 'rir.wav'} mediumroom\n")
    cfg = config(train_dir, augment=AugmentConfig(prob=0.6, musan_list=str(musan), rir_list=str(rirs)))
    augmented = epoch_batches(ShardTrainDataset(cfg, 6, 0, 1, seed=8))
    plain = epoch_batches(ShardTrainDataset(dataclasses.replace(cfg, augment=AugmentConfig(prob=0.0)), 6, 0, 1,
                                            seed=8))
    assert_same_batches(augmented, epoch_batches(ShardTrainDataset(cfg, 6, 0, 1, seed=8)))
    changed = []
    for x, y in zip(augmented, plain):
        assert x["keys"] == y["keys"]  # augmentation draws do not move crops or the order
        changed += [not torch.equal(a, p) for a, p in zip(x["wavs"], y["wavs"])]
    assert 0.35 < np.mean(changed) < 0.85


def test_too_little_data_for_the_streams_is_a_clear_error(train_dir):
    with pytest.raises(ValueError, match=r"less than one batch of 8; lower data.shard_streams"):
        ShardTrainDataset(config(train_dir, shard_streams=4), 16, 0, 2, seed=0)
    with pytest.raises(DataError, match="shard list not found"):
        ShardTrainDataset(config(train_dir, shard_list=str(train_dir / "nowhere.list")), 4, 0, 1, seed=0)


def test_raw_format_is_unchanged_by_the_shard_options(train_dir):
    raw = build_train_loader(config(train_dir, format="raw"), 6, 0, 1, seed=3, epoch=0)[1]
    assert type(raw).__name__ == "TrainDataset" and raw.batches_per_epoch == 10


DDP_WORKER = """
import datetime, os, sys
import torch, torch.distributed as dist
from wespeaker_lap.config import AugmentConfig, DataConfig
from wespeaker_lap.data.pipeline import build_train_loader
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
cfg = DataConfig(train_dir=sys.argv[1], format="shard", crop_seconds=0.05, augment=AugmentConfig(prob=0.0),
                 num_workers=int(sys.argv[2]), shuffle_buffer=5)
loader, dataset = build_train_loader(cfg, 2 * world, rank, world, seed=0, epoch=0)
for epoch in range(2):
    dataset.set_epoch(epoch, 0)
    n = 0
    for batch in loader:  # a collective per batch: unequal counts would hang (then time out)
        total = torch.tensor([batch["labels"].numel()])
        dist.all_reduce(total)
        n += 1
    print(f"rank {rank} epoch {epoch}: {n} batches", flush=True)
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_ddp_processes_yield_equal_batch_counts_over_uneven_shards(train_dir, tmp_path):
    script = tmp_path / "ddp_worker.py"
    script.write_text(DDP_WORKER)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3",
                             str(script), str(train_dir), "1"], capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sorted(re.findall(r"rank \d+ epoch \d+: \d+ batches", result.stdout))  # the ranks' prints may interleave
    assert len(lines) == 6 and len({line.split(": ")[1] for line in lines}) == 1  # 60 // 3 // 2 = 10 each
    assert lines[0].endswith(": 10 batches")


@pytest.mark.parametrize("subtype,channels", [("PCM_16", 1), ("PCM_16", 2), ("PCM_24", 1), ("FLOAT", 1)])
def test_bytes_audio_reads_what_soundfile_reads(tmp_path, subtype, channels):
    from wespeaker_lap.data.shards import BytesAudio, pcm16_wav_layout

    samples = np.random.default_rng(0).uniform(-1, 1, (3000, channels))
    buffer = io.BytesIO()
    sf.write(buffer, samples, SR, subtype=subtype, format="WAV")
    data = buffer.getvalue()
    assert (pcm16_wav_layout(data) is not None) == (subtype == "PCM_16")  # the fast path, else soundfile
    expected, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    if channels == 2:
        with pytest.raises(DataError, match="2 channels, expected 1"):
            BytesAudio("k", data, SR, "shard.tar")
        return
    audio = BytesAudio("k", data, SR, "shard.tar")
    assert audio.n_samples == 3000
    assert np.array_equal(audio.read(), expected[:, 0]) and np.array_equal(audio.read(100, 2100), expected[100:2100, 0])
    with pytest.raises(DataError, match=r"bad audio 'k' \(shard.tar\): sample rate 16000 Hz, expected 8000"):
        BytesAudio("k", data, 8000, "shard.tar")
    if subtype == "PCM_16":
        with pytest.raises(DataError, match=r"bad audio 'k' \(shard.tar\): truncated: 3000 frames declared, 14\d\d present"):
            BytesAudio("k", data[: len(data) // 2], SR, "shard.tar")


def test_bytes_audio_names_a_non_finite_sample_when_opened(tmp_path):
    """A float wav member with a NaN inside is bad audio at open time (skip mode can replace it), never a NaN crop."""
    from wespeaker_lap.data.shards import BytesAudio

    samples = np.random.default_rng(0).uniform(-0.5, 0.5, 3000).astype(np.float32)
    samples[1234] = np.nan
    buffer = io.BytesIO()
    sf.write(buffer, samples, SR, subtype="FLOAT", format="WAV")
    with pytest.raises(DataError, match=r"bad audio 'k' \(shard.tar\): non-finite sample \(nan\) at sample 1234"):
        BytesAudio("k", buffer.getvalue(), SR, "shard.tar")
