"""Scoring + AS-Norm at VoxCeleb1-E size, end to end, against a naive per-trial loop.

Writes random embeddings with kaldiio (not timed), then times ``python -m
wespeaker_lap.bin.score`` from reading the ark/scp to writing the cosine and AS-Norm score
files, and reports its peak resident memory. A naive loop (random-access reads, one trial
at a time, cohort statistics recomputed for every trial, numpy inside each trial) runs on
a subsample; its total is extrapolated to the full list and the ratio printed.

    OMP_NUM_THREADS=2 python3 benchmarks/bench_scoring.py [--work_dir /tmp/bench_scoring]
"""
from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kaldiio
import numpy as np


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_utts", type=int, default=145160)
    p.add_argument("--n_trials", type=int, default=579818)
    p.add_argument("--n_cohort", type=int, default=5994)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--top_k", type=int, default=600)  # the VoxCeleb recipe's conf/eval.yaml
    p.add_argument("--naive_trials", type=int, default=1000, help="trials in the naive loop's subsample")
    p.add_argument("--work_dir", help="default: a temporary directory")
    return p.parse_args()


def make_data(args: argparse.Namespace, work: Path) -> None:
    rng = np.random.default_rng(0)
    keys = [f"id{i % 1251:05d}/v{i // 1251:04d}/{i:06d}.wav" for i in range(args.n_utts)]
    embeddings = rng.standard_normal((args.n_utts, args.dim), dtype=np.float32) + 0.2
    # The recipe's layout (bin/score.py): emb/<set>/xvector.scp, data/<set>/utt2spk, emb/train_mean.npy.
    for name in ("vox1", "vox2_dev"):
        (work / "emb" / name).mkdir(parents=True, exist_ok=True)
        (work / "data" / name).mkdir(parents=True, exist_ok=True)
    with kaldiio.WriteHelper(f"ark,scp:{work}/emb/vox1/xvector.ark,{work}/emb/vox1/xvector.scp") as writer:
        for key, vector in zip(keys, embeddings):
            writer(key, vector)
    cohort = rng.standard_normal((args.n_cohort, args.dim), dtype=np.float32) + 0.2  # one utterance per speaker
    with kaldiio.WriteHelper(f"ark,scp:{work}/emb/vox2_dev/xvector.ark,{work}/emb/vox2_dev/xvector.scp") as writer:
        for s, vector in enumerate(cohort):
            writer(f"id{s:05d}", vector)
    speakers = "".join(f"id{s:05d} id{s:05d}\n" for s in range(args.n_cohort))
    (work / "data" / "vox2_dev" / "utt2spk").write_text(speakers)
    np.save(work / "emb" / "train_mean.npy", np.full(args.dim, 0.2, dtype=np.float32))
    enroll = rng.integers(0, args.n_utts, args.n_trials)
    test = rng.integers(0, args.n_utts, args.n_trials)
    labels = rng.random(args.n_trials) < 0.5
    with open(work / "vox1_E.kaldi", "w", encoding="utf-8") as f:
        f.writelines(
            f"{keys[e]} {keys[t]} {'target' if lab else 'nontarget'}\n" for e, t, lab in zip(enroll, test, labels)
        )


def run_pipeline(args: argparse.Namespace, work: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of the scoring command."""
    command = [
        sys.executable, "-m", "wespeaker_lap.bin.score",
        "--trials", str(work / "vox1_E.kaldi"), "--data_dir", str(work / "data"),
        "--embeddings_dir", str(work / "emb"), "--train_set", "vox2_dev", "--eval_set", "vox1",
        "--out_dir", str(work / "scores"), f"cohort.top_k={args.top_k}", "calibration.enabled=false",
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    return seconds, peak_mib


def naive_loop(args: argparse.Namespace, work: Path) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Per-key read seconds, per-trial seconds, and the subsample's (cosine, AS-Norm) scores."""
    specifiers = dict(line.split() for line in (work / "emb" / "vox1" / "xvector.scp").read_text().splitlines())
    cohort_scp = (work / "emb" / "vox2_dev" / "xvector.scp").read_text().splitlines()
    cohort = np.stack([kaldiio.load_mat(line.split()[1]) for line in cohort_scp])
    mean = np.load(work / "emb" / "train_mean.npy")
    trials = [line.split() for line in (work / "vox1_E.kaldi").read_text().splitlines()[: args.naive_trials]]

    start = time.perf_counter()
    needed = {key for e, t, _ in trials for key in (e, t)}
    vectors = {key: kaldiio.load_mat(specifiers[key]) for key in needed}
    read_per_key = (time.perf_counter() - start) / len(needed)

    cohort = cohort - mean
    cohort /= np.linalg.norm(cohort, axis=1, keepdims=True)

    def top_stats(x: np.ndarray) -> tuple[float, float]:  # x is centred and normalised
        top = np.sort(cohort @ x)[::-1][: args.top_k]
        return top.mean(), top.std(ddof=1)

    cosine, normed = [], []
    start = time.perf_counter()
    for e, t, _ in trials:
        x, y = vectors[e] - mean, vectors[t] - mean
        x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
        s = float(np.dot(x, y))
        (mu_e, sd_e), (mu_t, sd_t) = top_stats(x), top_stats(y)
        cosine.append(s)
        normed.append(0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t))
    per_trial = (time.perf_counter() - start) / len(trials)
    return read_per_key, per_trial, np.array(cosine), np.array(normed)


def stage_times(log: Path) -> str:
    stages = re.findall(r"\[wespeaker_lap\.scoring\.pipeline\] (.+): ([\d.]+) s$", log.read_text(), flags=re.M)
    return ", ".join(f"{name} {float(sec):.1f} s" for name, sec in stages)


def main() -> None:
    args = parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_scoring_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{args.n_trials} trials, {args.n_utts} utterances x {args.dim}, cohort {args.n_cohort}, "
          f"top {args.top_k}; data in {work}")
    start = time.perf_counter()
    make_data(args, work)
    print(f"wrote the ark/scp and trials (not timed): {time.perf_counter() - start:.1f} s")

    seconds, peak_mib = run_pipeline(args, work)
    print(f"vectorised, end to end (process start, read, mean-subtract, cosine, AS-Norm, write): "
          f"{seconds:.1f} s, peak RSS {peak_mib:.0f} MiB")
    print(f"  stages: {stage_times(work / 'scores' / 'score.log')}")

    read_per_key, per_trial, cosine, normed = naive_loop(args, work)
    naive_total = read_per_key * args.n_utts + per_trial * args.n_trials
    print(f"naive loop on {len(cosine)} trials: {1e3 * per_trial:.2f} ms/trial, {1e3 * read_per_key:.3f} ms/key "
          f"read -> {naive_total / 60:.0f} min extrapolated to the full list")
    print(f"speed-up: {naive_total / seconds:.0f}x")
    ours_cosine = np.loadtxt(work / "scores" / "cosine" / "vox1_E.score", usecols=2, max_rows=len(cosine))
    ours_normed = np.loadtxt(work / "scores" / "asnorm" / "vox1_E.score", usecols=2, max_rows=len(cosine))
    print(f"max |difference| on the subsample: cosine {np.abs(ours_cosine - cosine).max():.1e}, "
          f"AS-Norm {np.abs(ours_normed - normed).max():.1e}")


if __name__ == "__main__":
    main()
