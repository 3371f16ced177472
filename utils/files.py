"""Writing files so that nothing already written is lost or left half-written, and a full disk says so.

Every output of the project (snapshots, training states, ``args.json``, predictions, IoU JSON, generated data) goes
through :func:`atomic_write`: a temporary file beside the target, flushed to the disk, renamed over the target, and
the folder entry made durable. Any failure removes the temporary file and raises :class:`WriteError`, whose message
names the file and the reason (``no space left on the device (3.1 MB free, about 170 MB needed)``).

Library code only: nothing here parses arguments or prints. ``torch`` is imported only by :func:`atomic_torch_save`,
so that ``compute_iou.py`` starts without it.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it back at once
    os.umask(mask)
    return mask


#: The process's umask, read once at import (reading it means setting it, which races with threads writing files).
UMASK = _read_umask()
#: The reasons for which a write error reports the free space: the disk or the user's quota is full.
SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class WriteError(OSError):
    """A file could not be written: the message names it and says why (for a full disk: the free space and about
    how much was needed). ``errno`` is the operating system's reason when known."""


def human_bytes(n: float) -> str:
    """``1234567`` -> ``"1.2 MB"`` (decimal units, as ``df -H``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def free_bytes(path: str | Path) -> int:
    """Free space, in bytes, for an unprivileged user on the file system of ``path`` (or of its nearest existing
    parent folder)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: itself, or one it was raised from or while handling (``torch.save`` into a Python
    file turns the file's OSError into a RuntimeError whose context is that OSError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def write_error(path: Path, exc: BaseException, needed: int | None = None) -> WriteError:
    """A :class:`WriteError` for ``exc`` raised while writing ``path`` (``needed``: the file's expected size)."""
    cause = _os_error(exc)
    code = cause.errno if cause is not None else None
    if code in SPACE_ERRNOS:
        reason = "no space left on the device" if code == errno.ENOSPC else "the disk quota is exceeded"
        reason += f" ({human_bytes(free_bytes(path.parent))} free"
        reason += f", about {human_bytes(needed)} needed)" if needed else ")"
    elif cause is not None:
        reason = cause.strerror or str(cause)
    else:
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    error = WriteError(f"cannot write {path}: {reason}")
    error.errno = code
    return error


def atomic_write(path: str | Path, write: Callable[[Path], Any], needed: int | None = None) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``.

    A crash mid-write leaves the old file (or none) in place, never a half-written one; any error removes the
    temporary file and raises :class:`WriteError` (``needed``: the expected size, for its message). The data is
    flushed to the disk before the rename and the rename itself after it (the folder is fsynced), so a power loss
    right after a snapshot cannot lose it. The file gets the mode a plain ``open()`` would give it (0666 minus the
    umask: 0644 with the usual 022), not ``mkstemp``'s private 0600, so colleagues on a shared disk can read it.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc, needed) from None
    os.fchmod(fd, 0o666 & ~UMASK)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) or isinstance(exc, WriteError):
            raise
        if _os_error(exc) is None and not isinstance(exc, (OSError, RuntimeError)):
            raise  # a bug in ``write``, not a failed write
        raise write_error(path, exc, needed) from None
    return path


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not support it; the data itself is already on the disk
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`atomic_write`, into a Python file object so that a full disk surfaces as the
    file's OSError (a path given to ``torch.save`` hides it behind "unexpected pos").

    Without the zip records' CRC32: ``torch.load`` never checks it (tested), and computing it is half of the time
    of a save (0.13 s of 0.26 s for ResNet-101's 179 MB here); the original's PyTorch 0.4 files had none either.
    Truncation is still found (the zip directory is at the end), and the writes are atomic anyway.
    """
    import torch

    def save(tmp: Path) -> None:
        crc = torch.serialization.get_crc32_options()
        torch.serialization.set_crc32_options(False)
        try:
            with open(tmp, "wb") as fh:
                torch.save(obj, fh)
        finally:
            torch.serialization.set_crc32_options(crc)

    return atomic_write(path, save, needed=tensor_bytes(obj))


def tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in ``obj`` (nested dicts, lists, tuples): about the size of its ``torch.save`` file."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def check_writable_dir(path: str | Path, flag: str, create: bool = True) -> Path:
    """Prove that files can be written into the folder ``path``; raise ``ValueError`` naming ``flag`` otherwise.

    ``create``: create the folder (and its parents) and write a probe file in it. Without it nothing is created:
    ``path`` must be a writable folder, or not exist under a writable folder (it is made when the first file is
    written, so that a run refused later leaves no empty folder behind).
    """
    path = Path(path)
    if not create:
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise ValueError(f"{flag} {path}: cannot write there ({existing} is not a folder)")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {path}: cannot write there (no write permission in {existing})")
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot write there ({exc.strerror or exc})") from None
    return path
