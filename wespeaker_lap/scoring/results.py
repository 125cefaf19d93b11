"""Score files and result tables.

A score file has one ``<enroll> <test> <score> target|nontarget`` line per trial, in trial
order; ``<scores_dir>/<variant>/<trial list>.score`` holds one per scoring variant. A result
row is one system scored one way, with EER (and its bootstrap CI) and minDCF at p = 0.01
and p = 0.05 for every trial list. Rows are kept in ``results.json`` and rendered as a
markdown table, to which other systems' rows can be merged.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from wespeaker_lap.data.kaldi import DataError, Trial
from wespeaker_lap.scoring.metrics import (
    bootstrap_ci,
    eer_from_rates,
    error_rates,
    min_dcf_from_rates,
)
from wespeaker_lap.utils.console import progress as progress_bar
from wespeaker_lap.utils.io import atomic_open, atomic_write_text

logger = logging.getLogger(__name__)

VARIANTS: Dict[str, str] = {"cosine": "cosine", "asnorm": "AS-Norm", "calibrated": "AS-Norm + QMF"}
P_TARGETS = (0.01, 0.05)
Row = Dict[str, Any]  # {"system", "variant", "lists": {list name: metrics}}


def write_scores(path: str | Path, trials: Sequence[Trial], scores: np.ndarray) -> None:
    """Write one score line per trial, atomically."""
    if len(trials) != len(scores):
        raise ValueError(f"{path}: {len(trials)} trials but {len(scores)} scores")
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.writelines(
            f"{enroll} {test} {score:.6f} {'target' if label else 'nontarget'}\n"
            for (enroll, test, label), score in zip(trials, np.asarray(scores, dtype=np.float64).tolist())
        )


def read_scores(path: str | Path) -> Tuple[np.ndarray, np.ndarray]:
    """Scores ``[T]`` (float64) and labels ``[T]`` (1 = target) of a score file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    scores: List[float] = []
    labels: List[bool] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                if len(parts) != 4 or parts[3] not in ("target", "nontarget"):
                    raise ValueError("expected '<enroll> <test> <score> target|nontarget'")
                scores.append(float(parts[2]))
            except ValueError as err:
                raise DataError(f"{path}:{lineno}: {err}, got {line.strip()!r}") from None
            labels.append(parts[3] == "target")
    return np.asarray(scores), np.asarray(labels, dtype=np.int64)


def evaluate(scores: np.ndarray, labels: np.ndarray, n_boot: int = 1000, alpha: float = 0.05) -> Dict[str, Any]:
    """EER (fraction) with its bootstrap CI, and minDCF at each of ``P_TARGETS``."""
    p_miss, p_fa = error_rates(scores, labels)
    metrics: Dict[str, Any] = {
        "n_trials": int(labels.size),
        "n_target": int(labels.sum()),
        "eer": eer_from_rates(p_miss, p_fa),
    }
    if n_boot > 0:
        ci = bootstrap_ci(scores, labels, eer_from_rates, n_boot=n_boot, alpha=alpha, progress=True)
        metrics["eer_ci"] = list(ci)
        metrics["n_boot"] = n_boot
    for p in P_TARGETS:
        metrics[f"min_dcf_{p:g}"] = min_dcf_from_rates(p_miss, p_fa, p_target=p)
    return metrics


