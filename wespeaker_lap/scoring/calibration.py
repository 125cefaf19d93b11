"""Quality-aware score calibration (QMF, as in the LAP paper's evaluation): logistic regression on nine trial features.

Features, in this order (``FEATURE_NAMES``): the AS-Norm score; the log durations of the
enroll and test utterances; the L1 and L2 norms of the *raw* (not centred) enroll and test
embeddings; the std over dimensions of each raw embedding. The model is trained on trials
sampled from the training set, half target pairs (two utterances of one speaker) and half
non-target pairs (one utterance each of two speakers); the AS-Norm score of a sampled
trial leaves the trial's speakers out of the cohort. The default is the paper's
sklearn ``LogisticRegression(solver="liblinear")`` with C = 1 on unscaled features;
``standardize=True`` is an ablation. The calibrated score is the log-odds ``w·x + b``
(``predict_proba`` is its sigmoid, so the two rank trials identically).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np

from wespeaker_lap.config import CalibrationConfig
from wespeaker_lap.data.kaldi import DataError, read_map
from wespeaker_lap.scoring.asnorm import Cohort, as_norm
from wespeaker_lap.scoring.cosine import center_and_normalize, paired_cosine
from wespeaker_lap.scoring.embeddings import Embeddings, lookup_keys
from wespeaker_lap.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

FEATURE_NAMES: Tuple[str, ...] = (
    "asnorm",
    "log_dur_enroll",
    "log_dur_test",
    "l1_enroll",
    "l1_test",
    "l2_enroll",
    "l2_test",
    "std_enroll",
    "std_test",
)


def log_durations(utt2dur: Mapping[str, float], keys: Sequence[str], utt2dur_path: str) -> np.ndarray:
    """Natural log of each utterance's duration ``[N]``; missing or non-positive ones are errors."""
    durations = np.asarray(lookup_keys(utt2dur, keys, utt2dur_path, "duration"), dtype=np.float64)
    if np.any(durations <= 0):
        bad = keys[int(np.argmax(durations <= 0))]
        raise DataError(f"{utt2dur_path}: duration of {bad!r} is not positive")
    return np.log(durations)


def quality_measures(raw: np.ndarray) -> np.ndarray:
    """L1 norm, L2 norm and unbiased std over dimensions of each raw embedding, ``[N, D] -> [N, 3]``."""
    raw = np.asarray(raw, dtype=np.float64)
    return np.stack([np.abs(raw).sum(axis=1), np.linalg.norm(raw, axis=1), raw.std(axis=1, ddof=1)], axis=1)


def quality_features(
    asnorm_scores: np.ndarray,
    enroll_rows: np.ndarray,
    test_rows: np.ndarray,
    log_duration: np.ndarray,
    quality: np.ndarray,
) -> np.ndarray:
    """The nine ``FEATURE_NAMES`` features ``[T, 9]``; ``log_duration [N]`` and ``quality [N, 3]`` are per row."""
    e, t = quality[enroll_rows], quality[test_rows]  # [T, 3] each
    return np.column_stack(
        [
            asnorm_scores,
            log_duration[enroll_rows],
            log_duration[test_rows],
            e[:, 0], t[:, 0],  # L1
            e[:, 1], t[:, 1],  # L2
            e[:, 2], t[:, 2],  # std
        ]
    ).astype(np.float64)


