"""GTA5 (the labelled synthetic source domain), read exactly as the original AdaptSegNet loader did.

Layout: ``root/images/NAME`` (RGB PNG) and ``root/labels/NAME`` (palette PNG whose
*indices* are Cityscapes labelIds), NAME from the list file (``00001.png`` ...).

This module also holds the preprocessing shared with :mod:`dataset.cityscapes_dataset`
(:func:`to_network_input`, :func:`map_labels`, :func:`augment`), so that both domains
go through one code path.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from torch.utils import data

from dataset.checks import (
    GTA5_LABEL_HINT,
    check_files_exist,
    check_label_modes_sample,
    check_root,
    open_label,
    open_rgb,
    read_list,
)
from dataset.labels import IGNORE_LABEL, IMG_MEAN, LABEL2TRAIN

logger = logging.getLogger(__name__)

#: Range of the random rescale factor applied when ``scale=True`` (uniform).
SCALE_RANGE = (0.5, 1.5)


# --------------------------------------------------------------------------------------
# shared preprocessing
# --------------------------------------------------------------------------------------


def parse_crop_size(crop_size: Sequence[int]) -> tuple[int, int]:
    """Validate a ``(W, H)`` crop size (PIL's order, as the original's ``input_size``)."""
    try:
        w, h = (int(v) for v in crop_size)
    except (TypeError, ValueError):
        raise ValueError(f"crop_size must be two integers (W, H), got {crop_size!r}") from None
    if w < 1 or h < 1:
        raise ValueError(f"crop_size must be positive (W, H), got {crop_size!r}")
    return w, h


def repeat_names(names: list[str], max_iters: int | None) -> list[str]:
    """The original's epoch stretching: repeat the whole list ``ceil(max_iters / len)`` times.

    Not truncated to ``max_iters`` (faithful), so ``len(result) >= max_iters`` and every
    name appears equally often.
    """
    if max_iters is None:
        return list(names)
    if int(max_iters) < 1:
        raise ValueError(f"max_iters must be a positive integer or None, got {max_iters!r}")
    return list(names) * int(math.ceil(float(max_iters) / len(names)))


#: Random streams of the two domains, so that the same seed and index do not give
#: GTA5 and Cityscapes items the same flip.
GTA5_STREAM, CITYSCAPES_STREAM = 0, 1


def item_rng(seed: int, index: int, stream: int = GTA5_STREAM) -> np.random.Generator:
    """The random generator for item ``index``: a function of ``(seed, index, stream)`` only.

    Independent of which ``DataLoader`` worker (or which DDP rank) loads the item and
    of the order items are loaded in, so an augmented run is reproducible. The same
    image repeated by ``max_iters`` sits at different indices and so gets different
    augmentations.
    """
    return np.random.default_rng([int(seed) % 2**64, int(index), int(stream)])


def to_network_input(image: Image.Image, mean: np.ndarray) -> np.ndarray:
    """RGB PIL image (W x H) -> float32 (H, W, 3) **BGR** array minus ``mean`` (BGR order).

    The original's Caffe convention: float32 pixel values 0..255, channels reversed,
    the mean subtracted, no division by a std. Kept HWC here; the caller transposes.
    """
    arr = np.asarray(image, dtype=np.float32)
    return arr[:, :, ::-1] - mean


def train_id_table(ignore_label: int | float = IGNORE_LABEL, dtype=np.float32) -> np.ndarray:
    """``LABEL2TRAIN`` as a 256-entry table of ``dtype`` with the ignore value set to ``ignore_label``."""
    table = LABEL2TRAIN.astype(dtype)
    table[LABEL2TRAIN == IGNORE_LABEL] = ignore_label
    return table


def map_labels(label: Image.Image, table: np.ndarray) -> np.ndarray:
    """Map a 'P'/'L' label image's **indices** (labelIds) through ``table`` (labelId -> trainId).

    ``np.asarray`` of a palette image gives its indices, which is what GTA5 stores
    the labelIds in; converting the image first (to 'RGB' or 'L') would give colours
    or luminances instead.
    """
    return table[np.asarray(label, dtype=np.uint8)]


def _offset(rng: np.random.Generator, have: int, want: int) -> int:
    """Where a random window of ``want`` starts in ``have`` (or ``have`` starts inside ``want``)."""
    return int(rng.integers(0, abs(have - want) + 1))


def _fit(arr: np.ndarray, rng: np.random.Generator, crop_h: int, crop_w: int, fill: float) -> tuple[np.ndarray, tuple]:
    """Pad (with ``fill``) and/or crop the first two axes of ``arr`` to ``(crop_h, crop_w)``.

    Returns the result and the offsets drawn, so that the label can be cut the same way.
    """
    h, w = arr.shape[:2]
    oy, ox = _offset(rng, h, crop_h), _offset(rng, w, crop_w)
    return _apply_fit(arr, crop_h, crop_w, fill, oy, ox), (oy, ox)


def _apply_fit(arr: np.ndarray, crop_h: int, crop_w: int, fill: float, oy: int, ox: int) -> np.ndarray:
    h, w = arr.shape[:2]
    out = np.full((crop_h, crop_w) + arr.shape[2:], fill, dtype=arr.dtype)
    # source window (when larger than the crop) and destination window (when smaller)
    sy, dy = (oy, 0) if h >= crop_h else (0, oy)
    sx, dx = (ox, 0) if w >= crop_w else (0, ox)
    ch, cw = min(h, crop_h), min(w, crop_w)
    out[dy : dy + ch, dx : dx + cw] = arr[sy : sy + ch, sx : sx + cw]
    return out


def augment(
    image: Image.Image,
    label: Image.Image | None,
    rng: np.random.Generator,
    scale: bool,
    mirror: bool,
    mean: np.ndarray,
    table: np.ndarray | None,
    ignore_label: float,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Crop-sized PIL image (and label) -> (HWC BGR-minus-mean float array, mapped label or None).

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
    arr = to_network_input(image, mean)
    lab = map_labels(label, table) if label is not None else None
    if scale:
        arr, (oy, ox) = _fit(arr, rng, crop_h, crop_w, 0.0)
        if lab is not None:
            lab = _apply_fit(lab, crop_h, crop_w, ignore_label, oy, ox)
    if mirror and rng.random() < 0.5:
        arr = arr[:, ::-1]
        if lab is not None:
            lab = lab[:, ::-1]
    return arr, lab


def finish(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HWC array -> (contiguous float32 CHW copy, ``np.array(size)`` with size = (H, W, 3))."""
    size = np.array(arr.shape)
    return np.ascontiguousarray(arr.transpose((2, 0, 1)), dtype=np.float32), size


