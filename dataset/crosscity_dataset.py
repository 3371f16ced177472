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

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from dataset.base import BaseDataSet
from dataset.checks import DatasetError
from dataset.labels import IGNORE_LABEL, IMG_MEAN

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


class CrossCityDataSet(BaseDataSet):
    """One city of Cross-City: items ``(image, size, name)`` or, with ``return_label``, ``(image, label, size,
    name)``, as :class:`dataset.cityscapes_dataset.cityscapesDataSet` (see :class:`dataset.base.BaseDataSet`).

    ``root`` is the ``NTHU_Datasets`` directory holding the city folders (``--data-dir-target``); ``city``
    ``Rome``, ``Rio``, ``Tokyo`` or ``Taipei``; ``list_path`` names the images of ``set`` (see the module
    docstring; ``None``: every image of ``<City>/Images/<Set>``, sorted); ``set`` is ``train`` (unlabelled
    adaptation images) or ``test`` (labelled evaluation images); ``return_label`` also returns
    ``Labels/<Set>/<stem>_eval.png``. The item's name is the image file name (with its extension).
    """

    source = False
    dataset_name = "Cross-City"
    label_hint = CROSSCITY_LABEL_HINT

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
        uint8: bool = False,
        data_cache: str | Path | None = None,
    ) -> None:
        self.city = check_city(city)
        self.set = check_set(set)
        self.return_label = bool(return_label)
        self.root_holds = f"{city}/Images/{SETS[set]}/"
        self.title = f"Cross-City {city} {set}"
        self.image_files = f"Cross-City images ({city}/Images/{SETS[set]})"
        self.label_files = f"Cross-City labels ({city}/Labels/{SETS[set]}/*{LABEL_SUFFIX})"
        super().__init__(root, list_path, max_iters, crop_size, mean, scale, mirror, ignore_label, seed, check_files,
                         uint8, data_cache)

    def cache_slug(self) -> str:
        return f"crosscity-{self.city.lower()}-{self.set}"

    def image_dir(self) -> Path:
        return crosscity_image_dir(self.root, self.city, self.set)

    def label_path(self, name: str) -> Path:
        return crosscity_label_path(self.root, self.city, self.set, name)

    def read_names(self) -> list[str]:
        """The list's entries as image file names: a bare stem gets the extension present in the image folder
        (``.png`` first, then ``.jpg``; ``.png`` when neither is there, so that the missing-file check names it)."""
        names = super().read_names()
        try:
            present = set(os.listdir(self.image_dir()))
        except OSError:
            present = set()
        return [n if Path(n).suffix.lower() in IMAGE_EXTENSIONS
                else n + next((e for e in IMAGE_EXTENSIONS if n + e in present), IMAGE_EXTENSIONS[0]) for n in names]

    def list_directory(self) -> list[str]:
        image_dir = self.image_dir()
        if not image_dir.is_dir():
            raise DatasetError(f"Cross-City image directory {image_dir} does not exist (expected "
                               f"<City>/Images/{SETS[self.set]}/ under {self.root})")
        names = sorted(p.name for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not names:
            raise DatasetError(f"Cross-City image directory {image_dir} holds no .png/.jpg images")
        return names
