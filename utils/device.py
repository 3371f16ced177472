"""The device a script runs on, its backend switches and seeding (CUDA or CPU alike).

Library code only: nothing here parses arguments or prints; it logs through ``logging``.
"""
from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

logger = logging.getLogger(__name__)

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def select_device(cpu: bool = False, gpu: int | None = None) -> torch.device:
    """The CPU with ``cpu``; else CUDA device ``gpu`` (default 0; under ``torchrun`` the local rank's).

    Without CUDA: an explicit ``gpu`` raises :class:`utils.cli.UsageError` (the user asked for a GPU that is not
    there; ``--cpu`` says what they may want instead); without ``gpu`` the CPU is used, with a WARNING.
    """
    from utils.cli import UsageError

    if cpu:
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        if gpu is not None:
            raise UsageError(f"--gpu {gpu}: CUDA is not available on this machine; pass --cpu to run on the CPU")
        logger.warning("CUDA is not available: running on the CPU (pass --cpu to say so and silence this)")
        return torch.device("cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        gpu = int(os.environ.get("LOCAL_RANK", 0))
    gpu = 0 if gpu is None else gpu
    if not 0 <= gpu < count:
        raise UsageError(f"--gpu {gpu}: only {count} CUDA device(s) are visible (0..{count - 1}); pass another "
                         "--gpu or --cpu")
    torch.cuda.set_device(gpu)
    return torch.device("cuda", gpu)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


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