# --------------------------------------------------------------------------------------
# GTA5
# --------------------------------------------------------------------------------------


def gta5_paths(root: str | Path, name: str) -> tuple[Path, Path]:
    """``(root/images/name, root/labels/name)``."""
    root = Path(root)
    return root / "images" / name, root / "labels" / name


class GTA5DataSet(data.Dataset):
    """The GTA5 source set: items ``(image, label, size, name)``.

    Args:
        root: the GTA5 directory holding ``images/`` and ``labels/`` (``--data-dir``).
        list_path: text file of names, one per line (``dataset/gta5_list/train.txt``).
        max_iters: when given, the list is repeated ``ceil(max_iters / len(list))`` times
            (not truncated, as the original) so that one pass covers the whole run.
        crop_size: ``(W, H)``: every image is resized (bicubic) and every label (nearest)
            to exactly this size; no cropping by default, as the original.
        mean: BGR mean subtracted from the image.
        scale, mirror: opt-in augmentation (see :func:`augment`); off by default because
            the original accepted the flags but ignored them, and the paper's runs used neither.
        ignore_label: trainId written for labelIds outside the 19 classes (and for padding).
            The original always wrote 255; the default keeps that.
        seed: with ``(seed, index)`` it determines the augmentation of each item.
        check_files: check at construction that the root, the list and every listed
            image/label exist; a problem raises one :class:`~dataset.checks.DatasetError`.

    Item:
        image: float32 ndarray ``[3, H, W]``: BGR, minus ``mean``.
        label: float32 ndarray ``[H, W]``: trainIds 0..18, ``ignore_label`` elsewhere.
        size: int ndarray ``[H, W, 3]``: the shape of the resized image.
        name: the list entry.

    Real GTA5 has frames whose label is a few pixels larger or smaller than the image;
    resizing both to ``crop_size`` aligns them (as the original did, silently).
    """

    def __init__(
        self,
        root: str | Path,
        list_path: str | Path,
        max_iters: int | None = None,
        crop_size: Sequence[int] = (321, 321),
        mean: Sequence[float] | np.ndarray = IMG_MEAN,
        scale: bool = False,
        mirror: bool = False,
        ignore_label: int = IGNORE_LABEL,
        seed: int = 0,
        check_files: bool = True,
    ) -> None:
        self.root = Path(root)
        self.list_path = Path(list_path)
        self.crop_size = parse_crop_size(crop_size)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3)
        self.scale = bool(scale)
        self.is_mirror = bool(mirror)
        self.ignore_label = ignore_label
        self.seed = int(seed)
        if check_files:
            check_root(self.root, "GTA5 data directory", "images/ and labels/")
        names = read_list(self.list_path, "GTA5 list file")
        if check_files:
            files = [p for n in names for p in gta5_paths(self.root, n)]
            check_files_exist(files, "GTA5 images/labels", self.list_path)
            check_label_modes_sample(files[1::2], GTA5_LABEL_HINT)
        self.img_ids = repeat_names(names, max_iters)
        # One dict per distinct name, repeated like the names: the default schedule
        # repeats the list to 250,000 items, and building a Path pair for each cost seconds.
        self.files = repeat_names([
            {"img": img, "label": lab, "name": name}
            for name in names
            for img, lab in [gta5_paths(self.root, name)]
        ], max_iters)
        self._table = train_id_table(ignore_label, np.float32)
        logger.info("GTA5: %d names from %s (%d items)", len(names), self.list_path, len(self.files))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        datafiles = self.files[index]
        image = open_rgb(datafiles["img"])
        label = open_label(datafiles["label"], GTA5_LABEL_HINT)
        # Both go to the crop size, which also absorbs the few-pixel image/label
        # size mismatches of some real GTA5 frames.
        image = image.resize(self.crop_size, Image.Resampling.BICUBIC)
        label = label.resize(self.crop_size, Image.Resampling.NEAREST)
        rng = item_rng(self.seed, index)
        arr, lab = augment(image, label, rng, self.scale, self.is_mirror, self.mean, self._table, self.ignore_label)
        image_chw, size = finish(arr)
        return image_chw, np.ascontiguousarray(lab, dtype=np.float32), size, datafiles["name"]
