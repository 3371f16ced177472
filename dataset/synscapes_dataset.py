"""Synscapes as a labelled source domain (Synscapes -> Cityscapes).

Layout (the download's, unchanged): ``root/img/rgb/NAME`` (8-bit RGB PNG, 1440x720) and
``root/img/class/NAME`` (8-bit PNG of **Cityscapes labelIds**), NAME ``1.png`` ... ``25000.png``.
The labels map to trainIds with the Cityscapes table (:data:`dataset.labels.LABEL2TRAIN`), as GTA5's.
"""
from __future__ import annotations

from pathlib import Path

from dataset.base import BaseDataSet

#: What to tell a user whose Synscapes label is not an 8-bit labelId PNG.
SYNSCAPES_LABEL_HINT = (
    "Synscapes labels must be the 8-bit img/class/*.png files (Cityscapes labelIds), "
    "not converted to RGB"
)


class SynscapesDataSet(BaseDataSet):
    """Synscapes source set: items ``(image, label, size, name)`` (see :class:`dataset.base.BaseDataSet`).

    ``root`` holds ``img/rgb/`` and ``img/class/``; ``list_path=None`` takes every ``img/rgb/*.png``
    (sorted by name).
    """

    dataset_name = "Synscapes"
    root_holds = "img/rgb/ and img/class/"
    label_hint = SYNSCAPES_LABEL_HINT

    def cache_slug(self) -> str:
        return "synscapes"

    def image_dir(self) -> Path:
        return self.root / "img" / "rgb"

    def label_path(self, name: str) -> Path:
        return self.root / "img" / "class" / name
