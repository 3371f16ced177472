"""Multi-process helpers for ``torchrun`` (NCCL on CUDA, gloo on the CPU); each is a no-op in a single process.

Library code only: nothing here parses arguments or prints; it logs through ``logging``.
"""
from __future__ import annotations

import logging
import os
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(device: torch.device) -> bool:
    """Join the process group ``torchrun`` set up (``WORLD_SIZE`` > 1): NCCL on CUDA, gloo on the CPU. Returns
    whether this process is one of several."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        logger.info("process group: backend=%s rank=%d world=%d", backend, dist.get_rank(), dist.get_world_size())
    return True


def cleanup_distributed(barrier: bool = True) -> None:
    """Leave the process group, after waiting for every rank with ``barrier`` (so that rank 0 has finished writing
    before any rank exits; skip it after an error that other ranks may not share, or the survivors would wait for
    ever)."""
    if _active():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if _active() else 0


def get_world_size() -> int:
    return dist.get_world_size() if _active() else 1


def is_main_process() -> bool:
    """Rank 0 (or a single process): the only one that logs, writes TensorBoard and checkpoints."""
    return get_rank() == 0


def unwrap(model: nn.Module) -> nn.Module:
    """The module under ``DistributedDataParallel``/``DataParallel`` wrappers (or ``model`` itself)."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def broadcast_module_(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's ``module``."""
    if not _active():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src)


def all_reduce_gradients_(params: Iterable[torch.Tensor]) -> None:
    """Average ``p.grad`` over the ranks in place for every ``p`` in ``params`` that has one (one flattened
    all-reduce per dtype/device). Every rank must pass parameters with gradients in the same pattern, as DDP
    would."""
    if not _active():
        return
    world = dist.get_world_size()
    by_kind: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            by_kind.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for group in by_kind.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat)
        flat.div_(world)
        offset = 0
        for g in group:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` averaged over the ranks, in place (returned as it is in a single process)."""
    if _active():
        dist.all_reduce(tensor)
        tensor.div_(dist.get_world_size())
    return tensor


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks, in place (returned as it is in a single process)."""
    if _active():
        dist.all_reduce(tensor)
    return tensor


def all_reduce_max_int(value: int, device: torch.device) -> int:
    """The largest ``value`` over the ranks: e.g. a stop request that reached one rank only, so that every rank
    stops at the same iteration."""
    if not _active():
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())
