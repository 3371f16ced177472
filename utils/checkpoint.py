"""Snapshots, the resumable training state, and the stop-signal handling of a training run.

Two kinds of files, both written atomically (temporary file, then rename: a crash or SIGKILL mid-write leaves the
previous file or none, never a half-written one):

* the original's snapshots ``GTA5_<i>.pth``, ``GTA5_<i>_D1.pth``, ``GTA5_<i>_D2.pth``: plain ``state_dict``\\ s of the
  unwrapped networks, loadable by the original's evaluation script and by ours;
* one full training state (``resume.pth`` in the snapshot dir): the three networks, the three optimizers (with the
  faithful optimizers' listings and buffers), the next iteration, the RNG states, the data-order positions and the
  arguments. Everything in it loads with ``torch.load(weights_only=True)``.

A running training holds the folder's lock (:class:`SnapshotDirLock`), so two runs cannot write over each other.

Library code only: nothing here parses arguments or prints, except :class:`StopRequest`'s one line to stderr when a
signal arrives (the user pressed Ctrl-C and must learn what happens next).
"""
from __future__ import annotations

import logging
import random
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn

from utils.distributed import all_reduce_max_int, get_world_size, is_main_process, unwrap
from utils.files import WriteError, atomic_torch_save
from utils.weights import load_checkpoint

logger = logging.getLogger(__name__)

RESUME_FORMAT = "adaptsegnet-train-state/1"
RESUME_NAME = "resume.pth"
#: The networks and optimizers of a training state, by their keys in the file.
NETWORK_KEYS = ("model", "model_D1", "model_D2")
OPTIMIZER_KEYS = ("optimizer", "optimizer_D1", "optimizer_D2")
#: Arguments whose change between an interrupted run and its resumption changes the result.
RESUME_SENSITIVE = ("model", "num_classes", "resnet_layers", "all_branches", "freeze_bn_stats", "batch_size",
                    "iter_size", "learning_rate", "learning_rate_D", "momentum", "weight_decay", "num_steps",
                    "power", "lambda_seg", "lambda_adv_target1", "lambda_adv_target2", "gan", "random_seed",
                    "input_size", "input_size_target", "random_mirror", "random_scale", "data_list",
                    "data_list_target", "modern_optim", "ignore_label", "amp", "amp_dtype", "source", "target", "city",
                    "source_only", "adapt_space")


def snapshot_paths(snapshot_dir: str | Path, tag: int | str, prefix: str = "GTA5") -> tuple[Path, Path, Path]:
    """``(GTA5_<tag>.pth, GTA5_<tag>_D1.pth, GTA5_<tag>_D2.pth)`` in ``snapshot_dir`` (the original's names);
    ``prefix`` names the source of other settings (``SYNTHIA_<tag>.pth``, ...)."""
    d = Path(snapshot_dir)
    return d / f"{prefix}_{tag}.pth", d / f"{prefix}_{tag}_D1.pth", d / f"{prefix}_{tag}_D2.pth"


