"""Training progress: the rank-0 progress bar (or lines), the per-step JSONL metrics log and the training-curve PNG."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from wespeaker_lap.utils.console import progress
from wespeaker_lap.utils.io import atomic_open, atomic_write_text

logger = logging.getLogger(__name__)

CURVE_FIELDS = ("loss", "acc", "lr", "margin")


def progress_bar(total: int, initial: int, desc: str, enabled: bool):
    """Progress over the optimizer steps of one epoch (silent when not ``enabled``): a tqdm bar on a
    terminal, else a line every few seconds and one at the epoch's end (``utils.console.progress``)."""
    return progress(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, disable=not enabled)


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    """Records of a metrics JSONL file; a torn last line (a killed run) is dropped with a warning."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if lineno == len(lines):
                logger.warning("%s:%d: dropping a torn last line (%s)", path, lineno, err)
                break
            raise ValueError(f"{path}:{lineno}: not a JSON record ({err})") from None
    return records


class MetricsLog:
    """Append-only JSONL log, one record per optimizer step, flushed per line.

    On a resume the records past the checkpoint's step are dropped first, so the file always
    describes the one run that produced the weights.
    """

    def __init__(self, path: Path, resume_step: Optional[int]):
        self.path = Path(path)
        if resume_step is None:
            atomic_write_text(self.path, "")
        else:
            kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: Dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def plot_training_curve(metrics_path: Path, png_path: Path, title: str = "") -> None:
    """Plot loss, accuracy, learning rate and margin against the step (epoch starts dotted); write a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    if not records:
        return
    steps = [r["step"] for r in records]
    epoch_starts = [r["step"] for prev, r in zip(records, records[1:]) if r["epoch"] != prev["epoch"]]
    fig, axes = plt.subplots(len(CURVE_FIELDS), 1, figsize=(8, 9), sharex=True)
    for ax, name in zip(axes, CURVE_FIELDS):
        values = [r[name] if r[name] is not None and math.isfinite(r[name]) else math.nan for r in records]
        ax.plot(steps, values, linewidth=0.8)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        for step in epoch_starts:
            ax.axvline(step, color="grey", linestyle=":", linewidth=0.6)
    axes[-1].set_xlabel("optimizer step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_open(png_path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
