#!/usr/bin/env python3
"""Our backends against the authors' modules, side by side: outputs and parameter counts.

    python benchmarks/check_official_parity.py --official_src /path/to/LAP/src [--batch 4 --frames 99]

``--official_src`` is the ``src`` folder of the official repository (sadPororo/LAP; it needs
``einops``). The official modules are imported from there at run time only; nothing in the
package or the tests imports them.

For every entry of the ablation grid (LAP or SUPERB with ASTP, ECAPA-TDNN or x-vector, and MHFA
with SUPERB or LAP keys/values) the script builds the official module with random weights and
random BatchNorm statistics, copies every weight and buffer into ours (a name map that must
cover both sides exactly), feeds the same hidden states (``[B, D, T, L]`` there, ``[B, T, L, D]``
here) and prints the largest difference relative to the largest official output:

* ``eval``: eval mode (running BatchNorm statistics, no dropout);
* ``train``: train mode with the configured dropout (0.1), both draws made from the same
  seeded generator: LAP's gate dropout and ASTP's frame dropout draw the same numbers in the
  same order in both implementations, so the masks are identical;
* ``train, p=0``: train mode with every dropout set to 0 (batch statistics only).

It exits non-zero when a difference exceeds ``--tolerance`` (default 1e-4) or a parameter count
differs. Base (L=13, D=768) and Large (L=25, D=1024) parameter counts are printed for both.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Tuple

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wespeaker_lap.models import build_backend  # noqa: E402

# (ours, official layer_aggregation, official speaker_network)
GRID = [
    ("lap_astp", "lap", "astp"),
    ("lap_ecapa", "lap", "ecapa-tdnn"),
    ("lap_xvector", "lap", "x-vector"),
    ("superb_astp", "superb", "astp"),
    ("superb_ecapa", "superb", "ecapa-tdnn"),
    ("superb_xvector", "superb", "x-vector"),
    ("mhfa", "superb", "mhfa"),
    ("lap_mhfa", "lap", "mhfa"),
]
HIDDEN, HEADS, DROPOUT, EMBED = 512, 16, 0.1, 192  # the official train_frozen.yaml


def import_official(src: Path) -> SimpleNamespace:
    sys.path.insert(0, str(src))
    from modules.pooling_layers.layer_aggregation import LAP, SUPERB
    from modules.speaker_networks.astp import ASTP
    from modules.speaker_networks.ecapa_tdnn import ECAPA_TDNN
    from modules.speaker_networks.mhfa import MHFA
    from modules.speaker_networks.x_vector import X_vector

    return SimpleNamespace(LAP=LAP, SUPERB=SUPERB, ASTP=ASTP, ECAPA_TDNN=ECAPA_TDNN, MHFA=MHFA, X_vector=X_vector)


class OfficialPipeline(nn.Module):
    """The official ``backend`` ModuleDict, run in order as ``SVmodel.forward`` does."""

    def __init__(self, parts: Dict[str, nn.Module]):
        super().__init__()
        self.parts = nn.ModuleDict(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts.values():
            x = part(x)
        return x


def build_official(off: SimpleNamespace, aggregation: str, network: str, n_layers: int, width: int) -> nn.Module:
    """What ``modules.wrapper_func.backend_module_selection`` builds for this configuration."""
    model_cfg = SimpleNamespace(layer_aggregation=aggregation, speaker_network=network, hidden_size=HIDDEN,
                                n_head=HEADS, dropout=DROPOUT, embed_size=EMBED)
    config = SimpleNamespace(model=model_cfg)
    frontend = SimpleNamespace(num_hidden_layers=n_layers - 1, hidden_size=width)
    if network == "mhfa":
        return OfficialPipeline({"speaker_network": off.MHFA(config, frontend)})
    if aggregation == "superb":
        agg = off.SUPERB(n_layer=n_layers)
    else:
        agg = off.LAP(n_layer=n_layers, size_in=width, size_out=HIDDEN, n_head=HEADS, dropout=DROPOUT)
    size = width if aggregation == "superb" else HIDDEN
    if network == "astp":
        net = off.ASTP(hidden_size=size, embed_dim=EMBED, reduction=0.5, dropout=DROPOUT)
    elif network == "x-vector":
        net = off.X_vector(in_features=size, hidden_size=512, embed_size=512)
    else:
        net = off.ECAPA_TDNN(feat_dim=size, channels=512, embed_dim=192, global_context_att=True, emb_bn=False)
    return OfficialPipeline({"layer_aggregation": agg, "speaker_network": net})


# ----------------------------------------------------------------------------- weight names

LAP_RULES = [(r"in_weight\.", "in_proj."), (r"out_weight\.", "out_proj.")]
SUPERB_RULES = [(r"layer_weights$", "layer_logits")]
ASTP_RULES = [(r"t_pool\.attention\.0\.", "attn_in."), (r"t_pool\.attention\.2\.", "attn_norm."),
              (r"t_pool\.attention\.3\.", "attn_out."), (r"t_pool\.norm\.", "pool_norm."),
              (r"emb_weight\.", "embed."), (r"emb_norm\.", "embed_norm.")]
ECAPA_RULES = [(r"^layer1\.conv\.", "stem.conv."), (r"^layer1\.bn\.", "stem.norm."),
               (r"^layer([234])\.se_res2block\.0\.conv\.", lambda m: f"blocks.{int(m[1]) - 2}.conv_in.conv."),
               (r"^layer([234])\.se_res2block\.0\.bn\.", lambda m: f"blocks.{int(m[1]) - 2}.conv_in.norm."),
               (r"^layer([234])\.se_res2block\.1\.convs\.(\d+)\.",
                lambda m: f"blocks.{int(m[1]) - 2}.res2.groups.{m[2]}.conv."),
               (r"^layer([234])\.se_res2block\.1\.bns\.(\d+)\.",
                lambda m: f"blocks.{int(m[1]) - 2}.res2.groups.{m[2]}.norm."),
               (r"^layer([234])\.se_res2block\.2\.conv\.", lambda m: f"blocks.{int(m[1]) - 2}.conv_out.conv."),
               (r"^layer([234])\.se_res2block\.2\.bn\.", lambda m: f"blocks.{int(m[1]) - 2}.conv_out.norm."),
               (r"^layer([234])\.se_res2block\.3\.linear1\.", lambda m: f"blocks.{int(m[1]) - 2}.se.squeeze."),
               (r"^layer([234])\.se_res2block\.3\.linear2\.", lambda m: f"blocks.{int(m[1]) - 2}.se.excite."),
               (r"^conv\.", "aggregate."), (r"^pool\.linear1\.", "pool.attn_in."),
               (r"^pool\.linear2\.", "pool.attn_out."), (r"^bn\.", "pool_norm."), (r"^linear\.", "embed.")]
XVECTOR_RULES = [(r"^layers\.(\d+)\.", lambda m: f"{'convs' if int(m[1]) % 3 == 0 else 'norms'}.{int(m[1]) // 3}."),
                 (r"^linear1\.", "embed."), (r"^linear2\.", "loss_projection.1.")]
MHFA_RULES = [(r"^cmp_linear_k\.", "compress_key."), (r"^cmp_linear_v\.", "compress_value."),
              (r"^att_head\.", "attention_heads."), (r"^pooling_fc\.", "embed.")]
NETWORK = {"astp": ("astp", ASTP_RULES), "ecapa-tdnn": ("ecapa", ECAPA_RULES),
           "x-vector": ("xvector", XVECTOR_RULES)}


def _apply(rules: List[Tuple[str, object]], key: str) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def our_name(official_key: str, aggregation: str, network: str) -> str:
    """The name of an official weight in our backend."""
    agg_rules = LAP_RULES if aggregation == "lap" else SUPERB_RULES
    part, rest = official_key.split(".", 2)[1], official_key.split(".", 2)[2]
    if network == "mhfa":  # parts.speaker_network.<...>
        for official_prefix, ours in (("l_pool_k.", "key_layers."), ("l_pool_v.", "value_layers.")):
            if rest.startswith(official_prefix):
                return ours + _apply(agg_rules, rest[len(official_prefix):])
        return _apply(MHFA_RULES, rest)
    if part == "layer_aggregation":
        return f"{aggregation}." + _apply(agg_rules, rest)
    name, rules = NETWORK[network]
    return f"{name}." + _apply(rules, rest)


def copy_official_weights(official: nn.Module, ours: nn.Module, aggregation: str, network: str) -> None:
    """Load every official weight and buffer into ours; the name map must cover both sides exactly."""
    target = ours.state_dict()
    mapped = {}
    for key, value in official.state_dict().items():
        name = our_name(key, aggregation, network)
        if name not in target:
            raise KeyError(f"official {key} -> {name}: no such weight in ours")
        if value.numel() != target[name].numel():
            raise ValueError(f"official {key} {tuple(value.shape)} vs our {name} {tuple(target[name].shape)}")
        mapped[name] = value.reshape(target[name].shape)
    missing = sorted(set(target) - set(mapped))
    if missing:
        raise KeyError(f"our weights without an official counterpart: {missing}")
    ours.load_state_dict(mapped, strict=True)


def randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Random weights, biases and BatchNorm statistics, so that no term is trivially zero or one."""
    with torch.no_grad():
        for param in module.parameters():
            scale = 0.5 / param[0].numel() ** 0.5 if param.dim() > 1 else 0.2  # ~ unit-variance activations
            param.copy_(torch.randn(param.shape, generator=generator) * scale)
        for sub in module.modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                sub.running_mean.copy_(torch.randn(sub.running_mean.shape, generator=generator) * 0.1)
                sub.running_var.copy_(torch.rand(sub.running_var.shape, generator=generator) + 0.5)
                sub.weight.add_(1.0)


