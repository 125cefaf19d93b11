"""Score files, the result table, its JSON, merging systems, and the DET plots."""
import json

import numpy as np
import pytest

from wespeaker_lap.data.kaldi import DataError
from wespeaker_lap.scoring.metrics import compute_eer, compute_min_dcf
from wespeaker_lap.scoring.results import (
    load_rows,
    markdown_table,
    merge_rows,
    read_scores,
    report_system,
    save_results,
    write_scores,
)


def _write_variant(scores_dir, variant, name, n, shift, seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    scores = rng.normal(shift * labels, 1.0)
    trials = [(f"e{i}", f"t{i}", int(label)) for i, label in enumerate(labels)]
    write_scores(scores_dir / variant / f"{name}.score", trials, scores)
    return np.round(scores, 6), labels


def test_score_file_round_trip_and_errors(tmp_path):
    trials = [("a", "b", 1), ("a", "c", 0)]
    write_scores(tmp_path / "x.score", trials, np.array([0.25, -1.5]))
    assert (tmp_path / "x.score").read_text() == "a b 0.250000 target\na c -1.500000 nontarget\n"
    scores, labels = read_scores(tmp_path / "x.score")
    assert scores.tolist() == [0.25, -1.5] and labels.tolist() == [1, 0]
    (tmp_path / "bad.score").write_text("a b 0.1 target\na c high nontarget\n")
    with pytest.raises(DataError, match=r"bad\.score:2: could not convert"):
        read_scores(tmp_path / "bad.score")
    (tmp_path / "short.score").write_text("a b target\n")
    with pytest.raises(DataError, match=r"short\.score:1: expected"):
        read_scores(tmp_path / "short.score")


def test_report_rows_table_and_det_plots(tmp_path):
    scores_dir = tmp_path / "scores"
    expected = {}
    for variant, shift in (("cosine", 2.0), ("asnorm", 3.0)):
        for name in ("vox1_O", "vox1_E"):
            expected[variant, name] = _write_variant(scores_dir, variant, name, 400, shift, seed=len(expected))
    rows = report_system(scores_dir, "sys A", tmp_path / "report", n_boot=50, lists=["vox1_O", "vox1_E"])
    assert [(r["system"], r["variant"]) for r in rows] == [("sys A", "cosine"), ("sys A", "asnorm")]
    for row in rows:
        for name, m in row["lists"].items():
            scores, labels = expected[row["variant"], name]
            assert m["eer"] == pytest.approx(compute_eer(scores, labels))
            assert m["min_dcf_0.05"] == pytest.approx(compute_min_dcf(scores, labels, p_target=0.05))
            assert m["eer_ci"][0] <= m["eer"] <= m["eer_ci"][1]
            assert m["n_trials"] == 400
    for variant in ("cosine", "asnorm"):
        png = tmp_path / "report" / f"det_sys_A_{variant}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    table = save_results(rows, tmp_path / "report" / "results.md", tmp_path / "report" / "results.json")
    lines = table.splitlines()
    assert lines[0].split(" | ")[:3] == ["| system", "scoring", "vox1_O EER % [95 % CI]"]
    assert len(lines[0].split(" | ")) == 2 + 2 * 3  # system, scoring, 3 columns per list
    assert [line.split(" | ")[1] for line in lines[2:4]] == ["cosine", "AS-Norm"]
    eer_cell = lines[2].split(" | ")[2]
    assert eer_cell.startswith(f"{100 * rows[0]['lists']['vox1_O']['eer']:.3f} [")
    assert load_rows(tmp_path / "report" / "results.json") == json.loads(json.dumps(rows))


def test_merging_systems_replaces_same_rows_and_appends_new_ones():
    def row(system, variant, eer):
        metrics = {"eer": eer, "min_dcf_0.01": 0.1, "min_dcf_0.05": 0.05}
        return {"system": system, "variant": variant, "lists": {"O": metrics}}

    old = [row("A", "cosine", 0.01), row("A", "asnorm", 0.009)]
    merged = merge_rows(old, [row("A", "asnorm", 0.008), row("B", "cosine", 0.02)])
    assert [(r["system"], r["variant"], r["lists"]["O"]["eer"]) for r in merged] == [
        ("A", "cosine", 0.01), ("A", "asnorm", 0.008), ("B", "cosine", 0.02)
    ]
    table = markdown_table(merged)
    assert len(table.split("\n\n")[0].splitlines()) == 2 + 3
    assert "bootstrap" not in table  # no CI was computed


def test_missing_list_or_variants_are_errors(tmp_path):
    with pytest.raises(DataError, match="no <variant>/\\*.score files"):
        report_system(tmp_path, "x", tmp_path, n_boot=0)
    _write_variant(tmp_path, "cosine", "O", 50, 2.0, seed=0)
    with pytest.raises(DataError, match=r"cosine: no score file H\.score"):
        report_system(tmp_path, "x", tmp_path, n_boot=0, lists=["O", "H"])
