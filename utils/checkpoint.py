"""Training snapshots and the resumable training state.

Two kinds of files, both written atomically (temporary file, then rename: a crash or SIGKILL mid-write leaves the
previous file or none, never a half-written one):

* the original's snapshots ``GTA5_<i>.pth``, ``GTA5_<i>_D1.pth``, ``GTA5_<i>_D2.pth``: plain ``state_dict``\\ s of the
  unwrapped networks, loadable by the original's evaluation script and by ours;
* one full training state (default ``resume.pth`` in the snapshot dir): the three networks, the three optimizers
  (with the faithful optimizers' listings and buffers), the next iteration, the RNG states, the data-order positions
  and the arguments. Everything in it loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from utils.runtime import atomic_torch_save

logger = logging.getLogger(__name__)

__all__ = ["RESUME_FORMAT", "DEFAULT_RESUME_NAME", "unwrap", "snapshot_paths", "save_snapshot", "capture_rng_state",
           "restore_rng_state", "save_training_state", "load_training_state", "find_resume_file"]

RESUME_FORMAT = "adaptsegnet-train-state/1"
DEFAULT_RESUME_NAME = "resume.pth"


def unwrap(model: nn.Module) -> nn.Module:
    """The module under a ``DistributedDataParallel``/``DataParallel`` wrapper (or ``model`` itself)."""
    return getattr(model, "module", model)


def snapshot_paths(snapshot_dir: str | Path, tag: int | str, prefix: str = "GTA5") -> tuple[Path, Path, Path]:
    """``(GTA5_<tag>.pth, GTA5_<tag>_D1.pth, GTA5_<tag>_D2.pth)`` in ``snapshot_dir`` (the original's names);
    ``prefix`` names the source of other settings (``SYNTHIA_<tag>.pth``, ...)."""
    d = Path(snapshot_dir)
    return d / f"{prefix}_{tag}.pth", d / f"{prefix}_{tag}_D1.pth", d / f"{prefix}_{tag}_D2.pth"


def _cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


def save_snapshot(snapshot_dir: str | Path, tag: int | str, model: nn.Module, model_D1: nn.Module,
                  model_D2: nn.Module, prefix: str = "GTA5") -> tuple[Path, Path, Path]:
    """Write the three plain state_dicts (unwrapped, on the CPU) as ``<prefix>_<tag>[_D1|_D2].pth`` (default
    ``GTA5_<tag>...``), atomically."""
    paths = snapshot_paths(snapshot_dir, tag, prefix)
    for net, path in zip((model, model_D1, model_D2), paths):
        atomic_torch_save(_cpu_state_dict(net), path)
    return paths


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and every CUDA device) RNG states, as types ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only where the same number of devices is visible)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            logger.warning("resume: the saved CUDA RNG states are for %d device(s), %d visible; not restored",
                           len(cuda), torch.cuda.device_count())


def save_training_state(path: str | Path, *, next_iter: int, model: nn.Module, model_D1: nn.Module,
                        model_D2: nn.Module, optimizer: torch.optim.Optimizer,
                        optimizer_D1: torch.optim.Optimizer, optimizer_D2: torch.optim.Optimizer,
                        data_positions: dict[str, int], args: dict[str, Any],
                        extra: dict[str, Any] | None = None) -> Path:
    """Write everything needed to continue at iteration ``next_iter`` to ``path`` atomically.

    ``data_positions``: samples consumed per domain (global, all ranks), e.g. ``{"source": 12, "target": 12}``.
    ``args``: JSON-like dict of the run's arguments (kept to warn when a resume changes them). ``extra``: more
    entries (e.g. a gradient scaler's state).
    """
    state = {
        "format": RESUME_FORMAT,
        "next_iter": int(next_iter),
        "model": _cpu_state_dict(model),
        "model_D1": _cpu_state_dict(model_D1),
        "model_D2": _cpu_state_dict(model_D2),
        "optimizer": optimizer.state_dict(),
        "optimizer_D1": optimizer_D1.state_dict(),
        "optimizer_D2": optimizer_D2.state_dict(),
        "optimizer_class": [type(o).__name__ for o in (optimizer, optimizer_D1, optimizer_D2)],
        "rng": capture_rng_state(),
        "data_positions": {k: int(v) for k, v in data_positions.items()},
        "args": args,
    }
    if extra:
        state.update(extra)
    return atomic_torch_save(state, path)


def load_training_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a file written by :func:`save_training_state` (``weights_only=True``).

    Raises ``FileNotFoundError`` or ``ValueError`` naming ``path`` when it is missing, unreadable, or not a training
    state (e.g. a plain ``GTA5_<i>.pth`` snapshot, which has no optimizer state to resume from).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {path}: no such file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"--resume {path}: cannot read it as a training state ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise ValueError(f"--resume {path}: not a training state written by this script (expected format "
                         f"{RESUME_FORMAT!r}); plain GTA5_<i>.pth snapshots hold only weights: start from them "
                         "with --restore-from / --restore-from-D1 / --restore-from-D2 instead")
    return state


def find_resume_file(snapshot_dir: str | Path, name: str = DEFAULT_RESUME_NAME) -> Path | None:
    """The training state in ``snapshot_dir`` (``--resume auto``), or ``None`` when there is none yet."""
    path = Path(snapshot_dir) / name
    return path if path.is_file() else None
