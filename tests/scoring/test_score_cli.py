"""``bin/score.py`` and ``bin/make_report.py`` round trips on tiny kaldiio arks."""
import json

import numpy as np
import pytest

from wespeaker_lap.bin import make_report, score
from wespeaker_lap.data.kaldi import DataError
from wespeaker_lap.scoring.results import read_scores

from .conftest import write_ark

DIM = 8


@pytest.fixture
def recipe(tmp_path):
    """The recipe's layout: a training set (6 speakers x 5 utterances) and an evaluation set (4 speakers x 3)
    as ``data/<set>`` and ``emb/<set>/xvector.scp``, the training mean ``emb/train_mean.npy``, two trial lists."""
    rng = np.random.default_rng(0)
    train, eval_ = {}, {}
    lines = {"train/utt2spk": [], "train/utt2dur": [], "eval/utt2dur": []}
    for s in range(6):
        center = rng.normal(0, 1, DIM)
        for u in range(5):
            key = f"spk{s}-{u}"
            train[key] = (center + rng.normal(0, 0.6, DIM) + 1.0).astype(np.float32)
            lines["train/utt2spk"].append(f"{key} spk{s}")
            lines["train/utt2dur"].append(f"{key} {rng.uniform(2, 10):.2f}")
    for s in range(4):
        center = rng.normal(0, 1, DIM)
        for u in range(3):
            key = f"ev{s}-{u}"
            eval_[key] = (center + rng.normal(0, 0.6, DIM) + 1.0).astype(np.float32)
            lines["eval/utt2dur"].append(f"{key} {rng.uniform(2, 10):.2f}")
    for name, content in lines.items():
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / name).write_text("\n".join(content) + "\n")
    keys = list(eval_)
    pairs = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1:]]
    trials = [f"{a} {b} {'target' if a[:3] == b[:3] else 'nontarget'}" for a, b in pairs]
    (tmp_path / "list_a.txt").write_text("\n".join(trials) + "\n")
    (tmp_path / "list_b.txt").write_text("\n".join(trials[::3]) + "\n")
    write_ark(tmp_path / "emb" / "train", "xvector", train)
    write_ark(tmp_path / "emb" / "eval", "xvector", eval_)
    np.save(tmp_path / "emb" / "train_mean.npy",
            np.stack(list(train.values())).mean(axis=0, dtype=np.float64).astype(np.float32))
    return {"dir": tmp_path, "train": train, "eval": eval_}


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _expected_asnorm(enroll, test, cohort, mean, k):
    def stats(x):
        top = np.sort([_cos(x - mean, c - mean) for c in cohort])[::-1][:k]
        return top.mean(), top.std(ddof=1)

    s = _cos(enroll - mean, test - mean)
    (mu_e, sd_e), (mu_t, sd_t) = stats(enroll), stats(test)
    return 0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t)


def _run(recipe, *extra):
    d = recipe["dir"]
    score.main([
        "--trials", str(d / "list_a.txt"), str(d / "list_b.txt"),
        "--data_dir", str(d / "data"), "--embeddings_dir", str(d / "emb"),
        "--train_set", "train", "--eval_set", "eval",
        "--out_dir", str(d / "scores"),
        *extra,
    ])


def _read_lines(path):
    return [line.split() for line in path.read_text().splitlines()]


