"""The one source of truth for the Cityscapes label tables and the image mean.

Everything that needs class names, the colour palette, the labelId -> trainId map
or the mean subtracted from images imports it from here. The tables themselves are
data, read once from ``dataset/cityscapes_list/info.json`` (the original's devkit
file); only the image mean, which the original kept in code, is a constant here.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

DATASET_DIR = Path(__file__).resolve().parent
CITYSCAPES_LIST_DIR = DATASET_DIR / "cityscapes_list"
GTA5_LIST_DIR = DATASET_DIR / "gta5_list"
INFO_JSON = CITYSCAPES_LIST_DIR / "info.json"

#: Per-channel mean subtracted from images, in **BGR** order (the Caffe DeepLab
#: convention the ImageNet+COCO initialisation was trained with). No std division.
IMG_MEAN = np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float32)

#: Label value that the losses and metrics ignore.
IGNORE_LABEL = 255


#: The keys of a devkit ``info.json`` that the loaders and the palette need.
INFO_KEYS = ("classes", "label", "label2train", "palette")


@lru_cache(maxsize=None)
def load_info(path: str | Path = INFO_JSON, keys: tuple[str, ...] = INFO_KEYS) -> dict[str, Any]:
    """Read a devkit ``info.json`` (classes, label, label2train, palette) and check that it has ``keys`` and one
    class name per class (``compute_iou.py`` asks only for the keys it uses: classes, label, label2train).

    Raises ``FileNotFoundError`` or ``ValueError`` naming the file.
    """
    path = Path(path)
    try:
        with path.open("r") as fp:
            info = json.load(fp)
    except FileNotFoundError:
        raise FileNotFoundError(f"devkit file not found: {path} (expected info.json with the label tables)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    for key in keys:
        if key not in info:
            raise ValueError(f"{path} lacks the key {key!r}")
    if "label" in keys and len(info["label"]) != int(info["classes"]):
        raise ValueError(f"{path}: 'classes' is {info['classes']} but 'label' lists {len(info['label'])} names")
    return info


def label2train_lut(info: dict[str, Any] | None = None) -> np.ndarray:
    """A 256-entry uint8 lookup table: Cityscapes labelId -> trainId, everything else -> 255.

    ``lut[label_png]`` maps a whole uint8 label image in one gather, instead of one
    masked pass per id. Entries of ``label2train`` with an id outside 0..255 (the
    ``-1`` licence-plate entry) cannot occur in an 8-bit PNG and are skipped.
    """
    info = load_info() if info is None else info
    lut = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    for label_id, train_id in info["label2train"]:
        if 0 <= label_id < 256:
            lut[label_id] = train_id
    return lut


def _info() -> dict[str, Any]:
    return load_info()


NUM_CLASSES: int = int(_info()["classes"])
#: The 19 class names in trainId order (the devkit's spelling, e.g. "motocycle").
CLASS_NAMES: tuple[str, ...] = tuple(_info()["label"])
#: 19 RGB colours in trainId order (the devkit's 20th entry, black, is for ignore).
PALETTE: np.ndarray = np.array(_info()["palette"][:NUM_CLASSES], dtype=np.uint8)
#: labelId (0..255) -> trainId (0..18, else 255).
LABEL2TRAIN: np.ndarray = label2train_lut()
LABEL2TRAIN.setflags(write=False)
PALETTE.setflags(write=False)


def flat_palette() -> list[int]:
    """The 768-entry flat palette for a 'P' image: the class colours, then zeros.

    Ignore (255) and any unused index render black, as in the original.
    """
    flat = PALETTE.reshape(-1).tolist()
    return flat + [0] * (768 - len(flat))


def colorize_mask(mask: np.ndarray):
    """Return a palette-mode PIL image of a trainId map ``mask`` (H, W), uint8-convertible."""
    from PIL import Image

    img = Image.fromarray(np.asarray(mask, dtype=np.uint8)).convert("P")
    img.putpalette(flat_palette())
    return img


def colorize_rgb(mask: np.ndarray) -> np.ndarray:
    """Return an (H, W, 3) uint8 RGB rendering of a trainId map; ids >= 19 render black."""
    mask = np.asarray(mask)
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:NUM_CLASSES] = PALETTE
    return table[mask.astype(np.uint8)]


# --------------------------------------------------------------------------------------
# SYNTHIA-RAND-CITYSCAPES
# --------------------------------------------------------------------------------------

#: SYNTHIA class id (the first channel of a 16-bit ``GT/LABELS/*.png``) -> Cityscapes trainId.
#: SYNTHIA's README numbers its classes 0 void, 1 sky, 2 building, 3 road, 4 sidewalk,
#: 5 fence, 6 vegetation, 7 pole, 8 car, 9 traffic sign, 10 pedestrian, 11 bicycle,
#: 12 motorcycle, 13 parking-slot, 14 road-work, 15 traffic light, 16 terrain, 17 rider,
#: 18 truck, 19 bus, 20 train, 21 wall, 22 lanemarking. Ids not listed (0, 13, 14, 22 and
#: anything else) are ignored. Terrain, truck and train are listed but do not occur in
#: SYNTHIA-RAND-CITYSCAPES, so a SYNTHIA-trained model learns 16 of the 19 classes.
SYNTHIA_TO_TRAIN: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9,
    1: 10, 10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}


def synthia_lut() -> np.ndarray:
    """A 65 536-entry uint8 lookup table: SYNTHIA class id (uint16) -> trainId, else 255.

    ``lut[ids]`` maps a whole 16-bit id map in one gather (64 KiB of table, no per-id pass).
    """
    lut = np.full(65536, IGNORE_LABEL, dtype=np.uint8)
    for synthia_id, train_id in SYNTHIA_TO_TRAIN.items():
        lut[synthia_id] = train_id
    return lut


#: SYNTHIA class id (0..65535) -> trainId (0..18, else 255).
SYNTHIA2TRAIN: np.ndarray = synthia_lut()
SYNTHIA2TRAIN.setflags(write=False)
