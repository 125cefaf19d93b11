"""Count the host reads of tensor values (each one a device sync on a GPU) that a piece of code does.

    with HostSyncCounter() as syncs:
        loss = model(wavs, wav_lens); loss.backward()
    print(syncs.total, syncs.by_op)

Counted: scalar reads (``item()``, ``int()``, ``bool()``, iterating a tensor in Python:
``aten._local_scalar_dense``), ops whose output shape depends on tensor values (``nonzero``,
boolean-mask indexing, ``masked_select``, ``unique``...), and copies from a device to the CPU. On
the CPU the same code paths are counted as on a GPU, except copies and the few ops that check
their input only on the CPU (``one_hot``'s range check is two scalar reads there, none on CUDA).
"""
from __future__ import annotations

import collections
from typing import Any, Counter, Dict, Optional, Tuple

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
_VALUE_DEPENDENT_SHAPES = {
    _aten.nonzero.default, _aten.masked_select.default, _aten.unique_consecutive.default,
    _aten._unique2.default, _aten.unique_dim.default, _aten.repeat_interleave.Tensor,
}


def _has_bool_index(indices: Any) -> bool:
    return any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in indices or ())


class HostSyncCounter(TorchDispatchMode):
    """A dispatch mode that counts host reads by op name in ``by_op``; ``total`` is their sum."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter[str] = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func, types, args: Tuple = (), kwargs: Optional[Dict] = None):
        kwargs = kwargs or {}
        if self._reads_host(func, args, kwargs):
            self.by_op[str(func.overloadpacket.__name__)] += 1
        return func(*args, **kwargs)

    @staticmethod
    def _reads_host(func, args: Tuple, kwargs: Dict) -> bool:
        if func is _aten._local_scalar_dense.default or func in _VALUE_DEPENDENT_SHAPES:
            return True
        if func in (_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default):
            return _has_bool_index(args[1])
        if func is _aten._to_copy.default:
            device = kwargs.get("device")
            return device is not None and torch.device(device).type == "cpu" and args[0].device.type != "cpu"
        if func is _aten.copy_.default:
            return args[0].device.type == "cpu" and args[1].device.type != "cpu"
        return False


def to_device(host: Tensor, device: torch.device | str) -> Tensor:
    """``host`` (a small CPU tensor, e.g. lengths) on ``device``; to a GPU through pinned memory, so the copy is
    asynchronous and never a pageable one (which would wait for the device)."""
    device = torch.device(device)
    if host.device == device:
        return host
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)
