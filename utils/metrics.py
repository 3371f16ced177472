"""The one confusion-matrix implementation: compute_iou.py, evaluate_cityscapes.py ``--gt-dir`` and any
validation during training all count pixels here.

Semantics are the original AdaptSegNet ``compute_iou.py``'s:

* a confusion matrix ``hist[gt, pred]`` (rows ground truth, columns prediction) summed over all images;
  only pixels whose ground truth lies in ``[0, n)`` count (255 and every other id are ignored);
* ground-truth labelIds are mapped to trainIds with the devkit's ``label2train`` table, and ids the table
  does not list are **left as they are** (the original copied the image and overwrote only listed ids);
* per-class IoU = ``diag / (row sum + column sum - diag)`` (NaN for a class absent from both), mIoU = the
  mean over classes ignoring NaN;
* the printed lines ``===>road:\\t86.5`` and ``===> mIoU: 42.4`` with the original's rounding.

What is new is speed and honesty: one 256x256 joint histogram per uint8 image pair (one integer ``bincount``)
replaces the original's 35 masked passes, and a prediction value outside ``[0, n)`` on a counted pixel is an
error instead of being silently folded into another cell (or crashing ``reshape``).

Library code: raises :class:`MetricsError` (a ``ValueError``) with messages naming the file, never prints.
"""
from __future__ import annotations

import logging
import math
import zlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from dataset.checks import format_paths

logger = logging.getLogger(__name__)

__all__ = [
    "MetricsError",
    "fast_hist",
    "per_class_iu",
    "mean_iu",
    "label_mapping",
    "label_mapping_lut",
    "joint_histogram",
    "confusion_from_joint",
    "evaluate_pair",
    "read_label_png",
    "read_png_header",
    "format_iou_lines",
    "format_progress_line",
    "format_skip_line",
    "result_dict",
    "CLASS_SUBSET_DROPS",
    "CLASS_SUBSETS",
    "subset_indices",
    "ignore_other_classes",
    "subset_iou_lines",
    "subset_result_dict",
]

#: How many offending values / files an error message lists before "... and N more".
MAX_LISTED = 10


class MetricsError(ValueError):
    """Bad evaluation input (missing, unreadable, wrong-size or out-of-range files); the message names the file."""


# --------------------------------------------------------------------------------------------------------------
# Counting


def _check_int(arr: np.ndarray, what: str) -> None:
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise MetricsError(f"{what} must hold integer labels, got dtype {arr.dtype}")


def _bad_prediction_message(values: Iterable[int], n: int, name: str | None) -> str:
    where = f"{name}: " if name else ""
    listed = format_paths([int(v) for v in values], MAX_LISTED, inline=True)
    return (f"{where}prediction values outside [0, {n}) on labelled pixels: {listed} "
            f"(predictions must be trainIds 0..{n - 1}; labelIds or colour images give wrong numbers)")


