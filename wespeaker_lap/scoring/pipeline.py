"""Stage 5 as library functions: embeddings and Kaldi data dirs -> score arrays -> score files.

``score_trial_lists`` scores every trial list three ways, as ``EvalConfig`` says:

* ``cosine``: cosine of the embeddings after subtracting the training-set mean;
* ``asnorm``: AS-Norm against the cohort (``cohort.source``: the training set or another data set;
  ``cohort.type``: one mean embedding per speaker, or every utterance; the ``cohort.top_k`` highest scores);
* ``calibrated``: quality-aware calibration of the AS-Norm score, trained on ``calibration.trials``
  trials sampled from the training set.

``write_score_files`` writes them as ``<out_dir>/<variant>/<trial list stem>.score`` and the
calibration weights as ``<out_dir>/calibrated/calibration.json``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from wespeaker_lap.config import CohortConfig, EvalConfig
from wespeaker_lap.data.kaldi import DataError, Trial, read_map, read_trials
from wespeaker_lap.scoring.asnorm import Cohort, as_norm, speaker_means
from wespeaker_lap.scoring.calibration import (
    CalibrationSet,
    QualityCalibrator,
    log_durations,
    quality_features,
    quality_measures,
    train_calibrator,
)
from wespeaker_lap.scoring.cosine import center_and_normalize, paired_cosine
from wespeaker_lap.scoring.embeddings import Embeddings, load_mean, lookup_keys, read_embeddings
from wespeaker_lap.scoring.results import write_scores

logger = logging.getLogger(__name__)

TRAIN_COHORT = "train"  # cohort.source naming the training set


@dataclass(frozen=True)
class EmbeddedSet:
    """A Kaldi data dir (``utt2spk``, ``utt2dur``) and the extraction output of its utterances (``xvector.scp``)."""

    data_dir: Path
    embeddings_dir: Path

    @property
    def scp(self) -> Path:
        return self.embeddings_dir / "xvector.scp"

    def file(self, name: str) -> Path:
        """``<data_dir>/<name>``, which must exist."""
        path = self.data_dir / name
        if not path.is_file():
            raise DataError(f"{path}: file not found (needed to score with {self.scp})")
        return path


@dataclass(frozen=True)
class ScoringInputs:
    """Where stage 5 reads from: trial lists, the evaluation and training sets, the mean, the cohort set."""

    trials: Sequence[Path]
    evaluation: EmbeddedSet
    training: EmbeddedSet
    mean: Path  # mean.npy, or an scp whose embeddings are averaged
    cohort: Optional[EmbeddedSet]  # None: cosine scores only

    @classmethod
    def from_layout(cls, data_root: Path, embeddings_root: Path, train_set: str, eval_set: str,
                    trials: Sequence[Path], cohort: CohortConfig) -> "ScoringInputs":
        """The recipe's layout: ``<data_root>/<set>``, ``<embeddings_root>/<set>`` and
        ``<embeddings_root>/train_mean.npy``; ``cohort.source`` names the cohort's set ("train": ``train_set``)."""
        def embedded(name: str) -> EmbeddedSet:
            return EmbeddedSet(Path(data_root) / name, Path(embeddings_root) / name)

        source = None if cohort.source is None else train_set if cohort.source == TRAIN_COHORT else cohort.source
        return cls([Path(t) for t in trials], embedded(eval_set), embedded(train_set),
                   Path(embeddings_root) / "train_mean.npy", embedded(source) if source else None)


@dataclass(frozen=True)
class TrialList:
    """One trial list and the embedding rows of its enroll and test sides."""

    name: str  # the file's stem, which names its score files
    path: Path
    trials: List[Trial]
    enroll_rows: np.ndarray  # [T]
    test_rows: np.ndarray  # [T]


@dataclass
class ScoredLists:
    """Scores ``[T]`` of every trial list, per variant (``cosine``, ``asnorm``, ``calibrated``)."""

    lists: List[TrialList]
    scores: Dict[str, List[np.ndarray]] = field(default_factory=dict)
    calibrator: Optional[QualityCalibrator] = None
    calibration_summary: Dict[str, Any] = field(default_factory=dict)


