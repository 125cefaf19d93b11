"""Training-pipeline throughput: 2-s crops per second, per worker process, with and without augmentation.

Writes synthetic 16 kHz data to a temporary folder (8-s utterances, 5-s MUSAN-like
noise/music/speech clips, 1-s RIRs), then measures side by side:

1. the whole pipeline (``TrainDataset`` batches) in-process (W=0) and with a
   2-worker DataLoader, for: plain crops, speed perturbation only, the paper's
   phase-1 setting (speed 0.4 + augmentation 0.6) and augmentation on every crop;
2. the cost of each step per crop, and the alternatives we chose between
   (resampler, convolution, partial noise reads).

A GPU running WavLM Large consumes about 1000 crops/s: divide by the per-worker
rate to get the DataLoader workers one GPU needs.

    python benchmarks/bench_data_pipeline.py [--batches 16] [--batch-size 32]
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import soundfile as sf
import torch

from wespeaker_lap.config import AugmentConfig, DataConfig
from wespeaker_lap.data import processors
from wespeaker_lap.data.audio import Audio, BadAudioHandler, read_audio, read_random_segment
from wespeaker_lap.data.augment import Augmenter
from wespeaker_lap.data.pipeline import build_train_loader

SR = 16000
GPU_CROPS_PER_S = 1000  # WavLM Large, frozen, one GPU (the lead's figure)


def write_corpus(root: Path, n_utts: int, n_speakers: int) -> DataConfig:
    """Synthetic 8-s utterances plus MUSAN and RIR lists; returns the paper's phase-1 data config."""
    rng = np.random.default_rng(0)
    (root / "wav").mkdir(parents=True)
    wav_scp, utt2spk = [], []
    for i in range(n_utts):
        key, spk = f"spk{i % n_speakers:03d}-{i:05d}", f"spk{i % n_speakers:03d}"
        path = root / "wav" / f"{key}.wav"
        sf.write(str(path), rng.normal(0, 0.1, 8 * SR), SR, subtype="PCM_16")
        wav_scp.append(f"{key} {path}")
        utt2spk.append(f"{key} {spk}")
    (root / "train").mkdir()
    (root / "train" / "wav.scp").write_text("\n".join(wav_scp) + "\n")
    (root / "train" / "utt2spk").write_text("\n".join(utt2spk) + "\n")
    musan = []
    for kind, count in (("noise", 4), ("music", 4), ("speech", 8)):
        for i in range(count):
            path = root / "musan" / f"{kind}{i}.wav"
            path.parent.mkdir(exist_ok=True)
            sf.write(str(path), rng.normal(0, 0.05, 5 * SR), SR, subtype="PCM_16")
            musan.append(f"{kind}-{i} {path} {kind}")
    rirs = []
    for i, room in enumerate(("smallroom", "mediumroom", "largeroom") * 2):
        rir = rng.normal(0, 1, SR) * np.exp(-np.arange(SR) / (800 * (i + 1)))
        rir[: 40 + 20 * i] = 0
        path = root / "rirs" / f"rir{i}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(str(path), rir / np.abs(rir).max() * 0.9, SR, subtype="PCM_16")
        rirs.append(f"rir-{i} {path} {room}")
    (root / "musan.lst").write_text("\n".join(musan) + "\n")
    (root / "rir.lst").write_text("\n".join(rirs) + "\n")
    return DataConfig(train_dir=str(root / "train"), crop_seconds=2.0, sample_rate=SR, speed_perturb_prob=0.4,
                      augment=AugmentConfig(prob=0.6, musan_list=str(root / "musan.lst"),
                                            rir_list=str(root / "rir.lst")),
                      num_workers=0, on_bad_audio="error")


