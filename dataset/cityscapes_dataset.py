"""Cityscapes, the real target domain (:class:`cityscapesDataSet`, read exactly as the original AdaptSegNet
loader did) and a labelled source domain (:class:`CityscapesSourceDataSet`, Cityscapes -> Cross-City).

Layout: ``root/leftImg8bit/SET/NAME`` with NAME ``city/city_xxxxxx_yyyyyy_leftImg8bit.png`` from the list
file, and its fine label ``root/gtFine/SET/city/city_xxxxxx_yyyyyy_gtFine_labelIds.png`` (8-bit labelIds,
mapped to trainIds with :data:`dataset.labels.LABEL2TRAIN`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from dataset.base import BaseDataSet
from dataset.checks import CITYSCAPES_LABEL_HINT, DatasetError, format_paths
from dataset.labels import IGNORE_LABEL, IMG_MEAN

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


class cityscapesDataSet(BaseDataSet):
    """The Cityscapes target set: items ``(image, size, name)`` (or ``(image, label, size, name)``), see
    :class:`dataset.base.BaseDataSet`.

    ``root`` holds ``leftImg8bit/`` (``--data-dir-target``); ``list_path`` names
    ``city/..._leftImg8bit.png`` images; ``set`` is the split folder under ``leftImg8bit`` (and
    ``gtFine``): ``train``, ``val``, ``test``; ``return_label`` also returns the ``gtFine`` labelIds
    mapped to trainIds, for in-process evaluation; ``ignore_label`` is then the value of unlabelled
    pixels (0..255).
    """

    source = False
    dataset_name = "Cityscapes"
    label_hint = CITYSCAPES_LABEL_HINT

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
        uint8: bool = False,
        data_cache: str | Path | None = None,
    ) -> None:
        self.set = set
        self.return_label = bool(return_label)
        self.root_holds = f"leftImg8bit/{set}/"
        self.title = f"Cityscapes {set}"
        self.image_files = f"Cityscapes images (leftImg8bit/{set})"
        self.label_files = f"Cityscapes labels (gtFine/{set}/*{LABEL_SUFFIX})"
        # Path(): the list is required here (a TypeError for None, as before), there is no directory listing
        super().__init__(root, Path(list_path), max_iters, crop_size, mean, scale, mirror, ignore_label, seed,
                         check_files, uint8, data_cache)

    def cache_slug(self) -> str:
        return f"cityscapes-{self.set}"

    def read_names(self) -> list[str]:
        """The list's names; with ``return_label``, all of them must be ``*_leftImg8bit.png`` (one error lists
        those that are not)."""
        names = super().read_names()
        bad = [n for n in names if not n.endswith(IMAGE_SUFFIX)] if self.return_label else []
        if bad:
            raise DatasetError(
                f"{len(bad)} entries of {self.list_path} do not end with {IMAGE_SUFFIX!r}, so their "
                f"gtFine label names cannot be derived, e.g.:\n{format_paths(bad)}"
            )
        return names

    def image_dir(self) -> Path:
        return self.root / "leftImg8bit" / self.set

    def label_path(self, name: str) -> Path:
        """The gtFine label of ``name``; a DatasetError naming an entry that is not ``*_leftImg8bit.png`` (the
        source's check; the target has checked its whole list in :meth:`read_names`)."""
        try:
            return cityscapes_label_path(self.root, self.set, name)
        except ValueError:
            where = self.list_path or self.image_dir()
            raise DatasetError(f"entry of {where} does not end with {IMAGE_SUFFIX!r}, so its gtFine label name "
                               f"cannot be derived:\n{format_paths([name])}") from None


class CityscapesSourceDataSet(BaseDataSet):
    """Cityscapes train images with their gtFine labels as a **source** set: items ``(image, label, size,
    name)``, the label resized to the crop size (nearest) with the image, like GTA5's, instead of being kept
    at its native resolution for evaluation.

    ``set`` defaults to ``train``; ``list_path=None`` takes every ``leftImg8bit/SET/*/*_leftImg8bit.png``;
    the default list of the training script is ``dataset/cityscapes_list/train.txt`` (the 2 975 train images).
    """

    dataset_name = "Cityscapes (source)"
    listing_glob = f"*/*{IMAGE_SUFFIX}"
    label_hint = CITYSCAPES_LABEL_HINT
    image_dir, label_path = cityscapesDataSet.image_dir, cityscapesDataSet.label_path  # the same files

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
        uint8: bool = False,
        data_cache: str | Path | None = None,
    ) -> None:
        self.set = set
        self.root_holds = f"leftImg8bit/{set}/ and gtFine/{set}/"
        super().__init__(root, list_path, max_iters, crop_size, mean, scale, mirror, ignore_label, seed, check_files,
                         uint8, data_cache)

    def cache_slug(self) -> str:
        return f"cityscapes-source-{self.set}"
