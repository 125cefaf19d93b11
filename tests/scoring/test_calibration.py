"""Quality-aware calibration: trial sampling, the logistic-regression model, the training pipeline."""
import dataclasses

import numpy as np
import pytest

from wespeaker_lap.config import CalibrationConfig
from wespeaker_lap.data.kaldi import DataError
from wespeaker_lap.scoring.asnorm import Cohort
from wespeaker_lap.scoring.calibration import (
    FEATURE_NAMES,
    CalibrationSet,
    QualityCalibrator,
    log_durations,
    quality_features,
    quality_measures,
    sample_calibration_trials,
    train_calibrator,
)
from wespeaker_lap.scoring.cosine import center_and_normalize
from wespeaker_lap.scoring.embeddings import Embeddings
from wespeaker_lap.scoring.metrics import compute_eer


def test_sampled_trials_are_balanced_and_valid():
    speaker_of_row = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 4])  # speakers 1 and 4 have one utterance
    enroll, test, labels = sample_calibration_trials(speaker_of_row, 1001, seed=5)
    assert labels.tolist() == [1] * 500 + [0] * 501
    target = labels == 1
    assert np.all(speaker_of_row[enroll[target]] == speaker_of_row[test[target]])
    assert np.all(enroll[target] != test[target])
    assert not np.isin(speaker_of_row[enroll[target]], [1, 4]).any()
    assert np.all(speaker_of_row[enroll[~target]] != speaker_of_row[test[~target]])
    assert set(speaker_of_row[enroll[~target]]) == {0, 1, 2, 3, 4}  # every speaker can be a non-target side
    again = sample_calibration_trials(speaker_of_row, 1001, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip((enroll, test, labels), again))


def test_quality_measures_and_features():
    raw = np.array([[3.0, -4.0, 0.0], [1.0, 1.0, 1.0]])
    np.testing.assert_allclose(quality_measures(raw), [[7.0, 5.0, np.std([3, -4, 0], ddof=1)], [3.0, np.sqrt(3), 0.0]])
    log_dur = np.log([2.0, 8.0])
    features = quality_features(np.array([0.5]), np.array([1]), np.array([0]), log_dur, quality_measures(raw))
    assert features.shape == (1, len(FEATURE_NAMES))
    np.testing.assert_allclose(features[0, :3], [0.5, np.log(8.0), np.log(2.0)])
    np.testing.assert_allclose(features[0, 3:5], [3.0, 7.0])  # L1 of enroll (row 1), test (row 0)
    with pytest.raises(DataError, match="utt2dur: no duration for utterance 'b'"):
        log_durations({"a": 1.0}, ["a", "b"], "utt2dur")
    with pytest.raises(DataError, match="utt2dur: duration of 'a' is not positive"):
        log_durations({"a": 0.0}, ["a"], "utt2dur")


