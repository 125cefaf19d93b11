"""One training phase under DDP: build, resume or initialise, train epoch by epoch, average, export.

The experiment directory holds ``config.yaml`` (the resolved config), ``train.log``,
``metrics.jsonl`` (one record per optimizer step), ``training_curve.png``,
``checkpoints/`` (full state, see ``checkpoint.py``) and, at the end, ``final_model.pt``: the
average of the last ``train.num_average`` epochs, with the loss head so that the next phase can
start from it. There is no model selection on test lists (docs/reproduction.md §Official bugs
we do not copy, 7).

Numerics follow the official code (docs/reproduction.md §Phase defaults): Adam with *coupled* L2 weight
decay (``torch.optim.Adam``, not AdamW) and one LR for every parameter (head, backend and a trainable
upstream alike); a warmup-cosine LR and the margin are updated per optimizer step. ``optim.batch_size``
and ``optim.lr`` are global: a process gets ``batch_size / (world_size * accum_steps)`` utterances per
micro-batch (or ``train.micro_batch_size``, from which the accumulation follows) and the LR is never
rescaled. Seeds: the model is built under ``train.seed`` on every process (DDP then broadcasts rank 0's
weights anyway); afterwards process ``r`` runs on ``seed + r`` (dropout). The data order depends only on
``(seed, epoch, batch)``, and every epoch reshuffles (ibid., 6). GPU speed settings (cuDNN autotuning,
TF32, a bf16 frozen upstream, fused Adam, ``train.compile``) live in ``performance.py``.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

import torch
import yaml
from torch import nn
from tqdm import tqdm

from wespeaker_lap.config import ExperimentConfig, save_config, to_dict
from wespeaker_lap.losses import AAMSoftmax, margin_at
from wespeaker_lap.training import checkpoint as ckpt
from wespeaker_lap.training.distributed import (
    DistContext, all_gather_objects, barrier, broadcast_object, cleanup_distributed, get_rng_state,
    init_distributed, seed_everything, set_deterministic, set_rng_state,
)
from wespeaker_lap.training.progress import MetricsLog, plot_training_curve, progress_bar
from wespeaker_lap.training.schedule import build_lr_scheduler
from wespeaker_lap.training.performance import (
    accumulation_steps, adam, cast_frozen_upstream, compile_model, configure_torch,
)
from wespeaker_lap.training.step import NonFiniteGuard, StepResult, resolve_amp, restore_scaler, train_step
from wespeaker_lap.utils.logging import setup_logging

if TYPE_CHECKING:
    from wespeaker_lap.models.model_file import ModelFile

logger = logging.getLogger(__name__)

# Keys that do not change what is computed; a resumed run may change them freely.
RUNTIME_KEYS = frozenset({"data.num_workers", "train.log_every", "train.keep_checkpoints", "train.save_every_steps",
                          "model.upstream.trust_checkpoint", "train.micro_batch_size", "train.compile", "train.tf32"})


class ResumeConfigError(RuntimeError):
    """The experiment directory holds checkpoints of a run with a different config."""


def config_differences(old: Dict[str, Any], new: Dict[str, Any], prefix: str = "") -> List[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    keys = []
    for key in sorted(set(old) | set(new)):
        dotted = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += config_differences(a, b, dotted + ".")
        elif a != b:
            keys.append(dotted)
    return keys


def check_resume_config(exp_dir: Path, cfg: ExperimentConfig, allow_change: bool) -> None:
    """Refuse to resume a run whose saved ``config.yaml`` differs (other than :data:`RUNTIME_KEYS`)."""
    saved_path = exp_dir / "config.yaml"
    if not saved_path.is_file():
        if allow_change:
            logger.warning("%s is missing; resuming unchecked (--allow_config_change)", saved_path)
            return
        raise ResumeConfigError(f"{exp_dir}: checkpoints exist but {saved_path.name} is missing; cannot check "
                                "that the resumed run matches (restore it, or pass --allow_config_change)")
    saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
    current = yaml.safe_load(yaml.safe_dump(to_dict(cfg)))  # same float/list normalisation as the file
    runtime = RUNTIME_KEYS
    if cfg.data.format == "shard" and cfg.data.shard_streams is None:
        runtime = runtime - {"data.num_workers"}  # the shard streams, hence the data order, follow the workers
    changed = [key for key in config_differences(saved, current) if key not in runtime]
    if not changed:
        return
    details = "; ".join(f"{key}: {_lookup(saved, key)!r} -> {_lookup(current, key)!r}" for key in changed)
    if not allow_change:
        raise ResumeConfigError(f"{saved_path}: the run in {exp_dir} was started with a different config "
                                f"({details}). Use a new --exp_dir, or pass --allow_config_change to resume anyway.")
    logger.warning("resuming with a changed config (--allow_config_change): %s", details)


def _lookup(tree: Dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


class SpeakerClassifier(nn.Module):
    """Speaker model + loss head as one module, so that one DDP wrapper covers every trainable weight."""

    def __init__(self, model: nn.Module, head: AAMSoftmax):
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor,
                labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``wavs[B, S]``, ``wav_lens[B]``, ``labels[B]`` -> (loss, number of correct predictions)."""
        return self.head(self.model(wavs, wav_lens), labels)


