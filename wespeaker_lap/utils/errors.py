"""Errors for people: an entry point's failure becomes one line on stderr and a non-zero exit.

Every ``wespeaker_lap.bin.*`` script and the ``wespeaker-lap`` command end with
``run_main(main)``. An exception prints ``<prog>: error: <message>`` (what went wrong, naming
the file and the line or key) and exits with status 1; Ctrl-C exits with 130. The full
traceback still goes to the script's log file (when it has one). ``--debug`` anywhere on the
command line, or ``WESPEAKER_LAP_DEBUG=1``, lets the exception through with its traceback.

A full disk is named as such wherever it happens: ``DiskFullError`` (raised by
``wespeaker_lap.utils.io`` with the file being written) or any ``OSError`` with ``ENOSPC``
in the exception's chain.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, List, NoReturn, Optional, Sequence

DEBUG_ENV = "WESPEAKER_LAP_DEBUG"
DEBUG_FLAG = "--debug"
_TRUE = ("1", "true", "yes", "on")


class DiskFullError(OSError):
    """Writing ``filename`` failed because the device is full (``errno.ENOSPC``)."""

    def __init__(self, filename: str | os.PathLike):
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    def __str__(self) -> str:
        return f"{self.filename}: no space left on device while writing it"


def disk_full_cause(err: BaseException) -> Optional[OSError]:
    """The first ``OSError`` with ``ENOSPC`` in ``err``'s chain (``__cause__``/``__context__``), or None."""
    seen: set = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return err
        err = err.__cause__ or err.__context__
    return None


def debug_enabled() -> bool:
    """Whether ``WESPEAKER_LAP_DEBUG`` asks for tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in _TRUE


def _is_ours(err: BaseException) -> bool:
    """Errors whose message is written for people: the project's own classes and OS errors."""
    return type(err).__module__.startswith("wespeaker_lap") or isinstance(err, OSError)


# Exception types that usually mean a bug rather than bad input: their line points to --debug.
_BUG_TYPES = (AssertionError, AttributeError, IndexError, KeyError, NameError, TypeError, ZeroDivisionError)

_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def _unwrap_worker_message(message: str) -> str:
    """The original message of an exception re-raised from a DataLoader worker (or ``message`` itself).

    PyTorch re-raises a worker's exception as the same type with the worker's formatted
    traceback as its message; the original message follows the traceback's last ``File`` entry.
    """
    if _WORKER_TRACEBACK not in message:
        return message
    lines = message.split(_WORKER_TRACEBACK, 1)[1].splitlines()
    last_frame = max((i for i, line in enumerate(lines) if line.startswith("  File ")), default=-1)
    for i in range(last_frame + 1, len(lines)):
        if lines[i] and not lines[i].startswith(" "):
            text = "\n".join(lines[i:]).strip()
            return re.sub(r"^[\w.]+: ", "", text, count=1)  # "pkg.mod.DataError: msg" -> "msg"
    return message


def describe(err: BaseException) -> str:
    """The message people see for ``err``: one line (a multi-line message keeps its indented hints)."""
    full = disk_full_cause(err)
    if isinstance(err, DiskFullError):
        message = str(err)
    elif full is not None:
        where = f" while writing {full.filename}" if getattr(full, "filename", None) else ""
        message = f"no space left on device{where}"
        if full is not err:
            message += f" ({type(err).__name__}: {_unwrap_worker_message(str(err)).splitlines()[0]})"
    else:
        message = _unwrap_worker_message(str(err)).strip() or type(err).__name__
        if not _is_ours(err):
            message = f"{type(err).__name__}: {message}"
            if isinstance(err, _BUG_TYPES):
                message += f" (an unexpected error; rerun with {DEBUG_FLAG} or {DEBUG_ENV}=1 for the traceback)"
    first, *rest = message.splitlines() or [""]
    return "\n".join([first, *("  " + line.strip() for line in rest if line.strip())])


def _log_to_files(prog: str, err: BaseException) -> None:
    """Put the error and its traceback in the log files set up by ``setup_logging`` (not on stderr)."""
    record = logging.LogRecord("wespeaker_lap", logging.ERROR, __file__, 0, "%s failed: %s",
                               (prog, describe(err)), (type(err), err, err.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _close_progress_bars() -> None:
    """Close tqdm bars the exception left open, so that the error line starts on a line of its own."""
    tqdm_module = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm_module, "tqdm", None), "_instances", ())):
        bar.close()


def run_main(main: Callable[..., Any], argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Call ``main`` and return its exit status; an exception becomes ``<prog>: error: ...`` and status 1.

    ``argv`` None: the arguments are ``sys.argv[1:]`` (``main()`` is called without arguments and
    parses ``sys.argv``); otherwise ``main(argv)``. ``--debug`` is removed from them first.
    """
    args: List[str] = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args or debug_enabled()
    args = [arg for arg in args if arg != DEBUG_FLAG]
    if prog is None:
        prog = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] not in ("", "-c") else "wespeaker-lap"
    if debug:
        os.environ[DEBUG_ENV] = "1"  # worker processes and children see it too
    try:
        if argv is None:
            sys.argv[1:] = args
            status = main()
        else:
            status = main(args)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the point of this function
        if debug:
            raise
        _log_to_files(prog, err)
        _close_progress_bars()
        print(f"{prog}: error: {describe(err)}", file=sys.stderr)
        return 1
    return status if isinstance(status, int) else 0


def run_script(main: Callable[..., Any]) -> NoReturn:
    """``sys.exit(run_main(main))``: the last line of every ``wespeaker_lap.bin`` script."""
    sys.exit(run_main(main))