@pytest.mark.parametrize("cohort_type", ["speaker", "utterance"])
def test_score_writes_every_variant_in_trial_order(recipe, cohort_type):
    d = recipe["dir"]
    config = d / "eval.yaml"
    config.write_text(f"cohort: {{type: {cohort_type}, top_k: 4}}\ncalibration: {{trials: 100}}\n")
    _run(recipe, "--config", str(config), "cohort.top_k=3", "calibration.trials=200")  # overrides win
    assert "top_k: 3" in (d / "scores" / "eval.yaml").read_text()
    train, eval_ = recipe["train"], recipe["eval"]
    mean = np.mean(np.stack(list(train.values())), axis=0)
    if cohort_type == "speaker":
        cohort = [np.mean([v for k, v in train.items() if k.startswith(f"spk{s}-")], axis=0) for s in range(6)]
    else:
        cohort = list(train.values())
    trials = _read_lines(d / "list_a.txt")
    for variant in ("cosine", "asnorm", "calibrated"):
        lines = _read_lines(d / "scores" / variant / "list_a.score")
        assert [[e, t, lab] for e, t, _, lab in lines] == trials
        assert len(_read_lines(d / "scores" / variant / "list_b.score")) == len(trials[::3])
    for (e, t, _), line in zip(trials, _read_lines(d / "scores" / "cosine" / "list_a.score")):
        assert float(line[2]) == pytest.approx(_cos(eval_[e] - mean, eval_[t] - mean), abs=2e-6)
    for (e, t, _), line in list(zip(trials, _read_lines(d / "scores" / "asnorm" / "list_a.score")))[:10]:
        assert float(line[2]) == pytest.approx(_expected_asnorm(eval_[e], eval_[t], cohort, mean, 3), abs=1e-4)

    calibration = json.loads((d / "scores" / "calibrated" / "calibration.json").read_text())
    assert len(calibration["weights"]) == 9 and calibration["n_trials"] == 200
    durations = dict(line.split() for line in (d / "data" / "eval" / "utt2dur").read_text().splitlines())
    e, t, _ = trials[0]
    x_e, x_t = eval_[e].astype(np.float64), eval_[t].astype(np.float64)
    features = [
        float(_read_lines(d / "scores" / "asnorm" / "list_a.score")[0][2]),
        np.log(float(durations[e])), np.log(float(durations[t])),
        np.abs(x_e).sum(), np.abs(x_t).sum(), np.linalg.norm(x_e), np.linalg.norm(x_t),
        x_e.std(ddof=1), x_t.std(ddof=1),
    ]
    expected = float(np.dot(calibration["weights"], features) + calibration["bias"])
    assert float(_read_lines(d / "scores" / "calibrated" / "list_a.score")[0][2]) == pytest.approx(expected, abs=1e-4)


def test_cosine_only_and_the_report(recipe):
    d = recipe["dir"]
    _run(recipe, "cohort.source=null", "calibration.enabled=false")
    assert not (d / "scores" / "asnorm").exists()
    out = d / "exp" / "results.md"
    make_report.main(["--scores_dir", str(d / "scores"), "--system", "tiny", "--out", str(out), "report.n_boot=20"])
    make_report.main(["--scores_dir", str(d / "scores"), "--system", "other", "--out", str(out),
                      "report.n_boot=0", "--append"])
    assert "n_boot: 0" in (d / "exp" / "results.eval.yaml").read_text()
    rows = out.read_text().split("\n\n")[0].splitlines()[2:]
    assert [r.split(" | ")[:2] for r in rows] == [["| tiny", "cosine"], ["| other", "cosine"]]
    assert (d / "exp" / "det_tiny_cosine.png").is_file() and (d / "exp" / "det_other_cosine.png").is_file()
    scores, labels = read_scores(d / "scores" / "cosine" / "list_a.score")
    saved = json.loads((d / "exp" / "results.json").read_text())["rows"][0]["lists"]["list_a"]
    assert saved["n_trials"] == scores.size and saved["n_target"] == labels.sum()


def test_missing_embedding_and_bad_arguments(recipe, capsys):
    d = recipe["dir"]
    with open(d / "list_b.txt", "a") as f:
        f.write("ev0-0 nobody nontarget\n")
    n_lines = len((d / "list_b.txt").read_text().splitlines())
    with pytest.raises(DataError, match=rf"list_b\.txt:{n_lines}: no embedding for 'nobody' in .*xvector\.scp"):
        _run(recipe)
    with pytest.raises(SystemExit):
        _run(recipe, "cohort.source=null")
    assert "calibration.enabled: calibration needs AS-Norm scores" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run(recipe, "cohort.topk=3")
    assert "unknown key cohort.topk" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"cohort.top_k=7 must be between 2 and the size of the cohort \(6 rows"):
        _run(recipe, "cohort.top_k=7", "--trials", str(d / "list_a.txt"))
    (d / "data" / "train" / "utt2dur").unlink()
    with pytest.raises(DataError, match=r"train/utt2dur: file not found"):
        _run(recipe, "cohort.top_k=3", "--trials", str(d / "list_a.txt"))


def test_cohort_from_another_set(recipe):
    """``cohort.source`` names any extracted set; a copy of the training set gives the same AS-Norm scores."""
    import shutil

    d = recipe["dir"]
    _run(recipe, "cohort.top_k=3", "calibration.enabled=false")
    expected = (d / "scores" / "asnorm" / "list_a.score").read_text()
    shutil.copytree(d / "data" / "train", d / "data" / "other")
    write_ark(d / "emb" / "other", "xvector", recipe["train"])
    shutil.rmtree(d / "scores")
    _run(recipe, "cohort.top_k=3", "calibration.enabled=false", "cohort.source=other")
    assert (d / "scores" / "asnorm" / "list_a.score").read_text() == expected
    (d / "data" / "other" / "utt2spk").unlink()
    with pytest.raises(DataError, match=r"other/utt2spk: file not found"):
        _run(recipe, "cohort.top_k=3", "calibration.enabled=false", "cohort.source=other")
