"""Synscapes as a labelled source domain (Synscapes -> Cityscapes).

Layout (the download's, unchanged): ``root/img/rgb/NAME`` (8-bit RGB PNG, 1440x720) and
``root/img/class/NAME`` (8-bit PNG of **Cityscapes labelIds**), NAME ``1.png`` ... ``25000.png``.
The labels map to trainIds with the Cityscapes table (:data:`dataset.labels.LABEL2TRAIN`), as GTA5's.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from dataset.checks import open_label
from dataset.source_dataset import LabelledSourceDataSet

#: What to tell a user whose Synscapes label is not an 8-bit labelId PNG.
SYNSCAPES_LABEL_HINT = (
    "Synscapes labels must be the 8-bit img/class/*.png files (Cityscapes labelIds), "
    "not converted to RGB"
)


def synscapes_paths(root: str | Path, name: str) -> tuple[Path, Path]:
    """``(root/img/rgb/name, root/img/class/name)``."""
    root = Path(root)
    return root / "img" / "rgb" / name, root / "img" / "class" / name


class SynscapesDataSet(LabelledSourceDataSet):
    """Synscapes source set: items ``(image, label, size, name)`` as :class:`GTA5DataSet`.

    Args: as :class:`dataset.source_dataset.LabelledSourceDataSet`; ``root`` holds ``img/rgb/`` and
    ``img/class/``; ``list_path=None`` takes every ``img/rgb/*.png`` (sorted by name).
    """

    dataset_name = "Synscapes"
    root_holds = "img/rgb/ and img/class/"

    def image_dir(self) -> Path:
        return self.root / "img" / "rgb"

    def label_path(self, name: str) -> Path:
        return synscapes_paths(self.root, name)[1]

    def load_label(self, path: Path) -> Image.Image:
        return open_label(path, SYNSCAPES_LABEL_HINT)
