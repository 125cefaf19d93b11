"""Process-group setup for ``torchrun`` (NCCL on GPUs, gloo on CPU) and small collective helpers.

A plain ``python`` start (no ``WORLD_SIZE`` in the environment) is one process without a process
group; every helper here then acts locally, so the trainer has a single code path.
"""
from __future__ import annotations

import datetime
import io
import os
import random
from dataclasses import dataclass
from typing import Any, Dict, List

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: global rank, rank on its node, process count and device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def init_distributed(timeout_minutes: float = 60.0) -> DistContext:
    """Read ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` (set by torchrun) and join the process group.

    Each process uses ``cuda:LOCAL_RANK`` when CUDA is available (backend NCCL), else the CPU (gloo).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are visible")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(minutes=timeout_minutes),
            **({"device_id": device} if device.type == "cuda" else {}),
        )
    return DistContext(rank, local_rank, world_size, device)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over all processes (a copy; the input is left alone)."""
    values = values.clone()
    if dist.is_initialized():
        dist.all_reduce(values)
    return values


def all_gather_objects(obj: Any) -> List[Any]:
    """Every process's ``obj`` (tensors, containers, numbers, strings), in rank order.

    Objects travel as ``torch.save`` bytes: ``dist.all_gather_object`` itself cannot unpickle tensors
    in torch 2.9 (``UntypedStorage has no attribute dtype``).
    """
    if not dist.is_initialized():
        return [obj]
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payloads: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(payloads, buffer.getvalue())
    return [torch.load(io.BytesIO(payload), weights_only=True) for payload in payloads]


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------- seeds and RNG states


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(warn_only: bool = False) -> None:
    """Ask torch for deterministic kernels (errors, or with ``warn_only`` warnings, on ops that have none)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def get_rng_state() -> Dict[str, Any]:
    """This process's RNG states, as tensors and tuples only (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
