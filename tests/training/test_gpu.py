"""The training fast path on a real GPU: AMP steps, resume across AMP modes, SyncBatchNorm, host syncs, compile.

Marked ``gpu`` and skipped without CUDA; ``benchmarks/gpu/check.sh`` runs them on a GPU machine.
Each test trains the tiny random-init upstreams for a few steps, in this process, with the real
``Trainer`` (the same code path as ``torchrun``), so a failure points at our GPU code, not at scale.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from wespeaker_lap.config import BackendConfig, ExperimentConfig, ModelConfig, UpstreamConfig, from_dict
from wespeaker_lap.training import checkpoint as ckpt
from wespeaker_lap.training.distributed import DistContext

from .training_helpers import free_port, tiny_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def gpu_context() -> DistContext:
    torch.cuda.set_device(0)
    return DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cuda", 0))


def gpu_config(tiny_train_dir, upstream_path, amp: str, frozen: bool = True, **train) -> dict:
    """The CPU tests' tiny config, on the GPU: AMP on, deterministic off (cuDNN autotuning on); a fine-tuned
    upstream gets phase 2's lower LR, as in ``test_phases.py``."""
    optim = {} if frozen else {"lr": 1e-3, "min_lr": 1e-4}
    return tiny_config(tiny_train_dir, upstream_path, model={"upstream": {"frozen": frozen}}, optim=optim,
                       train={"amp": amp, "deterministic": False, "epochs": 1, **train})


def train_on_gpu(cfg: dict, exp_dir: Path, allow_config_change: bool = False):
    from wespeaker_lap.training.trainer import Trainer

    trainer = Trainer(from_dict(ExperimentConfig, cfg), exp_dir, gpu_context(), allow_config_change)
    trainer.run()
    return trainer


