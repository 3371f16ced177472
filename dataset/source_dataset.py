"""The labelled source sets beyond GTA5 (SYNTHIA, Synscapes, Cityscapes as a source) share this base class.

Preprocessing and item format are exactly :class:`dataset.gta5_dataset.GTA5DataSet`'s, through the
same helpers (:func:`~dataset.gta5_dataset.augment`, :func:`~dataset.gta5_dataset.item_rng`,
:func:`~dataset.gta5_dataset.repeat_names`, :mod:`dataset.checks`): image resized to ``crop_size``
(bicubic), label resized to ``crop_size`` (nearest), optional augmentation, BGR minus the mean. A
subclass only says where a name's image and label are and how a label file becomes an 8-bit image
whose values go through :attr:`LabelledSourceDataSet.label_table`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from torch.utils import data

from dataset.checks import DatasetError, check_files_exist, check_root, open_rgb, read_list
from dataset.gta5_dataset import (
    GTA5_STREAM,
    augment,
    finish,
    item_rng,
    parse_crop_size,
    repeat_names,
    train_id_table,
)
from dataset.labels import IGNORE_LABEL, IMG_MEAN, NUM_CLASSES

logger = logging.getLogger(__name__)


def train_id_passthrough_table(ignore_label: int | float = IGNORE_LABEL) -> np.ndarray:
    """A 256-entry float32 table for labels that already hold trainIds: 0..18 kept, 19..255 -> ``ignore_label``."""
    table = np.arange(256, dtype=np.float32)
    table[NUM_CLASSES:] = ignore_label
    return table


class LabelledSourceDataSet(data.Dataset):
    """Base of the labelled source sets: items ``(image, label, size, name)`` as :class:`GTA5DataSet`.

    Args:
        root: the dataset directory (``--data-dir``).
        list_path: text file of names, one per line; ``None``: every image of the image directory
            (:attr:`listing_glob`), sorted by name, so that the order is the same on every machine.
        max_iters, crop_size, mean, scale, mirror, ignore_label, seed, check_files: as
            :class:`dataset.gta5_dataset.GTA5DataSet` (``crop_size`` is ``(W, H)``).

    Item:
        image: float32 ndarray ``[3, H, W]``: BGR, minus ``mean``.
        label: float32 ndarray ``[H, W]``: trainIds 0..18, ``ignore_label`` elsewhere.
        size: int ndarray ``[H, W, 3]``: the shape of the resized image.
        name: the list entry.
    """

    #: What the user calls the dataset (in messages).
    dataset_name = "source"
    #: What the root directory should hold (in messages).
    root_holds = ""
    #: Pattern of the images below :meth:`image_dir` when there is no list file.
    listing_glob = "*.png"

    # -- what a subclass provides ------------------------------------------------------------------------------

    def image_dir(self) -> Path:
        raise NotImplementedError

    def image_path(self, name: str) -> Path:
        return self.image_dir() / name

    def label_path(self, name: str) -> Path:
        raise NotImplementedError

    def load_label(self, path: Path) -> Image.Image:
        """The label file as an 8-bit ('L'/'P') image whose values :attr:`label_table` maps to trainIds."""
        raise NotImplementedError

    def make_label_table(self, ignore_label: int | float) -> np.ndarray:
        """Default: the values are Cityscapes labelIds (:data:`dataset.labels.LABEL2TRAIN`)."""
        return train_id_table(ignore_label, np.float32)

    def check_ready(self) -> None:
        """Hook run before any file is touched (e.g. an optional reader library is importable)."""

    # -- shared machinery ----------------------------------------------------------------------------------------

    def __init__(
        self,
        root: str | Path,
        list_path: str | Path | None = None,
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
        self.list_path = Path(list_path) if list_path is not None else None
        self.crop_size = parse_crop_size(crop_size)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3)
        self.scale = bool(scale)
        self.is_mirror = bool(mirror)
        self.ignore_label = ignore_label
        self.seed = int(seed)
        self.check_ready()
        if check_files or self.list_path is None:
            check_root(self.root, f"{self.dataset_name} data directory", self.root_holds)
        if self.list_path is None:
            names = self.list_directory()
            source = str(self.image_dir())
        else:
            names = read_list(self.list_path, f"{self.dataset_name} list file")
            source = str(self.list_path)
        if check_files:
            files = [p for n in names for p in (self.image_path(n), self.label_path(n))]
            check_files_exist(files, f"{self.dataset_name} images/labels", source)
        self.img_ids = repeat_names(names, max_iters)
        self.files = repeat_names([  # one dict per distinct name, repeated like the names
            {"img": self.image_path(name), "label": self.label_path(name), "name": name} for name in names
        ], max_iters)
        self.label_table = self.make_label_table(ignore_label)
        logger.info("%s: %d names from %s (%d items)", self.dataset_name, len(names), source, len(self.files))

    def list_directory(self) -> list[str]:
        """Every image below :meth:`image_dir` matching :attr:`listing_glob`, as relative POSIX names, sorted."""
        image_dir = self.image_dir()
        if not image_dir.is_dir():
            raise DatasetError(f"{self.dataset_name} image directory {image_dir} does not exist (expected "
                               f"{self.root_holds or 'the images'} under {self.root})")
        names = sorted(p.relative_to(image_dir).as_posix() for p in image_dir.glob(self.listing_glob) if p.is_file())
        if not names:
            raise DatasetError(f"{self.dataset_name} image directory {image_dir} holds no {self.listing_glob} files")
        return names

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        datafiles = self.files[index]
        image = open_rgb(datafiles["img"]).resize(self.crop_size, Image.Resampling.BICUBIC)
        label = self.load_label(datafiles["label"]).resize(self.crop_size, Image.Resampling.NEAREST)
        rng = item_rng(self.seed, index, GTA5_STREAM)  # the source domain's stream, as GTA5
        arr, lab = augment(image, label, rng, self.scale, self.is_mirror, self.mean, self.label_table,
                           self.ignore_label)
        image_chw, size = finish(arr)
        return image_chw, np.ascontiguousarray(lab, dtype=np.float32), size, datafiles["name"]