def report_system(
    scores_dir: str | Path,
    system: str,
    plot_dir: str | Path,
    n_boot: int = 1000,
    lists: Optional[Sequence[str]] = None,
) -> List[Row]:
    """One row per variant found under ``scores_dir``, and a DET plot per variant in ``plot_dir``.

    ``lists`` picks and orders the trial lists (score-file stems); default: all, sorted.
    """
    from wespeaker_lap.scoring.plots import plot_det

    scores_dir = Path(scores_dir)
    rows: List[Row] = []
    for variant, title in VARIANTS.items():
        files = {path.stem: path for path in sorted((scores_dir / variant).glob("*.score"))}
        if not files:
            continue
        names = list(lists) if lists else list(files)
        missing = [name for name in names if name not in files]
        if missing:
            raise DataError(f"{scores_dir / variant}: no score file {missing[0]}.score")
        metrics, curves = {}, {}
        for name in progress_bar(names, desc=f"{system} {variant}", leave=False):
            scores, labels = read_scores(files[name])
            try:
                metrics[name] = evaluate(scores, labels, n_boot=n_boot)
            except ValueError as err:
                raise DataError(f"{files[name]}: {err}") from None
            p_miss, p_fa = error_rates(scores, labels)
            curves[name] = (p_fa, p_miss)
        plot_det(
            curves,
            Path(plot_dir) / f"det_{_file_safe(system)}_{variant}.png",
            title=f"{system}: {title}",
            eers={name: m["eer"] for name, m in metrics.items()},
        )
        rows.append({"system": system, "variant": variant, "lists": metrics})
    if not rows:
        raise DataError(f"{scores_dir}: no <variant>/*.score files (variants: {', '.join(VARIANTS)})")
    return rows


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)


def merge_rows(old: Sequence[Row], new: Sequence[Row]) -> List[Row]:
    """``old`` with each (system, variant) row of ``new`` replacing its namesake or appended."""
    merged = list(old)
    where = {(row["system"], row["variant"]): i for i, row in enumerate(merged)}
    for row in new:
        key = (row["system"], row["variant"])
        if key in where:
            merged[where[key]] = row
        else:
            where[key] = len(merged)
            merged.append(row)
    return merged


def markdown_table(rows: Sequence[Row]) -> str:
    """A row per system × variant; per trial list: EER % [95 % CI], minDCF 0.01, minDCF 0.05."""
    names: List[str] = []
    for row in rows:
        names += [name for name in row["lists"] if name not in names]
    header = ["system", "scoring"]
    for name in names:
        header += [f"{name} EER % [95 % CI]"] + [f"{name} minDCF{p:g}" for p in P_TARGETS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["system"], VARIANTS.get(row["variant"], row["variant"])]
        for name in names:
            m = row["lists"].get(name)
            if m is None:
                cells += ["–"] * (1 + len(P_TARGETS))
                continue
            eer = f"{100 * m['eer']:.3f}"
            if "eer_ci" in m:
                eer += f" [{100 * m['eer_ci'][0]:.3f}, {100 * m['eer_ci'][1]:.3f}]"
            cells += [eer] + [f"{m[f'min_dcf_{p:g}']:.4f}" for p in P_TARGETS]
        lines.append("| " + " | ".join(cells) + " |")
    n_boots = sorted({m["n_boot"] for row in rows for m in row["lists"].values() if "n_boot" in m})
    note = "EER in %"
    if n_boots:
        replicates = f"{n_boots[0]} replicates" if len(n_boots) == 1 else "replicates: see results.json"
        note += (
            f", with a 95 % percentile-bootstrap interval ({replicates}; trials resampled within each "
            "label; trials that share speakers are not independent, so the interval is optimistic)"
        )
    note += ". minDCF is normalised, C_miss = C_fa = 1, at p_target 0.01 and 0.05."
    return "\n".join(lines) + "\n\n" + note + "\n"


def load_rows(json_path: str | Path) -> List[Row]:
    """Rows of an earlier ``results.json``; none if the file does not exist."""
    path = Path(json_path)
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text(encoding="utf-8"))["rows"])
    except (ValueError, KeyError) as err:
        raise DataError(f"{path}: not a results file: {err!r}") from None


def save_results(rows: Sequence[Row], md_path: str | Path, json_path: str | Path) -> str:
    """Write the markdown table and the JSON rows atomically; return the table."""
    table = markdown_table(rows)
    atomic_write_text(md_path, table)
    atomic_write_text(json_path, json.dumps({"rows": list(rows)}, indent=2) + "\n")
    return table
