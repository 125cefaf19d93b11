"""Stage 4: whole-utterance embeddings of a Kaldi data dir as ark/scp (sharded under torchrun).

    python -m wespeaker_lap.bin.extract --config conf/eval.yaml --model exp/final_model.pt --data_dir data/vox1 \\
        --out_dir exp/embeddings/vox1 [--mean_out exp/embeddings/train_mean.npy] [extraction.mode=fast ...]
    torchrun --nproc_per_node 4 -m wespeaker_lap.bin.extract ...   # one shard per process/GPU

How utterances are embedded comes from the ``extraction`` section of the evaluation config
(auto / exact / fast, precision, batching, workers). ``--mean_out`` marks a training set: it also
writes the mean embedding there and the speaker means as ``<out_dir>/spk_xvector.scp``. Run the
same command again after a kill or a full disk: each shard keeps its complete entries and embeds
the rest (a shard written with other settings is started over; see ``wespeaker_lap.extraction``).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from wespeaker_lap.extraction import extract_data_dir
from wespeaker_lap.utils.options import add_eval_config_options, eval_config


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="a model file written by training/averaging")
    p.add_argument("--data_dir", required=True, type=Path, help="Kaldi data dir with wav.scp (+ utt2spk, utt2dur)")
    p.add_argument("--out_dir", required=True, type=Path)
    p.add_argument("--mean_out", type=Path, help="training set: write the mean embedding (.npy) here and the "
                   "speaker means to <out_dir>/spk_xvector.scp")
    p.add_argument("--allow_upstream_mismatch", action="store_true",
                   help="go on (with a warning) when the upstream checkpoint is not the one the model was trained with")
    add_eval_config_options(p)
    args, cfg = eval_config(p, argv)
    scp = extract_data_dir(args.model, args.data_dir, args.out_dir, cfg, args.mean_out, args.allow_upstream_mismatch)
    if scp is not None:
        print(f"wrote the embeddings of {args.data_dir} to {scp}")


if __name__ == "__main__":
    from wespeaker_lap.utils.errors import run_script

    run_script(main)
