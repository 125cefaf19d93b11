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


def test_epoch_progress_is_lines_when_redirected_and_silent_off_rank_zero(capsys, monkeypatch):
    from wespeaker_lap.training.progress import progress_bar
    from wespeaker_lap.utils.console import PROGRESS_SECONDS_ENV, ProgressLines

    monkeypatch.setenv(PROGRESS_SECONDS_ENV, "0")  # a line at every step
    bar = progress_bar(total=4, initial=1, desc="epoch 2/5", enabled=True)  # stderr is captured: no terminal
    assert isinstance(bar, ProgressLines)
    for step in range(3):
        bar.set_postfix(loss=f"{1.5 - step:.3f}", refresh=False)
        bar.update()
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4 and "\r" not in "".join(lines)  # 3 updates + the epoch's final line, no frames
    assert lines[0].startswith("epoch 2/5: 2/4 step (50%)") and lines[0].endswith("| loss=1.500")
    assert lines[-1].startswith("epoch 2/5: 4/4 step (100%)") and lines[-1].endswith("| loss=-0.500")
    other_rank = progress_bar(total=4, initial=0, desc="epoch 2/5", enabled=False)
    other_rank.update()
    other_rank.close()
    assert capsys.readouterr().err == ""
