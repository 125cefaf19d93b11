"""Stage 6: LAP gate heat map of one utterance.

    python -m wespeaker_lap.bin.plot_gates --model exp/final_model.pt --wav a.wav --out exp/lap_gates.png
"""
from __future__ import annotations

import argparse

from wespeaker_lap.inference import to_waveform
from wespeaker_lap.models import load_speaker_model
from wespeaker_lap.scoring.gates import layer_gates, plot_gates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--wav", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    model, _ = load_speaker_model(args.model)
    if not hasattr(model, "layer_gates") or not hasattr(model.backend, "layer_gates"):
        raise SystemExit(f"{args.model}: backend has no LAP gates to plot")
    gates = layer_gates(model, to_waveform(args.wav))
    plot_gates(gates, args.out, title=f"LAP gates: {args.wav}")
    print(f"wrote {args.out} ({gates.shape[0]} layers x {gates.shape[1]} frames)")


if __name__ == "__main__":
    from wespeaker_lap.utils.errors import run_script

    run_script(main)
