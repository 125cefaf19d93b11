"""``wespeaker-lap`` command line: embeddings and similarity with a trained experiment.

    wespeaker-lap embed --exp_dir exp/mini a.wav b.wav [--out emb.npy]
    wespeaker-lap similarity --exp_dir exp/mini a.wav b.wav
    wespeaker-lap similarity --exp_dir exp/mini a.wav b.wav \\
        --cohort exp/mini/embeddings/train/spk_xvector.scp --top_k 20   # AS-Norm, as the recipe scores

An error prints one line and exits with status 1; --debug (or WESPEAKER_LAP_DEBUG=1) shows the
traceback instead.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import numpy as np


def main(argv: Optional[List[str]] = None) -> int:
    """The ``wespeaker-lap`` command; returns the exit status (errors: one line on stderr, status 1)."""
    from wespeaker_lap.utils.errors import run_main

    return run_main(_main, argv, prog="wespeaker-lap")


def _main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="wespeaker-lap", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    embed = sub.add_parser("embed", help="print (or save) the embedding of each wav")
    embed.add_argument("wavs", nargs="+")
    embed.add_argument("--out", help="save the [N, E] matrix as .npy instead of printing")
    sim = sub.add_parser("similarity", help="cosine similarity of two wavs (training mean subtracted), or AS-Norm")
    sim.add_argument("wavs", nargs=2)
    sim.add_argument("--cohort", help="scp of cohort embeddings: score with AS-Norm against them")
    sim.add_argument("--top_k", type=int, default=None, help="AS-Norm top-k (default: the evaluation config's)")
    for sp in (embed, sim):
        sp.add_argument("--exp_dir", required=True, help="experiment directory with final_model.pt")
        sp.add_argument("--device", default="cpu")
        sp.add_argument("--allow_upstream_mismatch", action="store_true",
                        help="go on (with a warning) when the upstream checkpoint is not the one trained with")
        sp.add_argument("--trust_checkpoint", action="store_true",
                        help="load an upstream checkpoint that holds pickled objects (it could run code)")
    args = p.parse_args(argv)

    from wespeaker_lap.inference import load_model, to_waveform
    from wespeaker_lap.utils.io import atomic_open

    wavs = [to_waveform(path) for path in args.wavs]  # bad audio fails before the model loads
    cohort = dict(cohort=args.cohort, top_k=args.top_k) if args.command == "similarity" else {}
    model = load_model(args.exp_dir, device=args.device, allow_upstream_mismatch=args.allow_upstream_mismatch,
                       trust_checkpoint=args.trust_checkpoint, **cohort)
    if args.command == "similarity":
        print(f"{model.score(*wavs):.6f}")
        return 0
    embs = np.stack([model.embed(w) for w in wavs])
    if args.out:
        with atomic_open(args.out, "wb") as f:
            np.save(f, embs)
    else:
        for wav, emb in zip(args.wavs, embs):
            print(wav, " ".join(f"{x:.6f}" for x in emb))
    return 0


if __name__ == "__main__":
    sys.exit(main())
