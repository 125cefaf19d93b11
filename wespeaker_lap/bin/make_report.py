"""Result table of one system's score files: EER % [95 % CI], minDCF at p = 0.01 and 0.05.

Reads ``<scores_dir>/<variant>/*.score`` (variants cosine, asnorm, calibrated), writes the
markdown table to ``--out`` and its rows to the ``.json`` beside it, and a DET plot per
variant (``det_<system>_<variant>.png``) in the same directory. With ``--append`` the rows
of earlier systems in that JSON are kept, so one table can collect several systems.

    python -m wespeaker_lap.bin.make_report --scores_dir exp/lap/scores --system "WavLM B+ LAP" \\
        --out exp/results.md --append
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from wespeaker_lap.scoring.results import load_rows, merge_rows, report_system, save_results
from wespeaker_lap.utils.logging import setup_logging


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scores_dir", required=True)
    p.add_argument("--system", required=True, help="the system's name in the table")
    p.add_argument("--out", required=True, help="markdown file; the JSON rows and DET PNGs go beside it")
    p.add_argument("--n_boot", type=int, default=1000, help="bootstrap replicates for the EER CI (0: none)")
    p.add_argument("--lists", nargs="+", help="trial lists (score-file stems) to report, in this order")
    p.add_argument("--append", action="store_true", help="keep the other systems' rows of an existing table")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    setup_logging(str(out.with_suffix(".log")))
    json_path = out.with_suffix(".json")
    rows = report_system(args.scores_dir, args.system, out.parent, n_boot=args.n_boot, lists=args.lists)
    if args.append:
        rows = merge_rows(load_rows(json_path), rows)
    print(save_results(rows, out, json_path), end="")


if __name__ == "__main__":
    from wespeaker_lap.utils.errors import run_script

    run_script(main)