def _synthetic_features(n, quality_effect, seed):
    """Trials whose score is shifted by the utterance durations (both classes alike)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.5).astype(int)
    log_dur = rng.uniform(np.log(2.0), np.log(20.0), (n, 2))
    scores = 2.0 * labels + quality_effect * (log_dur.sum(axis=1) - np.log(40.0)) + rng.normal(0, 1, n)
    nuisance = rng.normal(0, 1, (n, 6))  # norms and stds that carry no information here
    return np.column_stack([scores, log_dur, nuisance]), labels


@pytest.mark.parametrize("standardize", [False, True])
def test_calibration_removes_a_duration_shift(standardize):
    train_x, train_y = _synthetic_features(4000, 1.5, seed=0)
    test_x, test_y = _synthetic_features(4000, 1.5, seed=1)
    calibrator = QualityCalibrator.fit(train_x, train_y, standardize=standardize)
    raw_eer = compute_eer(test_x[:, 0], test_y)
    assert compute_eer(calibrator.log_odds(test_x), test_y) < 0.75 * raw_eer


def test_calibration_keeps_eer_when_quality_is_irrelevant():
    train_x, train_y = _synthetic_features(4000, 0.0, seed=2)
    test_x, test_y = _synthetic_features(4000, 0.0, seed=3)
    calibrator = QualityCalibrator.fit(train_x, train_y)
    assert compute_eer(calibrator.log_odds(test_x), test_y) <= compute_eer(test_x[:, 0], test_y) + 0.01


def test_log_odds_match_sklearn_and_survive_a_json_round_trip(tmp_path):
    from sklearn.linear_model import LogisticRegression

    x, y = _synthetic_features(500, 1.0, seed=4)
    x[:, 3] *= 300.0  # an L1-norm-sized feature: no scaling, as in the paper
    calibrator = QualityCalibrator.fit(x, y, seed=7)
    reference = LogisticRegression(C=1.0, solver="liblinear", random_state=7).fit(x, y)
    np.testing.assert_allclose(calibrator.log_odds(x), reference.decision_function(x), rtol=1e-10, atol=1e-10)
    calibrator.save(tmp_path / "calibration.json", seed=7)
    loaded = QualityCalibrator.load(tmp_path / "calibration.json")
    np.testing.assert_array_equal(loaded.log_odds(x), calibrator.log_odds(x))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match=r"bad\.json: not a calibration file"):
        QualityCalibrator.load(tmp_path / "bad.json")


def _training_set(n_speakers=8, per_speaker=6, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (n_speakers, dim))
    keys, rows, utt2spk, utt2dur = [], [], {}, {}
    for s in range(n_speakers):
        for u in range(per_speaker):
            key = f"s{s}-u{u}"
            duration = rng.uniform(2.0, 20.0)
            noise = rng.normal(0, 1.5 / np.sqrt(duration), dim)  # shorter: noisier
            keys.append(key)
            rows.append(centers[s] + noise + 0.3)
            utt2spk[key], utt2dur[key] = f"s{s}", duration
    return Embeddings(keys, np.asarray(rows, dtype=np.float32), "train.scp"), utt2spk, utt2dur


def test_train_calibrator_leaves_the_trial_speakers_out_of_the_cohort():
    train, utt2spk, utt2dur = _training_set()
    mean = train.matrix.mean(axis=0)
    speakers = sorted(set(utt2spk.values()))
    cohort_raw = np.stack([train.matrix[[utt2spk[k] == s for k in train.keys]].mean(axis=0) for s in speakers])
    data = CalibrationSet(train, [utt2spk[k] for k in train.keys], np.log([utt2dur[k] for k in train.keys]))
    settings = CalibrationConfig(trials=400, seed=1)
    cohort = Cohort(center_and_normalize(cohort_raw, mean), speakers, top_k=6)  # 8 speakers - 2 left out
    calibrator, summary = train_calibrator(data, mean, cohort, settings)
    assert calibrator.feature_names == FEATURE_NAMES and calibrator.weights.shape == (9,)
    assert summary["n_trials"] == 400 and summary["n_target"] == 200 and summary["top_k"] == 6
    assert summary["train_eer_calibrated"] <= summary["train_eer_asnorm"] + 0.02
    with pytest.raises(ValueError, match="only 6 cohort entries remain"):
        train_calibrator(data, mean, dataclasses.replace(cohort, top_k=7), settings)
    with pytest.raises(ValueError, match="needs the speaker of each cohort row"):
        train_calibrator(data, mean, dataclasses.replace(cohort, speakers=None), settings)


def test_calibration_set_reads_kaldi_files_and_names_them(tmp_path):
    train, utt2spk, utt2dur = _training_set()
    (tmp_path / "utt2spk").write_text("".join(f"{k} {v}\n" for k, v in utt2spk.items()))
    (tmp_path / "utt2dur").write_text("".join(f"{k} {v}\n" for k, v in list(utt2dur.items())[1:]))
    with pytest.raises(DataError, match=rf"utt2dur: no duration for utterance '{train.keys[0]}'"):
        CalibrationSet.read(train, tmp_path / "utt2spk", tmp_path / "utt2dur")
    (tmp_path / "utt2dur").write_text("".join(f"{k} {v}\n" for k, v in utt2dur.items()))
    data = CalibrationSet.read(train, tmp_path / "utt2spk", tmp_path / "utt2dur")
    assert list(data.speakers) == [utt2spk[k] for k in train.keys]
    np.testing.assert_allclose(data.log_duration, np.log([utt2dur[k] for k in train.keys]), rtol=1e-6)
