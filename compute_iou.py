"""Per-class IoU and mIoU of trainId predictions against Cityscapes ground truth (the original's compute_iou.py).

    python compute_iou.py ./data/Cityscapes/data/gtFine/val result/cityscapes

Reads ``info.json`` (number of classes, class names, ``label2train``), ``label.txt`` (gt files, relative to
GT_DIR) and ``val.txt`` (one line per image; the prediction is PRED_DIR/<basename of the line>) from
``--devkit_dir``. Prints the original's lines (``Num classes 19``, every tenth image ``10 / 500: 41.23``, per
class ``===>road:\\t86.5``, then ``===> mIoU: 42.4``) with the same numbers and rounding.

Beyond the original (see README): parallel decoding (``--workers``), every file checked before the run, a
size mismatch or an out-of-range prediction is an error (``--skip-mismatched`` restores the original's skip),
``--json`` for a machine-readable result. On any error nothing is printed to stdout (no number that could be
taken for a result): the exit status is non-zero and stderr says which files and why.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from utils.files import atomic_write, check_writable_dir
from utils.metrics import (
    CLASS_SUBSETS,
    MAX_LISTED,
    MetricsError,
    evaluate_pair,
    format_iou_lines,
    format_progress_line,
    format_skip_line,
    label_mapping_lut,
    per_class_iu,
    read_label_png,
    read_png_header,
    subset_indices,
    subset_iou_lines,
    subset_result_dict,
)

logger = logging.getLogger("compute_iou")

DEFAULT_DEVKIT_DIR = "dataset/cityscapes_list"
#: How --workers decode: separate processes (default; measured faster on 2 cores, see BENCHMARKS.md) or threads.
EXECUTORS = ("process", "thread")


def default_workers() -> int:
    """All the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Cityscapes per-class IoU and mIoU", add_help=add_help)
    parser.add_argument("gt_dir", type=str, help="directory which stores CityScapes val gt images")
    parser.add_argument("pred_dir", type=str, help="directory which stores CityScapes val pred images")
    parser.add_argument("--devkit_dir", default=DEFAULT_DEVKIT_DIR,
                        help="base directory of cityscapes (holds info.json, val.txt, label.txt)")
    beyond = parser.add_argument_group("beyond the original")
    beyond.add_argument("--workers", type=int, default=None,
                        help="workers decoding PNGs in parallel (default: all cores)")
    beyond.add_argument("--executor", choices=EXECUTORS, default="process",
                        help="run the --workers as processes (default) or threads")
    beyond.add_argument("--skip-mismatched", action="store_true",
                        help="skip predictions whose size differs from the ground truth, as the original did "
                             "silently (default: such a pair is an error); the count is reported at the end")
    beyond.add_argument("--json", type=str, default=None, metavar="OUT.json",
                        help="also write per-class IoU, mIoU, number of images and the confusion matrix")
    beyond.add_argument("--classes", type=int, default=19, choices=CLASS_SUBSETS,
                        help="report this class subset: 19 (all), 16 (SYNTHIA: without terrain, truck, train) or 13 "
                             "(16 without wall, fence, pole: SYNTHIA as in the paper, Cross-City); the IoUs are "
                             "those of the full confusion matrix, the mIoU is over the subset")
    return parser


# --------------------------------------------------------------------------------------------------------------
# Devkit and file lists


@dataclass
class Devkit:
    """What compute_iou needs from a devkit directory."""

    num_classes: int
    names: list[str]
    label2train: list[list[int]]
    val_lines: list[str]
    label_lines: list[str]

    @property
    def lut(self) -> np.ndarray:
        return label_mapping_lut(self.label2train)


def resolve_devkit_dir(devkit_dir: str) -> str:
    """The default ``dataset/cityscapes_list`` is relative to the current directory (as in the original);
    when run from elsewhere, fall back to the repository's copy."""
    if devkit_dir == DEFAULT_DEVKIT_DIR and not os.path.isdir(devkit_dir):
        from dataset.labels import CITYSCAPES_LIST_DIR

        return str(CITYSCAPES_LIST_DIR)
    return devkit_dir


def _read_list(path: str) -> list[str]:
    try:
        with open(path, "r") as fp:
            return [line.strip() for line in fp.read().splitlines() if line.strip()]
    except FileNotFoundError:
        raise MetricsError(f"devkit file not found: {path}") from None


