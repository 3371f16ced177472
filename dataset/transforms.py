"""The preprocessing every loader shares (:class:`dataset.base.BaseDataSet` calls it): crop size, list
repetition, per-item random generator, label tables, and the one path from PIL images to an item's arrays."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

from dataset.labels import IGNORE_LABEL, LABEL2TRAIN

#: Range of the random rescale factor applied when ``scale=True`` (uniform).
SCALE_RANGE = (0.5, 1.5)

#: Random streams of the two domains, so that the same seed and index do not give a source and a
#: target item the same flip. Every source set draws from the GTA5 stream, every target set from the
#: Cityscapes one.
GTA5_STREAM, CITYSCAPES_STREAM = 0, 1


def parse_crop_size(crop_size: Sequence[int]) -> tuple[int, int]:
    """Validate a ``(W, H)`` crop size (PIL's order, as the original's ``input_size``)."""
    try:
        w, h = (int(v) for v in crop_size)
    except (TypeError, ValueError):
        raise ValueError(f"crop_size must be two integers (W, H), got {crop_size!r}") from None
    if w < 1 or h < 1:
        raise ValueError(f"crop_size must be positive (W, H), got {crop_size!r}")
    return w, h


def repeat_names(names: list, max_iters: int | None) -> list:
    """The original's epoch stretching: repeat the whole list ``ceil(max_iters / len)`` times.

    Not truncated to ``max_iters`` (faithful), so ``len(result) >= max_iters`` and every
    name appears equally often.
    """
    if max_iters is None:
        return list(names)
    if int(max_iters) < 1:
        raise ValueError(f"max_iters must be a positive integer or None, got {max_iters!r}")
    return list(names) * int(math.ceil(float(max_iters) / len(names)))


def item_rng(seed: int, index: int, stream: int = GTA5_STREAM) -> np.random.Generator:
    """The random generator for item ``index``: a function of ``(seed, index, stream)`` only.

    Independent of which ``DataLoader`` worker (or which DDP rank) loads the item and
    of the order items are loaded in, so an augmented run is reproducible. The same
    image repeated by ``max_iters`` sits at different indices and so gets different
    augmentations.
    """
    return np.random.default_rng([int(seed) % 2**64, int(index), int(stream)])


def train_id_table(ignore_label: int | float = IGNORE_LABEL, dtype=np.float32) -> np.ndarray:
    """``LABEL2TRAIN`` as a 256-entry table of ``dtype`` with the ignore value set to ``ignore_label``."""
    table = LABEL2TRAIN.astype(dtype)
    table[LABEL2TRAIN == IGNORE_LABEL] = ignore_label
    return table


def map_labels(label: Image.Image, table: np.ndarray) -> np.ndarray:
    """Map a 'P'/'L' label image's **indices** (labelIds) through ``table`` (labelId -> trainId): ``[H, W]``.

    ``np.asarray`` of a palette image gives its indices, which is what GTA5 stores
    the labelIds in; converting the image first (to 'RGB' or 'L') would give colours
    or luminances instead.
    """
    return table[np.asarray(label, dtype=np.uint8)]


def _fit(arr: np.ndarray, crop_h: int, crop_w: int, fill: float, oy: int, ox: int) -> np.ndarray:
    """Crop and/or pad (with ``fill``) the first two axes of ``arr`` to ``(crop_h, crop_w)``.

    ``oy``/``ox`` is where the window starts in ``arr`` along an axis longer than the crop, or
    where ``arr`` starts inside the crop along a shorter one.
    """
    h, w = arr.shape[:2]
    out = np.full((crop_h, crop_w) + arr.shape[2:], fill, dtype=arr.dtype)
    sy, dy = (oy, 0) if h >= crop_h else (0, oy)
    sx, dx = (ox, 0) if w >= crop_w else (0, ox)
    ch, cw = min(h, crop_h), min(w, crop_w)
    out[dy : dy + ch, dx : dx + cw] = arr[sy : sy + ch, sx : sx + cw]
    return out


def preprocess(
    image: Image.Image,
    label: Image.Image | None,
    rng: np.random.Generator,
    scale: bool,
    mirror: bool,
    mean: np.ndarray,
    table: np.ndarray | None,
    ignore_label: float,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Crop-sized RGB image (and 8-bit label) -> ``(image, label, size)`` of an item.

    ``image``: float32 ``[3, H, W]``, the original's Caffe convention: pixel values 0..255,
    channels reversed to **BGR**, ``mean`` (BGR order) subtracted, no division by a std.
    ``label`` (``None`` without one): ``table`` applied to the label's indices, ``[H, W]``.
    ``size``: ``np.array([H, W, 3])``, the image's shape before the transpose.

    Opt-in augmentation the original accepted but ignored (the paper used neither):

    * ``scale``: rescale by a factor drawn uniformly from :data:`SCALE_RANGE` (image
      bicubic, label nearest), then back to the crop size: a larger result is randomly
      cropped, a smaller one is placed at a random position and padded with the mean
      (zero after the subtraction) and the label with ``ignore_label``.
    * ``mirror``: horizontal flip of image and label with probability 0.5.

    The draws come from ``rng`` in a fixed order (factor, offsets, flip).
    """
    crop_w, crop_h = image.size
    if scale:
        factor = float(rng.uniform(*SCALE_RANGE))
        size = (max(1, round(crop_w * factor)), max(1, round(crop_h * factor)))
        image = image.resize(size, Image.Resampling.BICUBIC)
        if label is not None:
            label = label.resize(size, Image.Resampling.NEAREST)
    arr = np.asarray(image, dtype=np.float32)[:, :, ::-1] - mean
    lab = map_labels(label, table) if label is not None else None
    if scale:
        h, w = arr.shape[:2]
        oy, ox = int(rng.integers(0, abs(h - crop_h) + 1)), int(rng.integers(0, abs(w - crop_w) + 1))
        arr = _fit(arr, crop_h, crop_w, 0.0, oy, ox)
        if lab is not None:
            lab = _fit(lab, crop_h, crop_w, ignore_label, oy, ox)
    if mirror and rng.random() < 0.5:
        arr = arr[:, ::-1]
        if lab is not None:
            lab = lab[:, ::-1]
    size = np.array(arr.shape)
    arr = np.ascontiguousarray(arr.transpose((2, 0, 1)), dtype=np.float32)
    return arr, (np.ascontiguousarray(lab) if lab is not None else None), size
