"""Full-state training checkpoints: atomic saves, newest-readable resume, pruning and epoch averaging.

Files live in ``<exp_dir>/checkpoints/``: ``epoch_0003_step_00000642.pt`` at the end of epoch 3
(1-based) and ``step_00000500.pt`` mid-epoch. Every name carries the global optimizer step, which
orders them. A checkpoint loads with ``torch.load(weights_only=True)`` and holds:

* ``config``: the resolved config (a dict); ``n_classes`` and ``speakers``: the head's size and labels;
* ``epoch`` (0-based, the epoch to run next or in progress), ``step_in_epoch`` (optimizer steps done in
  it; the data resumes at micro-batch ``step_in_epoch * optim.accum_steps``), ``global_step``;
* ``model`` (``SpeakerModel.model_state_dict()``: a frozen upstream is left out), ``head``,
  ``optimizer``, ``scheduler``, ``scaler`` (state dicts), ``nonfinite`` (skipped-step counters);
* ``rng``: every rank's Python/NumPy/torch (CPU and CUDA) RNG states, in rank order; ``world_size``;
* ``replica_fingerprints``: at epoch ends, every rank's hash of its trainable weights (all equal).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from wespeaker_lap.utils.io import atomic_torch_save

logger = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"
FINAL_MODEL_NAME = "final_model.pt"
REQUIRED_KEYS = (
    "config", "epoch", "step_in_epoch", "global_step", "model", "head", "optimizer",
    "scheduler", "scaler", "nonfinite", "rng", "n_classes", "speakers",
)
_NAME = re.compile(r"(?:epoch_(?P<epoch>\d+)_)?step_(?P<step>\d+)\.pt")


@dataclass(frozen=True)
class CheckpointFile:
    """A checkpoint file and what its name says: global step, and the epoch if it ends one."""

    path: Path
    global_step: int
    epoch: Optional[int]  # 1-based epoch that this checkpoint ends; None mid-epoch

    @property
    def is_epoch_end(self) -> bool:
        return self.epoch is not None


def checkpoint_path(ckpt_dir: Path, global_step: int, epoch_end: Optional[int]) -> Path:
    """Where the checkpoint after ``global_step`` goes; ``epoch_end`` is the 1-based epoch it ends, if any."""
    prefix = f"epoch_{epoch_end:04d}_" if epoch_end is not None else ""
    return ckpt_dir / f"{prefix}step_{global_step:08d}.pt"


def list_checkpoints(ckpt_dir: Path) -> List[CheckpointFile]:
    """Checkpoints in ``ckpt_dir``, oldest first (files with other names are ignored)."""
    found = []
    for path in Path(ckpt_dir).glob("*.pt"):
        match = _NAME.fullmatch(path.name)
        if match:
            epoch = match.group("epoch")
            found.append(CheckpointFile(path, int(match.group("step")), int(epoch) if epoch else None))
    # an epoch-end file sorts after a mid-epoch one of the same step (it holds the same weights)
    return sorted(found, key=lambda c: (c.global_step, c.is_epoch_end))


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Load a checkpoint on the CPU; raise ``ValueError`` naming the file if it is unreadable or incomplete."""
    try:  # mmap: tensors are read on use, so averaging never holds the optimizer states in memory
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated zip, bad pickle, ...: all mean "unusable"
        raise ValueError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a training checkpoint (a {type(state).__name__}, not a dict)")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(f"{path}: not a training checkpoint (missing {', '.join(missing)})")
    return state


def load_latest_checkpoint(ckpt_dir: Path) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """The newest checkpoint that loads, or None if there is none.

    An unreadable newer file is renamed to ``<name>.corrupt`` with a warning and the previous one is
    tried; if every file is unreadable this raises instead of silently starting over.
    """
    candidates = list_checkpoints(ckpt_dir)
    for ckpt in reversed(candidates):
        try:
            return ckpt.path, load_checkpoint(ckpt.path)
        except ValueError as err:
            aside = ckpt.path.with_name(ckpt.path.name + ".corrupt")
            ckpt.path.replace(aside)
            logger.warning("%s; moved it to %s and falling back to the previous checkpoint", err, aside.name)
    if candidates:
        raise RuntimeError(f"{ckpt_dir}: none of the {len(candidates)} checkpoints is readable (see warnings)")
    return None


def save_checkpoint(state: Dict[str, Any], path: Path, keep: int, keep_epochs: int) -> None:
    """Write ``state`` atomically, then delete old checkpoints.

    Kept: the newest ``keep`` files, and the newest ``keep_epochs`` epoch-end files (the ones the final
    average needs).
    """
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise KeyError(f"checkpoint state lacks {', '.join(missing)}")
    atomic_torch_save(state, path)
    prune_checkpoints(path.parent, keep, keep_epochs)


