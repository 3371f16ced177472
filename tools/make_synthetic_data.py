"""Write a small synthetic GTA5 and Cityscapes in the exact layouts of the real downloads.

For tests and the demo: no download, seconds to make, the same folder trees, file
names, list files and label encodings as the real data, so that every script runs
on it unchanged::

    OUT/GTA5/images/00001.png                 RGB
    OUT/GTA5/labels/00001.png                 'P' (palette) PNG, indices = Cityscapes labelIds
    OUT/Cityscapes/data/leftImg8bit/{train,val}/<city>/<city>_000000_000019_leftImg8bit.png
    OUT/Cityscapes/data/gtFine/val/<city>/<city>_000000_000019_gtFine_labelIds.png   'L', labelIds
    OUT/lists/gta5_list/train.txt
    OUT/lists/cityscapes_list/{train.txt,val.txt,label.txt,info.json}

Scenes are simple street layouts (sky on top, buildings and vegetation on the
horizon, a road in perspective with sidewalks, poles with signs, cars, people) drawn
as labelIds, including ids the 19 classes ignore (0 unlabeled, 1 ego vehicle, 4
static). Each image is painted from its layout: every class has a base colour (its
Cityscapes palette colour) plus texture, so pixels predict labels. The two domains
share the layout distribution but differ in look (the domain shift to adapt over):
the source is saturated with fine per-pixel noise (a "rendered" look), the target
desaturated, bluish and darker with blotchy low-frequency texture.

Usage: ``python tools/make_synthetic_data.py --out /tmp/synth [--num-source 8] [--random-seed 0]``
or, from Python, :func:`make_synthetic_datasets`. Every file is written atomically; a write error (a full disk)
is one ``make_synthetic_data.py: error: cannot write <file>: ...`` line, exit status 1.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image

from dataset.crosscity_dataset import CITIES
from dataset.labels import INFO_JSON, LABEL2TRAIN, PALETTE, SYNTHIA_TO_TRAIN
from utils.cli import ArgumentParser, fail, parse_size
from utils.files import atomic_write

PROG = "make_synthetic_data.py"

TRAIN_CITIES = ("aachen", "bochum", "bremen", "cologne")
VAL_CITIES = ("frankfurt", "lindau", "munster")

# Cityscapes labelIds used by the layouts (values of the official labels table).
UNLABELED, EGO_VEHICLE, STATIC = 0, 1, 4
ROAD, SIDEWALK, BUILDING, WALL, FENCE = 7, 8, 11, 12, 13
POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY = 17, 19, 20, 21, 22, 23
PERSON, CAR, TRUCK, BUS = 24, 26, 27, 28


@dataclass(frozen=True)
class SyntheticPaths:
    """Where :func:`make_synthetic_datasets` put things (all absolute paths).

    ``gta5_root`` / ``cityscapes_root`` are what ``--data-dir`` / ``--data-dir-target``
    take; ``devkit_dir`` is ``compute_iou.py``'s devkit (info.json, val.txt, label.txt)
    and ``gt_dir`` its ground-truth directory.
    """

    gta5_root: Path
    gta5_list: Path
    cityscapes_root: Path
    cityscapes_train_list: Path
    cityscapes_val_list: Path
    devkit_dir: Path
    gt_dir: Path


def labelid_palette() -> list[int]:
    """A 768-entry flat palette indexed by **labelId**: a labelId's trainId colour, black otherwise.

    Derived from :data:`dataset.labels.PALETTE` and ``LABEL2TRAIN`` (no new table):
    a GTA5-style label then looks like the real ones in a viewer while its indices
    stay the labelIds.
    """
    table = np.zeros((256, 3), dtype=np.uint8)
    mapped = LABEL2TRAIN != 255
    table[mapped] = PALETTE[LABEL2TRAIN[mapped]]
    return table.reshape(-1).tolist()


def _base_colours() -> np.ndarray:
    """(256, 3) float base colour per labelId: the palette colour, dark greys for ignored ids."""
    table = np.zeros((256, 3), dtype=np.float64)
    mapped = LABEL2TRAIN != 255
    table[mapped] = PALETTE[LABEL2TRAIN[mapped]]
    table[~mapped] = (45, 40, 40)
    table[EGO_VEHICLE] = (20, 20, 25)
    table[STATIC] = (110, 90, 60)
    return table


def make_layout(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A (height, width) uint8 map of Cityscapes labelIds: one random street scene."""
    h, w = height, width
    lab = np.full((h, w), SKY, dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    horizon = int(h * rng.uniform(0.38, 0.5))
    vx = w * rng.uniform(0.35, 0.65)  # vanishing point column
    # below the horizon: terrain, then sidewalks and a road converging to the vanishing point
    t = np.clip((yy - horizon) / max(1, h - horizon), 0, 1)  # 0 at the horizon, 1 at the bottom
    below = yy >= horizon
    lab[below] = TERRAIN
    road_half = (0.04 + 0.66 * t) * w
    walk_half = road_half + (0.01 + 0.22 * t) * w
    lab[below & (np.abs(xx - vx) < walk_half)] = SIDEWALK
    lab[below & (np.abs(xx - vx) < road_half)] = ROAD
    # buildings along both sides of the horizon, vegetation between some of them
    x = 0
    while x < w:
        bw = max(2, int(w * rng.uniform(0.08, 0.22)))
        top = max(0, int(horizon - h * rng.uniform(0.08, 0.35)))
        bottom = min(h, horizon + max(1, int(h * 0.03)))
        if abs(x + bw / 2 - vx) > 0.08 * w:
            kind = BUILDING if rng.random() < 0.75 else VEGETATION
            if kind == BUILDING:
                lab[top:bottom, x : x + bw] = BUILDING
            else:
                cy, cx, r = (top + bottom) / 2, x + bw / 2, max(1.5, (bottom - top) / 2)
                lab[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = VEGETATION
        x += bw + int(w * rng.uniform(0.0, 0.05))
    if rng.random() < 0.5:  # a wall or a fence on one side, just above the horizon
        side = slice(0, int(w * 0.3)) if rng.random() < 0.5 else slice(int(w * 0.7), w)
        lab[max(0, horizon - max(1, h // 20)) : horizon + 1, side] = WALL if rng.random() < 0.5 else FENCE
    # poles with a sign or a light on top, on the sidewalks
    for _ in range(rng.integers(1, 3)):
        px = int(rng.uniform(0.05, 0.95) * w)
        pw = max(1, w // 64)
        top = max(0, int(horizon - h * rng.uniform(0.1, 0.3)))
        bottom = min(h, int(horizon + h * rng.uniform(0.05, 0.25)))
        lab[top:bottom, px : px + pw] = POLE
        s = max(1, h // 16)
        head = TRAFFIC_SIGN if rng.random() < 0.6 else TRAFFIC_LIGHT
        lab[top : top + s, max(0, px - s // 2) : px + pw + s // 2] = head
    # vehicles on the road: bigger when nearer (lower)
    for _ in range(rng.integers(1, 4)):
        cy = int(horizon + (h - horizon) * rng.uniform(0.15, 0.8))
        scale = (cy - horizon) / max(1, h - horizon)
        vw, vh = max(2, int(w * (0.08 + 0.25 * scale))), max(2, int(h * (0.05 + 0.2 * scale)))
        cx = int(vx + (rng.uniform(-0.6, 0.6) * road_half[min(cy, h - 1), 0]))
        kind = rng.choice([CAR, CAR, CAR, TRUCK, BUS])
        lab[max(0, cy - vh) : cy, max(0, cx - vw // 2) : max(0, cx + vw // 2)] = kind
    # people on the sidewalk
    for _ in range(rng.integers(0, 3)):
        cy = int(horizon + (h - horizon) * rng.uniform(0.2, 0.7))
        row = min(cy, h - 1)
        edge = vx + rng.choice([-1, 1]) * (road_half[row, 0] + 0.5 * (walk_half - road_half)[row, 0])
        ph, pw = max(2, int(h * 0.12)), max(1, w // 40)
        lab[max(0, cy - ph) : cy, max(0, int(edge)) : max(0, int(edge)) + pw] = PERSON
    # ids the 19 classes ignore: a static object, unlabelled specks, sometimes the ego vehicle
    sx, sy = int(rng.uniform(0, 0.9) * w), int(rng.uniform(0.5, 0.9) * h)
    lab[sy : sy + max(1, h // 16), sx : sx + max(1, w // 24)] = STATIC
    for _ in range(3):
        ux, uy = int(rng.uniform(0, 1) * w), int(rng.uniform(0, 1) * h)
        lab[uy : uy + max(1, h // 24), ux : ux + max(1, w // 24)] = UNLABELED
    if rng.random() < 0.5:
        lab[h - max(1, h // 12) :, :] = EGO_VEHICLE
    return lab


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cell: int) -> np.ndarray:
    """(height, width, 3) low-frequency noise (std about 1): coarse Gaussian noise, bilinearly upsampled."""
    gh, gw = max(2, height // cell + 2), max(2, width // cell + 2)
    planes = []
    for _ in range(3):
        coarse = Image.fromarray(rng.normal(size=(gh, gw)).astype(np.float32), mode="F")
        planes.append(np.asarray(coarse.resize((width, height), Image.Resampling.BILINEAR)))
    return np.stack(planes, axis=-1)


def paint(rng: np.random.Generator, layout: np.ndarray, domain: str) -> np.ndarray:
    """An (H, W, 3) uint8 RGB image for ``layout`` in the style of ``domain`` ('source' or 'target')."""
    h, w = layout.shape
    base = _base_colours()
    jitter = rng.normal(0, 8, size=(256, 3))  # this image's per-class colour variation
    colours = (base + jitter)[layout]
    if domain == "source":  # saturated, bright, fine per-pixel noise ("rendered")
        grey = colours.mean(axis=-1, keepdims=True)
        img = grey + 1.25 * (colours - grey) + 10 + rng.normal(0, 10, size=(h, w, 3))
    elif domain == "target":  # desaturated, bluish, darker, blotchy low-frequency texture ("camera")
        grey = colours.mean(axis=-1, keepdims=True)
        img = 0.5 * colours + 0.3 * grey + np.array([0.0, 8.0, 25.0])
        img = img + 14 * _smooth_noise(rng, w, h, cell=6) + rng.normal(0, 3, size=(h, w, 3))
    else:
        raise ValueError(f"domain must be 'source' or 'target', got {domain!r}")
    img = img * rng.uniform(0.9, 1.1)  # per-image exposure
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _save(img: Image.Image, path: Path) -> None:
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"), needed=img.width * img.height * len(img.getbands()))


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text("".join(f"{line}\n" for line in lines)))


def _rng(seed: int, domain: int, index: int) -> np.random.Generator:
    """One generator per image: adding images never changes the existing ones."""
    return np.random.default_rng([int(seed) % 2**64, domain, index])


def _parse_size(size: Sequence[int], name: str) -> tuple[int, int]:
    w, h = (int(v) for v in size)
    if w < 8 or h < 8:
        raise ValueError(f"{name} must be at least 8,8 (W,H), got {w},{h}")
    return w, h


def _city_names(cities: Sequence[str], count: int) -> list[str]:
    """``count`` Cityscapes-style names spread round-robin over ``cities``."""
    names, seq = [], {c: 0 for c in cities}
    for i in range(count):
        city = cities[i % len(cities)]
        names.append(f"{city}/{city}_{seq[city]:06d}_000019_leftImg8bit.png")
        seq[city] += 1
    return names


def make_synthetic_datasets(
    out_dir: str | Path,
    num_source: int = 8,
    num_target_train: int = 8,
    num_val: int = 4,
    source_size: Sequence[int] = (64, 36),
    target_size: Sequence[int] = (64, 32),
    seed: int = 0,
    cityscapes_train_labels: bool = False,
) -> SyntheticPaths:
    """Write the synthetic GTA5 + Cityscapes under ``out_dir`` and return where things are.

    Args:
        out_dir: created if needed; existing files of the same names are replaced.
        num_source: GTA5 image/label pairs.
        num_target_train: Cityscapes ``leftImg8bit/train`` images (no labels, as in adaptation).
        num_val: Cityscapes ``leftImg8bit/val`` images with their ``gtFine/val`` labelIds.
        source_size, target_size: (W, H) of every GTA5 / Cityscapes image (real: 1914x1052, 2048x1024).
        seed: everything is a function of the seed (and the image's index).
        cityscapes_train_labels: also write ``gtFine/train`` labelIds of the train images (Cityscapes as a
            labelled source, ``--source cityscapes``); the images are the same either way.
    """
    for name, n in (("num_source", num_source), ("num_target_train", num_target_train), ("num_val", num_val)):
        if int(n) < 1:
            raise ValueError(f"{name} must be at least 1, got {n}")
    sw, sh = _parse_size(source_size, "source_size")
    tw, th = _parse_size(target_size, "target_size")
    out = Path(out_dir).resolve()
    gta5_root = out / "GTA5"
    cs_root = out / "Cityscapes" / "data"
    gta5_list_dir = out / "lists" / "gta5_list"
    devkit = out / "lists" / "cityscapes_list"

    palette = labelid_palette()
    gta5_names = [f"{i:05d}.png" for i in range(1, num_source + 1)]
    for i, name in enumerate(gta5_names):
        rng = _rng(seed, 0, i)
        layout = make_layout(rng, sw, sh)
        _save(Image.fromarray(paint(rng, layout, "source"), mode="RGB"), gta5_root / "images" / name)
        label = Image.fromarray(layout, mode="L").convert("P")  # indices unchanged
        label.putpalette(palette)
        _save(label, gta5_root / "labels" / name)
    _write_lines(gta5_list_dir / "train.txt", gta5_names)

    train_names = _city_names(TRAIN_CITIES, num_target_train)
    for i, name in enumerate(train_names):
        rng = _rng(seed, 1, i)
        layout = make_layout(rng, tw, th)
        _save(Image.fromarray(paint(rng, layout, "target"), mode="RGB"), cs_root / "leftImg8bit" / "train" / name)
        if cityscapes_train_labels:
            lname = name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
            _save(Image.fromarray(layout, mode="L"), cs_root / "gtFine" / "train" / lname)

    val_names = _city_names(VAL_CITIES, num_val)
    label_names = [n.replace("_leftImg8bit.png", "_gtFine_labelIds.png") for n in val_names]
    for i, (name, lname) in enumerate(zip(val_names, label_names)):
        rng = _rng(seed, 2, i)
        layout = make_layout(rng, tw, th)
        _save(Image.fromarray(paint(rng, layout, "target"), mode="RGB"), cs_root / "leftImg8bit" / "val" / name)
        _save(Image.fromarray(layout, mode="L"), cs_root / "gtFine" / "val" / lname)

    _write_lines(devkit / "train.txt", train_names)
    _write_lines(devkit / "val.txt", val_names)
    _write_lines(devkit / "label.txt", label_names)
    atomic_write(devkit / "info.json", lambda tmp: shutil.copyfile(INFO_JSON, tmp))

    return SyntheticPaths(
        gta5_root=gta5_root,
        gta5_list=gta5_list_dir / "train.txt",
        cityscapes_root=cs_root,
        cityscapes_train_list=devkit / "train.txt",
        cityscapes_val_list=devkit / "val.txt",
        devkit_dir=devkit,
        gt_dir=cs_root / "gtFine" / "val",
    )


# --------------------------------------------------------------------------------------------------------------
# The other settings: SYNTHIA, Synscapes and Cross-City in their real layouts


@dataclass(frozen=True)
class OtherSyntheticPaths:
    """Where :func:`make_synthetic_other_settings` put things (all absolute paths).

    ``synthia_root`` / ``synscapes_root`` are ``--data-dir`` of ``--source synthia`` / ``synscapes`` (no list:
    the loaders take every image); ``crosscity_root`` is ``--data-dir-target`` of ``--target crosscity`` with
    ``--city city``; ``crosscity_devkit_dir`` is a compute_iou.py devkit (info.json, val.txt, label.txt) for
    the city's test images, whose labels are in ``crosscity_gt_dir``.
    """

    synthia_root: Path
    synscapes_root: Path
    crosscity_root: Path
    city: str
    crosscity_train_list: Path
    crosscity_test_list: Path
    crosscity_devkit_dir: Path
    crosscity_gt_dir: Path


#: Painter labelIds that SYNTHIA-RAND-CITYSCAPES has no class for, and the SYNTHIA id written instead:
#: void for the unlabelled ids, ids the 19 classes ignore (22 lanemarking, 13 parking-slot) for static
#: objects and terrain, car for trucks (SYNTHIA has neither terrain nor trucks).
_SYNTHIA_SUBSTITUTES = {UNLABELED: 0, EGO_VEHICLE: 0, STATIC: 22, TERRAIN: 13, TRUCK: 8}


def labelid_to_synthia_table() -> np.ndarray:
    """(256,) uint16: painter labelId -> SYNTHIA class id, the inverse of ``SYNTHIA_TO_TRAIN`` through the trainIds.

    Derived from :data:`dataset.labels.SYNTHIA_TO_TRAIN` and ``LABEL2TRAIN`` (no new class table), plus
    :data:`_SYNTHIA_SUBSTITUTES`.
    """
    train_to_synthia = {t: s for s, t in SYNTHIA_TO_TRAIN.items()}
    table = np.zeros(256, dtype=np.uint16)
    for label_id in range(256):
        train_id = int(LABEL2TRAIN[label_id])
        if train_id != 255:
            table[label_id] = train_to_synthia[train_id]
    for label_id, synthia_id in _SYNTHIA_SUBSTITUTES.items():
        table[label_id] = synthia_id
    return table


def encode_synthia_label(class_ids: np.ndarray, instance_ids: np.ndarray) -> bytes:
    """A SYNTHIA ``GT/LABELS`` PNG: 16 bits per sample, channel 1 the class id, channel 2 the instance id,
    channel 3 zero. Written with OpenCV (the reader's library), which takes channels in B, G, R order."""
    from dataset.synthia_dataset import _cv2

    cv2 = _cv2()
    bgr = np.stack([np.zeros_like(class_ids), instance_ids, class_ids], axis=-1).astype(np.uint16)
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise OSError("OpenCV could not encode a 16-bit PNG")
    return buf.tobytes()


def _crosscity_eval_label(layout: np.ndarray) -> np.ndarray:
    """The Cross-City annotation of a layout: labelIds of the 13 annotated classes, 0 (unlabeled) elsewhere."""
    from dataset.labels import CLASS_NAMES
    from utils.metrics import subset_indices

    annotated = set(subset_indices(CLASS_NAMES, 13))
    keep = np.array([int(LABEL2TRAIN[v]) in annotated for v in range(256)])
    return np.where(keep[layout], layout, UNLABELED).astype(np.uint8)


def make_synthetic_other_settings(
    out_dir: str | Path,
    num_source: int = 4,
    num_target_train: int = 4,
    num_test: int = 2,
    synthia_size: Sequence[int] = (64, 38),
    synscapes_size: Sequence[int] = (72, 36),
    crosscity_size: Sequence[int] = (64, 32),
    city: str = "Rome",
    seed: int = 0,
) -> OtherSyntheticPaths:
    """Write a synthetic SYNTHIA-RAND-CITYSCAPES, Synscapes and one Cross-City city under ``out_dir``::

        OUT/SYNTHIA/RGB/0000000.png              RGB
        OUT/SYNTHIA/GT/LABELS/0000000.png        16-bit, 3 channels: SYNTHIA class id, instance id, 0
        OUT/Synscapes/img/rgb/1.png              RGB
        OUT/Synscapes/img/class/1.png            'L', Cityscapes labelIds
        OUT/NTHU_Datasets/<City>/Images/Train/pano_00000_0_0.png     unlabelled
        OUT/NTHU_Datasets/<City>/Images/Test/pano_01000_0_180.png
        OUT/NTHU_Datasets/<City>/Labels/Test/pano_01000_0_180_eval.png   'L', labelIds of the 13 classes, 0 elsewhere
        OUT/lists/crosscity_list/<City>/{train.txt,test.txt,val.txt,label.txt,info.json}

    The scenes come from the same painter as GTA5/Cityscapes (:func:`make_layout`, :func:`paint`: the sources
    in the "source" look, Cross-City in the "target" look), their labelIds rewritten in each dataset's ids.
    Sizes are (W, H) (real: 1280x760, 1440x720, 2048x1024). Requires OpenCV for the 16-bit labels.
    """
    for name, n in (("num_source", num_source), ("num_target_train", num_target_train), ("num_test", num_test)):
        if int(n) < 1:
            raise ValueError(f"{name} must be at least 1, got {n}")
    if city not in CITIES:
        raise ValueError(f"city must be one of {', '.join(CITIES)}, got {city!r}")
    sizes = {name: _parse_size(size, name) for name, size in (
        ("synthia_size", synthia_size), ("synscapes_size", synscapes_size), ("crosscity_size", crosscity_size))}
    out = Path(out_dir).resolve()

    synthia_root = out / "SYNTHIA"
    to_synthia = labelid_to_synthia_table()
    w, h = sizes["synthia_size"]
    for i in range(num_source):
        rng = _rng(seed, 3, i)
        layout = make_layout(rng, w, h)
        name = f"{i:07d}.png"
        _save(Image.fromarray(paint(rng, layout, "source"), mode="RGB"), synthia_root / "RGB" / name)
        # instance ids above 255, so that reading the wrong channel or 8 bits cannot pass for the class ids
        instances = (layout.astype(np.uint16) * 37 + 300) % 1000
        data = encode_synthia_label(to_synthia[layout], instances)
        atomic_write(synthia_root / "GT" / "LABELS" / name, lambda tmp, data=data: tmp.write_bytes(data))

    synscapes_root = out / "Synscapes"
    w, h = sizes["synscapes_size"]
    for i in range(num_source):
        rng = _rng(seed, 4, i)
        layout = make_layout(rng, w, h)
        name = f"{i + 1}.png"
        _save(Image.fromarray(paint(rng, layout, "source"), mode="RGB"), synscapes_root / "img" / "rgb" / name)
        _save(Image.fromarray(layout, mode="L"), synscapes_root / "img" / "class" / name)

    cc_root = out / "NTHU_Datasets"
    city_dir = cc_root / city
    devkit = out / "lists" / "crosscity_list" / city
    w, h = sizes["crosscity_size"]
    train_names = [f"pano_{i:05d}_0_0.png" for i in range(num_target_train)]
    for i, name in enumerate(train_names):
        rng = _rng(seed, 5, i)
        layout = make_layout(rng, w, h)
        _save(Image.fromarray(paint(rng, layout, "target"), mode="RGB"), city_dir / "Images" / "Train" / name)
    test_names = [f"pano_{1000 + i:05d}_0_180.png" for i in range(num_test)]
    label_names = [n[: -len(".png")] + "_eval.png" for n in test_names]
    for i, (name, lname) in enumerate(zip(test_names, label_names)):
        rng = _rng(seed, 6, i)
        layout = make_layout(rng, w, h)
        _save(Image.fromarray(paint(rng, layout, "target"), mode="RGB"), city_dir / "Images" / "Test" / name)
        _save(Image.fromarray(_crosscity_eval_label(layout), mode="L"), city_dir / "Labels" / "Test" / lname)
    _write_lines(devkit / "train.txt", train_names)
    _write_lines(devkit / "test.txt", test_names)
    _write_lines(devkit / "val.txt", test_names)  # compute_iou.py's names for the images
    _write_lines(devkit / "label.txt", label_names)
    atomic_write(devkit / "info.json", lambda tmp: shutil.copyfile(INFO_JSON, tmp))

    return OtherSyntheticPaths(
        synthia_root=synthia_root,
        synscapes_root=synscapes_root,
        crosscity_root=cc_root,
        city=city,
        crosscity_train_list=devkit / "train.txt",
        crosscity_test_list=devkit / "test.txt",
        crosscity_devkit_dir=devkit,
        crosscity_gt_dir=city_dir / "Labels" / "Test",
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Write a small synthetic GTA5 + Cityscapes in the real folder "
                            "layouts (tests, demo).")
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--num-source", type=int, default=8, help="GTA5 image/label pairs")
    parser.add_argument("--num-target-train", type=int, default=8, help="Cityscapes train images")
    parser.add_argument("--num-val", type=int, default=4, help="Cityscapes val images with gtFine labels")
    parser.add_argument("--source-size", type=parse_size, default=(64, 36), metavar="W,H",
                        help="size of the GTA5 images")
    parser.add_argument("--target-size", type=parse_size, default=(64, 32), metavar="W,H",
                        help="size of the Cityscapes images")
    parser.add_argument("--random-seed", "--seed", dest="seed", type=int, default=0,
                        help="seed of everything generated")
    parser.add_argument("--other-settings", action="store_true",
                        help="also write SYNTHIA, Synscapes, a Cross-City city (--city) and Cityscapes gtFine/train "
                             "labels (Cityscapes as a source), for --source/--target of the training script")
    parser.add_argument("--city", default="Rome", choices=CITIES, help="the Cross-City city of --other-settings")
    return parser


def main(args: argparse.Namespace) -> int:
    """Write the data and print where it is; 0 when done, 1 when a file cannot be written, 2 for unusable flags."""
    for flag, value in (("--num-source", args.num_source), ("--num-target-train", args.num_target_train),
                        ("--num-val", args.num_val)):
        if value < 1:
            return fail(PROG, f"{flag} must be at least 1, got {value}", 2)
    for flag, (w, h) in (("--source-size", args.source_size), ("--target-size", args.target_size)):
        if min(w, h) < 8:
            return fail(PROG, f"{flag} must be at least 8,8, got {w},{h}", 2)
    try:
        paths = make_synthetic_datasets(
            args.out,
            num_source=args.num_source,
            num_target_train=args.num_target_train,
            num_val=args.num_val,
            source_size=args.source_size,
            target_size=args.target_size,
            seed=args.seed,
            cityscapes_train_labels=args.other_settings,
        )
        other = None
        if args.other_settings:
            other = make_synthetic_other_settings(args.out, num_source=args.num_source,
                                                  num_target_train=args.num_target_train, num_test=args.num_val,
                                                  city=args.city, seed=args.seed)
    except (ValueError, OSError) as exc:
        return fail(PROG, str(exc))
    print(f"GTA5 (--data-dir):                {paths.gta5_root}")
    print(f"GTA5 list (--data-list):          {paths.gta5_list}")
    print(f"Cityscapes (--data-dir-target):   {paths.cityscapes_root}")
    print(f"Cityscapes train list:            {paths.cityscapes_train_list}")
    print(f"Cityscapes val list:              {paths.cityscapes_val_list}")
    print(f"devkit (compute_iou.py):          {paths.devkit_dir}")
    print(f"ground truth (compute_iou.py):    {paths.gt_dir}")
    print(
        "check it with: python tools/check_data.py "
        f"--data-dir {paths.gta5_root} --data-list {paths.gta5_list} "
        f"--data-dir-target {paths.cityscapes_root} --data-list-target {paths.cityscapes_train_list} "
        f"--data-list-val {paths.cityscapes_val_list}"
    )
    if other is not None:
        print(f"SYNTHIA (--source synthia --data-dir):          {other.synthia_root}")
        print(f"Synscapes (--source synscapes --data-dir):      {other.synscapes_root}")
        print(f"Cross-City (--target crosscity --city {other.city} --data-dir-target): {other.crosscity_root}")
        print(f"Cross-City devkit (compute_iou.py --classes 13): {other.crosscity_devkit_dir}")
        print(f"Cross-City ground truth (compute_iou.py):        {other.crosscity_gt_dir}")
        print("check them with:")
        print(f"  python tools/check_data.py --source synthia --data-dir {other.synthia_root} --skip-target")
        print(f"  python tools/check_data.py --source synscapes --data-dir {other.synscapes_root} --skip-target")
        print(f"  python tools/check_data.py --target crosscity --city {other.city} "
              f"--data-dir-target {other.crosscity_root} --skip-source")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
