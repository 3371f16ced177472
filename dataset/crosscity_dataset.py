"""NTHU Cross-City (Rome, Rio, Tokyo, Taipei) as the target domain (Cityscapes -> Cross-City).

Layout (the NTHU download, ``NTHU_Datasets/``), per city::

    root/<City>/Images/Train/NAME          unlabelled adaptation images (2048x1024)
    root/<City>/Images/Test/NAME           evaluation images
    root/<City>/Labels/Test/STEM_eval.png  their labels: 8-bit Cityscapes labelIds (13 classes annotated)

NAME is e.g. ``pano_00009_0_0.png`` (STEM ``pano_00009_0_0``). A list file may name the images with
their extension or, as the lists published with other code do, without (``pano_00009_0_0``): then
the extension found on disk (``.png``, else ``.jpg``) is used. Without a list file every image of
the folder is taken, sorted by name. Labels map to trainIds with :data:`dataset.labels.LABEL2TRAIN`;
the 13 annotated classes are ``utils.metrics`` subset 13.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from torch.utils import data

from dataset.checks import (
    DatasetError,
    check_files_exist,
    check_root,
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

#: The four cities of the NTHU Cross-City dataset (folder names).
CITIES = ("Rome", "Rio", "Tokyo", "Taipei")
#: Split name -> folder name under ``Images/`` and ``Labels/``.
SETS = {"train": "Train", "test": "Test"}
LABEL_SUFFIX = "_eval.png"
IMAGE_EXTENSIONS = (".png", ".jpg")
CROSSCITY_LABEL_HINT = (
    "Cross-City labels must be the 8-bit Labels/Test/*_eval.png files of the NTHU download "
    "(Cityscapes labelIds), not converted to RGB"
)


def check_city(city: str) -> str:
    if city not in CITIES:
        raise ValueError(f"unknown Cross-City city {city!r}; expected one of {', '.join(CITIES)}")
    return city


def check_set(set: str) -> str:
    if set not in SETS:
        raise ValueError(f"unknown Cross-City set {set!r}; expected one of {', '.join(SETS)} "
                         "(train: unlabelled Images/Train, test: labelled Images/Test)")
    return set


def crosscity_image_dir(root: str | Path, city: str, set: str) -> Path:
    """``root/<City>/Images/<Train|Test>``."""
    return Path(root) / check_city(city) / "Images" / SETS[check_set(set)]


def crosscity_gt_name(name: str) -> str:
    """Image name -> its label's file name: ``pano_00009_0_0.png`` -> ``pano_00009_0_0_eval.png``."""
    return Path(name).stem + LABEL_SUFFIX


def crosscity_label_path(root: str | Path, city: str, set: str, name: str) -> Path:
    """``root/<City>/Labels/<Train|Test>/<stem of name>_eval.png``."""
    return Path(root) / check_city(city) / "Labels" / SETS[check_set(set)] / crosscity_gt_name(name)


def resolve_names(names: Sequence[str], image_dir: Path) -> list[str]:
    """List entries -> image file names: entries with an image extension stay; a bare stem gets the
    extension present in ``image_dir`` (``.png`` first, then ``.jpg``; ``.png`` when neither is there,
    so that the missing-file check names it)."""
    try:
        present = set(os.listdir(image_dir))
    except OSError:
        present = set()
    out = []
    for name in names:
        if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
            out.append(name)
            continue
        ext = next((e for e in IMAGE_EXTENSIONS if name + e in present), IMAGE_EXTENSIONS[0])
        out.append(name + ext)
    return out


