"""SYNTHIA-RAND-CITYSCAPES as a labelled source domain (SYNTHIA -> Cityscapes).

Layout (the download's, unchanged): ``root/RGB/NAME`` (8-bit RGB PNG, 1280x760) and
``root/GT/LABELS/NAME`` with NAME ``0000000.png`` ... ``0009399.png``.

The labels are **16-bit PNGs with several channels**: the class id in the first channel, the
instance id in the second. Pillow cannot read them correctly: it opens a 16-bit colour PNG as
8-bit 'RGB' keeping only the high byte of each sample, so every class id (< 256) reads as 0. They
are read with OpenCV (``cv2.imread(path, cv2.IMREAD_UNCHANGED)``, package
``opencv-python-headless``), which keeps the 16 bits; OpenCV orders the channels B, G, R(, A), so
the PNG's *first* channel is index 2 of its array. Class ids map to trainIds with
:data:`dataset.labels.SYNTHIA_TO_TRAIN`; everything else is ignored.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dataset.base import BaseDataSet
from dataset.checks import DatasetError, LabelFormatError
from dataset.labels import NUM_CLASSES, SYNTHIA2TRAIN

#: What to tell a user whose SYNTHIA label is not a 16-bit multi-channel PNG.
SYNTHIA_LABEL_HINT = (
    "SYNTHIA labels must be the 16-bit multi-channel GT/LABELS/*.png files of SYNTHIA-RAND-CITYSCAPES "
    "(class id in the first channel), not GT/COLOR and not files converted by an 8-bit tool"
)
#: The package that reads them (the requirements line names it).
OPENCV_PACKAGE = "opencv-python-headless"


def _cv2():
    """Import OpenCV or raise :class:`DatasetError` saying what to install."""
    try:
        import cv2
    except ImportError as exc:
        raise DatasetError(f"reading SYNTHIA's 16-bit GT/LABELS PNGs needs OpenCV: pip install {OPENCV_PACKAGE} "
                           f"({exc})") from None
    return cv2


def read_synthia_label(path: str | Path) -> np.ndarray:
    """The SYNTHIA class ids of a ``GT/LABELS`` PNG: uint16 ndarray ``[H, W]`` (the PNG's first channel).

    Raises :class:`DatasetError` naming the file when it is missing, unreadable or truncated, or not a
    16-bit PNG with 3 or 4 channels (e.g. a GT/COLOR image, or a label re-saved as 8 bits).
    """
    cv2 = _cv2()
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"label {path} does not exist")
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise DatasetError(f"cannot read label {path} (the file is unreadable or truncated: re-download or "
                           "re-extract it)")
    if arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        channels = 1 if arr.ndim == 2 else arr.shape[2]
        raise LabelFormatError(f"label {path} holds {arr.dtype.itemsize * 8}-bit samples in {channels} "
                               f"channel(s), expected 16 bits and 3 or 4 channels. {SYNTHIA_LABEL_HINT}")
    return arr[:, :, 2]  # B, G, R(, A): the PNG's first channel is the third of OpenCV's


class SYNTHIADataSet(BaseDataSet):
    """SYNTHIA-RAND-CITYSCAPES source set: items ``(image, label, size, name)`` (see :class:`dataset.base.BaseDataSet`).

    ``root`` holds ``RGB/`` and ``GT/LABELS/``; ``list_path=None`` takes every ``RGB/*.png``. Label values:
    trainIds by :data:`dataset.labels.SYNTHIA_TO_TRAIN` (terrain, truck and train never occur in the data).
    """

    dataset_name = "SYNTHIA"
    root_holds = "RGB/ and GT/LABELS/"

    def cache_slug(self) -> str:
        return "synthia"

    def check_ready(self) -> None:
        _cv2()  # fail at construction, not in a DataLoader worker

    def image_dir(self) -> Path:
        return self.root / "RGB"

    def label_path(self, name: str) -> Path:
        return self.root / "GT" / "LABELS" / name

    def load_label(self, path: Path) -> Image.Image:
        """The 16-bit class ids mapped to trainIds (255 elsewhere), as an 'L' image (so resizing is nearest)."""
        return Image.fromarray(SYNTHIA2TRAIN[read_synthia_label(path)], mode="L")

    def make_label_table(self, ignore_label: int | float) -> np.ndarray:
        """:meth:`load_label` already gives trainIds: 0..18 kept, 19..255 -> ``ignore_label`` (float32)."""
        table = np.arange(256, dtype=np.float32)
        table[NUM_CLASSES:] = ignore_label
        return table
