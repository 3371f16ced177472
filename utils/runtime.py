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