def joint_histogram(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Count every (gt value, pred value) pair of two uint8 arrays of the same shape.

    Returns an int64 array [256, 256], ``joint[g, p]`` = number of pixels with gt ``g`` and prediction ``p``.
    One integer ``bincount`` over ``g << 8 | p``: the label mapping, the ignore mask and the range check are
    then done on the 65,536 bins instead of on the millions of pixels (:func:`confusion_from_joint`).
    """
    if gt.dtype != np.uint8 or pred.dtype != np.uint8:
        raise MetricsError(f"joint_histogram needs uint8 arrays, got {gt.dtype} and {pred.dtype}")
    if gt.shape != pred.shape:
        raise MetricsError(f"shapes differ: gt {gt.shape} vs prediction {pred.shape}")
    idx = gt.astype(np.uint16)
    idx <<= 8
    idx |= pred
    return np.bincount(idx.reshape(-1), minlength=65536).reshape(256, 256)


def confusion_from_joint(
    joint: np.ndarray, lut: np.ndarray, n: int, name: str | None = None
) -> np.ndarray:
    """Fold a [256, 256] joint histogram into the [n, n] confusion matrix.

    ``lut`` ([256] ints) maps a gt value to the class it counts as; rows mapping outside ``[0, n)`` are ignored
    (as the original's ``k = (a >= 0) & (a < n)``). A count in a column ``>= n`` of a kept row means a
    prediction out of range on a counted pixel: :class:`MetricsError` naming ``name`` and the values.
    """
    lut = np.asarray(lut, dtype=np.int64)
    rows = np.nonzero((lut >= 0) & (lut < n))[0]
    sub = joint[rows]
    bad = np.nonzero(sub[:, n:].sum(axis=0))[0] + n
    if bad.size:
        raise MetricsError(_bad_prediction_message(bad, n, name))
    hist = np.zeros((n, n), dtype=np.int64)
    np.add.at(hist, lut[rows], sub[:, :n])
    return hist


def fast_hist(a: np.ndarray, b: np.ndarray, n: int, name: str | None = None) -> np.ndarray:
    """Confusion matrix [n, n] (int64; rows gt ``a``, columns prediction ``b``) of one pair of label arrays.

    The original's ``fast_hist(a, b, n)``: pixels with ``0 <= a < n`` count, ``hist[a, b] += 1``. Unlike the
    original (whose ``bincount(n * a + b)`` silently moved a prediction ``b >= n`` into the next row, or
    crashed), ``b`` outside ``[0, n)`` on a counted pixel raises :class:`MetricsError` listing the values
    (``name`` labels the message). ``a`` and ``b``: integer arrays of the same shape (any, e.g. flattened).
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise MetricsError(
            f"{name + ': ' if name else ''}gt and prediction sizes differ: {a.shape} vs {b.shape}"
        )
    _check_int(a, "gt")
    _check_int(b, "prediction")
    if a.dtype == np.uint8 and b.dtype == np.uint8 and n <= 256:
        return confusion_from_joint(joint_histogram(a, b), np.arange(256), n, name)
    k = (a >= 0) & (a < n)
    bk = b[k].astype(np.int64, copy=False)
    if bk.size and (bk.min() < 0 or bk.max() >= n):
        raise MetricsError(_bad_prediction_message(np.unique(bk[(bk < 0) | (bk >= n)]), n, name))
    return np.bincount(n * a[k].astype(np.int64) + bk, minlength=n * n).reshape(n, n)


def per_class_iu(hist: np.ndarray) -> np.ndarray:
    """Per-class IoU of a confusion matrix: ``diag / (row sum + column sum - diag)``, float64 [n].

    NaN (no warning) for a class that appears neither in the gt nor in the predictions, as the original.
    """
    hist = np.asarray(hist, dtype=np.float64)
    diag = np.diag(hist)
    with np.errstate(divide="ignore", invalid="ignore"):
        return diag / (hist.sum(1) + hist.sum(0) - diag)


def mean_iu(ious: np.ndarray) -> float:
    """The mIoU: mean over classes ignoring NaN (``np.nanmean``); NaN, without a warning, when all are NaN."""
    ious = np.asarray(ious, dtype=np.float64)
    if ious.size == 0 or np.isnan(ious).all():
        return math.nan
    # np.nanmean itself (not a mean of the valid entries): the same summation order, so the same last bit.
    return float(np.nanmean(ious))


# --------------------------------------------------------------------------------------------------------------
# Label mapping


def label_mapping_lut(label2train: Sequence[Sequence[int]] | dict[str, Any]) -> np.ndarray:
    """A [256] int64 table gt value -> class, from a devkit ``label2train`` list (or the whole info dict).

    Faithful to the original's ``label_mapping``: values the table does not list map to **themselves**
    (the original copied the image and overwrote only the listed ids); a later entry for the same id wins;
    entries outside 0..255 (the ``-1`` licence plate) cannot occur in an 8-bit PNG and are skipped.
    For the Cityscapes table this equals :data:`dataset.labels.LABEL2TRAIN` on every counted pixel.
    """
    if isinstance(label2train, dict):
        label2train = label2train["label2train"]
    lut = np.arange(256, dtype=np.int64)
    for label_id, train_id in label2train:
        if 0 <= int(label_id) < 256:
            lut[int(label_id)] = int(train_id)
    return lut


def label_mapping(labels: np.ndarray, label2train: Sequence[Sequence[int]]) -> np.ndarray:
    """Map a gt array of any integer dtype with ``label2train`` (unlisted values unchanged); int64 result.

    uint8 input goes through one table lookup; wider input (16-bit PNGs) through the original's per-id passes.
    """
    labels = np.asarray(labels)
    if labels.dtype == np.uint8:
        return label_mapping_lut(label2train)[labels]
    out = labels.astype(np.int64, copy=True)
    for label_id, train_id in label2train:
        out[labels == int(label_id)] = int(train_id)
    return out


def evaluate_pair(
    gt: np.ndarray,
    pred: np.ndarray,
    lut: np.ndarray,
    label2train: Sequence[Sequence[int]],
    n: int,
    gt_name: str = "gt",
    pred_name: str = "prediction",
) -> np.ndarray:
    """Confusion matrix [n, n] of one gt labelId image and one trainId prediction (2-D arrays).

    ``lut`` is :func:`label_mapping_lut` of ``label2train`` (passed in so it is built once). Raises
    :class:`MetricsError` naming both files when the shapes differ, or naming the prediction when it holds
    values outside ``[0, n)`` on counted pixels.
    """
    if gt.shape != pred.shape:
        raise MetricsError(
            f"size mismatch: {pred_name} is {_describe_shape(pred.shape)} but its ground truth "
            f"{gt_name} is {_describe_shape(gt.shape)}"
        )
    _check_int(gt, f"ground truth {gt_name}")
    _check_int(pred, f"prediction {pred_name}")
    if gt.dtype == np.uint8 and pred.dtype == np.uint8:
        return confusion_from_joint(joint_histogram(gt, pred), lut, n, pred_name)
    return fast_hist(label_mapping(gt, label2train).reshape(-1), pred.reshape(-1), n, pred_name)


def _describe_shape(shape: tuple[int, ...]) -> str:
    if len(shape) == 2:
        return f"{shape[1]}x{shape[0]} (WxH)"
    if len(shape) == 3:
        return f"{shape[1]}x{shape[0]} (WxH) with {shape[2]} channels"
    return str(shape)


# --------------------------------------------------------------------------------------------------------------
# Files

_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error)


def read_png_header(path: str | Path, what: str = "file") -> tuple[tuple[int, int], int, str]:
    """((W, H), number of bands, mode) from the image header only (no decode). MetricsError if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size, len(img.getbands()), img.mode
    except FileNotFoundError:
        raise MetricsError(f"{what} not found: {path}") from None
    except _READ_ERRORS as exc:
        raise MetricsError(f"cannot read {what} {path}: {exc} (not an image?)") from None


def read_label_png(path: str | Path, what: str = "file") -> np.ndarray:
    """Decode a label PNG into a 2-D array (uint8 for 'L'/'P' images), as ``np.array(Image.open(path))``.

    Raises :class:`MetricsError` naming ``path`` when it is missing, truncated or corrupt, or not
    single-channel (e.g. a ``*_color.png`` was given instead of the trainId PNG).
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            arr = np.array(img)
    except FileNotFoundError:
        raise MetricsError(f"{what} not found: {path}") from None
    except _READ_ERRORS as exc:
        raise MetricsError(f"cannot read {what} {path}: {exc} (truncated or corrupt PNG?)") from None
    if arr.ndim != 2:
        raise MetricsError(
            f"{what} {path} has {arr.shape[-1] if arr.ndim == 3 else arr.ndim} channels; expected a single-"
            "channel label PNG (mode 'L' or 'P'), not a colour image"
        )
    return arr


# --------------------------------------------------------------------------------------------------------------
# Printing (the original's exact lines) and the machine-readable result


def format_iou_lines(ious: Sequence[float], names: Sequence[str]) -> list[str]:
    """The original's table: ``'===>' + name + ':\\t' + str(round(iou * 100, 2))`` per class, then
    ``'===> mIoU: ' + str(round(np.nanmean(ious) * 100, 2))``.

    The values go through ``np.float64`` exactly as in the original (``round`` of a NumPy float rounds like
    ``np.round``; ``str`` gives the shortest repr, ``nan`` for NaN), so existing parsers and the 2-decimal
    numbers are unchanged.
    """
    ious = np.asarray(ious, dtype=np.float64)
    if len(names) != len(ious):
        raise MetricsError(f"{len(ious)} IoU values but {len(names)} class names")
    lines = ["===>" + name + ":\t" + str(round(ious[i] * 100, 2)) for i, name in enumerate(names)]
    lines.append("===> mIoU: " + str(round(np.float64(mean_iu(ious)) * 100, 2)))
    return lines


def format_progress_line(ind: int, total: int, hist: np.ndarray) -> str:
    """The original's every-10-images line ``'{:d} / {:d}: {:0.2f}'`` (note: ``np.mean``, so often ``nan``)."""
    with np.errstate(invalid="ignore"):
        value = 100 * np.mean(per_class_iu(hist))
    return "{:d} / {:d}: {:0.2f}".format(ind, total, value)


def format_skip_line(len_gt: int, len_pred: int, gt_path: str, pred_path: str) -> str:
    """The original's line for a skipped size mismatch (lengths of the flattened arrays)."""
    return "Skipping: len(gt) = {:d}, len(pred) = {:d}, {:s}, {:s}".format(len_gt, len_pred, gt_path, pred_path)


def result_dict(
    hist: np.ndarray, names: Sequence[str], num_images: int, **extra: Any
) -> dict[str, Any]:
    """A JSON-ready summary: per-class IoU by name (fractions, ``null`` for NaN), mIoU, image count, matrix."""
    ious = per_class_iu(hist)
    miou = mean_iu(ious)

    def clean(v: float) -> float | None:
        return None if math.isnan(v) else float(v)

    out: dict[str, Any] = {
        "num_classes": int(len(names)),
        "per_class_iou": {name: clean(float(v)) for name, v in zip(names, ious)},
        "mIoU": clean(miou),
        "num_images": int(num_images),
    }
    out.update(extra)
    out["confusion_matrix"] = np.asarray(hist, dtype=np.int64).tolist()
    return out


# --------------------------------------------------------------------------------------------------------------
# Class subsets (the paper's SYNTHIA and Cross-City conventions)

#: The classes each reported subset leaves out of the devkit's 19, by name (the devkit's spelling). The only
#: definition of the subsets: 16 is SYNTHIA's convention (the 19 minus terrain, truck, train, which SYNTHIA does
#: not have); 13 is 16 minus wall, fence, pole (SYNTHIA -> Cityscapes as reported by AdaptSegNet, and the 13
#: classes annotated in Cross-City).
CLASS_SUBSET_DROPS: dict[int, tuple[str, ...]] = {
    19: (),
    16: ("terrain", "truck", "train"),
    13: ("terrain", "truck", "train", "wall", "fence", "pole"),
}
#: The subset sizes a ``--classes`` flag accepts.
CLASS_SUBSETS: tuple[int, ...] = tuple(CLASS_SUBSET_DROPS)


def subset_indices(names: Sequence[str], classes: int = 19) -> list[int]:
    """Indices (in class order) of the ``classes``-class subset among the devkit's class ``names``.

    The subset's IoUs are those of the full confusion matrix (a ground-truth terrain pixel predicted as
    vegetation still counts against vegetation); only the reported classes and their mean change.
    Raises :class:`MetricsError` for an unknown subset or a devkit whose names do not contain it.
    """
    if classes not in CLASS_SUBSET_DROPS:
        raise MetricsError(f"--classes must be one of {', '.join(map(str, CLASS_SUBSETS))}, got {classes}")
    drop = CLASS_SUBSET_DROPS[classes]
    idx = [i for i, name in enumerate(names) if name not in drop]
    if len(idx) != classes:
        raise MetricsError(f"--classes {classes}: the devkit's {len(names)} classes ({', '.join(names)}) minus "
                           f"{', '.join(drop) or 'none'} leave {len(idx)} classes, not {classes}")
    return idx


def ignore_other_classes(hist: np.ndarray, names: Sequence[str], classes: int) -> np.ndarray:
    """A copy of the confusion matrix ``hist`` [n, n] in which the ground-truth pixels of the classes outside the
    ``classes``-class subset are ignored: their rows (rows are ground truth) are zeroed.

    The other protocol for class subsets (``--ignore-other-classes``; MaxSquareLoss's 13-class mode and ETM's
    Cross-City loader map those labels to ignore): a ground-truth terrain pixel predicted as vegetation no longer
    counts against vegetation. Predictions of the left-out classes on the kept classes' pixels still count as
    errors (they are in the kept rows). Equal to mapping the ground truth to ignore before counting, as each
    pixel adds to the row of its ground truth only.
    """
    keep = subset_indices(names, classes)
    out = np.zeros_like(hist)
    out[keep] = np.asarray(hist)[keep]
    return out


def subset_iou_lines(ious: Sequence[float], names: Sequence[str], classes: int = 19) -> list[str]:
    """:func:`format_iou_lines` of the subset only: its classes' lines, then ``===> mIoU:`` over them.

    ``classes`` = the number of devkit classes (19) gives exactly :func:`format_iou_lines`.
    """
    ious = np.asarray(ious, dtype=np.float64)
    if len(names) != len(ious):
        raise MetricsError(f"{len(ious)} IoU values but {len(names)} class names")
    idx = subset_indices(names, classes)
    return format_iou_lines(ious[idx], [names[i] for i in idx])


def subset_result_dict(
    hist: np.ndarray, names: Sequence[str], num_images: int, classes: int = 19, **extra: Any
) -> dict[str, Any]:
    """:func:`result_dict` with ``per_class_iou``, ``mIoU`` and ``num_classes`` over the subset (the full matrix
    and, as ``per_class_iou_all``, every class's IoU kept); the whole set gives :func:`result_dict` unchanged."""
    idx = subset_indices(names, classes)
    out = result_dict(hist, names, num_images, **extra)
    if len(idx) == len(names):
        return out
    kept = [names[i] for i in idx]
    out["per_class_iou_all"] = out["per_class_iou"]
    out["per_class_iou"] = {name: out["per_class_iou_all"][name] for name in kept}
    miou = mean_iu(per_class_iu(hist)[idx])
    out["mIoU"] = None if math.isnan(miou) else float(miou)
    out["num_classes"] = len(idx)
    out["class_subset"] = classes
    return out
