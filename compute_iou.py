"""Per-class IoU and mIoU of trainId predictions against Cityscapes ground truth (the original's compute_iou.py).

    python compute_iou.py ./data/Cityscapes/data/gtFine/val result/cityscapes

Reads ``info.json`` (number of classes, class names, ``label2train``), ``label.txt`` (gt files, relative to
GT_DIR) and ``val.txt`` (one line per image; the prediction is PRED_DIR/<basename of the line>) from
``--devkit-dir``. Prints the original's lines (``Num classes 19``, every tenth image ``10 / 500: 41.23``, per
class ``===>road:\\t86.5``, then ``===> mIoU: 42.4``) with the same numbers and rounding; then, on stderr, how many
images were scored.

Beyond the original (docs/evaluation.md): parallel decoding (``--num-workers``), every file checked before the run,
a size mismatch or an out-of-range prediction is an error (``--skip-mismatched`` restores the original's skip),
``--json`` for a machine-readable result, class subsets (``--classes``, ``--ignore-other-classes``). On any error
nothing is printed to stdout (no number that could be taken for a result): stderr says which files and why, in one
``compute_iou.py: error: ...`` message, and the exit status is 1 (2 for flags that cannot work).
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

from dataset.checks import find_missing, format_paths, read_list
from dataset.labels import load_info
from utils.cli import ArgumentParser, fail, repo_path, usable_cpus
from utils.files import atomic_write, check_writable_dir
from utils.metrics import (
    CLASS_SUBSETS,
    MAX_LISTED,
    MetricsError,
    evaluate_pair,
    format_progress_line,
    format_skip_line,
    ignore_other_classes,
    label_mapping_lut,
    per_class_iu,
    read_label_png,
    read_png_header,
    subset_indices,
    subset_iou_lines,
    subset_result_dict,
)

logger = logging.getLogger("compute_iou")

PROG = "compute_iou.py"
DEFAULT_DEVKIT_DIR = "dataset/cityscapes_list"
#: How --num-workers decode: separate processes (default; measured faster on 2 cores, see BENCHMARKS.md) or threads.
EXECUTORS = ("process", "thread")
#: The keys of info.json that scoring needs (not the palette).
DEVKIT_KEYS = ("classes", "label", "label2train")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Per-class IoU and mIoU of trainId predictions against "
                            "Cityscapes-style ground truth (the original's table on stdout).", add_help=add_help)
    parser.add_argument("gt_dir", metavar="GT_DIR",
                        help="ground-truth folder; the devkit's label.txt lines are relative to it (Cityscapes: "
                             "./data/Cityscapes/data/gtFine/val)")
    parser.add_argument("pred_dir", metavar="PRED_DIR",
                        help="folder of the trainId predictions, PRED_DIR/<basename of each val.txt line> "
                             "(evaluate_cityscapes.py's --save)")
    parser.add_argument("--devkit-dir", "--devkit_dir", dest="devkit_dir", default=DEFAULT_DEVKIT_DIR,
                        help="folder holding info.json (classes, names, label2train), val.txt (the images) and "
                             "label.txt (their ground-truth files)")
    beyond = parser.add_argument_group("beyond the original")
    beyond.add_argument("--num-workers", "--workers", dest="workers", type=int, default=None, metavar="N",
                        help="processes (or threads) decoding PNGs in parallel (default: all usable cores)")
    beyond.add_argument("--executor", choices=EXECUTORS, default="process",
                        help="run the --num-workers as processes or threads")
    beyond.add_argument("--skip-mismatched", action="store_true",
                        help="skip predictions whose size differs from the ground truth, as the original did "
                             "silently (without it such a pair is an error); the count is reported at the end")
    beyond.add_argument("--json", default=None, metavar="OUT.json",
                        help="also write per-class IoU, mIoU, number of images and the confusion matrix")
    beyond.add_argument("--classes", type=int, default=19, choices=CLASS_SUBSETS,
                        help="report this class subset: 19 (all), 16 (SYNTHIA: without terrain, truck, train) or 13 "
                             "(16 without wall, fence, pole: SYNTHIA as in the paper, Cross-City); the IoUs are "
                             "those of the full confusion matrix (unless --ignore-other-classes), the mIoU is over "
                             "the subset")
    beyond.add_argument("--ignore-other-classes", action="store_true",
                        help="with --classes 16 or 13: ignore the ground-truth pixels of the classes outside the "
                             "subset instead of counting them (the protocol of MaxSquareLoss's and ETM's code; "
                             "docs/evaluation.md)")
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
    #: the list files, for messages
    val_path: Path
    label_path: Path

    @property
    def lut(self) -> np.ndarray:
        return label_mapping_lut(self.label2train)


def read_devkit(devkit_dir: str | Path) -> Devkit:
    """Read and check ``info.json``, ``val.txt`` and ``label.txt`` of a devkit directory (MetricsError if bad)."""
    root = Path(devkit_dir)
    val_path, label_path = root / "val.txt", root / "label.txt"
    try:
        info = load_info(root / "info.json", keys=DEVKIT_KEYS)
        val_lines = read_list(val_path, "devkit image list")
        label_lines = read_list(label_path, "devkit ground-truth list")
    except (OSError, ValueError) as exc:
        raise MetricsError(f"{exc}; --devkit-dir {devkit_dir} must hold info.json, val.txt and label.txt") from None
    if len(val_lines) != len(label_lines):
        raise MetricsError(f"{val_path} lists {len(val_lines)} images but {label_path} lists {len(label_lines)} "
                           "ground-truth files, make the two lists line up")
    return Devkit(int(info["classes"]), [str(x) for x in info["label"]], [list(p) for p in info["label2train"]],
                  val_lines, label_lines, val_path, label_path)


def pair_paths(gt_dir: str, pred_dir: str, devkit: Devkit) -> tuple[list[str], list[str]]:
    """gt files (GT_DIR/<label.txt line>) and prediction files (PRED_DIR/<basename of the val.txt line>)."""
    gt_imgs = [os.path.join(gt_dir, x) for x in devkit.label_lines]
    pred_imgs = [os.path.join(pred_dir, x.split("/")[-1]) for x in devkit.val_lines]
    return gt_imgs, pred_imgs


def check_files_exist(gt_dir: str, pred_dir: str, gt_imgs: Sequence[str], pred_imgs: Sequence[str],
                      devkit: Devkit | None = None) -> None:
    """Every gt and prediction file must exist; otherwise one MetricsError listing the first missing ones. When
    most ground-truth files are missing, the message says which devkit lists were used and whether GT_DIR and
    PRED_DIR look swapped."""
    for flag, d in (("GT_DIR", gt_dir), ("PRED_DIR", pred_dir)):
        if not os.path.isdir(d):
            raise MetricsError(f"{flag} {d} is not a directory")
    missing_gt, missing_pred = find_missing(gt_imgs), find_missing(pred_imgs)
    problems = []
    if missing_gt:
        problems.append(f"{len(missing_gt)} of {len(gt_imgs)} ground-truth files are missing:\n"
                        + format_paths(missing_gt, MAX_LISTED))
    if missing_pred:
        problems.append(f"{len(missing_pred)} of {len(pred_imgs)} prediction files are missing (expected "
                        "PRED_DIR/<basename of each val.txt line>):\n" + format_paths(missing_pred, MAX_LISTED))
    if 2 * len(missing_gt) > len(gt_imgs):
        problems.append(_most_gt_missing_hint(gt_dir, pred_dir, gt_imgs, pred_imgs, devkit))
    if problems:
        raise MetricsError("\n".join(problems))


def _most_gt_missing_hint(gt_dir: str, pred_dir: str, gt_imgs: Sequence[str], pred_imgs: Sequence[str],
                          devkit: Devkit | None) -> str:
    sample = range(min(5, len(gt_imgs)))
    swapped = any(os.path.isfile(os.path.join(pred_dir, os.path.relpath(gt_imgs[i], gt_dir)))
                  or os.path.isfile(os.path.join(gt_dir, os.path.basename(pred_imgs[i]))) for i in sample)
    lists = f" (it used {devkit.label_path} and {devkit.val_path})" if devkit else ""
    text = (f"most ground-truth files are missing: check that --devkit-dir lists the images of GT_DIR{lists}, "
            "and that GT_DIR and PRED_DIR are not the wrong way round (compute_iou.py GT_DIR PRED_DIR)")
    if swapped:
        text += f"; they look swapped: {pred_dir} holds ground-truth files or {gt_dir} predictions"
    return text


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


def _headers(paths: Sequence[str], what: str, workers: int) -> list[_Header]:
    """The PNG headers of ``paths`` (tiny reads; in threads with ``workers`` > 1)."""
    if workers == 1:
        return [_header(p, what) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: _header(p, what), paths))


def evaluate_dirs(
    gt_dir: str,
    pred_dir: str,
    devkit_dir: str = DEFAULT_DEVKIT_DIR,
    *,
    workers: int | None = None,
    skip_mismatched: bool = False,
    progress: bool | None = None,
    executor: str = "process",
    ignore_outside: int | None = None,
) -> IoUResult:
    """Confusion matrix of PRED_DIR against GT_DIR over the devkit's list; raises MetricsError on bad input.

    Order of checks (all before any number exists): devkit files; every gt and prediction file exists; every
    pair has the same size (header only); then the decode, where truncated files and out-of-range predictions
    are collected and reported together. ``ignore_outside`` (a subset size, ``--ignore-other-classes``): the
    ground-truth pixels of the classes outside that subset are ignored.
    """
    devkit = read_devkit(repo_path(devkit_dir, "--devkit-dir"))
    gt_imgs, pred_imgs = pair_paths(gt_dir, pred_dir, devkit)
    check_files_exist(gt_dir, pred_dir, gt_imgs, pred_imgs, devkit)
    n = devkit.num_classes
    workers = usable_cpus() if workers is None else workers
    if workers < 1:
        raise MetricsError(f"--num-workers must be >= 1, got {workers}")
    if executor not in EXECUTORS:
        raise MetricsError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    gt_heads = _headers(gt_imgs, "ground truth", workers)  # finished before any process is forked
    pred_heads = _headers(pred_imgs, "prediction", workers)
    mismatched = [i for i, (g, p) in enumerate(zip(gt_heads, pred_heads)) if g.size != p.size or g.bands != p.bands]
    if mismatched and not skip_mismatched:
        lines = [f"{pred_imgs[i]} is {pred_heads[i].describe()} but {gt_imgs[i]} is {gt_heads[i].describe()}"
                 for i in mismatched]
        raise MetricsError(f"{len(mismatched)} of {len(gt_imgs)} predictions differ in size from their ground truth "
                           "(the original skipped them silently, which changes the mIoU; pass --skip-mismatched "
                           "to do the same):\n" + format_paths(lines, MAX_LISTED))
    skip = set(mismatched)
    todo = [i for i in range(len(gt_imgs)) if i not in skip]
    lut = devkit.lut
    tasks = [(gt_imgs[i], pred_imgs[i], n, lut, devkit.label2train) for i in todo]
    # The decode + count: processes (np.bincount holds the GIL) or threads; in the list's order.
    pool: Any = None
    results: dict[int, np.ndarray] = {}
    errors: list[str] = []
    try:
        if workers > 1 and executor == "process" and len(tasks) > 1:
            pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=_mp_context())
            stream = pool.map(_pair_hist, tasks, chunksize=max(1, min(8, len(tasks) // (4 * workers))))
        elif workers > 1:
            pool = ThreadPoolExecutor(max_workers=workers)
            stream = pool.map(_pair_hist, tasks)
        else:
            stream = map(_pair_hist, tasks)
        with _progress_bar(len(todo), progress, "compute_iou") as bar:
            for i, (hist_i, err) in zip(todo, stream):
                if err is not None:
                    errors.append(err)
                else:
                    results[i] = hist_i if ignore_outside is None else ignore_other_classes(
                        hist_i, devkit.names, ignore_outside)
                bar.update(1)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if errors:
        raise MetricsError(f"{len(errors)} of {len(todo)} image pairs could not be evaluated:\n"
                           + format_paths(errors, MAX_LISTED))

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
    """The machine-readable result, written atomically (``classes``: per-class IoU and mIoU of that subset).
    Raises :class:`utils.files.WriteError` naming the file when it cannot be written."""
    data = subset_result_dict(
        result.hist, result.names, result.num_images, len(result.names) if classes is None else classes,
        num_skipped=len(result.skipped),
        skipped=[{"gt": g, "pred": p, "len_gt": lg, "len_pred": lp} for g, p, lg, lp in result.skipped],
        **extra,
    )
    text = json.dumps(data, indent=1) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text), needed=len(text))


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
    ignore_other: bool = False,
) -> np.ndarray:
    """The original's entry point: evaluate, print its lines, return the per-class IoU array [num_classes].

    ``devkit_dir=''`` reads the devkit files from the current directory, as the original did. ``classes``
    (19, 16, 13): the printed table lists that subset of the classes and its mIoU (the returned array still
    has every class); ``ignore_other`` ignores the ground truth of the classes outside it. Raises MetricsError
    (nothing printed) on bad input, :class:`utils.files.WriteError` when ``json_path`` cannot be written.
    """
    devkit_dir = repo_path(devkit_dir, "--devkit-dir")
    subset_indices(read_devkit(devkit_dir).names, classes)  # a bad subset fails before work
    if json_path is not None:
        check_writable_dir(Path(json_path).absolute().parent, "--json", create=False)
    result = evaluate_dirs(gt_dir, pred_dir, devkit_dir, workers=workers, skip_mismatched=skip_mismatched,
                           progress=progress, executor=executor, ignore_outside=classes if ignore_other else None)
    if json_path is not None:  # first, so that a failure to write it prints no numbers either
        extra = {"ignore_other_classes": True} if ignore_other else {}
        write_json(json_path, result, classes, gt_dir=str(gt_dir), pred_dir=str(pred_dir), devkit_dir=devkit_dir,
                   **extra)
    print("Num classes", len(result.names))
    for line in result.log_lines:
        print(line)
    for line in subset_iou_lines(result.ious, result.names, classes):
        print(line)
    sys.stdout.flush()
    if result.skipped:
        print(f"WARNING: skipped {len(result.skipped)} of {result.total} images whose prediction size differs "
              f"from the ground truth (--skip-mismatched); the numbers above cover {result.num_images} images "
              "only", file=sys.stderr)
    print(f"scored {result.num_images} images", file=sys.stderr, flush=True)
    return result.ious


def main(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        return fail(PROG, f"--num-workers must be at least 1, got {args.workers}", 2)
    if args.ignore_other_classes and args.classes == max(CLASS_SUBSETS):
        return fail(PROG, "--ignore-other-classes needs a class subset, pass --classes 16 or 13", 2)
    try:
        compute_mIoU(args.gt_dir, args.pred_dir, args.devkit_dir, workers=args.workers,
                     skip_mismatched=args.skip_mismatched, json_path=args.json, executor=args.executor,
                     classes=args.classes, ignore_other=args.ignore_other_classes)
    except (MetricsError, ValueError, OSError) as exc:
        return fail(PROG, str(exc))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main(get_args_parser().parse_args()))
