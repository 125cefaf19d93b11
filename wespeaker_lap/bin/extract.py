"""Stage 4: whole-utterance embeddings of a Kaldi data dir as ark/scp (sharded under torchrun).

    python -m wespeaker_lap.bin.extract --model exp/final_model.pt --data_dir data/vox1 \
        --out_dir exp/embeddings/vox1 [--mean_out exp/embeddings/train_mean.npy]
    torchrun --nproc_per_node 4 -m wespeaker_lap.bin.extract ...   # one shard per process/GPU

``--mean_out`` marks a training set: it also writes the mean embedding there and the speaker-mean
AS-Norm cohort as ``<out_dir>/spk_xvector.scp``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from wespeaker_lap.data.kaldi import load_data_dir
from wespeaker_lap.extraction import extract_shard, merge_shards, write_training_stats
from wespeaker_lap.inference import Embedder
from wespeaker_lap.models import load_speaker_model
from wespeaker_lap.training.distributed import barrier, cleanup_distributed, init_distributed, set_deterministic
from wespeaker_lap.utils.logging import setup_logging


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a model file written by training/averaging")
    p.add_argument("--data_dir", required=True, help="Kaldi data dir with wav.scp (+ utt2spk, utt2dur)")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--max_batch_seconds", type=float, default=0.0,
                   help="padded audio per batch; 0 embeds one utterance per forward (bit-exact with the API)")
    p.add_argument("--max_batch_size", type=int, default=32)
    p.add_argument("--num_workers", type=int, default=2, help="audio-reading worker processes")
    p.add_argument("--mean_out", help="training set: write the mean embedding (.npy) here and the "
                   "speaker-mean cohort to <out_dir>/spk_xvector.scp")
    args = p.parse_args()

    ctx = init_distributed()
    out_dir = Path(args.out_dir)
    setup_logging(str(out_dir / "log" / f"extract.{ctx.rank}.log"))
    set_deterministic(warn_only=True)  # an op without a deterministic kernel warns instead of stopping

    data = load_data_dir(args.data_dir, need_spk=bool(args.mean_out))
    model, _ = load_speaker_model(args.model, device=ctx.device)
    embedder = Embedder(model, str(ctx.device), args.max_batch_seconds, args.max_batch_size)
    extract_shard(embedder, data, out_dir, ctx.rank, ctx.world_size, args.num_workers)
    barrier()
    if ctx.is_main:
        scp = merge_shards(data, out_dir, ctx.world_size)
        if args.mean_out:
            write_training_stats(data, scp, Path(args.mean_out), out_dir)
        print(f"wrote {len(data.wav_scp)} embeddings to {scp}")
    cleanup_distributed()


if __name__ == "__main__":
    from wespeaker_lap.utils.errors import run_script

    run_script(main)
