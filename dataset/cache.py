"""An exact cache of a dataset's resized frames: decode and resize once, read the result on every pass.

At the paper's sizes most of a loader's CPU time goes to decoding the full-resolution PNGs and resizing them
(``bench/bench_loader.py``). The cache stores what the loader computes before any augmentation, with the loader's
own code (:meth:`dataset.base.BaseDataSet.read_resized`: the same decoder and the same Pillow calls, bicubic for
images, nearest for labels), so a cached item is bitwise the uncached one. ``tools/prepare_cache.py`` builds it;
``--data-cache DIR`` of the training and evaluation scripts reads it (``BaseDataSet(data_cache=DIR)``).

Layout: one folder per dataset, split and input size under the cache directory, named by
:meth:`~dataset.base.BaseDataSet.cache_name` (``gta5-1280x720``, ``cityscapes-train-1024x512``,
``cityscapes-val-1024x512``, ``crosscity-rome-train-1024x512``, ...)::

    DIR/gta5-1280x720/manifest.json                  what was cached, from which files (below)
    DIR/gta5-1280x720/images/<name>.npy              uint8 [H, W, 3] RGB: the resized image (format "npy")
    DIR/gta5-1280x720/images/<name>.png              the same pixels as an RGB PNG (format "png")
    DIR/gta5-1280x720/labels/<name>.png              8-bit: the resized label's values (source sets only)

Formats, chosen by measurement (``bench/bench_loader.py``, BENCHMARKS.md): images as raw ``.npy`` (read by
``np.load``: no decoding, 0.3 ms for a 1280x720 frame against about 20 ms for a PNG at compression level 1, for 1.5x
the disk space of that PNG), or, with ``--format png`` for a smaller cache, PNG at compression level 1. Labels are
always PNG at level 1: they are flat regions, which PNG shrinks about 80x (0.92 MB raw -> ~11 kB at 1280x720) for
1.5 ms of decoding. Labels are stored as the loader has them before its label table, i.e. the file's labelIds
(GTA5, Cityscapes, Synscapes) or the trainIds that SYNTHIA's reader makes, resized nearest: the cache does not
depend on ``ignore_label``.

The manifest records the cache format version, the dataset (class, root, split), the input size, the image format,
whether labels are stored, whether the build finished, and for every entry the size and modification time (ns) of
its source image and label. Opening a cache (:meth:`DataCache.open`) checks all of it against the dataset and the
files on disk; any mismatch raises :class:`CacheError`, one message naming the file and the command that rebuilds
the cache (which redoes only the entries that need it).
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
from PIL import Image

from dataset.checks import DatasetError, find_missing
from utils.files import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from dataset.base import BaseDataSet

logger = logging.getLogger(__name__)

#: Version of the layout and manifest; a cache of another version must be rebuilt.
CACHE_VERSION = 1
MANIFEST = "manifest.json"
#: Image formats: raw NumPy arrays (fastest) or PNG (smaller).
IMAGE_FORMATS = ("npy", "png")
DEFAULT_FORMAT = "npy"
#: zlib level of the cache's PNGs: the fastest to write; decoding costs about the same at every level (the data
#: decides), and labels already shrink ~80x at level 1.
PNG_LEVEL = 1
#: How often (seconds) a build saves its manifest, so that an interrupted build resumes near where it stopped.
SAVE_EVERY = 30.0
TOOL = "tools/prepare_cache.py"


class CacheError(DatasetError):
    """A data cache is missing, incomplete, stale or damaged. The message names the file and how to rebuild it."""


def _some(items: list, limit: int = 3) -> str:
    """Up to ``limit`` items on one line, then how many more (the cache's errors are one line each)."""
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def source_stat(path: Path) -> list[int]:
    """``[size in bytes, modification time in ns]`` of a source file (what the manifest records)."""
    st = os.stat(path)
    return [int(st.st_size), int(st.st_mtime_ns)]


def _safe_name(name: str) -> str:
    """A list entry usable below the cache folder: relative, without ``..``."""
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or ".." in parts:
        raise DatasetError(f"list entry {name!r} cannot name a cache file (an absolute path or one with '..')")
    return name


def image_file(directory: Path, name: str, image_format: str) -> Path:
    """Where the cache keeps the resized image of list entry ``name``."""
    return directory / "images" / f"{_safe_name(name)}.{image_format}"


def label_file(directory: Path, name: str) -> Path:
    """Where the cache keeps the resized label of list entry ``name``."""
    return directory / "labels" / f"{_safe_name(name)}.png"


def describe(dataset: "BaseDataSet") -> dict[str, Any]:
    """What a manifest says about the dataset it caches (compared when the cache is opened or resumed)."""
    return {
        "version": CACHE_VERSION,
        "dataset": type(dataset).__name__,
        "root": str(dataset.root.resolve()),
        "split": dataset.cache_name(),
        "input_size": list(dataset.crop_size),
        "labels": bool(dataset.source),
    }


def rebuild_command(dataset: "BaseDataSet", cache_root: Path) -> str:
    """The ``tools/prepare_cache.py`` command line that (re)builds the cache of ``dataset`` in ``cache_root``."""
    from dataset.settings import SOURCES, TARGETS  # the settings import the loaders, which import this module

    w, h = dataset.crop_size
    if dataset.source:
        key = next((k for k, s in SOURCES.items() if s.dataset is type(dataset)), "gta5")
        parts = [f"--source {key}", f"--data-dir {dataset.root}"]
        parts += [f"--data-list {dataset.list_path}"] if dataset.list_path is not None else []
        parts += [f"--input-size {w},{h}", "--skip-target"]
    else:
        key = next((k for k, s in TARGETS.items() if s.dataset is type(dataset)), "cityscapes")
        parts = [f"--target {key}"] + ([f"--city {dataset.city}"] if hasattr(dataset, "city") else [])
        parts += [f"--data-dir-target {dataset.root}"]
        parts += [f"--data-list-target {dataset.list_path}"] if dataset.list_path is not None else []
        parts += [f"--set {dataset.set}", f"--input-size-target {w},{h}", "--skip-source"]
    return f"python {TOOL} --cache {cache_root} " + " ".join(parts)


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest at ``path``; ``None`` when it does not exist. Unreadable JSON raises :class:`CacheError`."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CacheError(f"cannot read the data cache manifest {path}: {exc.strerror or exc}") from None
    try:
        manifest = json.loads(text)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("entries"), dict):
            raise ValueError("no entries")
    except ValueError as exc:
        raise CacheError(f"the data cache manifest {path} is damaged ({exc})") from None
    return manifest


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest atomically (:func:`utils.files.atomic_write`; a full disk raises ``WriteError``)."""
    text = json.dumps(manifest, separators=(",", ":"), sort_keys=True)
    atomic_write(path, lambda tmp: tmp.write_text(text), needed=len(text))


def unique_names(dataset: "BaseDataSet") -> list[dict]:
    """The distinct entries of ``dataset.files`` (the list is repeated by ``max_iters``), in list order."""
    seen: dict[str, dict] = {}
    for files in dataset.files:
        seen.setdefault(files["name"], files)
    return list(seen.values())


# -- reading -----------------------------------------------------------------------------------------------------------


def _png_reader(mode: str) -> Callable[[Path], np.ndarray]:
    """A reader of PNGs that must be in ``mode`` (ValueError otherwise)."""
    def read(path: Path) -> np.ndarray:
        with Image.open(path) as img:
            if img.mode != mode:
                raise ValueError(f"mode {img.mode!r}, expected {mode!r}")
            return np.array(img)
    return read


class DataCache:
    """The opened cache of one dataset (:meth:`open` validates it); :meth:`read` returns an entry's arrays.

    Picklable (DataLoader workers get a copy): it holds paths and strings only.
    """

    def __init__(self, directory: Path, image_format: str, input_size: tuple[int, int], labels: bool,
                 rebuild: str) -> None:
        self.directory = directory
        self.image_format = image_format
        self.input_size = input_size
        self.labels = labels
        self.rebuild = rebuild

    @classmethod
    def open(cls, cache_root: str | Path, dataset: "BaseDataSet") -> "DataCache":
        """Check the cache of ``dataset`` under ``cache_root`` and return it; :class:`CacheError` otherwise.

        Checked: the folder and its manifest exist; version, dataset, root, input size match; the build finished;
        every list entry is cached; every source file still has the size and modification time it had when it was
        cached (one ``stat`` per file); every cache file exists (one listing per folder).
        """
        cache_root = Path(cache_root)
        rebuild = rebuild_command(dataset, cache_root)
        w, h = dataset.crop_size
        title = f"{dataset.title or dataset.dataset_name} at {w}x{h}"
        if not cache_root.is_dir():
            raise CacheError(f"data cache {cache_root} does not exist; build it with: {rebuild}")
        directory = cache_root / dataset.cache_name()
        manifest = read_manifest(directory / MANIFEST)
        if manifest is None:
            held = sorted(p.name for p in cache_root.iterdir() if (p / MANIFEST).is_file())
            holds = f" (it holds: {', '.join(held)})" if held else " (it holds no cache yet)"
            raise CacheError(f"data cache {cache_root} has no {directory.name}/ for {title}{holds}; build it "
                             f"with: {rebuild}")
        where = directory / MANIFEST
        expected = describe(dataset)
        for key in ("version", "dataset", "root", "input_size", "split"):
            if manifest.get(key) != expected[key]:
                raise CacheError(f"data cache {where} was built for {key} {manifest.get(key)!r}, this run needs "
                                 f"{expected[key]!r}; rebuild it with: {rebuild}")
        if expected["labels"] and not manifest.get("labels"):
            raise CacheError(f"data cache {where} holds no labels, this run needs them; rebuild it with: {rebuild}")
        entries: dict = manifest["entries"]
        if not manifest.get("complete"):
            raise CacheError(f"data cache {directory} is incomplete ({len(entries)} entries cached, the build did "
                             f"not finish); finish it with the same command (it resumes): {rebuild}")
        image_format = manifest.get("format")
        if image_format not in IMAGE_FORMATS:
            raise CacheError(f"data cache {where} has an unknown image format {image_format!r}; rebuild it with: "
                             f"{rebuild}")
        files = unique_names(dataset)
        absent = [f["name"] for f in files if f["name"] not in entries]
        if absent:
            raise CacheError(f"{len(absent)} of the {len(files)} entries of {dataset.list_path or dataset.image_dir()} "
                             f"are not in the data cache {directory} (built from another list?): {_some(absent)}; add "
                             f"them with: {rebuild}")
        stale = []
        for f in files:
            entry = entries[f["name"]]
            for kind in ("img", "label") if dataset.source else ("img",):
                recorded = entry.get("image" if kind == "img" else "label")
                try:
                    now = source_stat(f[kind])
                except FileNotFoundError:
                    now = None
                if recorded != now:
                    stale.append(f"{f[kind]} ({'missing' if now is None else 'changed since it was cached'})")
        if stale:
            raise CacheError(f"data cache {directory} is stale: {len(stale)} source files differ from the ones it was "
                             f"built from (size or modification time): {_some(stale)}; rebuild it with (only those "
                             f"entries are redone): {rebuild}")
        cache = cls(directory, image_format, (w, h), expected["labels"], rebuild)
        wanted = [cache.image_path(f["name"]) for f in files]
        wanted += [cache.label_path(f["name"]) for f in files] if expected["labels"] else []
        missing = find_missing(wanted)
        if missing:
            raise CacheError(f"{len(missing)} files of the data cache {directory} are missing: {_some(missing)}; "
                             f"rebuild it with (only those entries are redone): {rebuild}")
        return cache

    def image_path(self, name: str) -> Path:
        return image_file(self.directory, name, self.image_format)

    def label_path(self, name: str) -> Path:
        return label_file(self.directory, name)

    def _damaged(self, path: Path, why: str) -> CacheError:
        return CacheError(f"data cache file {path} is damaged ({why}); rebuild the cache with: {self.rebuild}")

    def _load(self, path: Path, read: Callable[[Path], np.ndarray]) -> np.ndarray:
        """``read(path)``; a missing or unreadable file (truncated npy/PNG, a pickle, a wrong mode) raises
        :class:`CacheError` naming it."""
        try:
            return read(path)
        except FileNotFoundError:
            raise self._damaged(path, "missing") from None
        except Exception as exc:  # noqa: BLE001 - every way a file can be damaged gets the same message
            raise self._damaged(path, f"{type(exc).__name__}: {exc}") from None

    def read(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """The cached entry ``name``: image uint8 ``[H, W, 3]`` RGB (writable), and with labels the label's 8-bit
        values uint8 ``[H, W]`` (else ``None``), ``(W, H)`` the input size. A missing, truncated or wrong-sized
        file raises :class:`CacheError` naming it."""
        w, h = self.input_size
        path = self.image_path(name)
        npy = self.image_format == "npy"
        image = self._load(path, (lambda p: np.load(p, allow_pickle=False)) if npy else _png_reader("RGB"))
        if image.dtype != np.uint8 or image.shape != (h, w, 3):
            raise self._damaged(path, f"it holds a {image.dtype} array of shape {image.shape}, expected uint8 "
                                      f"{(h, w, 3)}")
        if not self.labels:
            return image, None
        path = self.label_path(name)
        label = self._load(path, _png_reader("L"))
        if label.shape != (h, w):
            raise self._damaged(path, f"it holds a {label.shape[1]}x{label.shape[0]} label, expected {w}x{h}")
        return image, label


# -- writing -----------------------------------------------------------------------------------------------------------


@dataclass
class BuildReport:
    """What :func:`build_cache` did: the folder, entries written and kept from an earlier build, bytes on disk."""

    directory: Path
    written: int
    reused: int
    disk_bytes: int


def disk_usage(paths: Iterable[Path]) -> int:
    """Bytes the files take on the disk (allocated blocks, as ``du``), missing files ignored."""
    total = 0
    for path in paths:
        try:
            total += os.stat(path).st_blocks * 512
        except OSError:
            pass
    return total


def write_entry(dataset: "BaseDataSet", files: dict, directory: Path, image_format: str) -> tuple[str, dict]:
    """Cache one entry: stat its source files, decode and resize them as the loader does, write the results
    atomically. Returns ``(name, manifest record)``. The files are stat'ed *before* they are read, so a file
    changed meanwhile shows as stale at the next check instead of passing for cached."""
    name = files["name"]
    record = {"image": source_stat(files["img"])}
    if dataset.source:
        record["label"] = source_stat(files["label"])
    image, label = dataset.read_resized(files)
    path = image_file(directory, name, image_format)
    if image_format == "npy":
        pixels = np.asarray(image)

        def save_npy(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to the temporary name
                np.save(fh, pixels, allow_pickle=False)

        atomic_write(path, save_npy, needed=pixels.nbytes)
    else:
        atomic_write(path, lambda tmp: image.save(tmp, format="PNG", compress_level=PNG_LEVEL))
    if label is not None:
        values = Image.fromarray(np.asarray(label, dtype=np.uint8))  # the indices of a 'P' label, as 'L'
        atomic_write(label_file(directory, name), lambda tmp: values.save(tmp, format="PNG", compress_level=PNG_LEVEL))
    return name, record


_WORKER: dict[str, Any] = {}


def _init_worker(dataset: "BaseDataSet", directory: Path, image_format: str) -> None:
    _WORKER.update(dataset=dataset, directory=directory, image_format=image_format)


def _write_in_worker(files: dict) -> tuple[str, dict]:
    return write_entry(_WORKER["dataset"], files, _WORKER["directory"], _WORKER["image_format"])


def _up_to_date(entry: dict | None, files: dict, directory: Path, image_format: str, labels: bool) -> bool:
    """Whether a manifest entry still describes the source files and its cache files exist."""
    if not entry:
        return False
    try:
        if entry.get("image") != source_stat(files["img"]):
            return False
        if labels and entry.get("label") != source_stat(files["label"]):
            return False
    except OSError:
        return False
    if not image_file(directory, files["name"], image_format).is_file():
        return False
    return not labels or label_file(directory, files["name"]).is_file()


def build_cache(dataset: "BaseDataSet", cache_root: str | Path, image_format: str = DEFAULT_FORMAT,
                workers: int = 1, progress: Callable[[int, int], None] | None = None,
                save_every: float = SAVE_EVERY) -> BuildReport:
    """Write (or complete, or refresh) the cache of ``dataset`` under ``cache_root``; return what was done.

    ``dataset``: a loader without cache and augmentation (``tools/prepare_cache.py`` builds it with the training
    script's flags). Resumes: an entry whose manifest record matches its source files and whose cache files exist
    is kept; others (new, stale, lost) are written. ``workers`` > 1: that many processes (fork) decode and resize.
    ``progress(done, total)``: called before the first entry and after each (the tool's progress bar). The manifest
    is saved every ``save_every`` seconds and at the end (also when an error stops the build, so that the next run
    resumes), marked complete only when every entry is cached. Raises :class:`~dataset.checks.DatasetError` (a
    source file cannot be read) or :class:`utils.files.WriteError` (a full disk, ...), naming the file.
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
    if dataset.scale or dataset.is_mirror or getattr(dataset, "cache", None) is not None:
        raise ValueError("build_cache needs a dataset without augmentation and without a cache")
    directory = Path(cache_root) / dataset.cache_name()
    manifest_path = directory / MANIFEST
    expected = describe(dataset)
    old = read_manifest(manifest_path)
    keep = old is not None and all(old.get(k) == v for k, v in expected.items()) and old.get("format") == image_format
    if old is not None and not keep:
        logger.info("%s was built for other settings or another format: rebuilding every entry", manifest_path)
    entries: dict = dict(old["entries"]) if keep else {}
    files = unique_names(dataset)
    labels = expected["labels"]
    todo = [f for f in files if not _up_to_date(entries.get(f["name"]), f, directory, image_format, labels)]
    manifest = {**expected, "format": image_format, "complete": False, "entries": entries}
    done = len(files) - len(todo)
    if progress is not None:
        progress(done, len(files))
    if todo or not (keep and old.get("complete")):
        for f in todo:
            entries.pop(f["name"], None)
        write_manifest(manifest_path, manifest)  # an interrupted build is marked incomplete from here on
        last_save, pool = time.monotonic(), None
        try:
            if workers > 1 and len(todo) > 1:
                pool = multiprocessing.get_context("fork").Pool(min(workers, len(todo)), _init_worker,
                                                                 (dataset, directory, image_format))
                results = pool.imap_unordered(_write_in_worker, todo, chunksize=1)
            else:
                results = (write_entry(dataset, f, directory, image_format) for f in todo)
            for name, record in results:
                entries[name] = record
                done += 1
                if progress is not None:
                    progress(done, len(files))
                if time.monotonic() - last_save >= save_every:
                    write_manifest(manifest_path, manifest)
                    last_save = time.monotonic()
        except BaseException:
            try:  # keep what is done for the next run; the error that stopped the build is the one to report
                write_manifest(manifest_path, manifest)
            except OSError as exc:
                logger.warning("could not save the progress of the cache build: %s", exc)
            raise
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        manifest["complete"] = True
        write_manifest(manifest_path, manifest)
    return BuildReport(directory, len(todo), len(files) - len(todo),
                       _cache_disk_usage(directory, files, image_format, labels))


def _cache_disk_usage(directory: Path, files: list[dict], image_format: str, labels: bool) -> int:
    paths = [image_file(directory, f["name"], image_format) for f in files]
    paths += [label_file(directory, f["name"]) for f in files] if labels else []
    return disk_usage(paths + [directory / MANIFEST])
