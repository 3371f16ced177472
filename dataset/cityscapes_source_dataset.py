"""Cityscapes as a labelled **source** domain (Cityscapes -> Cross-City).

Layout: the Cityscapes download, as :class:`dataset.cityscapes_dataset.cityscapesDataSet` reads it:
``root/leftImg8bit/SET/city/city_x_y_leftImg8bit.png`` with the list entry ``city/city_x_y_leftImg8bit.png``
and its fine label ``root/gtFine/SET/city/city_x_y_gtFine_labelIds.png`` (8-bit labelIds, mapped to
trainIds with :data:`dataset.labels.LABEL2TRAIN`). As a source, the label is resized to the crop size
(nearest) with the image, like GTA5's, instead of being kept at its native resolution for evaluation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from dataset.checks import CITYSCAPES_LABEL_HINT, DatasetError, format_paths, open_label
from dataset.cityscapes_dataset import IMAGE_SUFFIX, cityscapes_image_path, cityscapes_label_path
from dataset.labels import IGNORE_LABEL, IMG_MEAN
from dataset.source_dataset import LabelledSourceDataSet


class CityscapesSourceDataSet(LabelledSourceDataSet):
    """Cityscapes train images with their gtFine labels as a source set: items ``(image, label, size, name)``.

    Args: as :class:`dataset.source_dataset.LabelledSourceDataSet`, plus ``set`` (the split folder,
    default ``train``). ``list_path=None`` takes every ``leftImg8bit/SET/*/*_leftImg8bit.png``; the
    default list of the training script is ``dataset/cityscapes_list/train.txt`` (the 2 975 train images).
    """

    dataset_name = "Cityscapes (source)"
    listing_glob = f"*/*{IMAGE_SUFFIX}"

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
        set: str = "train",
        seed: int = 0,
        check_files: bool = True,
    ) -> None:
        self.set = set
        self.root_holds = f"leftImg8bit/{set}/ and gtFine/{set}/"
        super().__init__(root, list_path, max_iters, crop_size, mean, scale, mirror, ignore_label, seed, check_files)

    def image_dir(self) -> Path:
        return self.root / "leftImg8bit" / self.set

    def image_path(self, name: str) -> Path:
        return cityscapes_image_path(self.root, self.set, name)

    def label_path(self, name: str) -> Path:
        try:
            return cityscapes_label_path(self.root, self.set, name)
        except ValueError:
            where = self.list_path or self.image_dir()
            raise DatasetError(f"entry of {where} does not end with {IMAGE_SUFFIX!r}, so its gtFine label name "
                               f"cannot be derived:\n{format_paths([name])}") from None

    def load_label(self, path: Path) -> Image.Image:
        return open_label(path, CITYSCAPES_LABEL_HINT)
