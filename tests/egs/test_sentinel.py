"""The recipe's settings-aware sentinels (tools/sentinel.py), node waits, and option word lists (tools/recipe_lib.sh).

Quick: each case runs the real scripts as run.sh does (subprocesses, no training).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SENTINEL = REPO / "tools" / "sentinel.py"
NOT_DONE, RERUN, CHANGED = 3, 4, 1


def sentinel(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(SENTINEL), *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=60)


def done_with(path: Path, *settings: str, job: str = "") -> dict:
    proc = sentinel("write", str(path), "--what", "stage 3 phase1_frozen", "--job", job, *settings)
    assert proc.returncode == 0, proc.stderr
    return json.loads(path.read_text())


WAVLM = ["--set", "upstream=wavlm_local", "--set", "train_overrides=", "--lines", 'train.epochs=12\noptim.lr=0.005',
         "--hash", "prepare_data (conf/recipe.sh)", "prepare_data() { ...; }"]


def test_absent_then_done_then_forced(tmp_path):
    s = tmp_path / "phase1" / ".done"
    assert sentinel("check", str(s), "--what", "stage 3 phase1_frozen", *WAVLM).returncode == NOT_DONE
    record = done_with(s, *WAVLM)
    assert record["settings"] == {"upstream": "wavlm_local", "train_overrides": "", "train.epochs": "12",
                                  "optim.lr": "0.005"}
    assert record["run_id"] and record["digest"] and "prepare_data() {" not in s.read_text()  # hashed only
    proc = sentinel("check", str(s), "--what", "stage 3 phase1_frozen", *WAVLM)
    assert proc.returncode == 0 and proc.stdout == "stage 3 phase1_frozen: already done\n"
    proc = sentinel("check", str(s), "--what", "stage 3 phase1_frozen", "--force", "true", *WAVLM)
    assert proc.returncode == RERUN and "--force true: running it again" in proc.stdout


def test_other_settings_stop_naming_each_change(tmp_path):
    s = tmp_path / ".done"
    done_with(s, *WAVLM)
    hint = "use --force true to redo it, or another --exp_dir"
    hubert = [w.replace("wavlm_local", "hubert_local") for w in WAVLM]
    proc = sentinel("check", str(s), "--what", "stage 3 phase1_frozen", "--hint", hint, *hubert)
    assert proc.returncode == CHANGED
    assert proc.stderr == ("run.sh: stage 3 phase1_frozen was done with upstream=wavlm_local, now hubert_local; "
                           f"{hint}\n")
    several = [*hubert[:4], "--lines", "train.epochs=2\noptim.lr=0.005", "--hash", "prepare_data (conf/recipe.sh)",
               "prepare_data() { other; }"]
    proc = sentinel("check", str(s), "--what", "stage 3 phase1_frozen", "--hint", hint, *several)
    assert proc.returncode == CHANGED
    assert proc.stderr.splitlines() == [
        f"run.sh: stage 3 phase1_frozen was done with other settings; {hint}:",
        "  upstream=wavlm_local, now hubert_local", "  train.epochs=12, now 2",
        "  prepare_data (conf/recipe.sh) changed"]
    forced = sentinel("check", str(s), "--what", "stage 3 phase1_frozen", "--force", "true", *several)
    assert forced.returncode == RERUN and "train.epochs=12, now 2" in forced.stdout


def test_an_input_redone_with_other_settings_is_a_change_and_a_rerun_of_an_after_step_is_stale(tmp_path):
    data, phase1, phase2 = tmp_path / ".done_prepare", tmp_path / "p1.done", tmp_path / "p2.done"
    done_with(data, "--set", "n_utts=20")
    done_with(phase1, "--input", "stage 1", str(data))
    deps = ["--input", "stage 1", str(data), "--after", "stage 3 phase1", str(phase1)]
    done_with(phase2, *deps)
    assert sentinel("check", str(phase2), *deps).returncode == 0
    done_with(data, "--set", "n_utts=20")  # stage 1 redone with the same settings: the same data
    assert sentinel("check", str(phase2), *deps).returncode == 0
    done_with(phase1, "--input", "stage 1", str(data))  # phase 1 ran again: phase 2 is built on a model that is gone
    proc = sentinel("check", str(phase2), "--what", "stage 3 phase2", *deps)
    assert proc.returncode == RERUN and "stage 3 phase1 ran again since it was done: running it again" in proc.stdout
    proc = sentinel("verify", str(phase2), "--what", "stage 3 phase2", "--hint", "run from stage 3", *deps)
    assert proc.returncode == CHANGED
    assert "stage 3 phase2 is out of date (stage 3 phase1 ran again since)" in proc.stderr
    done_with(phase2, *deps)
    done_with(data, "--set", "n_utts=30")
    proc = sentinel("check", str(phase2), "--what", "stage 3 phase2", *deps)
    assert proc.returncode == CHANGED and f"the output of stage 1 differs ({data} was done" in proc.stderr
    assert sentinel("verify", str(tmp_path / "absent"), "--set", "a=1").returncode == 0  # not done: nothing to check


def test_an_empty_sentinel_of_an_older_run_sh_is_not_taken_as_done(tmp_path):
    s = tmp_path / ".done_extract"
    s.touch()
    proc = sentinel("check", str(s), "--what", "stage 4", "--hint", "use --force true", "--set", "a=1")
    assert proc.returncode == CHANGED and "older run.sh that did not record its settings" in proc.stderr
    assert sentinel("check", str(s), "--force", "true", "--set", "a=1").returncode == RERUN
    (tmp_path / "bad").write_text("{not json")
    proc = sentinel("check", str(tmp_path / "bad"))
    assert proc.returncode == 1 and "not a sentinel" in proc.stderr


def _wait(s: Path, marker: Path, *extra: str, timeout: str = "20") -> subprocess.CompletedProcess:
    return sentinel("wait", str(s), "--what", "stage 1", "--job", "job7", "--failed", str(marker),
                    "--timeout", timeout, "--node", "1", *extra)


def _later(seconds: float, action) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), action()))
    thread.start()
    return thread


def test_wait_returns_once_node0_wrote_it_for_this_job(tmp_path):
    s, marker = tmp_path / ".done_prepare", tmp_path / ".node0_failed"
    done_with(s, "--set", "n_utts=20", job="job6")  # an earlier job's sentinel is not this job's step
    writer = _later(1.0, lambda: done_with(s, "--set", "n_utts=20", job="job7"))
    start = time.monotonic()
    proc = _wait(s, marker, "--set", "n_utts=20")
    writer.join()
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start >= 1.0
    assert proc.stdout.splitlines() == [f"stage 1: node 1 waits for node 0 ({s})", "stage 1: node 0 is done"]


def test_wait_stops_when_node0_fails_ran_other_settings_or_never_comes(tmp_path):
    s, marker = tmp_path / ".done_prepare", tmp_path / ".node0_failed"
    sentinel("fail", str(marker), "--job", "job6", "--message", "stage 1 exited with status 1")  # another job's
    failer = _later(1.0, lambda: sentinel("fail", str(marker), "--job", "job7", "--message",
                                          "stage 1 exited with status 2"))
    proc = _wait(s, marker, "--set", "n_utts=20")
    failer.join()
    assert proc.returncode == 1
    assert "stage 1: node 0 failed (stage 1 exited with status 2" in proc.stderr and "node 1 stops too" in proc.stderr
    marker.unlink()
    done_with(s, "--set", "n_utts=30", job="job7")
    proc = _wait(s, marker, "--set", "n_utts=20")
    assert proc.returncode == 1
    assert "every node must run the same command" in proc.stderr and "n_utts=30, now 20" in proc.stderr
    proc = _wait(tmp_path / "never", marker, "--set", "n_utts=20", timeout="1.5")
    assert proc.returncode == 1
    assert "waited 1.5 s for node 0" in proc.stderr and "--node_wait_timeout" in proc.stderr


def split_words(text: str) -> subprocess.CompletedProcess:
    script = (f'. "{REPO}/tools/recipe_lib.sh"; words out train_overrides "$1"; '
              'echo "${#out[@]}"; printf "<%s>\\n" "${out[@]}"')
    return subprocess.run(["bash", "-c", script, "bash", text], capture_output=True, text=True, timeout=60)


def test_option_lists_split_like_a_command_line_and_never_run_anything(tmp_path):
    marker = tmp_path / "ran"
    text = f"train.epochs=2  'train.init_from=/my models/a.pt' data.x=\"a b\" $(touch {marker}) `touch {marker}`"
    proc = split_words(text)
    assert proc.returncode == 0, proc.stderr
    count, *words = proc.stdout.splitlines()
    assert count == "7" and words == ["<train.epochs=2>", "<train.init_from=/my models/a.pt>", "<data.x=a b>",
                     "<$(touch>", f"<{marker})>", "<`touch>", f"<{marker}`>"]
    assert not marker.exists()
    assert split_words("").stdout.splitlines()[0] == "0"
    proc = split_words("a='b")
    assert proc.returncode == 1 and "run.sh: --train_overrides: No closing quotation" in proc.stderr