def replica_fingerprint(module: nn.Module) -> str:
    """SHA-256 of the trainable parameters' bytes: equal on all DDP replicas iff their weights are."""
    digest = hashlib.sha256()
    for name, param in module.named_parameters():
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().reshape(-1).cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Trainer:
    """Trains one phase in ``exp_dir``; :meth:`run` returns the final model's path."""

    def __init__(self, cfg: ExperimentConfig, exp_dir: Path, ctx: DistContext, allow_config_change: bool = False):
        self.cfg, self.exp_dir, self.ctx = cfg, Path(exp_dir), ctx
        self.ckpt_dir = self.exp_dir / ckpt.CHECKPOINT_SUBDIR
        if cfg.train.deterministic:
            set_deterministic()
        configure_torch(ctx.device, cfg.train.deterministic, cfg.train.tf32)
        if ckpt.list_checkpoints(self.ckpt_dir):
            check_resume_config(self.exp_dir, cfg, allow_config_change)

        optim = cfg.optim
        self.accum_steps = accumulation_steps(optim.batch_size, optim.accum_steps, cfg.train.micro_batch_size,
                                              ctx.world_size)
        micro_global = optim.batch_size // self.accum_steps
        from wespeaker_lap.data.pipeline import build_train_loader

        self.loader, self.dataset = build_train_loader(cfg.data, micro_global, ctx.rank, ctx.world_size,
                                                       cfg.train.seed, epoch=0)
        self.steps_per_epoch = self.dataset.batches_per_epoch // self.accum_steps
        if self.steps_per_epoch == 0:
            raise ValueError(f"{cfg.data.train_dir}: {self.dataset.batches_per_epoch} micro-batches per epoch give "
                             f"no full step of {self.accum_steps} accumulated micro-batches")
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self.speakers = list(self.dataset.corpus.speakers)
        self.amp_dtype = resolve_amp(cfg.train.amp, ctx.device)
        self._build(self._find_resume_state())
        if ctx.is_main:  # only now: a run that fails to set up leaves the previous config.yaml as it was
            save_config(cfg, str(self.exp_dir / "config.yaml"))
        barrier()

    # ------------------------------------------------------------------ construction

    def _find_resume_state(self) -> Optional[Dict[str, Any]]:
        """Rank 0 picks the newest readable checkpoint; every rank then loads that file."""
        path, state = None, None
        if self.ctx.is_main:
            found = ckpt.load_latest_checkpoint(self.ckpt_dir)
            path, state = (str(found[0]), found[1]) if found else (None, None)
        path = broadcast_object(path)
        if path is None:
            return None
        logger.info("resuming from %s", path)
        return state if state is not None else ckpt.load_checkpoint(Path(path))

    def _build(self, resume: Optional[Dict[str, Any]]) -> None:
        """Model and head (from the checkpoint, ``init_from`` or scratch), DDP, optimizer, schedule, scaler."""
        cfg, ctx = self.cfg, self.ctx
        self._build_model_and_head(resume)
        classifier = SpeakerClassifier(self.model, self.head).to(ctx.device)
        cast_frozen_upstream(self.model, self.amp_dtype)
        compile_model(self.model, cfg.train.compile)
        if ctx.is_distributed and ctx.device.type == "cuda" and cfg.train.sync_batchnorm:
            classifier = nn.SyncBatchNorm.convert_sync_batchnorm(classifier)
        self.classifier = classifier
        self.module: nn.Module = classifier
        if ctx.is_distributed:  # frozen parameters (requires_grad False) are left out of DDP's reduction
            self.module = nn.parallel.DistributedDataParallel(
                classifier, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        trainable = [p for p in classifier.parameters() if p.requires_grad]
        self.optimizer = adam(trainable, cfg.optim.lr, cfg.optim.weight_decay, ctx.device)
        self.scheduler = build_lr_scheduler(self.optimizer, cfg.optim, self.total_steps)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.amp_dtype == torch.float16)
        self.guard = NonFiniteGuard(cfg.train.max_nonfinite_steps)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.resumed_step = None if resume is None else resume["global_step"]
        if resume is not None:
            self._restore(resume)
        else:
            seed_everything(cfg.train.seed + ctx.rank)
        n_frozen = sum(p.numel() for p in classifier.parameters() if not p.requires_grad)
        logger.info("%d processes on %s, AMP %s; %.2f M trainable parameters (%.2f M frozen); head: %d classes; "
                    "%d steps per epoch of %d utterances", ctx.world_size, ctx.device, self.amp_dtype or "off",
                    sum(p.numel() for p in trainable) / 1e6, n_frozen / 1e6, self.head.n_classes,
                    self.steps_per_epoch, cfg.optim.batch_size)

    def _build_model_and_head(self, resume: Optional[Dict[str, Any]]) -> None:
        from wespeaker_lap.models import build_speaker_model

        cfg = self.cfg
        seed_everything(cfg.train.seed)  # the same initial weights on every process
        self.model = build_speaker_model(cfg.model)
        init = self._read_init_from(cfg.train.init_from) if resume is None and cfg.train.init_from else None
        n_classes = (resume["n_classes"] if resume is not None else
                     init.training.n_classes if init is not None else self.dataset.n_classes)
        loss = cfg.loss
        self.head = AAMSoftmax(self.model.embed_dim, n_classes, loss.scale, loss.margin,
                               loss.sub_centers, loss.top_k, loss.penalty)
        if resume is not None:
            self.model.load_model_state_dict(resume["model"])
            self.head.load_state_dict(resume["head"])
        elif init is not None:
            self._apply_init_from(init)
        if self.head.n_classes < self.dataset.n_classes:
            raise ValueError(f"the loss head has {self.head.n_classes} classes but {cfg.data.train_dir} yields "
                             f"{self.dataset.n_classes} (speed perturbation triples them)")

    def _read_init_from(self, path: str) -> "ModelFile":
        """The previous phase's model file, checked against this phase's upstream and speakers."""
        from wespeaker_lap.models.model_file import check_upstream, read_model_file

        init = read_model_file(path)
        if init.training is None:
            raise ValueError(f"train.init_from: {path} has no loss head; it must be a final_model.pt "
                             "written by wespeaker_lap.bin.train or bin.average_model")
        check_upstream(init, self.cfg.model.upstream, hint="Every phase must use the upstream checkpoint "
                       "the previous phase was trained with: fix model.upstream (or train.init_from)")
        if list(init.training.speakers) != self.speakers:
            raise ValueError(f"train.init_from: the speakers of {path} differ from those of {self.cfg.data.train_dir}, "
                             "so the classifier rows would not match the labels")
        return init

    def _apply_init_from(self, init: "ModelFile") -> None:
        """Load the previous phase's model and head.

        With ``train.slice_classes``, drop head rows the data cannot produce (docs/reproduction.md §Classifier).
        """
        self.model.load_model_state_dict(init.state_dict)
        self.head.load_state_dict(init.training.loss_head)
        if self.cfg.train.slice_classes and self.head.n_classes > self.dataset.n_classes:
            logger.info("slicing the loss head from %d to %d classes (no speed-perturbed classes in this phase)",
                        self.head.n_classes, self.dataset.n_classes)
            self.head.slice_classes(self.dataset.n_classes)
        logger.info("initialised from %s", self.cfg.train.init_from)

    def _restore(self, state: Dict[str, Any]) -> None:
        """Optimizer, schedule, scaler, counters, position and this rank's RNG streams from a checkpoint."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_scaler(self.scaler, state["scaler"])
        self.guard.load_state_dict(state["nonfinite"])
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        if len(state["rng"]) == self.ctx.world_size:
            set_rng_state(state["rng"][self.ctx.rank])
        else:
            logger.warning("the checkpoint was written by %d processes, this run has %d: RNG streams are reseeded, "
                           "so the run will not replay exactly", len(state["rng"]), self.ctx.world_size)
            seed_everything(self.cfg.train.seed + self.ctx.rank + self.global_step)

    # ------------------------------------------------------------------ training

    def run(self) -> Path:
        """Train the remaining epochs, then average the last ones into ``final_model.pt`` (rank 0)."""
        cfg = self.cfg
        metrics = MetricsLog(self.exp_dir / "metrics.jsonl", self.resumed_step) if self.ctx.is_main else None
        start = time.time()
        try:
            while self.epoch < cfg.train.epochs:
                self._train_epoch(metrics)
        finally:
            if metrics is not None:
                metrics.close()
        final = self.exp_dir / ckpt.FINAL_MODEL_NAME
        if self.ctx.is_main:
            ckpt.write_final_model(self.ckpt_dir, cfg.train.num_average, final, model=self.model)
            logger.info("wrote %s (%.1f min in this process; %d non-finite steps skipped in all)",
                        final, (time.time() - start) / 60, self.guard.total)
        barrier()
        return final

    def _micro_batches(self, epoch: int, start_step: int) -> Iterator[Tuple[torch.Tensor, ...]]:
        """This process's micro-batches of ``epoch`` from optimizer step ``start_step`` on, on the device."""
        self.dataset.set_epoch(epoch, start_step * self.accum_steps)
        with torch.random.fork_rng(devices=[]):  # the DataLoader draws a seed from the global RNG; keep it out
            batches = iter(self.loader)
        for batch in batches:
            wavs = batch["wavs"].to(self.ctx.device, non_blocking=True)  # from pinned memory on a GPU
            wav_lens = torch.full((wavs.shape[0],), wavs.shape[1], dtype=torch.long)  # on the host, where it is read
            yield wavs, wav_lens, batch["labels"].to(self.ctx.device, non_blocking=True)

    def _train_epoch(self, metrics: Optional[MetricsLog]) -> None:
        cfg, epoch = self.cfg, self.epoch
        self.module.train()
        micro_batches = self._micro_batches(epoch, self.step_in_epoch)
        bar = progress_bar(self.steps_per_epoch, self.step_in_epoch, f"epoch {epoch + 1}/{cfg.train.epochs}",
                           self.ctx.is_main)
        epoch_start, losses, accuracies = time.time(), [], []
        while self.step_in_epoch < self.steps_per_epoch:
            step_start = time.time()
            margin = self._set_margin()
            lr = self.optimizer.param_groups[0]["lr"]
            result = train_step(self.module, micro_batches, self.accum_steps, self.optimizer, self.scaler,
                                self.amp_dtype, cfg.optim.grad_clip)
            self.scheduler.step()
            self.global_step += 1
            self.step_in_epoch += 1
            if result.finite:
                losses.append(result.loss)
                accuracies.append(result.accuracy)
            if metrics is not None:
                self._log_step(metrics, bar, result, lr, margin, time.time() - step_start)
            self.guard.record(result.finite, self.global_step)
            every = cfg.train.save_every_steps
            if every and self.global_step % every == 0 and self.step_in_epoch < self.steps_per_epoch:
                self._save(epoch_end=False)
        bar.close()
        micro_batches.close()  # the (persistent) workers are reset when the next epoch iterates the loader
        self.epoch, self.step_in_epoch = epoch + 1, 0
        if losses:
            logger.info("epoch %d/%d done in %.1f min: mean loss %.4f, mean accuracy %.4f", epoch + 1,
                        cfg.train.epochs, (time.time() - epoch_start) / 60, sum(losses) / len(losses),
                        sum(accuracies) / len(accuracies))
        self._save(epoch_end=True)
        if self.ctx.is_main:
            plot_training_curve(self.exp_dir / "metrics.jsonl", self.exp_dir / "training_curve.png",
                                f"{self.exp_dir.name}: {cfg.model.upstream.name} + {cfg.model.backend.name}")

    def _set_margin(self) -> float:
        schedule = self.cfg.loss.schedule
        margin = margin_at(self.global_step / self.steps_per_epoch, self.cfg.loss.margin, schedule.initial,
                           schedule.start_epoch, schedule.ramp_epochs, schedule.shape)
        self.head.set_margin(margin)
        return margin

    def _log_step(self, metrics: MetricsLog, bar: tqdm, result: StepResult, lr: float, margin: float,
                  seconds: float) -> None:
        def finite_or_none(value: float) -> Optional[float]:
            return value if math.isfinite(value) else None

        record = {"epoch": self.epoch + 1, "step": self.global_step, "loss": finite_or_none(result.loss),
                  "acc": result.accuracy, "lr": lr, "margin": margin,
                  "grad_norm": finite_or_none(result.grad_norm), "skipped": not result.applied,
                  "time": round(time.time(), 3), "step_seconds": round(seconds, 4)}
        metrics.write(record)
        bar.set_postfix(loss=f"{result.loss:.3f}", acc=f"{result.accuracy:.3f}", lr=f"{lr:.2e}",
                        margin=f"{margin:.3f}", refresh=False)
        bar.update()
        if self.global_step % self.cfg.train.log_every == 0:
            logger.info("epoch %d step %d/%d (global %d): loss %.4f acc %.4f lr %.3e margin %.4f grad_norm %.3f",
                        self.epoch + 1, self.step_in_epoch, self.steps_per_epoch, self.global_step, result.loss,
                        result.accuracy, lr, margin, result.grad_norm)

    def _save(self, epoch_end: bool) -> None:
        """Write a full-state checkpoint (a collective: every rank contributes its RNG state)."""
        rng = all_gather_objects(get_rng_state())
        fingerprints = all_gather_objects(replica_fingerprint(self.classifier)) if epoch_end else None
        if fingerprints and len(set(fingerprints)) > 1:
            raise RuntimeError(f"after epoch {self.epoch} the DDP replicas hold different weights "
                               f"(fingerprints {fingerprints}); the run is broken")
        if not self.ctx.is_main:
            return
        state = {
            "config": to_dict(self.cfg), "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step, "model": self.model.model_state_dict(),
            "head": self.head.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "nonfinite": self.guard.state_dict(), "rng": rng, "world_size": self.ctx.world_size,
            "n_classes": self.head.n_classes, "speakers": self.speakers, "replica_fingerprints": fingerprints,
        }
        path = ckpt.checkpoint_path(self.ckpt_dir, self.global_step, self.epoch if epoch_end else None)
        ckpt.save_checkpoint(state, path, self.cfg.train.keep_checkpoints, self.cfg.train.num_average)
        logger.info("saved %s", path)


def train(cfg: ExperimentConfig, exp_dir: str | Path, allow_config_change: bool = False) -> Path:
    """Run one training phase in this process (one of ``WORLD_SIZE`` under torchrun); return the final model."""
    ctx = init_distributed()
    exp_dir = Path(exp_dir)
    if ctx.is_main:
        setup_logging(str(exp_dir / "train.log"))
    else:
        setup_logging(None, logging.WARNING)
    try:
        return Trainer(cfg, exp_dir, ctx, allow_config_change).run()
    finally:
        cleanup_distributed()