def records(exp_dir: Path) -> list:
    return [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def _restore_torch_flags():
    flags = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@pytest.mark.parametrize("amp, frozen", [("bf16", True), ("bf16", False), ("fp16", True), ("fp16", False)])
def test_amp_training_steps_on_the_gpu(tmp_path, tiny_train_dir, tiny_upstreams, amp, frozen):
    """Phase-1 (frozen) and phase-2 (fine-tuned) steps under bf16 and fp16: finite, applied, learning."""
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    cfg = gpu_config(tiny_train_dir, tiny_upstreams["wavlm"], amp, frozen, epochs=3)
    cfg["data"]["num_workers"] = 2  # persistent workers, pinned batches
    trainer = train_on_gpu(cfg, tmp_path / "exp")
    assert trainer.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    assert isinstance(trainer.optimizer, torch.optim.Adam) and trainer.optimizer.defaults["fused"]
    linear_dtypes = {p.dtype for m in trainer.model.upstream.modules() if isinstance(m, torch.nn.Linear)
                     for p in m.parameters()}
    assert linear_dtypes == {torch.bfloat16 if (amp == "bf16" and frozen) else torch.float32}
    assert all(p.dtype == torch.float32 for p in trainer.model.backend.parameters())
    steps = records(tmp_path / "exp")
    assert len(steps) == 12 and all(math.isfinite(r["loss"]) for r in steps)
    assert sum(not r["skipped"] for r in steps) >= 4  # fp16: the scaler skips steps while it calibrates
    first, last = [r["loss"] for r in steps[:4]], [r["loss"] for r in steps[-4:]]
    assert sum(last) < sum(first), (first, last)
    final = torch.load(tmp_path / "exp" / ckpt.FINAL_MODEL_NAME, map_location="cpu", weights_only=True)
    assert all(v.dtype != torch.bfloat16 for v in final["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize("first, second", [("bf16", "fp16"), ("fp16", "bf16")])
def test_resume_across_amp_modes(tmp_path, tiny_train_dir, tiny_upstreams, first, second):
    """A checkpoint written under one AMP mode resumes under the other (amp: auto on another GPU model)."""
    if "bf16" in (first, second) and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    exp_dir = tmp_path / "exp"
    train_on_gpu(gpu_config(tiny_train_dir, tiny_upstreams["wavlm"], first, save_every_steps=0), exp_dir)
    assert [c.epoch for c in ckpt.list_checkpoints(exp_dir / ckpt.CHECKPOINT_SUBDIR)] == [1]
    trainer = train_on_gpu(gpu_config(tiny_train_dir, tiny_upstreams["wavlm"], second, epochs=2,
                                      save_every_steps=0), exp_dir, allow_config_change=True)
    assert trainer.resumed_step == 4 and trainer.global_step == 8
    assert [r["step"] for r in records(exp_dir)] == list(range(1, 9))
    assert all(math.isfinite(r["loss"]) for r in records(exp_dir))


def test_sync_batchnorm_in_a_one_process_nccl_group(tiny_upstreams):
    """LAP/ASTP's BatchNorms as SyncBatchNorm under DDP (NCCL), bf16 autocast: the step equals plain BatchNorm."""
    import torch.distributed as dist

    from wespeaker_lap.losses import AAMSoftmax
    from wespeaker_lap.models import build_speaker_model
    from wespeaker_lap.training.performance import adam
    from wespeaker_lap.training.step import train_step
    from wespeaker_lap.training.trainer import SpeakerClassifier

    device = gpu_context().device
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    try:
        results = []
        for sync in (False, True):
            torch.manual_seed(0)
            model = build_speaker_model(ModelConfig(
                upstream=UpstreamConfig("wavlm_local", path=str(tiny_upstreams["wavlm"])),
                backend=BackendConfig("lap_astp", {"hidden_dim": 32, "n_heads": 4, "dropout": 0.0, "embed_dim": 16})))
            classifier = SpeakerClassifier(model, AAMSoftmax(16, 4, 30.0, 0.2, 2, 2, 0.05)).to(device).train()
            if sync:
                classifier = torch.nn.SyncBatchNorm.convert_sync_batchnorm(classifier)
                assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in classifier.modules()) == 5
            module = torch.nn.parallel.DistributedDataParallel(classifier, device_ids=[0])
            optimizer = adam([p for p in classifier.parameters() if p.requires_grad], 1e-2, 0.0, device)
            scaler = torch.amp.GradScaler("cuda", enabled=False)
            generator = torch.Generator().manual_seed(1)
            batch = (torch.randn(6, 8000, generator=generator).to(device), torch.full((6,), 8000),
                     torch.arange(6, device=device) % 4)
            step = train_step(module, iter([batch]), 1, optimizer, scaler, torch.bfloat16, None)
            lap_norm = classifier.model.backend.lap.in_norm
            results.append((step, lap_norm.running_mean.clone(), classifier.model.backend.astp.embed.weight.clone()))
        (plain, plain_mean, plain_weight), (synced, synced_mean, synced_weight) = results
        assert plain.applied and synced.applied
        assert synced.loss == pytest.approx(plain.loss, rel=1e-3)
        torch.testing.assert_close(synced_mean, plain_mean)
        torch.testing.assert_close(synced_weight, plain_weight, rtol=1e-3, atol=1e-4)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("family", ["wavlm", "hubert", "wav2vec2"])
def test_a_gpu_step_reads_the_host_a_constant_few_times(tiny_upstreams, family):
    """On the GPU the counter also sees device-to-host copies; fused Adam and the frozen bf16 upstream included."""
    from wespeaker_lap.losses import AAMSoftmax
    from wespeaker_lap.models import build_speaker_model
    from wespeaker_lap.training.performance import adam, cast_frozen_upstream
    from wespeaker_lap.training.step import train_step
    from wespeaker_lap.training.trainer import SpeakerClassifier
    from wespeaker_lap.utils.host_syncs import HostSyncCounter

    device = gpu_context().device
    amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    for frozen in (True, False):
        counts = []
        for batch_size in (4, 16):
            torch.manual_seed(0)
            model = build_speaker_model(ModelConfig(
                upstream=UpstreamConfig(f"{family}_local", path=str(tiny_upstreams[family]), frozen=frozen),
                backend=BackendConfig("lap_astp", {"hidden_dim": 32, "n_heads": 4, "embed_dim": 16})))
            classifier = SpeakerClassifier(model, AAMSoftmax(16, 6, 30.0, 0.2, 2, 2, 0.05)).to(device).train()
            cast_frozen_upstream(model, amp)
            optimizer = adam([p for p in classifier.parameters() if p.requires_grad], 1e-3, 1e-5, device)
            scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
            batch = (torch.randn(batch_size, 8000).pin_memory(), torch.full((batch_size,), 8000),
                     torch.arange(batch_size, device=device) % 6)

            def micro_batches():
                yield batch[0].to(device, non_blocking=True), batch[1], batch[2]

            train_step(classifier, micro_batches(), 1, optimizer, scaler, amp, None)  # warm-up
            with HostSyncCounter() as counter:
                train_step(classifier, micro_batches(), 1, optimizer, scaler, amp, 1.0)
            counts.append(dict(counter.by_op))
        assert counts[0] == counts[1] and sum(counts[0].values()) <= 8, (family, frozen, counts)


def test_compiled_backend_trains(tmp_path, tiny_train_dir, tiny_upstreams):
    """``train.compile: backend`` with inductor on the GPU: the same losses as eager, up to rounding."""
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    losses = {}
    for mode in ("off", "backend"):
        cfg = gpu_config(tiny_train_dir, tiny_upstreams["wavlm"], "bf16", compile=mode, save_every_steps=0)
        cfg["model"]["backend"]["options"]["dropout"] = 0.0  # comparable losses
        train_on_gpu(cfg, tmp_path / mode)
        losses[mode] = [r["loss"] for r in records(tmp_path / mode)]
    assert len(losses["backend"]) == 4
    assert losses["backend"] == pytest.approx(losses["off"], rel=0.05)