def _cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unwrapped state_dict on the CPU (no copy of CPU tensors: it is written at once, before any update)."""
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def save_snapshot(snapshot_dir: str | Path, tag: int | str, nets: Mapping[str, nn.Module],
                  prefix: str = "GTA5") -> list[Path]:
    """Write the plain state_dicts of ``nets`` (by :data:`NETWORK_KEYS`; unwrapped, on the CPU) as
    ``<prefix>_<tag>.pth``, ``<prefix>_<tag>_D1.pth``, ``<prefix>_<tag>_D2.pth``, atomically; a network missing
    from ``nets`` (no discriminators with ``--source-only``) has no file."""
    paths = [path for key, path in zip(NETWORK_KEYS, snapshot_paths(snapshot_dir, tag, prefix)) if key in nets]
    for key, path in zip([k for k in NETWORK_KEYS if k in nets], paths):
        atomic_torch_save(_cpu_state_dict(nets[key]), path)
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


def save_training_state(path: str | Path, *, next_iter: int, nets: Mapping[str, nn.Module],
                        optimizers: Mapping[str, torch.optim.Optimizer], data_positions: dict[str, int],
                        args: dict[str, Any], scaler: torch.amp.GradScaler | None = None,
                        extra: dict[str, Any] | None = None) -> Path:
    """Write everything needed to continue at iteration ``next_iter`` to ``path`` atomically.

    ``nets``/``optimizers``: by :data:`NETWORK_KEYS` / :data:`OPTIMIZER_KEYS` (those a run has). ``data_positions``: samples consumed
    per domain (global, all ranks), e.g. ``{"source": 12, "target": 12}``. ``args``: JSON-like dict of the run's
    arguments (kept to warn when a resume changes them). ``scaler``: the float16 gradient scaler, when enabled.
    ``extra``: more entries (plain values, e.g. the best validation mIoU so far).
    """
    state = {
        "format": RESUME_FORMAT,
        "next_iter": int(next_iter),
        **{key: _cpu_state_dict(net) for key, net in nets.items()},
        **{key: opt.state_dict() for key, opt in optimizers.items()},
        "optimizer_class": [type(opt).__name__ for opt in optimizers.values()],
        "rng": capture_rng_state(),
        "data_positions": {k: int(v) for k, v in data_positions.items()},
        "args": args,
    }
    if scaler is not None and scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    return atomic_torch_save({**state, **(extra or {})}, path)


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`save_training_state` (``weights_only=True``, onto the CPU).

    Raises ``FileNotFoundError`` or ``ValueError`` naming ``path`` when it is missing, unreadable, or not a training
    state (e.g. a plain ``GTA5_<i>.pth`` snapshot, which has no optimizer state to resume from).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"--resume {path}: cannot read it as a training state ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise ValueError(f"--resume {path}: not a training state written by this script (expected format "
                         f"{RESUME_FORMAT!r}); plain GTA5_<i>.pth snapshots hold only weights: start from them "
                         "with --restore-from / --restore-from-D1 / --restore-from-D2 instead")
    return state


def find_resume_file(snapshot_dir: str | Path) -> Path | None:
    """The training state in ``snapshot_dir`` (``--resume auto``), or ``None`` when there is none yet."""
    path = Path(snapshot_dir) / RESUME_NAME
    return path if path.is_file() else None


class RunFiles:
    """The snapshot sets and the training state a run writes into its folder, and which of them are complete: a
    failed write (full disk, ...) raises :class:`~utils.files.WriteError` whose message says which files are good
    and how to continue."""

    def __init__(self, snapshot_dir: Path, prefix: str, state_at: int | None) -> None:
        self.snapshot_dir, self.prefix = Path(snapshot_dir), prefix
        self.resume_file = self.snapshot_dir / RESUME_NAME
        self.snapshot: int | None = None  # tag of the last complete snapshot set written by this run
        self.state_at = state_at  # next iteration of the last complete training state (a resumed one counts)

    def save(self, tag: int | None, nets: Mapping[str, nn.Module], next_iter: int, **state: Any) -> None:
        """The snapshot set ``<prefix>_<tag>`` (unless ``tag`` is None), then the training state before
        ``next_iter`` (:func:`save_training_state`'s other arguments in ``state``)."""
        try:
            if tag is not None:
                save_snapshot(self.snapshot_dir, tag, nets, self.prefix)
                self.snapshot = tag
            save_training_state(self.resume_file, next_iter=next_iter, nets=nets, **state)
            self.state_at = next_iter
        except WriteError as exc:
            snap = (f"{self.prefix}_{self.snapshot}.pth (with _D1, _D2)" if self.snapshot is not None
                    else "none written by this run")
            resume = (f"{self.resume_file} continues at iteration {self.state_at}" if self.state_at is not None
                      else f"no {RESUME_NAME} from this run")
            raise WriteError(f"{exc}; the last complete snapshot: {snap}; {resume}. Free space (or move the folder "
                             "elsewhere) and continue with --resume auto") from None


def restore_training_state(state: dict[str, Any], path: Path, *, nets: Mapping[str, nn.Module],
                           optimizers: Mapping[str, torch.optim.Optimizer], scaler: torch.amp.GradScaler,
                           args: dict[str, Any], model_name: str) -> int:
    """Load a training state into the networks, optimizers, scaler and RNGs; returns the next iteration.

    Warns for every :data:`RESUME_SENSITIVE` argument that changed (the run will differ from an uninterrupted one)
    and for a changed number of processes; raises ``ValueError`` when the optimizer classes differ (``--modern-optim``
    given in one run only) and :class:`~utils.weights.CheckpointMismatchError` when a network does not fit.
    """
    saved_args = state.get("args", {})
    for key in RESUME_SENSITIVE:
        if key in saved_args and saved_args[key] != args.get(key):
            logger.warning("--resume %s: --%s was %r, now %r: the run will differ from an uninterrupted one",
                           path, key.replace("_", "-"), saved_args[key], args.get(key))
    if saved_args.get("world_size", 1) != get_world_size():
        logger.warning("--resume %s: saved by a run of %s process(es), now %d: the data order continues, but the "
                       "effective batch (processes x --batch-size x --iter-size) changes", path,
                       saved_args.get("world_size", 1), get_world_size())
    classes = [type(opt).__name__ for opt in optimizers.values()]
    if state.get("optimizer_class") != classes:
        raise ValueError(f"--resume {path}: saved with optimizers {state.get('optimizer_class')}, this run uses "
                         f"{classes}; pass --modern-optim and --source-only exactly as in the interrupted run")
    for key, net in nets.items():
        load_checkpoint(net, state[key], model_name=model_name if key == "model" else "FCDiscriminator",
                        source=f"--resume {path} ({key})")
    for key, opt in optimizers.items():
        opt.load_state_dict(state[key])
    if scaler.is_enabled():
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        else:
            logger.info("--resume %s: no gradient scaler state in it (saved without float16 --amp); starting with "
                        "a fresh scale", path)
    restore_rng_state(state["rng"])
    return int(state["next_iter"])


def remove_stale_temporaries(snapshot_dir: Path) -> None:
    """Delete the temporary files a killed run left behind (``.GTA5_4.pth.x1y2.tmp``, ``.resume.pth.*.tmp``, ...:
    :func:`utils.files.atomic_write`'s names); the snapshots themselves are always complete."""
    for tmp in snapshot_dir.glob(".*.tmp"):
        if tmp.name.startswith((".args.json.", f".{RESUME_NAME}.")) or ".pth." in tmp.name:
            logger.info("removing %s (left by an interrupted write)", tmp)
            tmp.unlink(missing_ok=True)


class StopRequest:
    """SIGINT/SIGTERM handler: the first signal asks the loop to stop at the end of the current iteration (after
    saving a training state); a second one exits at once (atomic writes leave no half-written file).

    Use as a context manager around the training loop; the previous handlers come back on exit.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise SystemExit(128 + signum)
        self.signum = signum
        print(f"\nreceived {signal.Signals(signum).name}: stopping after this iteration (send it again to stop "
              "at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class SnapshotDirBusy(RuntimeError):
    """Another training run holds the snapshot folder's lock."""


class SnapshotDirLock:
    """One training run per snapshot folder: an exclusive ``fcntl.flock`` on ``<dir>/.lock`` held for the run's
    lifetime. The kernel drops it when the process ends, however it ends, so a killed run leaves no stale lock; the
    file itself stays (removing it would let a third run lock a new file while the second holds the old one). The
    holder writes its pid and start time into it, for the message the next run prints."""

    NAME = ".lock"

    def __init__(self) -> None:
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self, directory: Path) -> None:
        """Lock ``directory`` (which must exist); raises :class:`SnapshotDirBusy` naming the holder."""
        import datetime
        import fcntl
        import os

        f = open(Path(directory) / self.NAME, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise SnapshotDirBusy(f"--snapshot-dir {directory} is in use by another training run ({holder}); use "
                                  "another folder or stop that run") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}, started {datetime.datetime.now().isoformat(sep=' ', timespec='seconds')}\n")
        f.flush()
        self._file = f

    def claim(self, directory: Path, device: torch.device, create: bool) -> None:
        """Under ``torchrun`` too: rank 0 locks ``directory`` (creating it first with ``create``; without, only if
        it exists already) and every rank learns the verdict: all raise :class:`SnapshotDirBusy` when another run
        holds it. Raises ``ValueError`` naming ``--snapshot-dir`` when the folder cannot be created or written."""
        from utils.files import check_writable_dir

        busy = None
        if is_main_process() and not self.held and (create or Path(directory).is_dir()):
            try:
                if create:
                    check_writable_dir(directory, "--snapshot-dir")
                self.acquire(Path(directory))
            except SnapshotDirBusy as exc:
                busy = exc
        if all_reduce_max_int(busy is not None, device):
            raise busy or SnapshotDirBusy(f"--snapshot-dir {directory} is in use by another training run")

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor releases the flock
            self._file = None


