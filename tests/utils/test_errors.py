"""Entry-point errors: one line and status 1; --debug / WESPEAKER_LAP_DEBUG=1 give the traceback."""
from __future__ import annotations

import errno
import logging

import pytest
from torch.utils.data import DataLoader, Dataset

from wespeaker_lap.data.kaldi import DataError
from wespeaker_lap.utils.errors import DEBUG_ENV, DiskFullError, describe, run_main


def fail_with(err: BaseException):
    def main(argv=None):
        raise err
    return main


def test_an_error_is_one_line_and_status_1(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert run_main(fail_with(DataError("data/wav.scp:3: expected '<key> <path>'")), [], prog="x") == 1
    assert capsys.readouterr().err == "x: error: data/wav.scp:3: expected '<key> <path>'\n"


def test_debug_flag_or_environment_shows_the_traceback(monkeypatch):
    seen = []

    def main(argv):
        seen.append(argv)
        raise DataError("boom")

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(DataError, match="boom"):
        run_main(main, ["a", "--debug", "b"])
    assert seen == [["a", "b"]]  # --debug is taken out before main parses its arguments
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(DataError, match="boom"):
        run_main(fail_with(DataError("boom")), [])


def test_unexpected_errors_name_their_type_and_point_to_debug(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert run_main(fail_with(KeyError("spk1")), [], prog="x") == 1
    err = capsys.readouterr().err
    assert err.startswith("x: error: KeyError: 'spk1'") and "--debug" in err and err.count("\n") == 1


def test_exit_status_and_interrupt(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert run_main(lambda argv: 3, []) == 3
    assert run_main(lambda argv: None, []) == 0
    assert run_main(fail_with(KeyboardInterrupt()), [], prog="x") == 130
    assert capsys.readouterr().err == "x: interrupted\n"
    with pytest.raises(SystemExit):  # argparse's own errors and exits pass through
        run_main(fail_with(SystemExit(2)), [])


def test_traceback_goes_to_the_log_file(tmp_path, capsys, monkeypatch):
    from wespeaker_lap.utils.logging import setup_logging

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    setup_logging(str(tmp_path / "run.log"))
    try:
        run_main(fail_with(DataError("bad thing")), [], prog="x")
    finally:
        logging.getLogger().handlers.clear()
    log = (tmp_path / "run.log").read_text()
    assert "x failed: bad thing" in log and "Traceback (most recent call last)" in log
    assert "Traceback" not in capsys.readouterr().err


class _BadItems(Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        raise DataError("bad audio 'u1' (/x/u1.wav): non-finite sample (nan) at sample 7")


def test_an_error_from_a_dataloader_worker_keeps_its_message():
    with pytest.raises(DataError) as caught:
        next(iter(DataLoader(_BadItems(), batch_size=None, num_workers=1)))
    assert "Traceback" in str(caught.value)  # what torch re-raises ...
    # ... and what people see
    assert describe(caught.value) == "bad audio 'u1' (/x/u1.wav): non-finite sample (nan) at sample 7"


def test_a_full_disk_is_named_even_when_chained():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 704 vs 598")
    except RuntimeError as err:
        chained = err
    assert describe(chained).startswith("no space left on device (RuntimeError: [enforce fail")
    assert describe(DiskFullError("exp/final.pt")) == "exp/final.pt: no space left on device while writing it"
    assert describe(OSError(errno.ENOSPC, "No space left on device", "out.ark")) == \
        "no space left on device while writing out.ark"


def test_multi_line_messages_keep_their_hints_indented():
    assert describe(DataError("first\nsecond\n\n  third")) == "first\n  second\n  third"
