"""Extraction (stage 4) speed and fidelity, exact vs fast, side by side in one run.

(speed)    utterances/s of ``extraction.extract_shard`` (the loader reading the wavs, the forwards,
           the ark/scp writes: stage 4 for one process but the merge) on synthetic utterances of
           VoxCeleb-like lengths (in groups of similar length, as a large set's neighbours are), for
           each setting: ``exact`` (one utterance per forward, fp32), ``fast_fp32`` (length batches,
           fp32; TF32 on CUDA), ``fast_fp32_any_padding`` (no ``max_padding`` limit), and on CUDA
           ``fast_bf16`` (the default fast mode) and ``fast_bf16_480s`` (4x larger batches).
           Interleaved repetitions, medians, ratios to exact; peak GPU memory. CUDA: a WavLM
           Base+-sized random-init upstream and the paper's LAP+ASTP; CPU: the mini recipe's tiny upstream.
(fidelity) per fast setting, the cosine of each embedding to its exact one on the same utterances
           (worst and mean); on the CPU also ``fast_bf16_cpu_proxy``: CPU bf16 autocast, a proxy
           for the bf16 effect on a GPU (not the same kernels, so not the GPU's number).
(reader)   utterances/s that one loader worker reads and pads: a GPU's fast-mode rate divided by
           it is the number of workers (``extraction.num_workers``) that GPU needs.
(plan)     the padding fast mode's batches would hold for 1.24 M utterances of 4-20 s (simulated).
(recipe)   with ``--exp_dir``: a trained experiment's evaluation and training sets extracted with
           each setting (the training set gives the mean and the AS-Norm cohort), the worst cosine to
           exact over the evaluation set and the EER of each scoring variant (cosine, AS-Norm,
           calibrated) per setting, scored as stage 5 does.

On the CPU times are process CPU seconds with the loader in the main process (robust to other jobs
on a shared machine; run with OMP_NUM_THREADS=1); on CUDA wall-clock seconds with loader workers.

    python benchmarks/bench_extraction.py [--device auto|cpu|cuda] [--out_json FILE] [--reps 5]
        [--exp_dir egs/mini/exp/lap_tiny --data_root egs/mini/data --eval_config egs/mini/conf/eval.yaml]
    (the recipe part reads the experiment's relative paths: run it from the recipe directory, as
     ``cd egs/mini && python ../../benchmarks/bench_extraction.py --skip_speed --exp_dir exp/lap_tiny ...``)
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

import numpy as np
import torch

from wespeaker_lap.config import BackendConfig, EvalConfig, ModelConfig, UpstreamConfig, load_config
from wespeaker_lap.data.kaldi import DataDir, load_data_dir, write_map
from wespeaker_lap.extraction import _BatchAudio, extract_shard, merge_shards, shard_batches, write_training_stats
from wespeaker_lap.inference import Embedder
from wespeaker_lap.scoring.embeddings import Embeddings, read_embeddings

SR = 16000
FAST_SECONDS, FAST_BATCH = 120.0, 64  # ExtractionConfig's defaults
WAVLM_BASE_PLUS = dict(  # s3prl WavLMConfig of the released WavLM Base+ (weights random)
    extractor_mode="default", encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072,
    encoder_attention_heads=12, layer_norm_first=False, normalize=False,
    conv_feature_layers="[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2", conv_bias=False,
    relative_position_embedding=True, num_buckets=320, max_distance=800, gru_rel_pos=True,
    conv_pos=128, conv_pos_groups=16)

Settings = Dict[str, Callable[[torch.nn.Module, torch.device], Embedder]]
SETTINGS: Settings = {
    "exact": lambda model, device: Embedder(model, device),
    "fast_fp32": lambda model, device: Embedder(model, device, FAST_SECONDS, FAST_BATCH),
    "fast_fp32_any_padding": lambda model, device: Embedder(model, device, FAST_SECONDS, FAST_BATCH, max_padding=1.0),
    "fast_bf16": lambda model, device: Embedder(model, device, FAST_SECONDS, FAST_BATCH, torch.bfloat16),
    "fast_bf16_480s": lambda model, device: Embedder(model, device, 4 * FAST_SECONDS, 4 * FAST_BATCH, torch.bfloat16),
}


def settings_for(device: torch.device) -> Dict[str, str]:
    """Label -> SETTINGS key, exact first; on the CPU bf16 is labelled a proxy."""
    if device.type == "cuda":
        return {"exact": "exact", "fast_bf16": "fast_bf16", "fast_fp32": "fast_fp32",
                "fast_bf16_480s": "fast_bf16_480s", "fast_fp32_any_padding": "fast_fp32_any_padding"}
    return {"exact": "exact", "fast_fp32": "fast_fp32", "fast_fp32_any_padding": "fast_fp32_any_padding",
            "fast_bf16_cpu_proxy": "fast_bf16"}


def timed_settings(device: torch.device) -> List[str]:
    """The labels whose speed is measured (the others only for their distance to exact)."""
    if device.type == "cuda":
        return ["exact", "fast_bf16", "fast_fp32", "fast_bf16_480s"]
    return ["exact", "fast_fp32", "fast_fp32_any_padding"]


def voxceleb_like_seconds(n: int, min_seconds: float, max_seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Lengths mimicking VoxCeleb's: ``min`` + an exponential of mean ``(max - min) / 4``, capped at ``max``."""
    return np.minimum(max_seconds, min_seconds + rng.exponential((max_seconds - min_seconds) / 4, size=n))