def snapshot_space_warning(snapshot_dir: Path, nets: Mapping[str, nn.Module], snapshots_to_come: int) -> str | None:
    """A warning when ``snapshot_dir``'s free space cannot hold what the run will write, else None.

    Estimates from the networks: a snapshot set is their weights and buffers; the training state adds the momentum
    of the segmentation network's parameters and Adam's two moments of the discriminators'. While a new training
    state is written the old one still exists (atomic writes), so one more state is counted. A warning, not an
    error: disks get freed during runs.
    """
    from utils.files import free_bytes, human_bytes

    def size(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    snapshot = sum(size(unwrap(net).state_dict().values()) for net in nets.values())
    state = snapshot + size(unwrap(nets["model"]).parameters()) + 2 * sum(
        size(unwrap(net).parameters()) for key, net in nets.items() if key != "model")
    free = free_bytes(snapshot_dir)
    next_set, whole_run = snapshot + 2 * state, snapshots_to_come * snapshot + 2 * state
    if free >= whole_run:
        return None
    what = ("not even the next snapshot set and training state" if free < next_set
            else f"not all {snapshots_to_come} snapshot sets still to come")
    return (f"--snapshot-dir {snapshot_dir} has {human_bytes(free)} free: {what} (a set is about "
            f"{human_bytes(snapshot)}, a training state about {human_bytes(state)}, written next to the previous "
            f"one; about {human_bytes(whole_run)} for the rest of the run); free space or use another folder")
