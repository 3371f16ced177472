"""Device-agnostic runtime helpers: device choice, process groups, seeding, atomic writes.

Library code only: nothing here parses arguments or prints; it logs through ``logging``.
"""
from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def select_device(cpu: bool = False, gpu: int = 0) -> torch.device:
    """CUDA device ``gpu`` when available and not ``cpu``; else the CPU (with a log line saying so).

    Under ``torchrun`` the local rank picks the GPU instead of ``gpu``.
    """
    if cpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        logger.info("CUDA is not available: running on the CPU")
        return torch.device("cpu")
    if is_distributed_env():
        gpu = int(os.environ.get("LOCAL_RANK", 0))
    if gpu >= torch.cuda.device_count():
        raise ValueError(f"--gpu {gpu}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    torch.cuda.set_device(gpu)
    return torch.device("cuda", gpu)


def is_distributed_env() -> bool:
    """True when launched by ``torchrun`` (WORLD_SIZE set and > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> bool:
    """Join the process group ``torchrun`` set up: NCCL on CUDA, gloo on CPU. Returns whether distributed."""
    if not is_distributed_env():
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        logger.info("process group: backend=%s rank=%d world=%d", backend, dist.get_rank(), dist.get_world_size())
    return True


def cleanup_distributed(barrier: bool = True) -> None:
    """Leave the process group (no-op when not distributed), after waiting for every rank with ``barrier`` (so
    that rank 0 has finished writing before any rank exits; skip it after an error that other ranks may not
    share, or the survivors would wait for ever)."""
    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0 (or a single process): the only one that logs, writes TensorBoard and checkpoints."""
    return get_rank() == 0


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``.

    A crash mid-write leaves the old file (or none) in place, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def check_writable_dir(path: str | Path, flag: str) -> Path:
    """Create ``path`` if needed and prove it is writable; raise ``ValueError`` naming ``flag`` otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot write there ({exc.strerror or exc})") from None
    return path


# ---- speed switches --------------------------------------------------------------------------------------------------

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_amp_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """The autocast dtype for ``--amp`` on ``device``.

    ``"auto"``: bfloat16 on the CPU and on CUDA devices that support it (Ampere and later: no gradient scaling
    needed, fp32's exponent range), else float16 (e.g. V100, T4: needs a ``GradScaler``). ``"bfloat16"`` /
    ``"float16"`` force one; bfloat16 on a CUDA device without it raises ``ValueError`` naming ``--amp-dtype``.
    """
    if requested == "auto":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if requested not in AMP_DTYPES:
        raise ValueError(f"--amp-dtype {requested}: expected auto, {', '.join(AMP_DTYPES)}")
    if requested == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--amp-dtype bfloat16: {torch.cuda.get_device_name(device)} does not support bfloat16; "
                         "use --amp-dtype float16 (or auto)")
    return AMP_DTYPES[requested]


def configure_backends(device: torch.device, deterministic: bool = False) -> None:
    """cuDNN autotuning on CUDA (``cudnn.benchmark``, as the original set it), or with ``deterministic``: cuDNN's
    deterministic algorithms, no autotuning, and ``torch.use_deterministic_algorithms(True, warn_only=True)`` (ops
    without a deterministic implementation, e.g. CUDA's bilinear upsampling backward, warn instead of failing).

    Process-wide settings: call once, before the first CUDA op (cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` then).
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def broadcast_module_(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's ``module`` (no-op when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src)


def all_reduce_gradients_(params, world_size: int | None = None) -> None:
    """Average ``p.grad`` over the ranks in place for every ``p`` in ``params`` that has one (one flattened
    all-reduce per dtype/device; no-op when not distributed). Every rank must pass parameters with gradients in the
    same pattern, as DDP would."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    world = world_size or dist.get_world_size()
    grads = [p.grad for p in params if p.grad is not None]
    by_kind: dict[tuple, list[torch.Tensor]] = {}
    for g in grads:
        by_kind.setdefault((g.dtype, g.device), []).append(g)
    for group in by_kind.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat)
        flat.div_(world)
        offset = 0
        for g in group:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` averaged over the ranks, in place (returned as is when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
        tensor.div_(dist.get_world_size())
    return tensor


def all_reduce_max_int(value: int, device: torch.device) -> int:
    """The largest ``value`` over the ranks (``value`` itself when not distributed): e.g. a stop request that
    reached one rank only, so that every rank stops at the same iteration."""
    if not (dist.is_available() and dist.is_initialized()):
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())