# ----------------------------------------------------------------------------- inputs


def synthetic_data_dir(root: Path, n: int, min_seconds: float, max_seconds: float, group: int,
                       seed: int = 0) -> DataDir:
    """``n`` 16-kHz PCM wavs (tones + noise with a varying envelope) of ``voxceleb_like_seconds`` lengths.

    The utterances come in groups of ``group`` whose lengths lie within 1 % of each other, as the
    neighbours in length of a large set do: fast mode's batches then fill as they would on VoxCeleb
    (the plan part shows ~15 utterances per 120-s batch there) instead of being cut by ``max_padding``.
    """
    import soundfile as sf

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    base = np.repeat(voxceleb_like_seconds(-(-n // group), min_seconds, max_seconds, rng), group)[:n]
    lengths = base * (1 - rng.uniform(0, 0.01, size=n))
    wav_scp, utt2dur = {}, {}
    for i, seconds in enumerate(lengths):
        t = np.arange(int(seconds * SR)) / SR
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t + rng.uniform(0, 6))
        tones = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 1200, size=3))
        wav = 0.1 * envelope * tones + 0.02 * rng.standard_normal(len(t))
        key = f"utt{i:05d}"
        sf.write(root / f"{key}.wav", np.clip(wav, -1, 1).astype(np.float32), SR, subtype="PCM_16")
        wav_scp[key], utt2dur[key] = str(root / f"{key}.wav"), len(t) / SR
    write_map(root / "wav.scp", wav_scp)
    write_map(root / "utt2dur", {k: f"{v:.4f}" for k, v in utt2dur.items()})
    return load_data_dir(root, need_spk=False)


def benchmark_model(device: torch.device, work: Path) -> tuple[torch.nn.Module, str]:
    """CUDA: WavLM Base+ size + LAP+ASTP (paper sizes); CPU: the mini recipe's tiny WavLM + its LAP+ASTP."""
    from wespeaker_lap.models import build_speaker_model

    torch.manual_seed(0)
    if device.type == "cuda":
        from s3prl.upstream.wavlm.WavLM import WavLM, WavLMConfig

        path = work / "wavlm_base_plus_random.pt"
        torch.save({"cfg": WAVLM_BASE_PLUS, "model": WavLM(WavLMConfig(WAVLM_BASE_PLUS)).state_dict()}, path)
        backend, what = BackendConfig("lap_astp"), "WavLM Base+ size (random init) + LAP+ASTP"
    else:
        from wespeaker_lap.upstream.tiny import write_tiny_upstreams

        path = write_tiny_upstreams(work / "tiny", seed=0, conv_channels=64, width_scale=2)["wavlm"]
        backend = BackendConfig("lap_astp", {"hidden_dim": 128, "n_heads": 4, "embed_dim": 192})
        what = "mini recipe's tiny WavLM (random init) + LAP+ASTP"
    model = build_speaker_model(ModelConfig(UpstreamConfig("wavlm_local", path=str(path)), backend))
    return model.to(device).eval(), what


# ----------------------------------------------------------------------------- measuring


def clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time()


def median_spread(times: Sequence[float]) -> Dict[str, float]:
    ordered = sorted(times)
    q1, _, q3 = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else (ordered[0],) * 3
    median = statistics.median(ordered)
    return {"median_s": median, "spread": (q3 - q1) / median, "n": len(ordered)}