def sample_calibration_trials(
    speaker_of_row: np.ndarray, n_trials: int, seed: int
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample ``(enroll_rows, test_rows, labels)``: first ``n_trials // 2`` targets, then non-targets.

    A target pair is two different utterances of one speaker, drawn uniformly among the
    speakers with at least two utterances; a non-target pair is one utterance each of two
    different speakers drawn uniformly.
    """
    rng = np.random.default_rng(seed)
    order = np.argsort(speaker_of_row, kind="stable")  # rows grouped by speaker
    counts = np.bincount(speaker_of_row)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))  # position of each speaker's first row in order
    speakers = np.flatnonzero(counts > 0)
    multi = np.flatnonzero(counts >= 2)
    if multi.size == 0 or speakers.size < 2:
        raise ValueError("calibration needs at least two speakers and one speaker with two utterances")
    n_target = n_trials // 2
    n_nontarget = n_trials - n_target

    spk = multi[rng.integers(0, multi.size, n_target)]
    i = rng.integers(0, counts[spk])
    j = rng.integers(0, counts[spk] - 1)
    j += j >= i  # a second, different utterance of the same speaker
    target_enroll, target_test = order[first[spk] + i], order[first[spk] + j]

    spk_a = rng.integers(0, speakers.size, n_nontarget)
    spk_b = rng.integers(0, speakers.size - 1, n_nontarget)
    spk_b += spk_b >= spk_a  # a different speaker
    spk_a, spk_b = speakers[spk_a], speakers[spk_b]
    nontarget_enroll = order[first[spk_a] + rng.integers(0, counts[spk_a])]
    nontarget_test = order[first[spk_b] + rng.integers(0, counts[spk_b])]

    labels = np.concatenate((np.ones(n_target, dtype=np.int64), np.zeros(n_nontarget, dtype=np.int64)))
    return (
        np.concatenate((target_enroll, nontarget_enroll)),
        np.concatenate((target_test, nontarget_test)),
        labels,
    )


@dataclass(frozen=True)
class QualityCalibrator:
    """``log_odds(x) = ((x − center) / scale) · weights + bias``; center 0 and scale 1 unless standardised."""

    feature_names: Tuple[str, ...]
    weights: np.ndarray  # [F]
    bias: float
    center: np.ndarray  # [F]
    scale: np.ndarray  # [F]

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        labels: np.ndarray,
        standardize: bool = False,
        seed: int = 7,
        feature_names: Sequence[str] = FEATURE_NAMES,
    ) -> "QualityCalibrator":
        """Logistic regression (liblinear, C = 1) on ``features [T, F]``, as the paper does."""
        from sklearn.linear_model import LogisticRegression

        n_features = features.shape[1]
        if n_features != len(feature_names):
            raise ValueError(f"{n_features} feature columns but {len(feature_names)} feature names")
        center, scale = np.zeros(n_features), np.ones(n_features)
        if standardize:
            center, scale = features.mean(axis=0), features.std(axis=0)
            scale[scale == 0] = 1.0
        model = LogisticRegression(C=1.0, solver="liblinear", random_state=seed)
        model.fit((features - center) / scale, labels)
        return cls(tuple(feature_names), model.coef_[0].astype(np.float64), float(model.intercept_[0]), center, scale)

    def log_odds(self, features: np.ndarray) -> np.ndarray:
        """Calibrated score ``[T]`` of ``features [T, F]``."""
        if features.shape[1] != self.weights.size:
            raise ValueError(f"expected {self.weights.size} features, got {features.shape[1]}")
        return ((features - self.center) / self.scale) @ self.weights + self.bias

    def save(self, path: str | Path, **info: Any) -> None:
        """Write the weights (plus ``info``, e.g. how it was trained) as JSON, atomically."""
        data = {
            "feature_names": list(self.feature_names),
            "weights": self.weights.tolist(),
            "bias": self.bias,
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            **info,
        }
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "QualityCalibrator":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(
                tuple(data["feature_names"]),
                np.asarray(data["weights"], dtype=np.float64),
                float(data["bias"]),
                np.asarray(data["center"], dtype=np.float64),
                np.asarray(data["scale"], dtype=np.float64),
            )
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"{path}: not a calibration file: {err!r}") from None


@dataclass(frozen=True)
class CalibrationSet:
    """Training utterances to sample calibration trials from: raw embeddings, each row's speaker and log duration."""

    embeddings: Embeddings  # [N, D] raw
    speakers: Sequence[str]  # [N]
    log_duration: np.ndarray  # [N], natural log of seconds

    @classmethod
    def read(cls, embeddings: Embeddings, utt2spk: str | Path, utt2dur: str | Path) -> "CalibrationSet":
        """Look every row up in the Kaldi ``utt2spk`` and ``utt2dur`` files; a missing entry names the file."""
        speakers = lookup_keys(read_map(utt2spk), embeddings.keys, str(utt2spk), "speaker")
        return cls(embeddings, speakers, log_durations(read_map(utt2dur, float), embeddings.keys, str(utt2dur)))


def train_calibrator(
    data: CalibrationSet, mean: np.ndarray, cohort: Cohort, settings: CalibrationConfig
) -> Tuple[QualityCalibrator, Dict[str, Any]]:
    """Fit a ``QualityCalibrator`` on ``settings.trials`` trials sampled from ``data``.

    Each sampled trial's AS-Norm score leaves the trial's speakers out of ``cohort`` (matched by
    ``cohort.speakers``). Returns the calibrator and a summary (trial counts, EER of the training trials).
    """
    from wespeaker_lap.scoring.metrics import compute_eer

    train = data.embeddings
    vocabulary, speaker_of_row = np.unique(np.asarray(data.speakers), return_inverse=True)
    speaker_id = {name: i for i, name in enumerate(vocabulary.tolist())}
    if cohort.speakers is None:
        raise ValueError(f"{cohort.source}: calibration needs the speaker of each cohort row")
    cohort_ids = np.array([speaker_id.get(name, -2) for name in cohort.speakers])  # -2: not a training speaker
    if not np.any(cohort_ids >= 0):
        logger.warning("no cohort speaker is a calibration speaker: nothing is left out of the cohort")

    enroll_rows, test_rows, labels = sample_calibration_trials(speaker_of_row, settings.trials, settings.seed)
    used = np.unique(np.concatenate((enroll_rows, test_rows)))  # only these rows are needed
    position = np.full(len(train.keys), -1)
    position[used] = np.arange(used.size)
    raw = train.matrix[used]
    normalized = center_and_normalize(raw, mean)
    enroll, test = position[enroll_rows], position[test_rows]

    scores = paired_cosine(normalized, enroll, test)
    # Both sides of a trial leave out the trial's speaker(s): [T, 2] ids.
    excluded = np.stack((speaker_of_row[enroll_rows], speaker_of_row[test_rows]), axis=1)
    queries = np.concatenate((normalized[enroll], normalized[test]))  # [2T, D]
    mu, sigma = cohort.statistics(queries, cohort_speakers=cohort_ids,
                                  excluded_speakers=np.concatenate((excluded, excluded)), progress=True)
    n = len(enroll)
    normed = as_norm(scores, mu[:n], sigma[:n], mu[n:], sigma[n:])

    features = quality_features(normed, enroll, test, data.log_duration[used], quality_measures(raw))
    calibrator = QualityCalibrator.fit(features, labels, standardize=settings.standardize, seed=settings.seed)
    summary = {
        "n_trials": int(n),
        "n_target": int(labels.sum()),
        "seed": settings.seed,
        "top_k": cohort.top_k,
        "standardize": settings.standardize,
        "solver": "liblinear",
        "C": 1.0,
        "train_eer_asnorm": compute_eer(normed, labels),
        "train_eer_calibrated": compute_eer(calibrator.log_odds(features), labels),
    }
    logger.info("calibration: %s", summary)
    return calibrator, summary
