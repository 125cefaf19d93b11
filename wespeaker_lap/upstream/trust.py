"""Untrusted checkpoints: nothing handed to s3prl may run code when it is unpickled.

``torch.load`` without ``weights_only=True`` runs whatever a pickle asks for, and several s3prl
loaders call it that way (``distiller``, ``mockingjay``, ``tera``... pass ``weights_only=False``).
So, unless the user trusts the checkpoint:

* a checkpoint path given to an s3prl name (``*_local``, ``*_url``, ``*_custom``) must load with
  ``torch.load(weights_only=True)`` before s3prl sees it (``check_checkpoint``), and
* while s3prl builds the model, every ``torch.load`` it makes (a downloaded or cached file of a
  registered name too) is forced to ``weights_only=True`` (``weights_only_loads``).

A refusal is an ``UntrustedCheckpointError`` saying which file and why. Trust is given by
``model.upstream.trust_checkpoint: true`` in a training config, ``--trust_checkpoint`` on the
``wespeaker-lap`` command, or ``WESPEAKER_LAP_TRUST_CHECKPOINTS=1`` for any command. A model
file never grants it: ``load_speaker_model`` ignores the flag saved in the file.
"""
from __future__ import annotations

import contextlib
import functools
import os
import pickle
import re
from pathlib import Path
from typing import Iterator

from wespeaker_lap.upstream.cache import UpstreamError

TRUST_ENV = "WESPEAKER_LAP_TRUST_CHECKPOINTS"
_HOW_TO_TRUST = (f"if you trust the file, set model.upstream.trust_checkpoint: true (wespeaker-lap: "
                 f"--trust_checkpoint; any command: {TRUST_ENV}=1)")


class UntrustedCheckpointError(UpstreamError):
    """A checkpoint would run pickled code when loaded and was refused; the message names it."""


def trusted(trust_checkpoint: bool) -> bool:
    """Whether checkpoints are trusted: the flag, or ``WESPEAKER_LAP_TRUST_CHECKPOINTS=1``."""
    return trust_checkpoint or os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def _why(err: BaseException) -> str:
    """The short reason behind a failed weights-only load (torch's own message is a page long)."""
    text = str(err).strip()
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if match:
        return f"it holds a pickled Python object that calls {match.group(1)}"
    if isinstance(err, pickle.UnpicklingError):
        detail = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
        return f"it holds pickled Python objects ({detail.group(1) if detail else text.splitlines()[0]})"
    return f"it is not a torch checkpoint ({type(err).__name__}: {text.splitlines()[0] if text else ''})"


def _refusal(source: str, name: str, err: BaseException) -> UntrustedCheckpointError:
    return UntrustedCheckpointError(
        f"{source}: refused as a checkpoint for {name}: torch.load(weights_only=True) cannot load it, "
        f"so loading it could run code: {_why(err)}; {_HOW_TO_TRUST}")


def check_checkpoint(path: str | Path, name: str) -> None:
    """Raise ``UntrustedCheckpointError`` unless ``path`` loads with ``torch.load(weights_only=True)``.

    Zip-format files are memory-mapped, so a large checkpoint is not read into memory twice.
    """
    import torch

    try:
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # the legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an unpickling refusal, or not a torch file at all: either way not safe to pass on
        raise _refusal(str(path), name, err) from None


@contextlib.contextmanager
def weights_only_loads(name: str) -> Iterator[None]:
    """Inside the block every ``torch.load`` call runs with ``weights_only=True``; a refusal names the file."""
    import torch

    original = torch.load

    @functools.wraps(original)
    def safe_load(f, *args, **kwargs):
        kwargs.pop("pickle_module", None)  # weights_only uses its own restricted unpickler
        kwargs["weights_only"] = True
        try:
            return original(f, *args, **kwargs)
        except pickle.UnpicklingError as err:
            raise _refusal(str(getattr(f, "name", f)), name, err) from None

    torch.load = safe_load
    try:
        yield
    finally:
        torch.load = original
