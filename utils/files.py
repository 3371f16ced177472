"""Writing files so that nothing already written is lost or left half-written.

Every output of the project (snapshots, training states, ``args.json``, predictions, IoU JSON, generated data) goes
through :func:`atomic_write`: a temporary file beside the target, then a rename over it.

Library code only: nothing here parses arguments or prints. ``torch`` is imported only by :func:`atomic_torch_save`,
so that ``compute_iou.py`` starts without it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``.

    A crash mid-write leaves the old file (or none) in place, never a half-written one; the temporary file is
    removed on any error.
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
    import torch

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