class CrossCityDataSet(data.Dataset):
    """One city of Cross-City: items ``(image, size, name)`` or, with ``return_label``, ``(image, label, size,
    name)``, as :class:`dataset.cityscapes_dataset.cityscapesDataSet`.

    Args:
        root: the ``NTHU_Datasets`` directory holding the city folders (``--data-dir-target``).
        city: ``Rome``, ``Rio``, ``Tokyo`` or ``Taipei``.
        list_path: names of the images of ``set`` (see the module docstring); ``None``: every image of
            ``<City>/Images/<Set>``, sorted.
        max_iters, crop_size, mean, scale, mirror, seed, check_files: as ``cityscapesDataSet``.
        ignore_label: value of unlabelled pixels in the returned label (0..255).
        set: ``train`` (unlabelled adaptation images) or ``test`` (labelled evaluation images).
        return_label: also return ``Labels/<Set>/<stem>_eval.png`` mapped to trainIds at its native
            resolution (for evaluation; not with ``scale``/``mirror``).

    Item:
        image: float32 ndarray ``[3, H, W]``: BGR, minus ``mean``.
        label (only with ``return_label``): uint8 ndarray ``[h, w]`` of trainIds, native size.
        size: int ndarray ``[H, W, 3]``: the shape of the resized image.
        name: the image file name (with its extension).
    """

    def __init__(
        self,
        root: str | Path,
        city: str,
        list_path: str | Path | None = None,
        max_iters: int | None = None,
        crop_size: Sequence[int] = (1024, 512),
        mean: Sequence[float] | np.ndarray = IMG_MEAN,
        scale: bool = False,
        mirror: bool = False,
        ignore_label: int = IGNORE_LABEL,
        set: str = "train",
        seed: int = 0,
        check_files: bool = True,
        return_label: bool = False,
    ) -> None:
        self.root = Path(root)
        self.city = check_city(city)
        self.set = check_set(set)
        self.list_path = Path(list_path) if list_path is not None else None
        self.crop_size = parse_crop_size(crop_size)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3)
        self.scale = bool(scale)
        self.is_mirror = bool(mirror)
        self.ignore_label = ignore_label
        self.seed = int(seed)
        self.return_label = bool(return_label)
        if self.return_label and (self.scale or self.is_mirror):
            raise ValueError("CrossCityDataSet: return_label=True returns the label at its native resolution for "
                             "evaluation and cannot be combined with scale/mirror augmentation")
        if self.return_label and not 0 <= int(ignore_label) <= 255:
            raise ValueError(f"CrossCityDataSet: ignore_label must be in 0..255 with return_label, got {ignore_label}")
        image_dir = crosscity_image_dir(self.root, city, set)
        if check_files or self.list_path is None:
            check_root(self.root, "Cross-City data directory", f"{city}/Images/{SETS[set]}/")
        if self.list_path is None:
            names = self._list_directory(image_dir)
            source = str(image_dir)
        else:
            names = resolve_names(read_list(self.list_path, "Cross-City list file"), image_dir)
            source = str(self.list_path)
        if check_files:
            check_files_exist([image_dir / n for n in names], f"Cross-City images ({city}/Images/{SETS[set]})",
                              source)
            if self.return_label:
                labels = [crosscity_label_path(self.root, city, set, n) for n in names]
                check_files_exist(labels, f"Cross-City labels ({city}/Labels/{SETS[set]}/*{LABEL_SUFFIX})",
                                  source)
        self.img_ids = repeat_names(names, max_iters)
        self.files = repeat_names([
            {
                "img": image_dir / name,
                "label": crosscity_label_path(self.root, city, set, name) if self.return_label else None,
                "name": name,
            }
            for name in names
        ], max_iters)  # one dict per distinct name, repeated like the names
        self._table = train_id_table(ignore_label, np.uint8) if self.return_label else None
        logger.info("Cross-City %s %s: %d names from %s (%d items)", city, set, len(names), source, len(self.files))

    def _list_directory(self, image_dir: Path) -> list[str]:
        if not image_dir.is_dir():
            raise DatasetError(f"Cross-City image directory {image_dir} does not exist (expected "
                               f"<City>/Images/{SETS[self.set]}/ under {self.root})")
        names = sorted(p.name for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not names:
            raise DatasetError(f"Cross-City image directory {image_dir} holds no .png/.jpg images")
        return names

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        datafiles = self.files[index]
        image = open_rgb(datafiles["img"]).resize(self.crop_size, Image.Resampling.BICUBIC)
        rng = item_rng(self.seed, index, CITYSCAPES_STREAM)  # the target domain's stream
        arr, _ = augment(image, None, rng, self.scale, self.is_mirror, self.mean, None, self.ignore_label)
        image_chw, size = finish(arr)
        if not self.return_label:
            return image_chw, size, datafiles["name"]
        label = open_label(datafiles["label"], CROSSCITY_LABEL_HINT)
        return image_chw, map_labels(label, self._table), size, datafiles["name"]