def prune_checkpoints(ckpt_dir: Path, keep: int, keep_epochs: int) -> List[Path]:
    """Delete all but the newest ``keep`` checkpoints and the newest ``keep_epochs`` epoch ends; return the deleted."""
    ckpts = list_checkpoints(ckpt_dir)
    epoch_ends = [c for c in ckpts if c.is_epoch_end]
    kept = {c.path for c in ckpts[-keep:]} | {c.path for c in epoch_ends[-keep_epochs:]}
    deleted = [c.path for c in ckpts if c.path not in kept]
    for path in deleted:
        path.unlink(missing_ok=True)
    return deleted


# ----------------------------------------------------------------------------- averaging


def average_state_dicts(state_dicts: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors (in float64, cast back); other entries from the last dict.

    Integer tensors (BatchNorm's ``num_batches_tracked``) are counters, not weights: the newest value is kept.
    """
    if not state_dicts:
        raise ValueError("nothing to average")
    keys = list(state_dicts[-1])
    for i, sd in enumerate(state_dicts):
        if list(sd) != keys:
            diff = sorted(set(sd) ^ set(keys))
            raise ValueError(f"state dict {i} has different keys than the last one (e.g. {diff[:3]})")
    averaged = {}
    for key in keys:
        last = state_dicts[-1][key]
        if torch.is_tensor(last) and last.is_floating_point():
            total = torch.zeros_like(last, dtype=torch.float64)
            for sd in state_dicts:
                total += sd[key].to(torch.float64)
            averaged[key] = (total / len(state_dicts)).to(last.dtype)
        else:
            averaged[key] = last
    return averaged


def average_epoch_checkpoints(ckpt_dir: Path, num: int) -> Tuple[Dict[str, Any], List[Path]]:
    """Average the model and loss-head weights of the last ``num`` epoch-end checkpoints.

    Returns the newest checkpoint's metadata (config, n_classes, speakers, epoch, global_step) with
    averaged ``model`` and ``head``, and the files used. Fewer than ``num`` files is a warning.
    """
    epoch_ends = [c for c in list_checkpoints(ckpt_dir) if c.is_epoch_end][-num:]
    if not epoch_ends:
        raise FileNotFoundError(f"{ckpt_dir}: no epoch-end checkpoint (epoch_*_step_*.pt) to average")
    if len(epoch_ends) < num:
        logger.warning("averaging %d epoch checkpoints, fewer than the %d asked for", len(epoch_ends), num)
    states = [load_checkpoint(c.path) for c in epoch_ends]
    newest = states[-1]
    for c, state in zip(epoch_ends, states):
        if state["config"]["model"] != newest["config"]["model"] or state["n_classes"] != newest["n_classes"]:
            raise ValueError(f"{c.path}: model config or class count differs from {epoch_ends[-1].path}")
    averaged = {key: newest[key] for key in ("config", "n_classes", "speakers", "epoch", "global_step")}
    averaged["model"] = average_state_dicts([s["model"] for s in states])
    averaged["head"] = average_state_dicts([s["head"] for s in states])
    return averaged, [c.path for c in epoch_ends]


def write_final_model(ckpt_dir: Path, num: int, output: Path, model: Optional[torch.nn.Module] = None) -> Path:
    """Average the last ``num`` epochs into a model file for extraction and for the next phase's ``init_from``.

    The file (``models.model_file``) carries the training extras: the averaged loss head, ``n_classes``,
    ``speakers``, the training config and the averaged file names. ``model`` (a ``SpeakerModel`` of the
    run's config) is reused if given, else built from the checkpoint's config.
    """
    from wespeaker_lap.config import ExperimentConfig, from_dict
    from wespeaker_lap.models.model_file import TrainingExtras, save_speaker_model
    from wespeaker_lap.models.speaker_model import build_speaker_model

    averaged, paths = average_epoch_checkpoints(ckpt_dir, num)
    cfg = from_dict(ExperimentConfig, averaged["config"])
    model = model if model is not None else build_speaker_model(cfg.model)
    model.load_model_state_dict(averaged["model"])
    extras = TrainingExtras(loss_head=averaged["head"], n_classes=averaged["n_classes"],
                            speakers=averaged["speakers"], train_config=averaged["config"],
                            averaged_checkpoints=[p.name for p in paths])
    save_speaker_model(output, model, cfg.model, training=extras)
    logger.info("averaged %s into %s", ", ".join(p.name for p in paths), output)
    return output


def average_run(exp_dir: Path, num: Optional[int], output: Path) -> Path:
    """Average the last ``num`` epochs of the training run in ``exp_dir`` (None: its ``train.num_average``)."""
    from wespeaker_lap.config import load_config

    exp_dir = Path(exp_dir)
    if num is None:
        num = load_config(str(exp_dir / "config.yaml")).train.num_average
    return write_final_model(exp_dir / CHECKPOINT_SUBDIR, num, Path(output))
