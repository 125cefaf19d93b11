"""The console: progress that suits where it goes, and filters for known third-party warnings.

* :func:`progress`: a tqdm bar when stderr is a terminal; otherwise (``nohup``, a SLURM output file,
  a pipe) a :class:`ProgressLines` that writes one short line every ``WESPEAKER_LAP_PROGRESS_SECONDS``
  seconds (default 30) and one when it closes, instead of every frame.
* :func:`quiet_third_party_warnings`: targeted filters (by message and category, or by logger) for
  the harmless warnings that s3prl and torch print in every process.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from typing import Any, Iterable, Iterator, Optional

# (message regex, category): warnings of code we call but do not control, each checked harmless.
THIRD_PARTY_WARNINGS = (
    # s3prl's WavLM / HuBERT / wav2vec 2.0 positional convolution uses the old weight_norm API.
    (r"`torch\.nn\.utils\.weight_norm` is deprecated", FutureWarning),
    # s3prl's WavLM attention passes a bool padding mask with a float attention bias.
    (r"Support for mismatched key_padding_mask and attn_mask is deprecated", UserWarning),
)
# (logger, message start): log records of third-party code about features we never use.
THIRD_PARTY_LOG_RECORDS = (
    ("s3prl.upstream.espnet_hubert.expert", "ESPnet is not installed"),  # logged when s3prl.hub is imported
)

PROGRESS_SECONDS_ENV = "WESPEAKER_LAP_PROGRESS_SECONDS"


class _DropRecord(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


_installed = False


def quiet_third_party_warnings() -> None:
    """Install the filters of :data:`THIRD_PARTY_WARNINGS` and :data:`THIRD_PARTY_LOG_RECORDS` (once per process).

    Call it where those libraries are first used (building an upstream). Any other warning of
    theirs, and all of ours, still shows.
    """
    global _installed
    if _installed:
        return
    for message, category in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, prefix in THIRD_PARTY_LOG_RECORDS:
        logging.getLogger(name).addFilter(_DropRecord(prefix))
    _installed = True


# ----------------------------------------------------------------------------- progress


def _interval() -> float:
    raw = os.environ.get(PROGRESS_SECONDS_ENV, "30")
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"{PROGRESS_SECONDS_ENV}={raw!r}: expected a number of seconds") from None
    return max(seconds, 0.0)


def _now() -> float:
    return time.monotonic()


def _on_terminal() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def progress(iterable: Optional[Iterable] = None, *, total: Optional[float] = None, desc: str = "",
             unit: str = "it", initial: float = 0, unit_scale: bool = False, disable: bool = False,
             leave: bool = True, **tqdm_options: Any):
    """A progress bar over ``iterable`` or up to ``total``, used like ``tqdm``.

    On a terminal it is a tqdm bar (``tqdm_options`` go to it); otherwise a :class:`ProgressLines`.
    """
    if _on_terminal():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, unit_scale=unit_scale,
                    disable=disable, leave=leave, **tqdm_options)
    return ProgressLines(iterable, total=total, desc=desc, unit=unit, initial=initial, unit_scale=unit_scale,
                         disable=disable, leave=leave)


class ProgressLines:
    """tqdm's ``update`` / ``set_postfix`` / ``close`` interface, printing a line every few seconds.

    A line looks like ``epoch 3/12: 120/300 step (40%), 2.10 step/s, 57s elapsed, eta 1:26 | loss=1.2``.
    One more line is written on ``close`` when ``leave`` is true or a line was written before, so
    a short loop that says nothing meanwhile stays silent.
    """

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[float] = None, desc: str = "",
                 unit: str = "it", initial: float = 0, unit_scale: bool = False, disable: bool = False,
                 leave: bool = True, interval: Optional[float] = None, file=None):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n, self.initial, self.unit_scale, self.disable, self.leave = initial, initial, unit_scale, disable, leave
        self.interval = _interval() if interval is None else interval
        self.file = file
        self.postfix = ""
        self.start = self.last_print = _now()
        self.printed = False
        self.closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> "ProgressLines":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        now = _now()
        if not self.disable and now - self.last_print >= self.interval:
            self._print(now)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{key}={value}" for key, value in items.items())

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.disable and (self.leave or self.printed):
            self._print(_now(), final=True)

    def line(self, now: float, final: bool = False) -> str:
        """The progress line at time ``now``."""
        from tqdm import tqdm

        elapsed = max(now - self.start, 1e-9)
        done = self.n - self.initial
        count = (lambda x: tqdm.format_sizeof(x)) if self.unit_scale else (lambda x: f"{x:g}")
        text = f"{self.desc}: {count(self.n)}" if self.desc else count(self.n)
        if self.total:
            text += f"/{count(self.total)} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        rate = done / elapsed
        text += f", {count(rate) if self.unit_scale else f'{rate:.3g}'} {self.unit}/s, " \
                f"{tqdm.format_interval(elapsed)} elapsed"
        if self.total and not final and rate > 0:
            text += f", eta {tqdm.format_interval((self.total - self.n) / rate)}"
        if self.postfix:
            text += f" | {self.postfix}"
        return text

    def _print(self, now: float, final: bool = False) -> None:
        print(self.line(now, final), file=self.file or sys.stderr, flush=True)
        self.last_print, self.printed = now, True
