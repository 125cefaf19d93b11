"""Recipe stage 2 (with ``data_format=shard``): a Kaldi dir -> tar shards of N utterances and a shard list.

    python -m wespeaker_lap.bin.make_shards --data_dir data/vox2_dev --utts_per_shard 1000 --nj 8

Writes ``<out_dir>/shard_000000.tar ...``, ``shard.list`` and ``utt2spk`` (default out_dir:
``<data_dir>/shards``, where ``data.format: shard`` looks); see ``wespeaker_lap.data.shards``.
Every audio file is checked on the way. A rerun with the same inputs and options does nothing, and
one that was interrupted keeps the shards already written.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional, Sequence

from wespeaker_lap.data.shards import SHARD_LIST, write_shards
from wespeaker_lap.utils.logging import setup_logging


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, type=Path, help="Kaldi dir with wav.scp and utt2spk")
    parser.add_argument("--out_dir", type=Path, default=None, help="shard folder (default: <data_dir>/shards)")
    parser.add_argument("--utts_per_shard", type=int, default=1000, help="utterances per tar (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the one-off shuffle before sharding")
    parser.add_argument("--on_bad_audio", choices=("error", "skip"), default="error",
                        help="stop at a bad audio file (default), or leave it out with a warning")
    parser.add_argument("--nj", type=int, default=min(8, os.cpu_count() or 1), help="parallel jobs")
    parser.add_argument("--log_file", default=None, help="log file (default: <out_dir>/make_shards.log)")
    args = parser.parse_args(argv)
    if args.utts_per_shard < 1:
        parser.error(f"--utts_per_shard must be >= 1, got {args.utts_per_shard}")
    out_dir = args.out_dir or args.data_dir / "shards"
    setup_logging(args.log_file or str(out_dir / "make_shards.log"))
    shards = write_shards(args.data_dir, out_dir, args.utts_per_shard, args.seed, args.nj,
                          on_bad_audio=args.on_bad_audio)
    print(f"make_shards: {len(shards)} shards of {sum(s.n_utts for s in shards)} utterances; "
          f"list: {out_dir / SHARD_LIST}")


if __name__ == "__main__":
    from wespeaker_lap.utils.errors import run_script

    run_script(main)
