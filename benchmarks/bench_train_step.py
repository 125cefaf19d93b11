"""Training-step speed, side by side in one process, interleaved, medians, printed as ratios.

(a) ``frozen``: the phase-1 train step (frozen WavLM Base+-sized upstream, LAP+ASTP, AAM head of
    17,982 classes, Adam) against the upstream's forward alone, on the same 8 x 2-s batch.
(b) ``backend``: LAP+ASTP forward + backward + Adam on the same hidden states (batch 16 x 99 frames,
    L=13, D=768 and L=25, D=1024) against our previous implementation (a copy of it below), and
    against the authors' modules when ``--official_src DIR`` is given (they take ``[B, D, T, L]``:
    they get a view of the same tensor, channels-last, their fastest layout; they need einops).
(c) ``phases`` (CUDA only): crops/s of phases 1, 2 and 3 at WavLM Base+ and Large size, peak
    memory, the upstream's share of the step, and the host reads of one step.

Upstreams are random-init from a config (no download), written to a temporary ``*_local``
checkpoint and loaded through s3prl. On the CPU, times are process CPU time (robust to other jobs on
a shared machine; run with one thread); on CUDA, wall-clock time between device syncs. Each line
gives the median over ``--reps`` interleaved repetitions and the spread (interquartile range / median).

    OMP_NUM_THREADS=1 python benchmarks/bench_train_step.py [--parts frozen,backend,phases]
        [--reps 7] [--official_src DIR] [--device auto] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from wespeaker_lap.config import BackendConfig, ModelConfig, UpstreamConfig
from wespeaker_lap.losses import AAMSoftmax
from wespeaker_lap.models import build_speaker_model
from wespeaker_lap.models.astp import VAR_FLOOR, AttentiveStatsPooling
from wespeaker_lap.models.backends import ComposedBackend, build_backend
from wespeaker_lap.models.lap import LayerAttentivePooling
from wespeaker_lap.training.performance import adam, cast_frozen_upstream, configure_torch
from wespeaker_lap.training.step import resolve_amp, train_step
from wespeaker_lap.training.trainer import SpeakerClassifier
from wespeaker_lap.utils.host_syncs import HostSyncCounter

SR = 16000
VOX2_SPEAKERS = 5994
WAVLM_SIZES = {  # s3prl WavLMConfig keys of the released checkpoints (weights random)
    "base_plus": dict(extractor_mode="default", encoder_layers=12, encoder_embed_dim=768,
                      encoder_ffn_embed_dim=3072, encoder_attention_heads=12, layer_norm_first=False,
                      normalize=False),
    "large": dict(extractor_mode="layer_norm", encoder_layers=24, encoder_embed_dim=1024,
                  encoder_ffn_embed_dim=4096, encoder_attention_heads=16, layer_norm_first=True,
                  normalize=True),
    "tiny": dict(extractor_mode="default", encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
                 encoder_attention_heads=4, layer_norm_first=False, normalize=False),  # dry runs of (c) on a CPU
}
_COMMON = dict(conv_feature_layers="[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2", conv_bias=False,
               relative_position_embedding=True, num_buckets=320, max_distance=800, gru_rel_pos=True,
               conv_pos=128, conv_pos_groups=16)
PHASES = {  # phase -> (frozen upstream, crop seconds, classes)
    1: (True, 2.0, 3 * VOX2_SPEAKERS),
    2: (False, 2.0, VOX2_SPEAKERS),
    3: (False, 6.0, VOX2_SPEAKERS),
}


# ----------------------------------------------------------------------------- timing


class Timer:
    """Times candidates interleaved (round robin, rotating the start), CPU or CUDA."""

    def __init__(self, device: torch.device):
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return time.perf_counter()
        return time.process_time()

    def run(self, candidates: Dict[str, Callable[[], None]], reps: int, warmup: int = 1) -> Dict[str, List[float]]:
        for fn in candidates.values():
            for _ in range(warmup):
                fn()
        times: Dict[str, List[float]] = {name: [] for name in candidates}
        names = list(candidates)
        for rep in range(reps):
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                start = self.now()
                candidates[name]()
                times[name].append(self.now() - start)
        return times


def summary(times: Sequence[float]) -> Dict[str, float]:
    ordered = sorted(times)
    q1, _, q3 = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else (ordered[0],) * 3
    median = statistics.median(ordered)
    return {"median_s": median, "spread": (q3 - q1) / median, "n": len(ordered)}


def fmt(stats: Dict[str, float]) -> str:
    return f"{stats['median_s'] * 1e3:9.1f} ms (spread {100 * stats['spread']:4.1f} %)"


# ----------------------------------------------------------------------------- models


def write_wavlm(size: str, out_dir: Path) -> Path:
    """A random-init s3prl WavLM checkpoint of a released model's size, for ``wavlm_local``."""
    from s3prl.upstream.wavlm.WavLM import WavLM, WavLMConfig

    cfg = {**_COMMON, **WAVLM_SIZES[size]}
    path = out_dir / f"wavlm_{size}.pt"
    if not path.exists():
        torch.manual_seed(0)
        torch.save({"cfg": cfg, "model": WavLM(WavLMConfig(cfg)).state_dict()}, path)
    return path


