"""Stage 4: average the last epoch checkpoints of a training run into the evaluated model file.

    python -m wespeaker_lap.bin.average_model --config conf/eval.yaml --exp_dir exp/lap/phase3_lmft \\
        --out exp/lap/final_model.pt [averaging.num_average=3]

How many epochs: ``averaging.num_average`` of the evaluation config; null (the default) takes the
run's ``train.num_average``, the average its training already wrote to ``DIR/final_model.pt``.
The output carries the averaged loss head, so it can also be a later phase's ``train.init_from``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from wespeaker_lap.utils.logging import setup_logging
from wespeaker_lap.utils.options import add_eval_config_options, eval_config


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp_dir", required=True, type=Path, help="training directory with config.yaml and checkpoints/")
    p.add_argument("--out", type=Path, default=None, help="model file (default: DIR/final_model.pt)")
    add_eval_config_options(p)
    args, cfg = eval_config(p, argv)
    setup_logging()

    from wespeaker_lap.training.checkpoint import FINAL_MODEL_NAME, average_run

    average_run(args.exp_dir, cfg.averaging.num_average, args.out or args.exp_dir / FINAL_MODEL_NAME)


if __name__ == "__main__":
    from wespeaker_lap.utils.errors import run_script

    run_script(main)