def _cpu_seconds(pids: List[int]) -> float:
    """User + system CPU time of processes, from /proc (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def pipeline_rate(cfg: DataConfig, workers: int, batch_size: int, batches: int) -> Tuple[float, float]:
    """(crops per wall second, crops per CPU second of the producing processes), in steady state.

    The clocks start once every worker has delivered a batch. The CPU rate does not
    depend on how busy the machine is; the wall rate does.
    """
    cfg = dataclasses.replace(cfg, num_workers=workers)
    loader, _ = build_train_loader(cfg, batch_size, rank=0, world_size=1, seed=0, epoch=0)
    iterator = iter(loader)
    for _ in range(max(workers, 1)):
        next(iterator)
    pids = [w.pid for w in iterator._workers] if workers else [os.getpid()]
    wall, cpu = time.perf_counter(), _cpu_seconds(pids)
    n = sum(len(next(iterator)["keys"]) for _ in range(batches))
    wall, cpu = time.perf_counter() - wall, _cpu_seconds(pids) - cpu
    del iterator
    return n / wall, n / max(cpu, 1e-9)


def per_call_ms(fn: Callable[[], object], repeat: int) -> float:
    """CPU milliseconds per call of this process."""
    fn()
    start = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - start) / repeat * 1e3


def torch_fft_convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    n = len(x) + len(h) - 1
    size = 1 << (n - 1).bit_length()  # next power of two
    spectrum = torch.fft.rfft(torch.from_numpy(x), size) * torch.fft.rfft(torch.from_numpy(h), size)
    return torch.fft.irfft(spectrum, size)[:n].numpy()


def step_costs(cfg: DataConfig, repeat: int) -> Dict[str, float]:
    """CPU milliseconds per 2-s crop of each step, and of the alternatives considered."""
    import torchaudio.functional
    from scipy.signal import fftconvolve, oaconvolve, resample_poly

    key, spec = Path(cfg.train_dir, "wav.scp").read_text().split("\n")[0].split()
    audio = Audio(key, spec, SR)
    wav = audio.read()
    crop = wav[: 2 * SR]
    aug = Augmenter.from_config(cfg.augment, SR, BadAudioHandler("error"))
    rng = np.random.default_rng(0)
    noise_key, noise_path = aug.musan["noise"][0]
    rir = read_audio(*aug.rirs[0], SR)
    tensor = torch.from_numpy(wav)
    return {
        "utterance: read all 8 s, then crop": per_call_ms(lambda: read_audio(key, spec, SR)[: 2 * SR], repeat),
        "utterance: open, read the 2-s window (used)": per_call_ms(
            lambda: Audio(key, spec, SR).read(3 * SR, 5 * SR), repeat),
        "speed 0.9: scipy resample_poly, 8 s": per_call_ms(lambda: resample_poly(wav, 10, 9), repeat),
        "speed 0.9: torchaudio resample, 8 s": per_call_ms(
            lambda: torchaudio.functional.resample(tensor, 9, 10), repeat),
        "speed 0.9: cached-kernel resample, 8 s": per_call_ms(
            lambda: processors.change_speed(wav, 0.9, SR), repeat),
        "speed 0.9: read 8 s, resample, crop": per_call_ms(
            lambda: processors.change_speed(audio.read(), 0.9, SR)[3 * SR: 5 * SR], repeat),
        "speed 0.9: window only, incl. read (used)": per_call_ms(
            lambda: processors.read_speed_changed(audio, 0.9, SR, 3 * SR, 5 * SR), repeat),
        "reverb conv: scipy fftconvolve (used)": per_call_ms(lambda: fftconvolve(crop, rir), repeat),
        "reverb conv: scipy oaconvolve": per_call_ms(lambda: oaconvolve(crop, rir), repeat),
        "reverb conv: torch FFT (power-of-two size)": per_call_ms(lambda: torch_fft_convolve(crop, rir), repeat),
        "noise clip: whole-file read, then crop": per_call_ms(
            lambda: read_audio(noise_key, noise_path, SR)[: 2 * SR], repeat),
        "noise clip: partial read (used)": per_call_ms(
            lambda: read_random_segment(noise_key, noise_path, SR, 2 * SR, rng), repeat),
        "step: reverb (read RIR + convolve)": per_call_ms(lambda: aug.reverb(crop, rng), repeat),
        "step: noise": per_call_ms(lambda: aug.add_noise(crop, rng, "noise"), repeat),
        "step: babble (4-7 clips)": per_call_ms(lambda: aug.add_noise(crop, rng, "speech"), repeat),
        "step: television": per_call_ms(
            lambda: aug.add_noise(aug.add_noise(crop, rng, "speech", "full"), rng, "music", "full"), repeat),
    }


RATIOS = [  # (alternative, chosen)
    ("utterance: read all 8 s, then crop", "utterance: open, read the 2-s window (used)"),
    ("speed 0.9: scipy resample_poly, 8 s", "speed 0.9: torchaudio resample, 8 s"),
    ("speed 0.9: torchaudio resample, 8 s", "speed 0.9: cached-kernel resample, 8 s"),
    ("speed 0.9: read 8 s, resample, crop", "speed 0.9: window only, incl. read (used)"),
    ("reverb conv: scipy oaconvolve", "reverb conv: scipy fftconvolve (used)"),
    ("reverb conv: torch FFT (power-of-two size)", "reverb conv: scipy fftconvolve (used)"),
    ("noise clip: whole-file read, then crop", "noise clip: partial read (used)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=16, help="timed batches per measurement")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the side-by-side run")
    parser.add_argument("--repeat", type=int, default=50, help="calls per step-cost measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as inside a DataLoader worker

    with tempfile.TemporaryDirectory() as tmp:
        n_utts = args.batch_size * (args.batches + args.workers + 1)
        paper = write_corpus(Path(tmp), n_utts, n_speakers=16)
        off = AugmentConfig(prob=0.0)
        settings = {
            "plain crops (no speed, no aug)": dataclasses.replace(paper, speed_perturb_prob=0.0, augment=off),
            "speed perturb 0.4 only": dataclasses.replace(paper, augment=off),
            "paper: speed 0.4 + aug 0.6": paper,
            "speed 0.4 + aug on every crop": dataclasses.replace(
                paper, augment=dataclasses.replace(paper.augment, prob=1.0)),
        }
        w = args.workers
        print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; "
              f"{args.batches} batches x {args.batch_size} 2-s crops per measurement")
        print("crops/s per CPU-second of the producing processes (per worker), and per wall second:")
        header = (f"{'setting':32s} {'W=0 cpu':>8s} {f'W={w} cpu/wkr':>12s} {'W=0 wall':>9s} "
                  f"{f'W={w} wall':>9s} {'vs plain':>9s} {'wkrs/GPU':>9s}")
        print("\n" + header + "\n" + "-" * len(header))
        plain = None
        for name, cfg in settings.items():
            single_wall, single_cpu = pipeline_rate(cfg, 0, args.batch_size, args.batches)
            multi_wall, multi_cpu = pipeline_rate(cfg, w, args.batch_size, args.batches)
            plain = plain or single_cpu
            print(f"{name:32s} {single_cpu:8.0f} {multi_cpu:12.0f} {single_wall:9.0f} {multi_wall:9.0f} "
                  f"{single_cpu / plain:9.2f} {math.ceil(GPU_CROPS_PER_S / min(single_cpu, multi_cpu)):9d}")
        print(f"wkrs/GPU = ceil({GPU_CROPS_PER_S} crops/s / per-worker CPU rate): workers (cores) one GPU "
              f"running WavLM Large needs")

        costs = step_costs(paper, args.repeat)
        print(f"\n{'step (CPU ms, one 2-s crop unless said)':46s} {'ms':>7s}\n" + "-" * 54)
        for name, ms in costs.items():
            print(f"{name:46s} {ms:7.2f}")
        print("\nratios (alternative / chosen):")
        for slow, fast in RATIOS:
            print(f"  {slow:44s} / {fast.split(': ', 1)[1]:34s} {costs[slow] / costs[fast]:5.2f}x")


if __name__ == "__main__":
    main()
