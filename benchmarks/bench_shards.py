"""Training-data throughput from raw files vs tar shards, with a cold and a warm page cache.

Writes a synthetic corpus (``--utts`` wavs of 4-12 s, 16 kHz PCM16, in ``<spk>/<video>/<utt>.wav``
folders) and its shards (``--utts_per_shard``), then times whole epochs of 2-s crops
(``TrainDataset`` vs ``ShardTrainDataset``, in this process, no augmentation unless asked) side by
side: the candidates alternate within each repeat, and the medians and ratios are printed.

Cold: before each cold epoch the files' pages are dropped from the page cache, by
``posix_fadvise(POSIX_FADV_DONTNEED)`` on every file (default; no root needed) or by
``echo 3 > /proc/sys/vm/drop_caches`` (``--evict drop_caches``, root only). The fraction of the
files still cached is measured after eviction (util-linux ``fincore``) and printed, so one sees
whether eviction worked; bytes fetched from storage come from ``/proc/self/io``. Warm: the same
epoch again at once. In a VM the host may still cache what the guest dropped, and a local disk
does not show the per-file latency of a network file system, where shards matter most.

    python benchmarks/bench_shards.py [--utts 1200] [--repeats 5] [--work_dir DIR] [--evict fadvise]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import soundfile as sf

from wespeaker_lap.config import AugmentConfig, DataConfig
from wespeaker_lap.data.pipeline import build_train_loader
from wespeaker_lap.data.shards import write_shards

SR = 16000


def write_corpus(root: Path, n_utts: int, n_speakers: int) -> Path:
    rng = np.random.default_rng(0)
    data = root / "train"
    data.mkdir(parents=True)
    wav_scp, utt2spk = [], []
    for i in range(n_utts):
        spk = f"id{i % n_speakers:05d}"
        key = f"{spk}/vid{i // n_speakers % 7}/{i:05d}"
        path = root / "wav" / f"{key}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), rng.normal(0, 0.1, int(rng.uniform(4, 12) * SR)), SR, subtype="PCM_16")
        wav_scp.append(f"{key} {path}")
        utt2spk.append(f"{key} {spk}")
    (data / "wav.scp").write_text("\n".join(wav_scp) + "\n")
    (data / "utt2spk").write_text("\n".join(utt2spk) + "\n")
    return data


def corpus_files(root: Path) -> List[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".wav", ".tar"))


def evict(files: Sequence[Path], method: str) -> None:
    if method == "drop_caches":
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cached_fraction(files: Sequence[Path]) -> float:
    """Fraction of the files' bytes in the page cache (util-linux fincore), or NaN without it."""
    if shutil.which("fincore") is None:
        return float("nan")
    cached = 0
    for start in range(0, len(files), 500):
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES",
                              *map(str, files[start:start + 500])], capture_output=True, text=True, check=True)
        cached += sum(int(line) for line in out.stdout.split())
    return cached / sum(p.stat().st_size for p in files)


def storage_read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def epoch(cfg: DataConfig, batch_size: int) -> Dict[str, float]:
    """Crops per wall second and per CPU second, and MB fetched from storage, for one whole epoch."""
    loader, _ = build_train_loader(cfg, batch_size, rank=0, world_size=1, seed=0, epoch=0)
    wall, cpu, io = time.perf_counter(), time.process_time(), storage_read_bytes()
    n = sum(len(batch["keys"]) for batch in loader)
    wall, cpu, io = time.perf_counter() - wall, time.process_time() - cpu, storage_read_bytes() - io
    return {"crops_per_s": n / wall, "crops_per_cpu_s": n / max(cpu, 1e-9), "read_mb": io / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--utts", type=int, default=1200)
    parser.add_argument("--speakers", type=int, default=40)
    parser.add_argument("--utts_per_shard", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--speed_perturb", type=float, default=0.0, help="data.speed_perturb_prob (default 0)")
    parser.add_argument("--evict", choices=("fadvise", "drop_caches"), default="fadvise")
    parser.add_argument("--work_dir", type=Path, default=None, help="where the corpus goes (default: a temp dir)")
    args = parser.parse_args()

    root = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_shards_"))
    start = time.perf_counter()
    train_dir = write_corpus(root, args.utts, args.speakers)
    write_shards(train_dir, train_dir / "shards", args.utts_per_shard, nj=1)
    files = corpus_files(root)
    wav_mb = sum(p.stat().st_size for p in files if p.suffix == ".wav") / 1e6
    print(f"corpus: {args.utts} wavs ({wav_mb:.0f} MB) and {len(list((train_dir / 'shards').glob('*.tar')))} shards "
          f"of {args.utts_per_shard} in {root} ({time.perf_counter() - start:.0f} s to write)")
    base = DataConfig(train_dir=str(train_dir), crop_seconds=2.0, sample_rate=SR,
                      speed_perturb_prob=args.speed_perturb, augment=AugmentConfig(prob=0.0), num_workers=0)
    candidates = {"raw": dataclasses.replace(base, format="raw"), "shard": dataclasses.replace(base, format="shard")}
    results: Dict[str, Dict[str, List[Dict[str, float]]]] = {name: {"cold": [], "warm": []} for name in candidates}
    left_cached = []
    for repeat in range(args.repeats):
        names = list(candidates) if repeat % 2 == 0 else list(candidates)[::-1]  # interleaved, alternating
        for name in names:
            evict(files, args.evict)
            left_cached.append(cached_fraction(files))
            results[name]["cold"].append(epoch(candidates[name], args.batch_size))
            results[name]["warm"].append(epoch(candidates[name], args.batch_size))
    print(f"eviction ({args.evict}): {100 * float(np.nanmax(left_cached)):.1f} % of the files' bytes still cached "
          "after it at worst (fincore)")
    print(f"{'format':<7} {'cache':<5} {'crops/s':>8} {'crops/CPU-s':>12} {'MB read':>8}   (medians of "
          f"{args.repeats}, {args.utts} crops of 2 s an epoch, batch {args.batch_size}, 1 process)")
    medians = {}
    for name in candidates:
        for cache in ("cold", "warm"):
            runs = results[name][cache]
            medians[name, cache] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            m = medians[name, cache]
            print(f"{name:<7} {cache:<5} {m['crops_per_s']:8.0f} {m['crops_per_cpu_s']:12.0f} {m['read_mb']:8.0f}")
    for cache in ("cold", "warm"):
        ratio = medians["shard", cache]["crops_per_s"] / medians["raw", cache]["crops_per_s"]
        print(f"shard / raw, {cache} cache: {ratio:.2f}x crops/s")
    if args.work_dir is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