def speaker_classifier(upstream_path: Path, frozen: bool, n_classes: int, device: torch.device,
                       amp_dtype: Optional[torch.dtype]) -> SpeakerClassifier:
    """WavLM + LAP+ASTP (the paper's sizes) + AAM head, prepared as the trainer does (bf16 frozen upstream)."""
    torch.manual_seed(0)
    cfg = ModelConfig(upstream=UpstreamConfig("wavlm_local", path=str(upstream_path), frozen=frozen),
                      backend=BackendConfig("lap_astp"))
    model = build_speaker_model(cfg)
    head = AAMSoftmax(model.embed_dim, n_classes, 30.0, 0.2, 3, 5, 0.06)
    classifier = SpeakerClassifier(model, head).to(device).train()
    cast_frozen_upstream(model, amp_dtype)
    return classifier


class PreviousLap(LayerAttentivePooling):
    """LAP as it was before the speed work (git 6ece591), for side-by-side timing; same weights.

    Per-frame broadcast matmuls for the excitation, the BatchNorm applied before the projection.
    Full-length batches only (no masks): that is all the benchmark feeds it.
    """

    def _excite(self, stat: Tensor) -> Tensor:
        hidden = F.relu(torch.matmul(stat, self.sq_weight) + self.sq_bias)  # [N, h, 1, L//2]
        return torch.matmul(hidden, self.ex_weight) + self.ex_bias

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None, return_gates: bool = False) -> Tensor:
        batch, n_frames = x.shape[:2]
        x = self.in_norm(x.permute(0, 3, 1, 2))  # [B, D, T, L]
        x = self.in_proj(x.permute(0, 2, 3, 1))  # [B, T, L, D]
        x = x.reshape(batch * n_frames, self.n_layers, self.n_heads, self.in_dim // self.n_heads)
        x = x.permute(0, 2, 3, 1)  # [BT, h, d, L]
        mean = x.mean(dim=2, keepdim=True)  # [BT, h, 1, L]
        peak = x.max(dim=2, keepdim=True).values
        gates = self.gate_dropout(torch.sigmoid(self._excite(mean) + self._excite(peak)))
        pooled = (x * gates).max(dim=-1).values.reshape(batch, n_frames, self.in_dim)  # [B, T, D]
        return self.out_norm(self.out_proj(pooled).transpose(1, 2))  # [B, out_dim, T]


class PreviousAstp(AttentiveStatsPooling):
    """ASTP as it was before the speed work (git 6ece591): the 3C-channel context built and convolved."""

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        mean = x.mean(dim=-1, keepdim=True)  # [B, C, 1]
        std = x.var(dim=-1, unbiased=False, keepdim=True).clamp(min=VAR_FLOOR).sqrt()  # biased, floored, as then
        context = torch.cat([x, mean.expand_as(x), std.expand_as(x)], dim=1)  # [B, 3C, T]
        scores = self.attn_out(self.attn_norm(F.relu(self.attn_in(context))))  # [B, C, T]
        keep = self._keep_frames(None, x)[:, None, :]
        alpha = torch.softmax(scores.masked_fill(~keep, torch.finfo(scores.dtype).min), dim=-1)
        weighted_mean = (alpha * x).sum(dim=-1)  # [B, C]
        weighted_var = (alpha * x.pow(2)).sum(dim=-1) - weighted_mean.pow(2)
        pooled = torch.cat([weighted_mean, weighted_var.clamp(min=VAR_FLOOR).sqrt()], dim=1)  # [B, 2C]
        return self.embed_norm(self.embed(self.pool_norm(pooled)))


def previous_lap_astp(n_layers: int, in_dim: int) -> ComposedBackend:
    """Our LAP+ASTP before the speed work, with the weights of a fresh ``lap_astp``."""
    backend = build_backend("lap_astp", n_layers, in_dim)
    lap, astp = PreviousLap(n_layers, in_dim, 512, 16, 0.1), PreviousAstp(512, 192)
    lap.load_state_dict(backend.lap.state_dict())
    astp.load_state_dict(backend.astp.state_dict())
    backend.lap, backend.astp = lap, astp
    return backend


def official_lap_astp(src: str, n_layers: int, in_dim: int) -> nn.Module:
    """The authors' LAP + ASTP (``modules/`` of their repository at ``src``)."""
    sys.path.insert(0, str(Path(src).resolve()))
    from modules.pooling_layers.layer_aggregation import LAP
    from modules.speaker_networks.astp import ASTP

    return nn.Sequential(LAP(n_layers, in_dim, 512, 16, 0.1), ASTP(512, 192))


# ----------------------------------------------------------------------------- parts


def part_frozen(args: argparse.Namespace, device: torch.device, work: Path) -> Dict:
    """(a) the frozen-phase train step against the upstream forward alone."""
    amp_dtype = resolve_amp("auto", device)
    classifier = speaker_classifier(write_wavlm("base_plus", work), True, PHASES[1][2], device, amp_dtype)
    upstream = classifier.model.upstream
    batch = args.frozen_batch
    wavs = torch.randn(batch, int(2.0 * SR), device=device)
    wav_lens = torch.full((batch,), wavs.shape[1])
    labels = torch.randint(0, PHASES[1][2], (batch,), device=device)
    optimizer = adam([p for p in classifier.parameters() if p.requires_grad], 1e-3, 5e-5, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    def forward_only() -> None:
        with torch.no_grad(), autocast:
            upstream(wavs, wav_lens)

    def step() -> None:
        train_step(classifier, iter([(wavs, wav_lens, labels)]), 1, optimizer, scaler, amp_dtype, None)

    times = Timer(device).run({"upstream forward": forward_only, "frozen train step": step}, args.reps)
    stats = {name: summary(t) for name, t in times.items()}
    ratio = stats["frozen train step"]["median_s"] / stats["upstream forward"]["median_s"]
    paired = statistics.median(s / f for s, f in zip(times["frozen train step"], times["upstream forward"]))
    print(f"\n(a) frozen phase, WavLM Base+ size, {batch} x 2 s, {device}")
    for name, s in stats.items():
        print(f"    {name:<20} {fmt(s)}")
    print(f"    frozen step / upstream forward = {ratio:.3f}  (target <= 1.25); "
          f"median of the {len(times['upstream forward'])} rounds' own ratios: {paired:.3f}")
    return {"stats": stats, "ratio": ratio, "paired_ratio": paired}


def part_backend(args: argparse.Namespace, device: torch.device, work: Path) -> Dict:
    """(b) LAP+ASTP forward + backward + Adam against the previous and the official implementations."""
    amp_dtype = resolve_amp("auto", device)
    results = {}
    for n_layers, in_dim in ((13, 768), (25, 1024)):
        torch.manual_seed(0)
        hidden = torch.randn(16, 99, n_layers, in_dim, device=device)  # [B, T, L, D]
        backends = {"ours": (build_backend("lap_astp", n_layers, in_dim), hidden),
                    "previous": (previous_lap_astp(n_layers, in_dim), hidden)}
        if args.official_src:
            backends["official"] = (official_lap_astp(args.official_src, n_layers, in_dim),
                                    hidden.permute(0, 3, 1, 2))  # [B, D, T, L] view
        candidates = {name: _backend_step(module.to(device).train(), x, device, amp_dtype)
                      for name, (module, x) in backends.items()}
        times = Timer(device).run(candidates, args.reps)
        stats = {name: summary(t) for name, t in times.items()}
        ratios = {f"ours / {name}": stats["ours"]["median_s"] / stats[name]["median_s"]
                  for name in stats if name != "ours"}
        print(f"\n(b) LAP+ASTP forward + backward + Adam, 16 x 99 frames, L={n_layers}, D={in_dim}, {device}")
        for name, s in stats.items():
            print(f"    {name:<10} {fmt(s)}")
        for name, r in ratios.items():
            print(f"    {name} = {r:.3f}" + ("  (target <= 0.95)" if "official" in name else ""))
        results[f"L{n_layers}_D{in_dim}"] = {"stats": stats, "ratios": ratios}
    return results


def _backend_step(module: nn.Module, x: Tensor, device: torch.device,
                  amp_dtype: Optional[torch.dtype]) -> Callable[[], None]:
    optimizer = adam(module.parameters(), 1e-3, 5e-5, device)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = module(x)
        out.float().square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def part_phases(args: argparse.Namespace, device: torch.device, work: Path) -> Dict:
    """(c) crops/s, peak memory, upstream share and host reads of the three phases (CUDA; ``--sizes tiny``
    also runs on a CPU, to try the code)."""
    if device.type != "cuda" and args.sizes != ["tiny"]:
        print("\n(c) phases: skipped (needs CUDA; --sizes tiny runs a CPU dry run)")
        return {"skipped": "no CUDA"}
    configure_torch(device, deterministic=False, tf32=True)
    amp_dtype = resolve_amp("auto", device)
    micro = dict(zip(PHASES, args.micro_batches))
    results = {}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n(c) phases on {name}, AMP {amp_dtype}")
    print(f"    {'model':<10} {'phase':>5} {'batch':>6} {'crops/s':>9} {'step ms':>9} {'upstream %':>10} "
          f"{'peak GiB':>9} {'host reads':>10}")
    for size in args.sizes:
        path = write_wavlm(size, work)
        classifiers = {}  # phases 2 and 3 share the fine-tuned model (same classes)
        for phase, (frozen, seconds, n_classes) in PHASES.items():
            key = (frozen, n_classes)
            if key not in classifiers:
                classifiers.clear()
                _free(device)
                classifiers[key] = speaker_classifier(path, frozen, n_classes, device, amp_dtype)
            row = _phase(classifiers[key], seconds, n_classes, micro[phase], device, amp_dtype, args.reps)
            results[f"{size}_phase{phase}"] = row
            print(f"    {size:<10} {phase:>5} {micro[phase]:>6} {row['crops_per_s']:>9.1f} "
                  f"{row['step']['median_s'] * 1e3:>9.1f} {100 * row['upstream_share']:>9.1f}% "
                  f"{row['peak_gib']:>9.2f} {row['host_reads']:>10}", flush=True)
            args.save(results)
        classifiers.clear()
        _free(device)
    return results


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _phase(classifier: SpeakerClassifier, seconds: float, n_classes: int, batch: int, device: torch.device,
           amp_dtype: Optional[torch.dtype], reps: int) -> Dict:
    upstream = classifier.model.upstream
    frozen = upstream.frozen
    host_wavs = torch.randn(batch, int(seconds * SR))
    host_wavs = host_wavs.pin_memory() if device.type == "cuda" else host_wavs
    wav_lens = torch.full((batch,), host_wavs.shape[1])
    labels = torch.randint(0, n_classes, (batch,), device=device)
    optimizer = adam([p for p in classifier.parameters() if p.requires_grad], 1e-4, 1e-5, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    def micro_batches():
        yield host_wavs.to(device, non_blocking=True), wav_lens, labels

    def step() -> None:
        train_step(classifier, micro_batches(), 1, optimizer, scaler, amp_dtype, None)

    def upstream_only() -> None:
        wavs = host_wavs.to(device, non_blocking=True)
        if frozen:
            with torch.no_grad(), autocast():
                upstream(wavs, wav_lens)
        else:
            with autocast():
                hidden, _ = upstream(wavs, wav_lens)
            hidden.float().mean().backward()
            classifier.zero_grad(set_to_none=True)

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = Timer(device).run({"step": step, "upstream": upstream_only}, reps, warmup=3)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
    with HostSyncCounter() as syncs:
        step()
    stats = {name: summary(t) for name, t in times.items()}
    classifier.zero_grad(set_to_none=True)
    return {"step": stats["step"], "upstream": stats["upstream"], "crops_per_s": batch / stats["step"]["median_s"],
            "upstream_share": stats["upstream"]["median_s"] / stats["step"]["median_s"], "peak_gib": peak,
            "host_reads": syncs.total, "host_reads_by_op": dict(syncs.by_op)}


PARTS = {"frozen": part_frozen, "backend": part_backend, "phases": part_phases}


def main(argv: Optional[List[str]] = None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="frozen,backend,phases", help=f"comma-separated, of {', '.join(PARTS)}")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    p.add_argument("--official_src", help="the authors' repository (with modules/) for (b)")
    p.add_argument("--frozen_batch", type=int, default=8, help="crops of (a)")
    p.add_argument("--sizes", default="base_plus,large", help="upstream sizes of (c)")
    p.add_argument("--micro_batches", default="128,64,32", help="per-GPU batch of phases 1,2,3 in (c)")
    p.add_argument("--work_dir", help="where the random-init checkpoints go (default: a temporary directory)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    args.sizes = args.sizes.split(",")
    args.micro_batches = [int(v) for v in args.micro_batches.split(",")]
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, {args.reps} interleaved reps; "
          f"times are {'wall-clock' if device.type == 'cuda' else 'process CPU'} seconds")
    results = {"device": str(device), "torch": torch.__version__, "reps": args.reps}

    def save(partial: Optional[Dict] = None, part: str = "") -> None:
        """Write what is measured so far (a run stopped at its time limit keeps its finished rows)."""
        if partial is not None:
            results[part or current[0]] = partial
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))

    args.save, current = save, [""]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for part in args.parts.split(","):
            current[0] = part
            save(PARTS[part](args, device, work), part)
    return results


if __name__ == "__main__":
    main()
