"""Cityscapes (the real target domain), read exactly as the original AdaptSegNet loader did.

Layout: ``root/leftImg8bit/SET/NAME`` with NAME ``city/city_xxxxxx_yyyyyy_leftImg8bit.png``
from the list file, and (only for ``return_label=True``)
``root/gtFine/SET/city/city_xxxxxx_yyyyyy_gtFine_labelIds.png``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from torch.utils import data

from dataset.checks import (
    CITYSCAPES_LABEL_HINT,
    DatasetError,
    check_files_exist,
    check_root,
    format_paths,
    open_label,
    open_rgb,
    read_list,
)
from dataset.gta5_dataset import (
    CITYSCAPES_STREAM,
    augment,
    finish,
    item_rng,
    map_labels,
    parse_crop_size,
    repeat_names,
    train_id_table,
)
from dataset.labels import IGNORE_LABEL, IMG_MEAN

logger = logging.getLogger(__name__)

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def cityscapes_image_path(root: str | Path, set: str, name: str) -> Path:
    """``root/leftImg8bit/set/name``."""
    return Path(root) / "leftImg8bit" / set / name


def gtfine_name(name: str) -> str:
    """``city/city_x_y_leftImg8bit.png`` -> ``city/city_x_y_gtFine_labelIds.png``; ValueError otherwise."""
    if not name.endswith(IMAGE_SUFFIX):
        raise ValueError(f"{name!r} does not end with {IMAGE_SUFFIX!r}")
    return name[: -len(IMAGE_SUFFIX)] + LABEL_SUFFIX


def cityscapes_label_path(root: str | Path, set: str, name: str) -> Path:
    """``root/gtFine/set/city/..._gtFine_labelIds.png`` for the image list entry ``name``."""
    return Path(root) / "gtFine" / set / gtfine_name(name)


class cityscapesDataSet(data.Dataset):
    """The Cityscapes target set: items ``(image, size, name)`` (or ``(image, label, size, name)``).

    Args:
        root: the directory holding ``leftImg8bit/`` (``--data-dir-target``).
        list_path: text file of ``city/..._leftImg8bit.png`` names.
        max_iters, crop_size, mean, scale, mirror, seed, check_files: as
            :class:`dataset.gta5_dataset.GTA5DataSet` (``crop_size`` is ``(W, H)``; the
            image is resized to it with bicubic interpolation, as the original).
        ignore_label: value of unlabelled pixels in the returned label (``return_label``; 0..255).
        set: the split folder under ``leftImg8bit`` (and ``gtFine``): ``train``, ``val``, ``test``.
        return_label: also return the ``gtFine`` labelIds mapped to trainIds, for in-process
            evaluation. The label keeps the file's **native** resolution (evaluation
            upsamples predictions to it), so it cannot be combined with ``scale``/``mirror``.

    Item:
        image: float32 ndarray ``[3, H, W]``: BGR, minus ``mean``.
        label (only with ``return_label``): uint8 ndarray ``[h, w]`` of trainIds, native size.
        size: int ndarray ``[H, W, 3]``: the shape of the resized image.
        name: the list entry.
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
        set: str = "val",
        seed: int = 0,
        check_files: bool = True,
        return_label: bool = False,
    ) -> None:
        self.root = Path(root)
        self.list_path = Path(list_path)
        self.crop_size = parse_crop_size(crop_size)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3)
        self.scale = bool(scale)
        self.is_mirror = bool(mirror)
        self.ignore_label = ignore_label
        self.set = set
        self.seed = int(seed)
        self.return_label = bool(return_label)
        if self.return_label and (self.scale or self.is_mirror):
            raise ValueError(
                "cityscapesDataSet: return_label=True returns the label at its native resolution "
                "for evaluation and cannot be combined with scale/mirror augmentation"
            )
        if self.return_label and not 0 <= int(ignore_label) <= 255:
            raise ValueError(f"cityscapesDataSet: ignore_label must be in 0..255 with return_label, got {ignore_label}")
        if check_files:
            check_root(self.root, "Cityscapes data directory", f"leftImg8bit/{set}/")
        names = read_list(self.list_path, "Cityscapes list file")
        if self.return_label:
            bad = [n for n in names if not n.endswith(IMAGE_SUFFIX)]
            if bad:
                raise DatasetError(
                    f"{len(bad)} entries of {self.list_path} do not end with {IMAGE_SUFFIX!r}, so their "
                    f"gtFine label names cannot be derived, e.g.:\n{format_paths(bad)}"
                )
        if check_files:
            images = [cityscapes_image_path(self.root, set, n) for n in names]
            check_files_exist(images, f"Cityscapes images (leftImg8bit/{set})", self.list_path)
            if self.return_label:
                labels = [cityscapes_label_path(self.root, set, n) for n in names]
                check_files_exist(labels, f"Cityscapes labels (gtFine/{set}/*{LABEL_SUFFIX})", self.list_path)
        self.img_ids = repeat_names(names, max_iters)
        self.files = repeat_names([
            {
                "img": cityscapes_image_path(self.root, set, name),
                "label": cityscapes_label_path(self.root, set, name) if self.return_label else None,
                "name": name,
            }
            for name in names
        ], max_iters)  # one dict per distinct name, repeated like the names
        self._table = train_id_table(ignore_label, np.uint8) if self.return_label else None
        logger.info("Cityscapes %s: %d names from %s (%d items)", set, len(names), self.list_path, len(self.files))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        datafiles = self.files[index]
        image = open_rgb(datafiles["img"]).resize(self.crop_size, Image.Resampling.BICUBIC)
        rng = item_rng(self.seed, index, CITYSCAPES_STREAM)
        arr, _ = augment(image, None, rng, self.scale, self.is_mirror, self.mean, None, self.ignore_label)
        image_chw, size = finish(arr)
        if not self.return_label:
            return image_chw, size, datafiles["name"]
        label = open_label(datafiles["label"], CITYSCAPES_LABEL_HINT)
        return image_chw, map_labels(label, self._table), size, datafiles["name"]


#: PEP 8 alias; the original's lower-case name stays the primary one.
CityscapesDataSet = cityscapesDataSet
