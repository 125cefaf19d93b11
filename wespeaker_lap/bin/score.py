"""Stage 5: score trial lists: cosine (training mean subtracted), AS-Norm and quality-aware calibration.

    python -m wespeaker_lap.bin.score --config conf/eval.yaml --data_dir data --embeddings_dir exp/lap/embeddings \\
        --train_set vox2_dev --eval_set vox1 --trials data/vox1/trials/vox1_O_cleaned.kaldi ... \\
        --out_dir exp/lap/scores [cohort.top_k=300 ...]

Reads ``<embeddings_dir>/<set>/xvector.scp``, ``<embeddings_dir>/train_mean.npy`` and
``<data_dir>/<set>/{utt2spk,utt2dur}``; the cohort and calibration settings come from the evaluation
config (``wespeaker_lap.config.EvalConfig``). Writes ``<out_dir>/<variant>/<list>.score`` (variants
cosine, asnorm, calibrated), ``calibrated/calibration.json``, the resolved config as ``eval.yaml``
and the log ``score.log``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from wespeaker_lap.config import save_config
from wespeaker_lap.scoring.pipeline import ScoringInputs, score_trial_lists, write_score_files
from wespeaker_lap.utils.logging import setup_logging
from wespeaker_lap.utils.options import add_eval_config_options, eval_config


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", nargs="+", required=True, help="Kaldi trial lists '<enroll> <test> target|nontarget'")
    p.add_argument("--data_dir", required=True, type=Path, help="folder of the Kaldi data dirs")
    p.add_argument("--embeddings_dir", required=True, type=Path, help="folder of the extracted sets (stage 4)")
    p.add_argument("--train_set", required=True, help="training set: the mean, calibration, the 'train' cohort")
    p.add_argument("--eval_set", required=True, help="the set the trial lists name")
    p.add_argument("--out_dir", required=True, type=Path)
    add_eval_config_options(p)
    args, cfg = eval_config(p, argv)
    inputs = ScoringInputs.from_layout(args.data_dir, args.embeddings_dir, args.train_set, args.eval_set,
                                       args.trials, cfg.cohort)
    setup_logging(str(args.out_dir / "score.log"))
    save_config(cfg, str(args.out_dir / "eval.yaml"))
    write_score_files(score_trial_lists(inputs, cfg), args.out_dir)


if __name__ == "__main__":
    from wespeaker_lap.utils.errors import run_script

    run_script(main)
