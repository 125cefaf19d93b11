"""LAP gate heat map (layers x frames) of one utterance, like the paper's figure."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


@torch.inference_mode()
def layer_gates(model: torch.nn.Module, wav: np.ndarray) -> np.ndarray:
    """Gates of a LAP model for one waveform, averaged over heads: ``[L, T]``."""
    model.eval()
    wavs = torch.from_numpy(np.asarray(wav, dtype=np.float32))[None]  # [1, S]
    lens = torch.tensor([wavs.shape[1]])
    gates = model.layer_gates(wavs, lens)  # [1, h, T, L]
    return gates[0].mean(dim=0).T.float().cpu().numpy()  # [L, T]


def plot_gates(gates: np.ndarray, path: str | Path, title: str = "") -> None:
    """Save a heat map of ``gates[L, T]`` (layer 0 = CNN output at the bottom) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_layers, n_frames = gates.shape
    fig, ax = plt.subplots(figsize=(max(6.0, n_frames / 25), 3 + n_layers / 8))
    image = ax.imshow(gates, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=1.0,
                      extent=(0, n_frames * 0.02, -0.5, n_layers - 0.5), interpolation="nearest")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("layer (0 = CNN output)")
    ax.set_yticks(range(n_layers) if n_layers <= 13 else range(0, n_layers, 2))
    ax.set_title(title or "LAP gates (mean over heads)")
    fig.colorbar(image, ax=ax, label="gate")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
