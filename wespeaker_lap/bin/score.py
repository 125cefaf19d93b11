"""Score trial lists: cosine (training mean subtracted), AS-Norm, and quality-aware calibration.

Writes ``<out_dir>/<variant>/<trial list>.score`` for the variants ``cosine``, ``asnorm``
(with ``--cohort``) and ``calibrated`` (with ``--calibrate``); the calibration weights go
to ``<out_dir>/calibrated/calibration.json`` and the log to ``<out_dir>/score.log``.

    python -m wespeaker_lap.bin.score --trials vox1_O.kaldi vox1_E.kaldi \\
        --embeddings exp/emb/vox1/xvector.scp --mean exp/emb/vox2_dev/xvector.scp \\
        --cohort exp/emb/vox2_dev/xvector.scp --cohort_utt2spk data/vox2_dev/utt2spk --top_k 300 \\
        --calibrate --calib_embeddings exp/emb/vox2_dev/xvector.scp \\
        --calib_utt2spk data/vox2_dev/utt2spk --calib_utt2dur data/vox2_dev/utt2dur \\
        --eval_utt2dur data/vox1/utt2dur --out_dir exp/scores
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from wespeaker_lap.data.kaldi import read_map, read_trials
from wespeaker_lap.scoring.asnorm import as_norm, cohort_statistics, speaker_means
from wespeaker_lap.scoring.calibration import log_durations, quality_features, quality_measures, train_calibrator
from wespeaker_lap.scoring.cosine import center_and_normalize, paired_cosine
from wespeaker_lap.scoring.embeddings import Embeddings, load_mean, lookup_keys, read_embeddings
from wespeaker_lap.scoring.results import write_scores
from wespeaker_lap.utils.logging import setup_logging

logger = logging.getLogger("wespeaker_lap.bin.score")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", nargs="+", required=True, help="Kaldi trial lists '<enroll> <test> target|nontarget'")
    p.add_argument("--embeddings", required=True, help="scp of the evaluation embeddings")
    p.add_argument("--mean", required=True, help="mean.npy, or an scp of training embeddings to average")
    p.add_argument("--out_dir", required=True)
    g = p.add_argument_group("AS-Norm")
    g.add_argument("--cohort", help="scp of cohort embeddings (enables AS-Norm)")
    g.add_argument("--cohort_type", choices=("speaker", "utterance"), default="speaker",
                   help="speaker: one vector per speaker (the default, as in the paper); utterance: every utterance")
    g.add_argument("--cohort_utt2spk",
                   help="speaker of each cohort utterance; with --cohort_type speaker the cohort scp holds "
                        "utterances that are averaged per speaker, without it the scp holds speaker vectors")
    g.add_argument("--top_k", type=int, default=300, help="cohort scores kept per embedding (the paper: 600)")
    g = p.add_argument_group("quality-aware calibration (needs --cohort)")
    g.add_argument("--calibrate", action="store_true")
    g.add_argument("--calib_embeddings", help="scp of training embeddings to sample calibration trials from")
    g.add_argument("--calib_utt2spk")
    g.add_argument("--calib_utt2dur")
    g.add_argument("--eval_utt2dur", help="durations of the evaluation utterances")
    g.add_argument("--calib_trials", type=int, default=30000)
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--standardize", action="store_true", help="standardise the features (ablation; not the paper)")
    args = p.parse_args(argv)
    if args.calibrate:
        needed = ("cohort", "calib_embeddings", "calib_utt2spk", "calib_utt2dur", "eval_utt2dur")
        absent = [f"--{name}" for name in needed if getattr(args, name) is None]
        if args.cohort_type == "utterance" and args.cohort_utt2spk is None:
            absent.append("--cohort_utt2spk (to leave calibration speakers out of an utterance cohort)")
        if absent:
            p.error(f"--calibrate needs {', '.join(absent)}")
    stems = [Path(path).stem for path in args.trials]
    if len(set(stems)) != len(stems):
        p.error(f"trial lists must have different file names (stems), got {stems}")
    return args


def _caching_reader():
    cache: Dict[Path, Embeddings] = {}

    def read(path: str | Path) -> Embeddings:
        key = Path(path).resolve()
        if key not in cache:
            cache[key] = read_embeddings(path)
        return cache[key]

    return read


def _cohort(args: argparse.Namespace, read) -> Tuple[Embeddings, Optional[List[str]]]:
    """Cohort embeddings (raw) and the speaker of each row (None when unknown)."""
    cohort = read(args.cohort)
    utt2spk = read_map(args.cohort_utt2spk) if args.cohort_utt2spk else None
    if args.cohort_type == "speaker":
        if utt2spk is not None:
            cohort = speaker_means(cohort, utt2spk, args.cohort_utt2spk)
        return cohort, cohort.keys
    speakers = lookup_keys(utt2spk, cohort.keys, args.cohort_utt2spk, "speaker") if utt2spk is not None else None
    return cohort, speakers


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    setup_logging(str(out_dir / "score.log"))
    clock = time.perf_counter()

    def lap(what: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        logger.info("%s: %.2f s", what, now - clock)
        clock = now

    read = _caching_reader()
    evals = read(args.embeddings)
    mean = load_mean(args.mean, read)
    normalized = center_and_normalize(evals.matrix, mean)  # [N, D]
    names = [Path(path).stem for path in args.trials]
    trial_lists = [read_trials(path) for path in args.trials]
    rows = [evals.trial_rows(trials, path) for trials, path in zip(trial_lists, args.trials)]
    lap("read embeddings and trials")

    cosine = [paired_cosine(normalized, enroll, test) for enroll, test in rows]
    for name, trials, scores in zip(names, trial_lists, cosine):
        write_scores(out_dir / "cosine" / f"{name}.score", trials, scores)
    lap("cosine scoring")
    if not args.cohort:
        return

    cohort_raw, cohort_speakers = _cohort(args, read)
    cohort = center_and_normalize(cohort_raw.matrix, mean)  # [C, D]
    used = np.unique(np.concatenate([np.concatenate(pair) for pair in rows]))  # rows named by any trial
    mu = np.full(len(evals.keys), np.nan, dtype=np.float32)
    sigma = np.full(len(evals.keys), np.nan, dtype=np.float32)
    mu[used], sigma[used] = cohort_statistics(normalized[used], cohort, args.top_k, progress=True)
    normed = [as_norm(s, mu[e], sigma[e], mu[t], sigma[t]) for s, (e, t) in zip(cosine, rows)]
    for name, trials, scores in zip(names, trial_lists, normed):
        write_scores(out_dir / "asnorm" / f"{name}.score", trials, scores)
    lap(f"AS-Norm ({len(cohort_raw.keys)} {args.cohort_type} cohort, top {args.top_k})")
    if not args.calibrate:
        return

    calibrator, summary = train_calibrator(
        read(args.calib_embeddings),
        read_map(args.calib_utt2spk),
        args.calib_utt2spk,
        read_map(args.calib_utt2dur, float),
        args.calib_utt2dur,
        mean,
        cohort,
        cohort_speakers,
        args.top_k,
        n_trials=args.calib_trials,
        seed=args.seed,
        standardize=args.standardize,
    )
    calibrator.save(out_dir / "calibrated" / "calibration.json", **summary)
    log_dur = np.full(len(evals.keys), np.nan)
    log_dur[used] = log_durations(read_map(args.eval_utt2dur, float), [evals.keys[i] for i in used], args.eval_utt2dur)
    quality = quality_measures(evals.matrix)
    for name, trials, scores, (enroll, test) in zip(names, trial_lists, normed, rows):
        calibrated = calibrator.log_odds(quality_features(scores, enroll, test, log_dur, quality))
        write_scores(out_dir / "calibrated" / f"{name}.score", trials, calibrated)
    lap("calibration")


if __name__ == "__main__":
    from wespeaker_lap.utils.errors import run_script

    run_script(main)
