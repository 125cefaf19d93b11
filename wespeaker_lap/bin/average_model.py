"""Average the last N epoch checkpoints of a run into a model file.

``python -m wespeaker_lap.bin.average_model --exp_dir DIR [--num N] [--out FILE]``

The training script already writes ``DIR/final_model.pt`` this way (N = ``train.num_average``);
use this to average a different number of epochs. The output carries the averaged loss head, so
it can be a later phase's ``train.init_from``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

from wespeaker_lap.utils.logging import setup_logging


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exp_dir", required=True, type=Path, help="training directory with checkpoints/")
    parser.add_argument("--num", type=int, default=None, help="epochs to average (default: train.num_average)")
    parser.add_argument("--out", type=Path, default=None, help="model file (default: DIR/final_model.pt)")
    args = parser.parse_args(argv)
    setup_logging()

    from wespeaker_lap.config import load_config
    from wespeaker_lap.training.checkpoint import CHECKPOINT_SUBDIR, FINAL_MODEL_NAME, write_final_model

    num = args.num if args.num is not None else load_config(str(args.exp_dir / "config.yaml")).train.num_average
    if num < 1:
        parser.error(f"--num must be >= 1, got {num}")
    write_final_model(args.exp_dir / CHECKPOINT_SUBDIR, num, args.out or args.exp_dir / FINAL_MODEL_NAME)


if __name__ == "__main__":
    from wespeaker_lap.utils.errors import run_script

    run_script(main)
