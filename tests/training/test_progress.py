"""Metrics JSONL: resume truncation and torn lines; the training-curve PNG."""
import json

import pytest

from wespeaker_lap.training.progress import MetricsLog, plot_training_curve, read_metrics


def record(step, epoch=1, loss=1.0):
    return {"epoch": epoch, "step": step, "loss": loss, "acc": 0.5, "lr": 1e-3, "margin": 0.1}


def test_resume_drops_records_after_the_checkpoint_step_and_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, resume_step=None)
    for step in range(1, 6):
        log.write(record(step))
    log.close()
    with open(path, "a") as f:
        f.write('{"epoch": 1, "st')  # the process was killed mid-write
    log = MetricsLog(path, resume_step=3)
    log.write(record(4, loss=0.5))
    log.close()
    records = read_metrics(path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["loss"] == 0.5


def test_fresh_run_starts_an_empty_log(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(record(9)) + "\n")
    MetricsLog(path, resume_step=None).close()
    assert read_metrics(path) == []


def test_a_bad_line_in_the_middle_names_the_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(record(1)) + "\nnot json\n" + json.dumps(record(2)) + "\n")
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        read_metrics(path)


def test_curve_png_is_written_with_missing_values(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [record(s, epoch=1 + s // 4, loss=None if s == 2 else 2.0 / s) for s in range(1, 9)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    png = tmp_path / "curve.png"
    plot_training_curve(path, png, "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
