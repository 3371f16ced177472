"""GTA5 (the labelled synthetic source domain), read exactly as the original AdaptSegNet loader did.

Layout: ``root/images/NAME`` (RGB PNG) and ``root/labels/NAME`` (palette PNG whose
*indices* are Cityscapes labelIds), NAME from the list file (``00001.png`` ...).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from dataset.base import BaseDataSet
from dataset.checks import GTA5_LABEL_HINT
from dataset.labels import IGNORE_LABEL, IMG_MEAN


def gta5_paths(root: str | Path, name: str) -> tuple[Path, Path]:
    """``(root/images/name, root/labels/name)``."""
    root = Path(root)
    return root / "images" / name, root / "labels" / name


class GTA5DataSet(BaseDataSet):
    """The GTA5 source set: items ``(image, label, size, name)`` (see :class:`dataset.base.BaseDataSet`).

    ``root`` holds ``images/`` and ``labels/`` (``--data-dir``); ``list_path`` names the images
    (``dataset/gta5_list/train.txt``).
    """

    dataset_name = "GTA5"
    root_holds = "images/ and labels/"
    label_hint = GTA5_LABEL_HINT
    sample_label_modes = True

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
        uint8: bool = False,
        data_cache: str | Path | None = None,
    ) -> None:
        # Path(): the list is required here (a TypeError for None, as before), there is no directory listing
        super().__init__(root, Path(list_path), max_iters, crop_size, mean, scale, mirror, ignore_label, seed,
                         check_files, uint8, data_cache)

    def cache_slug(self) -> str:
        return "gta5"

    def image_path(self, name: str) -> Path:
        return gta5_paths(self.root, name)[0]

    def label_path(self, name: str) -> Path:
        return gta5_paths(self.root, name)[1]