def read_devkit(devkit_dir: str) -> Devkit:
    """Read and check ``info.json``, ``val.txt`` and ``label.txt`` of a devkit directory."""
    info_path = os.path.join(devkit_dir, "info.json")
    try:
        with open(info_path, "r") as fp:
            info = json.load(fp)
    except FileNotFoundError:
        raise MetricsError(f"devkit file not found: {info_path} (--devkit_dir {devkit_dir})") from None
    except json.JSONDecodeError as exc:
        raise MetricsError(f"{info_path} is not valid JSON: {exc}") from None
    for key in ("classes", "label", "label2train"):
        if key not in info:
            raise MetricsError(f"{info_path} lacks the key {key!r}")
    num_classes = int(info["classes"])
    names = [str(x) for x in info["label"]]
    if len(names) != num_classes:
        raise MetricsError(f"{info_path}: 'classes' is {num_classes} but 'label' lists {len(names)} names")
    val_lines = _read_list(os.path.join(devkit_dir, "val.txt"))
    label_lines = _read_list(os.path.join(devkit_dir, "label.txt"))
    if len(val_lines) != len(label_lines):
        raise MetricsError(
            f"{os.path.join(devkit_dir, 'val.txt')} lists {len(val_lines)} images but "
            f"{os.path.join(devkit_dir, 'label.txt')} lists {len(label_lines)} ground-truth files"
        )
    if not val_lines:
        raise MetricsError(f"{os.path.join(devkit_dir, 'val.txt')} lists no images")
    return Devkit(num_classes, names, [list(p) for p in info["label2train"]], val_lines, label_lines)


def pair_paths(gt_dir: str, pred_dir: str, devkit: Devkit) -> tuple[list[str], list[str]]:
    """gt files (GT_DIR/<label.txt line>) and prediction files (PRED_DIR/<basename of the val.txt line>)."""
    gt_imgs = [os.path.join(gt_dir, x) for x in devkit.label_lines]
    pred_imgs = [os.path.join(pred_dir, x.split("/")[-1]) for x in devkit.val_lines]
    return gt_imgs, pred_imgs


def _listing(paths: Sequence[str], limit: int = 20) -> str:
    shown = "\n".join("  " + p for p in paths[:limit])
    return shown + (f"\n  ... and {len(paths) - limit} more" if len(paths) > limit else "")


def check_files_exist(gt_dir: str, pred_dir: str, gt_imgs: Sequence[str], pred_imgs: Sequence[str]) -> None:
    """Every gt and prediction file must exist; otherwise one MetricsError listing all that are missing."""
    for flag, d in (("GT_DIR", gt_dir), ("PRED_DIR", pred_dir)):
        if not os.path.isdir(d):
            raise MetricsError(f"{flag} {d} is not a directory")
    problems = []
    missing_gt = [p for p in gt_imgs if not os.path.isfile(p)]
    missing_pred = [p for p in pred_imgs if not os.path.isfile(p)]
    if missing_gt:
        problems.append(f"{len(missing_gt)} of {len(gt_imgs)} ground-truth files are missing:\n"
                        + _listing(missing_gt))
    if missing_pred:
        problems.append(f"{len(missing_pred)} of {len(pred_imgs)} prediction files are missing "
                        f"(expected PRED_DIR/<basename of each val.txt line>):\n" + _listing(missing_pred))
    if problems:
        raise MetricsError("\n".join(problems))


@dataclass
class _Header:
    size: tuple[int, int]
    bands: int

    @property
    def flat_len(self) -> int:
        return self.size[0] * self.size[1] * self.bands

    def describe(self) -> str:
        extra = f" with {self.bands} channels" if self.bands != 1 else ""
        return f"{self.size[0]}x{self.size[1]}{extra}"


def _header(path: str, what: str) -> _Header:
    size, bands, _ = read_png_header(path, what)
    return _Header(size, bands)


# --------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class IoUResult:
    """Outcome of :func:`evaluate_dirs` (nothing printed yet)."""

    hist: np.ndarray
    names: list[str]
    num_images: int
    total: int
    skipped: list[tuple[str, str, int, int]] = field(default_factory=list)
    #: the original's stdout lines in order ('Skipping: ...' and '10 / 500: ...'), printed on success only.
    log_lines: list[str] = field(default_factory=list)

    @property
    def ious(self) -> np.ndarray:
        return per_class_iu(self.hist)

    def table(self) -> list[str]:
        return format_iou_lines(self.ious, self.names)


