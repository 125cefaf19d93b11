#!/usr/bin/env python3
"""Write tiny random-init WavLM, HuBERT and wav2vec 2.0 checkpoints for tests and the mini recipe.

  make_tiny_upstream.py --out_dir DIR [--seed 0] [--conv_channels 32] [--width_scale 1] [--hf]

Writes DIR/wavlm.pt, DIR/hubert.pt and DIR/wav2vec2.pt, loadable by s3prl's wavlm_local,
hubert_local and wav2vec2_local (hop 320 samples, 2-3 layers, width 32-48, a few hundred KB each);
with --hf also DIR/hf_wavlm, a HuggingFace WavLMModel directory for the hf:<dir> upstream.
The weights depend only on --seed.
"""
from __future__ import annotations

import argparse
from typing import Dict, List, Optional
from pathlib import Path


def main(argv: Optional[List[str]] = None) -> Dict[str, Path]:
    """Run the tool; return family -> written path ("hf" for the HF directory)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conv_channels", type=int, default=32, help="channels of every CNN layer")
    parser.add_argument("--width_scale", type=int, default=1, help="multiplies the transformer widths")
    parser.add_argument("--hf", action="store_true", help="also write a tiny HuggingFace WavLM directory")
    args = parser.parse_args(argv)

    from wespeaker_lap.upstream.tiny import write_tiny_hf_wavlm, write_tiny_upstreams

    paths = write_tiny_upstreams(args.out_dir, args.seed, args.conv_channels, args.width_scale)
    if args.hf:
        paths["hf"] = write_tiny_hf_wavlm(Path(args.out_dir) / "hf_wavlm", seed=args.seed)
    for family, path in paths.items():
        print(f"{family} {path}")
    return paths


if __name__ == "__main__":
    main()