def cosine_to(reference: Embeddings, other: Embeddings) -> np.ndarray:
    """Cosine ``[N]`` of each of ``reference``'s embeddings to ``other``'s of the same key."""
    a = reference.matrix
    b = other.matrix[other.rows(reference.keys)]
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def fidelity(reference: Embeddings, other: Embeddings) -> Dict[str, float]:
    cos = cosine_to(reference, other)
    return {"worst_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "worst_key": reference.keys[int(cos.argmin())]}


def extract(embedder: Embedder, data: DataDir, out_dir: Path, num_workers: int) -> Path:
    extract_shard(embedder, data, out_dir, num_workers=num_workers)
    return merge_shards(data, out_dir, world=1)


def part_speed(model: torch.nn.Module, device: torch.device, data: DataDir, work: Path, reps: int,
               num_workers: int) -> Dict:
    labels = settings_for(device)
    embedders = {label: SETTINGS[key](model, device) for label, key in labels.items()}
    timed = timed_settings(device)
    n, audio = len(data.wav_scp), sum(data.utt2dur.values())
    outputs: Dict[str, Path] = {}
    peak_gib: Dict[str, float] = {}
    for label in labels:  # warm-up (cuDNN, autocast, page cache), and the output compared below
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        outputs[label] = extract(embedders[label], data, work / "warmup" / label, num_workers)
        if device.type == "cuda":
            peak_gib[label] = torch.cuda.max_memory_allocated(device) / 2**30
    times: Dict[str, List[float]] = {label: [] for label in timed}
    for rep in range(reps):
        for label in timed[rep % len(timed):] + timed[:rep % len(timed)]:
            start = clock(device)
            extract(embedders[label], data, work / f"rep{rep}" / label, num_workers)
            times[label].append(clock(device) - start)
    exact = read_embeddings(outputs["exact"], progress=False)
    result: Dict = {"utterances": n, "audio_seconds": audio, "settings": {},
                    "batches": len(shard_batches(embedders["fast_fp32"], data))}
    for label in labels:
        row: Dict = {"description": embedders[label].description}
        if label in peak_gib:
            row["peak_gib"] = peak_gib[label]
        if label in times:
            stats = median_spread(times[label])
            row.update(stats, utt_per_s=n / stats["median_s"], audio_s_per_s=audio / stats["median_s"])
        if label != "exact":
            row.update(fidelity(exact, read_embeddings(outputs[label], progress=False)))
        result["settings"][label] = row
    base = result["settings"]["exact"]["median_s"]
    for label in timed:
        result["settings"][label]["speedup_vs_exact"] = base / result["settings"][label]["median_s"]
    return result


def part_plan(n: int, min_seconds: float = 4.0, max_seconds: float = 20.0) -> Dict:
    """How much padding fast mode's batches (default settings) hold for ``n`` utterances of simulated lengths."""
    from wespeaker_lap.config import ExtractionConfig
    from wespeaker_lap.inference import plan_batches

    cfg = ExtractionConfig()
    seconds = np.round(voxceleb_like_seconds(n, min_seconds, max_seconds, np.random.default_rng(1)), 4)  # as utt2dur
    lengths = np.round(seconds * SR).astype(np.int64)
    batches = plan_batches(lengths.tolist(), int(cfg.max_batch_seconds * SR), cfg.max_batch_size, cfg.max_padding)
    longest = np.concatenate([np.full(len(b), lengths[b[0]]) for b in batches])  # per utterance, in batch order
    mine = lengths[np.concatenate(batches)]
    padding = longest - mine
    return {"utterances": n, "seconds": [min_seconds, max_seconds], "batches": len(batches), "mean_batch_size": n / len(batches),
            "padded_sample_fraction": float(padding.sum() / longest.sum()),
            "worst_padding_fraction": float((padding / longest).max()),
            "utterances_padded_a_frame_or_more": float(np.mean(padding >= 320)),
            "median_padding_samples": float(np.median(padding))}


def part_reader(data: DataDir, embedder: Embedder, reps: int) -> Dict:
    """One loader worker's work (read + check + pad), in this process, wall-clock."""
    dataset = _BatchAudio(data, shard_batches(embedder, data))
    times = []
    for _ in range(max(reps, 3)):
        start = time.perf_counter()
        for i in range(len(dataset)):
            dataset[i]
        times.append(time.perf_counter() - start)
    stats = median_spread(times)
    n, audio = len(data.wav_scp), sum(data.utt2dur.values())
    return {**stats, "utt_per_s": n / stats["median_s"], "audio_s_per_s": audio / stats["median_s"]}


def part_recipe(args: argparse.Namespace, device: torch.device, work: Path) -> Dict:
    """Each setting's embeddings of a trained experiment's sets, scored as stage 5: worst cosine and EERs."""
    from wespeaker_lap.models.model_file import load_speaker_model
    from wespeaker_lap.scoring.metrics import compute_eer
    from wespeaker_lap.scoring.pipeline import ScoringInputs, score_trial_lists

    cfg: EvalConfig = load_config(args.eval_config, cls=EvalConfig) if args.eval_config else EvalConfig()
    data_root = Path(args.data_root)
    trials = [Path(t) for t in (args.trials or [data_root / args.eval_set / "trials"])]
    model, _ = load_speaker_model(Path(args.exp_dir) / "final_model.pt", device=device)
    sets = {name: load_data_dir(data_root / name) for name in (args.eval_set, args.train_set)}
    result: Dict = {"exp_dir": str(args.exp_dir), "eval_set": args.eval_set, "train_set": args.train_set,
                    "trials": [str(t) for t in trials], "settings": {}}
    exact: Optional[Embeddings] = None
    for label, key in settings_for(device).items():
        embedder, root = SETTINGS[key](model, device), work / "recipe" / label
        scps = {name: extract(embedder, data, root / name, args.num_workers) for name, data in sets.items()}
        write_training_stats(sets[args.train_set], scps[args.train_set], root / "train_mean.npy",
                             root / args.train_set)
        scored = score_trial_lists(ScoringInputs.from_layout(data_root, root, args.train_set, args.eval_set,
                                                             trials, cfg.cohort), cfg)
        eers = {variant: {t.name: 100 * compute_eer(s, np.array([target for _, _, target in t.trials]))
                          for t, s in zip(scored.lists, per_list)}
                for variant, per_list in scored.scores.items()}
        embeddings = read_embeddings(scps[args.eval_set], progress=False)
        row: Dict = {"description": embedder.description, "eer_percent": eers}
        if exact is None:
            exact = embeddings
        else:
            row.update(fidelity(exact, embeddings))
            row["eer_change_points"] = {v: {name: eer - result["settings"]["exact"]["eer_percent"][v][name]
                                            for name, eer in per.items()} for v, per in eers.items()}
        result["settings"][label] = row
    return result


# ----------------------------------------------------------------------------- output


def print_speed(result: Dict, what: str, device: torch.device) -> None:
    unit = "wall-clock" if device.type == "cuda" else "process CPU"
    print(f"\n(speed, fidelity) {what}, {device}: {result['utterances']} synthetic utterances, "
          f"{result['audio_seconds']:.0f} s of audio, {result['batches']} fast-mode batches; medians of {unit} seconds")
    for label, row in result["settings"].items():
        speed = (f"{row['utt_per_s']:8.1f} utt/s ({row['audio_s_per_s']:7.0f} s audio/s, spread "
                 f"{100 * row['spread']:4.1f} %)  {row['speedup_vs_exact']:5.2f}x exact"
                 if "utt_per_s" in row else f"{'(not timed)':>56}")
        close = (f"  cosine to exact: worst {row['worst_cosine']:.5f}, mean {row['mean_cosine']:.6f}"
                 if "worst_cosine" in row else "")
        print(f"  {label:20s} {speed}{close}")
        peak = f" (peak GPU memory {row['peak_gib']:.2f} GiB)" if "peak_gib" in row else ""
        print(f"  {'':20s} {row['description']}{peak}")


def print_recipe(result: Dict) -> None:
    print(f"\n(recipe) {result['exp_dir']}: {result['eval_set']} embedded with each setting "
          f"(train set {result['train_set']} for the mean and cohort); EER % per scoring variant")
    for label, row in result["settings"].items():
        eers = ", ".join(f"{variant} {' / '.join(f'{e:.2f}' for e in per.values())}"
                         for variant, per in row["eer_percent"].items())
        line = f"  {label:20s} {eers}"
        if "worst_cosine" in row:
            change = ", ".join(f"{variant} {' / '.join(f'{d:+.2f}' for d in per.values())}"
                               for variant, per in row["eer_change_points"].items())
            line += (f"\n  {'':20s} worst cosine to exact {row['worst_cosine']:.5f} "
                     f"(mean {row['mean_cosine']:.6f}); EER change (points): {change}")
        print(line)


def main(argv: Optional[List[str]] = None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    p.add_argument("--out_json", help="also write the results here")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--utterances", type=int, help="synthetic utterances (default: 256 on CUDA, 24 on the CPU)")
    p.add_argument("--group", type=int, help="synthetic utterances per group of similar length (default: 16 on "
                   "CUDA, 8 on the CPU)")
    p.add_argument("--seconds", default=None,
                   help="min,max utterance seconds (default: 4,20 on CUDA, as VoxCeleb; 2,8 on the CPU)")
    p.add_argument("--num_workers", type=int, help="loader workers (default: 4 on CUDA, 0 on the CPU)")
    p.add_argument("--exp_dir", help="(recipe) a trained experiment with final_model.pt")
    p.add_argument("--data_root", help="(recipe) the directory holding the data sets")
    p.add_argument("--eval_set", default="test")
    p.add_argument("--train_set", default="train")
    p.add_argument("--trials", nargs="*", help="(recipe) trial lists (default: <data_root>/<eval_set>/trials)")
    p.add_argument("--eval_config", help="(recipe) the recipe's conf/eval.yaml (cohort, calibration)")
    p.add_argument("--skip_speed", action="store_true", help="only the recipe part")
    p.add_argument("--plan_utterances", type=int, help="(plan) simulated utterances of 4-20 s (default 1,240,000: "
                   "VoxCeleb1 + VoxCeleb2-dev)")
    p.add_argument("--work_dir", help="where the synthetic data and outputs go (default: a temporary directory)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    n = args.utterances or (256 if cuda else 24)
    low, high = (float(v) for v in (args.seconds or ("4,20" if cuda else "2,8")).split(","))
    if args.num_workers is None:
        args.num_workers = 4 if cuda else 0
    results: Dict = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "reps": args.reps, "num_workers": args.num_workers}
    if cuda:
        results["gpu"] = torch.cuda.get_device_name(device)
    print(f"torch {torch.__version__}, {results.get('gpu', device)}, {torch.get_num_threads()} threads, "
          f"{args.reps} interleaved reps, {args.num_workers} loader workers")
    if cuda:  # as stage 4 (extraction.extract_data_dir) runs
        from wespeaker_lap.training.distributed import set_deterministic

        set_deterministic(warn_only=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not args.skip_speed:
            model, what = benchmark_model(device, work)
            data = synthetic_data_dir(work / "data", n, low, high, args.group or (16 if cuda else 8))
            results["model"] = what
            results["speed"] = part_speed(model, device, data, work / "speed", args.reps, args.num_workers)
            print_speed(results["speed"], what, device)
            results["reader"] = part_reader(data, SETTINGS["fast_fp32"](model, device), args.reps)
            reader = results["reader"]
            print(f"\n(reader) one loader worker reads, checks and pads {reader['utt_per_s']:.0f} utt/s "
                  f"({reader['audio_s_per_s']:.0f} s of audio/s, spread {100 * reader['spread']:.1f} %, wall-clock)")
            del model
        if not args.skip_speed or args.plan_utterances:
            plan = results["plan"] = part_plan(args.plan_utterances or 1_240_000)
            print(f"\n(plan) fast-mode batches of {plan['utterances']:,} simulated utterances of 4-20 s: "
                  f"{plan['batches']:,} batches of {plan['mean_batch_size']:.1f} on average, "
                  f"{100 * plan['padded_sample_fraction']:.4f} % of the samples are padding, median "
                  f"{plan['median_padding_samples']:.0f} samples per utterance, "
                  f"{100 * plan['utterances_padded_a_frame_or_more']:.2f} % padded by a frame (320) or more, "
                  f"worst {100 * plan['worst_padding_fraction']:.2f} % of a row")
        if args.exp_dir:
            if not args.data_root:
                p.error("--exp_dir needs --data_root")
            results["recipe"] = part_recipe(args, device, work)
            print_recipe(results["recipe"])
    if args.out_json:
        Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_json).write_text(json.dumps(results, indent=1))
        print(f"\nwrote {args.out_json}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