def _pair_hist(task: tuple[str, str, int, np.ndarray, list[list[int]]]) -> tuple[np.ndarray | None, str | None]:
    """One image pair -> (its [n, n] confusion matrix, None) or (None, the error message).

    Module-level (picklable) so that a process pool can run it; only the small matrix travels back.
    """
    gt_path, pred_path, n, lut, label2train = task
    try:
        gt = read_label_png(gt_path, "ground truth")
        pred = read_label_png(pred_path, "prediction")
        return evaluate_pair(gt, pred, lut, label2train, n, gt_path, pred_path), None
    except MetricsError as exc:
        return None, str(exc)


def _mp_context() -> Any:
    """'fork' (fast start) when this process runs no library thread pools, else 'forkserver'.

    Forking a process in which torch (imported by evaluate_cityscapes.py or the tests) has started its OpenMP
    threads can deadlock the child; the command line never imports torch.
    """
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    if "torch" not in sys.modules and "fork" in methods:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _progress_bar(total: int, progress: bool | None, desc: str):
    from tqdm import tqdm

    disable = (not sys.stderr.isatty()) if progress is None else not progress
    return tqdm(total=total, file=sys.stderr, disable=disable, unit="img", desc=desc, dynamic_ncols=True)


def evaluate_dirs(
    gt_dir: str,
    pred_dir: str,
    devkit_dir: str = DEFAULT_DEVKIT_DIR,
    *,
    workers: int | None = None,
    skip_mismatched: bool = False,
    progress: bool | None = None,
    executor: str = "process",
) -> IoUResult:
    """Confusion matrix of PRED_DIR against GT_DIR over the devkit's list; raises MetricsError on bad input.

    Order of checks (all before any number exists): devkit files; every gt and prediction file exists; every
    pair has the same size (header only); then the decode, where truncated files and out-of-range predictions
    are collected and reported together.
    """
    devkit = read_devkit(resolve_devkit_dir(devkit_dir))
    gt_imgs, pred_imgs = pair_paths(gt_dir, pred_dir, devkit)
    check_files_exist(gt_dir, pred_dir, gt_imgs, pred_imgs)
    n = devkit.num_classes
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise MetricsError(f"--workers must be >= 1, got {workers}")
    if executor not in EXECUTORS:
        raise MetricsError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    # Headers (tiny reads) in threads, finished before any process is forked.
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as header_pool:
            gt_heads = list(header_pool.map(lambda p: _header(p, "ground truth"), gt_imgs))
            pred_heads = list(header_pool.map(lambda p: _header(p, "prediction"), pred_imgs))
    else:
        gt_heads = [_header(p, "ground truth") for p in gt_imgs]
        pred_heads = [_header(p, "prediction") for p in pred_imgs]
    # The decode + count: processes (np.bincount holds the GIL) or threads; in the list's order.
    pool: Any = None
    try:
        mismatched = [i for i, (g, p) in enumerate(zip(gt_heads, pred_heads))
                      if g.size != p.size or g.bands != p.bands]
        if mismatched and not skip_mismatched:
            lines = [f"  {pred_imgs[i]} is {pred_heads[i].describe()} but {gt_imgs[i]} is "
                     f"{gt_heads[i].describe()}" for i in mismatched[:20]]
            more = f"\n  ... and {len(mismatched) - 20} more" if len(mismatched) > 20 else ""
            raise MetricsError(
                f"{len(mismatched)} of {len(gt_imgs)} predictions differ in size from their ground truth "
                "(the original skipped them silently, which changes the mIoU; pass --skip-mismatched to do "
                "the same):\n" + "\n".join(lines) + more
            )
        skip = set(mismatched)
        todo = [i for i in range(len(gt_imgs)) if i not in skip]
        lut = devkit.lut
        tasks = [(gt_imgs[i], pred_imgs[i], n, lut, devkit.label2train) for i in todo]
        if workers > 1 and executor == "process" and len(tasks) > 1:
            pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=_mp_context())
            stream = pool.map(_pair_hist, tasks, chunksize=max(1, min(8, len(tasks) // (4 * workers))))
        elif workers > 1:
            pool = ThreadPoolExecutor(max_workers=workers)
            stream = pool.map(_pair_hist, tasks)
        else:
            stream = map(_pair_hist, tasks)
        results: dict[int, np.ndarray] = {}
        errors: list[str] = []
        with _progress_bar(len(todo), progress, "compute_iou") as bar:
            for i, (hist_i, err) in zip(todo, stream):
                if err is not None:
                    errors.append(err)
                else:
                    results[i] = hist_i
                bar.update(1)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if errors:
        shown = "\n".join("  " + e for e in errors[:MAX_LISTED])
        more = f"\n  ... and {len(errors) - MAX_LISTED} more" if len(errors) > MAX_LISTED else ""
        raise MetricsError(f"{len(errors)} of {len(todo)} image pairs could not be evaluated:\n{shown}{more}")

    # Accumulate in list order, reproducing the original's interleaved stdout lines.
    hist = np.zeros((n, n), dtype=np.int64)
    log_lines: list[str] = []
    skipped = []
    for ind in range(len(gt_imgs)):
        if ind in skip:
            g, p = gt_heads[ind], pred_heads[ind]
            log_lines.append(format_skip_line(g.flat_len, p.flat_len, gt_imgs[ind], pred_imgs[ind]))
            skipped.append((gt_imgs[ind], pred_imgs[ind], g.flat_len, p.flat_len))
            continue
        hist += results[ind]
        if ind > 0 and ind % 10 == 0:
            log_lines.append(format_progress_line(ind, len(gt_imgs), hist))
    return IoUResult(hist, devkit.names, len(todo), len(gt_imgs), skipped, log_lines)


def write_json(path: str | Path, result: IoUResult, classes: int | None = None, **extra: Any) -> None:
    """The machine-readable result, written atomically (``classes``: per-class IoU and mIoU of that subset)."""
    data = subset_result_dict(
        result.hist, result.names, result.num_images, len(result.names) if classes is None else classes,
        num_skipped=len(result.skipped),
        skipped=[{"gt": g, "pred": p, "len_gt": lg, "len_pred": lp} for g, p, lg, lp in result.skipped],
        **extra,
    )
    text = json.dumps(data, indent=1)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))


def compute_mIoU(
    gt_dir: str,
    pred_dir: str,
    devkit_dir: str = "",
    *,
    workers: int | None = None,
    skip_mismatched: bool = False,
    json_path: str | None = None,
    progress: bool | None = None,
    executor: str = "process",
    classes: int = 19,
) -> np.ndarray:
    """The original's entry point: evaluate, print its lines, return the per-class IoU array [num_classes].

    ``devkit_dir=''`` reads the devkit files from the current directory, as the original did. ``classes``
    (19, 16, 13): the printed table lists that subset of the classes and its mIoU (the returned array still
    has every class). Raises MetricsError (nothing printed) on bad input.
    """
    subset_indices(read_devkit(resolve_devkit_dir(devkit_dir)).names, classes)  # a bad subset fails before work
    if json_path is not None:
        check_writable_dir(Path(json_path).resolve().parent, "--json")
    result = evaluate_dirs(gt_dir, pred_dir, devkit_dir, workers=workers, skip_mismatched=skip_mismatched,
                           progress=progress, executor=executor)
    if json_path is not None:  # first, so that a failure to write it prints no numbers either
        write_json(json_path, result, classes, gt_dir=str(gt_dir), pred_dir=str(pred_dir),
                   devkit_dir=resolve_devkit_dir(devkit_dir))
    print("Num classes", len(result.names))
    for line in result.log_lines:
        print(line)
    for line in subset_iou_lines(result.ious, result.names, classes):
        print(line)
    if result.skipped:
        print(f"WARNING: skipped {len(result.skipped)} of {result.total} images whose prediction size differs "
              f"from the ground truth (--skip-mismatched); the numbers above cover {result.num_images} images "
              "only", file=sys.stderr)
    return result.ious


def main(args: argparse.Namespace) -> int:
    try:
        compute_mIoU(args.gt_dir, args.pred_dir, args.devkit_dir, workers=args.workers,
                     skip_mismatched=args.skip_mismatched, json_path=args.json, executor=args.executor,
                     classes=args.classes)
    except (MetricsError, ValueError, OSError) as exc:
        print(f"compute_iou.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main(get_args_parser().parse_args()))
