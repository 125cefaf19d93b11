"""Stage 6: result table of one system's score files: EER % [95 % CI], minDCF at p = 0.01 and 0.05.

    python -m wespeaker_lap.bin.make_report --config conf/eval.yaml --scores_dir exp/lap/scores \\
        --system "WavLM B+ LAP" --out exp/results.md [--append] [report.n_boot=0 ...]

Reads ``<scores_dir>/<variant>/*.score`` (variants cosine, asnorm, calibrated); the trial lists and
bootstrap replicates come from the ``report`` section of the evaluation config. Writes the markdown
table to ``--out``, its rows to the ``.json`` beside it, the resolved config to the ``.eval.yaml``
beside it, and a DET plot per variant (``det_<system>_<variant>.png``) in the same directory. With
``--append`` the rows of earlier systems in that JSON are kept, so one table can collect several systems.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from wespeaker_lap.config import save_config
from wespeaker_lap.scoring.results import load_rows, merge_rows, report_system, save_results
from wespeaker_lap.utils.logging import setup_logging
from wespeaker_lap.utils.options import add_eval_config_options, eval_config


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scores_dir", required=True)
    p.add_argument("--system", required=True, help="the system's name in the table")
    p.add_argument("--out", required=True, type=Path, help="markdown file; the JSON rows and DET PNGs go beside it")
    p.add_argument("--append", action="store_true", help="keep the other systems' rows of an existing table")
    add_eval_config_options(p)
    args, cfg = eval_config(p, argv)
    setup_logging(str(args.out.with_suffix(".log")))
    save_config(cfg, str(args.out.with_suffix(".eval.yaml")))
    json_path = args.out.with_suffix(".json")
    rows = report_system(args.scores_dir, args.system, args.out.parent, n_boot=cfg.report.n_boot,
                         lists=cfg.report.lists)
    if args.append:
        rows = merge_rows(load_rows(json_path), rows)
    print(save_results(rows, args.out, json_path), end="")


if __name__ == "__main__":
    from wespeaker_lap.utils.errors import run_script

    run_script(main)