class _Stopwatch:
    """Logs the seconds each step took."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def log(self, step: str) -> None:
        now = time.perf_counter()
        logger.info("%s: %.2f s", step, now - self.start)
        self.start = now


class _EmbeddingCache:
    """``read_embeddings`` that reads each scp once."""

    def __init__(self) -> None:
        self.cache: Dict[Path, Embeddings] = {}

    def __call__(self, path: str | Path) -> Embeddings:
        key = Path(path).resolve()
        if key not in self.cache:
            self.cache[key] = read_embeddings(path)
        return self.cache[key]


def read_trial_lists(paths: Sequence[Path], embeddings: Embeddings) -> List[TrialList]:
    """Read the trial lists and find their rows; stems must differ (they name the score files)."""
    stems = [Path(path).stem for path in paths]
    if len(set(stems)) != len(stems):
        raise DataError(f"trial lists must have different file names (stems), got {stems}")
    lists = []
    for stem, path in zip(stems, paths):
        trials = read_trials(path)
        enroll, test = embeddings.trial_rows(trials, path)
        lists.append(TrialList(stem, Path(path), trials, enroll, test))
    return lists


def build_cohort(cohort_set: EmbeddedSet, raw: Embeddings, mean: np.ndarray, cfg: CohortConfig) -> Cohort:
    """The cohort of ``cfg.type`` from a set's utterance embeddings: speaker means, or every utterance."""
    utt2spk_path = cohort_set.file("utt2spk")
    utt2spk = read_map(utt2spk_path)
    if cfg.type == "speaker":
        return Cohort.from_embeddings(speaker_means(raw, utt2spk, str(utt2spk_path)), mean, cfg.top_k)
    speakers = lookup_keys(utt2spk, raw.keys, str(utt2spk_path), "speaker")
    return Cohort.from_embeddings(raw, mean, cfg.top_k, speakers)


def score_trial_lists(inputs: ScoringInputs, cfg: EvalConfig) -> ScoredLists:
    """Cosine, then (with a cohort) AS-Norm, then (with ``calibration.enabled``) calibrated scores."""
    clock, read = _Stopwatch(), _EmbeddingCache()
    evals = read(inputs.evaluation.scp)
    mean = load_mean(inputs.mean, read)
    normalized = center_and_normalize(evals.matrix, mean)  # [N, D]
    result = ScoredLists(read_trial_lists(inputs.trials, evals))
    clock.log("read embeddings and trials")

    cosine = [paired_cosine(normalized, t.enroll_rows, t.test_rows) for t in result.lists]
    result.scores["cosine"] = cosine
    clock.log("cosine scoring")
    if inputs.cohort is None:
        return result

    cohort = build_cohort(inputs.cohort, read(inputs.cohort.scp), mean, cfg.cohort)
    used = np.unique(np.concatenate([np.concatenate((t.enroll_rows, t.test_rows)) for t in result.lists]))
    mu = np.full(len(evals.keys), np.nan, dtype=np.float32)  # per evaluation row; only the used rows are needed
    sigma = np.full(len(evals.keys), np.nan, dtype=np.float32)
    mu[used], sigma[used] = cohort.statistics(normalized[used], progress=True)
    result.scores["asnorm"] = [as_norm(s, mu[t.enroll_rows], sigma[t.enroll_rows], mu[t.test_rows],
                                       sigma[t.test_rows]) for s, t in zip(cosine, result.lists)]
    clock.log(f"AS-Norm ({len(cohort.embeddings)} {cfg.cohort.type} cohort, top {cfg.cohort.top_k})")
    if not cfg.calibration.enabled:
        return result

    train = inputs.training
    calibration_set = CalibrationSet.read(read(train.scp), train.file("utt2spk"), train.file("utt2dur"))
    result.calibrator, result.calibration_summary = train_calibrator(calibration_set, mean, cohort, cfg.calibration)
    eval_utt2dur = inputs.evaluation.file("utt2dur")
    log_dur = np.full(len(evals.keys), np.nan)
    log_dur[used] = log_durations(read_map(eval_utt2dur, float), [evals.keys[i] for i in used], str(eval_utt2dur))
    quality = quality_measures(evals.matrix)
    result.scores["calibrated"] = [
        result.calibrator.log_odds(quality_features(s, t.enroll_rows, t.test_rows, log_dur, quality))
        for s, t in zip(result.scores["asnorm"], result.lists)]
    clock.log("calibration")
    return result


def write_score_files(result: ScoredLists, out_dir: Path) -> None:
    """``<out_dir>/<variant>/<list>.score`` for every variant, and ``calibrated/calibration.json``."""
    out_dir = Path(out_dir)
    for variant, per_list in result.scores.items():
        for trial_list, scores in zip(result.lists, per_list):
            write_scores(out_dir / variant / f"{trial_list.name}.score", trial_list.trials, scores)
    if result.calibrator is not None:
        result.calibrator.save(out_dir / "calibrated" / "calibration.json", **result.calibration_summary)
