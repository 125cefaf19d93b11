"""Stage 6: LAP gate heat map of one utterance.

    python -m wespeaker_lap.bin.plot_gates --model exp/final_model.pt --wav a.wav --out exp/lap_gates.png

A model whose backend has no LAP gates is an error, or, with ``--skip_without_gates`` (the recipe's
stage 6), a note and exit status 0.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from wespeaker_lap.inference import to_waveform
from wespeaker_lap.models.gates import layer_gates, plot_gates
from wespeaker_lap.models.model_file import load_speaker_model


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--wav", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--allow_upstream_mismatch", action="store_true",
                   help="go on (with a warning) when the upstream checkpoint is not the one the model was trained with")
    p.add_argument("--skip_without_gates", action="store_true",
                   help="a backend without LAP gates is not an error: say so and write nothing")
    args = p.parse_args(argv)
    model, model_file = load_speaker_model(args.model, allow_upstream_mismatch=args.allow_upstream_mismatch)
    if not hasattr(model.backend, "layer_gates"):
        message = f"{args.model}: the {model_file.model_config.backend.name} backend has no LAP gates to plot"
        if args.skip_without_gates:
            print(f"{message}; no {args.out}")
            return
        raise ValueError(message)
    gates = layer_gates(model, to_waveform(args.wav))
    plot_gates(gates, args.out, title=f"LAP gates: {args.wav}")
    print(f"wrote {args.out} ({gates.shape[0]} layers x {gates.shape[1]} frames)")


if __name__ == "__main__":
    from wespeaker_lap.utils.errors import run_script

    run_script(main)