def set_dropout(module: nn.Module, p: float) -> None:
    """Every dropout of both implementations: nn.Dropout modules and ASTP's frame dropout."""
    for sub in module.modules():
        if isinstance(sub, nn.Dropout):
            sub.p = p
        if hasattr(sub, "p_dropout"):  # the official ASTP
            sub.p_dropout = p
        if type(sub).__name__ == "AttentiveStatsPooling":
            sub.dropout = p


def relative_difference(ours: torch.Tensor, official: torch.Tensor) -> float:
    return float((ours - official).abs().max() / official.abs().max())


def compare(official: nn.Module, ours: nn.Module, x: torch.Tensor, seed: int) -> Dict[str, float]:
    """Max relative difference per mode; ``x`` is ours ``[B, T, L, D]``."""
    x_official = x.permute(0, 3, 1, 2).contiguous()  # [B, T, L, D] -> [B, D, T, L]
    results = {}
    for mode, p in (("eval", None), ("train", DROPOUT), ("train, p=0", 0.0)):
        for module in (official, ours):
            module.train(mode != "eval")
            if p is not None:
                set_dropout(module, p)
        outputs = []
        for module, inputs in ((official, x_official), (ours, x)):
            torch.manual_seed(seed)  # the same dropout draws for both
            with torch.no_grad():
                outputs.append(module(inputs))
        results[mode] = relative_difference(outputs[1], outputs[0])
    set_dropout(official, DROPOUT)
    set_dropout(ours, DROPOUT)
    return results


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official_src", required=True, type=Path, help="the src/ folder of the official code")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=99, help="99 frames: a 2-s training crop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    if not (args.official_src / "modules" / "pooling_layers" / "layer_aggregation.py").is_file():
        parser.error(f"{args.official_src}: not the official src/ folder (no modules/pooling_layers/)")
    off = import_official(args.official_src.resolve())
    torch.set_num_threads(max(1, torch.get_num_threads()))

    failures = []
    print(f"outputs, WavLM Base+ sizes (L=13, D=768), B={args.batch}, T={args.frames}, float32; "
          f"max |ours - official| / max |official|")
    print(f"{'backend':<16}{'eval':>12}{'train':>12}{'train, p=0':>12}")
    generator = torch.Generator().manual_seed(args.seed)
    for ours_name, aggregation, network in GRID:
        n_layers, width = 13, 768
        official = build_official(off, aggregation, network, n_layers, width)
        randomise(official, generator)
        ours = build_backend(ours_name, n_layers, width)
        copy_official_weights(official, ours, aggregation, network)
        x = torch.randn(args.batch, args.frames, n_layers, width, generator=generator)
        diffs = compare(official, ours, x, args.seed)
        print(f"{ours_name:<16}" + "".join(f"{diffs[m]:>12.2e}" for m in ("eval", "train", "train, p=0")))
        failures += [f"{ours_name} {mode}: {d:.2e}" for mode, d in diffs.items() if not d <= args.tolerance]

    print("\nparameters (backend only), ours / official")
    print(f"{'backend':<16}{'Base+ (13 x 768)':>24}{'Large (25 x 1024)':>24}")
    for ours_name, aggregation, network in GRID:
        cells = []
        for n_layers, width in ((13, 768), (25, 1024)):
            with torch.device("meta"):
                official = build_official(off, aggregation, network, n_layers, width)
                ours = build_backend(ours_name, n_layers, width)
            cells.append(f"{count(ours):,} / {count(official):,}")
            if count(ours) != count(official):
                failures.append(f"{ours_name} {n_layers}x{width}: {count(ours)} != {count(official)} parameters")
        print(f"{ours_name:<16}" + "".join(f"{c:>24}" for c in cells))

    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    print(f"\nall outputs within {args.tolerance:g} relative; all parameter counts equal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
