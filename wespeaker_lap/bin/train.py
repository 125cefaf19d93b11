"""Train one phase of the recipe (one process, or one of many under torchrun).

``python -m wespeaker_lap.bin.train --config A.yaml [--config B.yaml] --exp_dir DIR [key=value ...]``

Configs merge in order (later files win), then ``key=value`` overrides apply (``optim.lr=5e-5``).
Rerunning the same command resumes from the newest readable checkpoint in ``DIR/checkpoints``;
a changed config is refused unless ``--allow_config_change`` is given.

One process (CPU, or the first GPU)::

    python -m wespeaker_lap.bin.train --config conf/phase1_frozen.yaml --exp_dir exp/phase1

One node, 4 GPUs (``optim.batch_size`` stays the global batch)::

    torchrun --standalone --nproc_per_node 4 -m wespeaker_lap.bin.train \\
        --config conf/phase1_frozen.yaml --exp_dir exp/phase1

Two nodes with 4 GPUs each: run on every node, with the same rendezvous id and endpoint
(a host:port reachable from all nodes; ``DIR`` must be on a shared file system)::

    torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_id lap_phase1 \\
        --rdzv_endpoint node1.example.org:29400 -m wespeaker_lap.bin.train \\
        --config conf/phase1_frozen.yaml --exp_dir exp/phase1

Each process uses ``cuda:LOCAL_RANK`` (NCCL) when GPUs are visible, else the CPU (gloo).
"""
from __future__ import annotations

import argparse
from typing import List, Optional

from wespeaker_lap.config import load_config


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True, metavar="YAML",
                        help="config file; repeat to merge several (later ones win)")
    parser.add_argument("--exp_dir", required=True,
                        help="experiment directory (created; resumed if it holds checkpoints)")
    parser.add_argument("--allow_config_change", action="store_true",
                        help="resume even though the config differs from DIR/config.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=5e-5")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the options
    cfg = load_config(args.config, args.overrides)  # a ConfigError names the file and the key

    from wespeaker_lap.training.trainer import train

    train(cfg, args.exp_dir, allow_config_change=args.allow_config_change)


if __name__ == "__main__":
    from wespeaker_lap.utils.errors import run_script

    run_script(main)
