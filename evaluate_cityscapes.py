"""Predict Cityscapes label maps with a trained AdaptSegNet model (the original's evaluate_cityscapes.py).

    python evaluate_cityscapes.py --restore-from ./model/GTA2Cityscapes_multi-ed35151c.pth
    python compute_iou.py ./data/Cityscapes/data/gtFine/val result/cityscapes

Faithful output (the defaults): every image of ``--data-list`` resized to 1024x512 (bicubic), BGR minus the mean;
the main output (the second output of DeeplabMulti, the only one of DeeplabVGG / Oracle) upsampled bilinearly with
``align_corners=True`` to 1024x2048 (H x W) in float32; argmax over classes (first maximum on ties, as NumPy);
saved as an 8-bit PNG of trainIds ``SAVE/<basename>`` and a palette PNG ``SAVE/<stem>_color.png``. The same
operations in the same order as the original, so the label maps are the original's pixel for pixel.

Beyond the original (separate argument group, all off or neutral by default): batches, upsampling and argmax on the
device, PNG writing in background threads overlapping the next batch, a progress bar; ``--gt-dir`` computes
compute_iou.py's table in the same pass; test-time augmentation (``--flip``, ``--scales``); ``--amp``;
``--save-overlay``; small ``--input-size``/``--output-size``/``--resnet-layers`` for tests.

A whole run (``--restore-from SNAPSHOT_DIR``, needs ``--gt-dir``): every ``<prefix>_<iter>.pth`` of a training run
in iteration order, in one process: the images are decoded and resized once (kept as uint8 within
``--image-cache-mb``), the model is built once and each snapshot's weights loaded into it. Per-class IoU and mIoU go
to ``SAVE/snapshots.json`` and ``SAVE/snapshots.csv`` after every snapshot; a rerun evaluates only new or changed
snapshots; ``--watch`` follows a running training until its last snapshot. The best snapshot's label maps are
written to SAVE/ (every snapshot's, to ``SAVE/<stem>/``, with ``--save-all``). See docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dataset.checks import DatasetError, open_rgb
from dataset.cityscapes_dataset import cityscapes_image_path, cityscapesDataSet, gtfine_name
from dataset.crosscity_dataset import CITIES, CrossCityDataSet, crosscity_gt_name, crosscity_image_dir
from dataset.labels import IMG_MEAN, colorize_mask, colorize_rgb, load_info
from dataset.settings import SOURCES, TARGETS, resolve_setting
from dataset.transforms import to_network_input
from model import build_model, model_outputs
from model.resnet import RESNET101_LAYERS
from utils.metrics import (
    MetricsError,
    evaluate_pair,
    label_mapping_lut,
    per_class_iu,
    read_label_png,
    read_png_header,
    CLASS_SUBSETS,
    subset_indices,
    subset_iou_lines,
    subset_result_dict,
)
from utils.cli import parse_layers, parse_size
from utils.device import select_device
from utils.files import atomic_write, check_writable_dir
from utils.weights import (
    RELEASED_WEIGHTS,
    CheckpointMismatchError,
    is_none_restore,
    load_checkpoint,
    load_state_dict_from,
)

logger = logging.getLogger("evaluate_cityscapes")

MODEL = "DeeplabMulti"
DATA_DIRECTORY = "./data/Cityscapes/data"
DATA_LIST_PATH = "./dataset/cityscapes_list/val.txt"
SAVE_PATH = "./result/cityscapes"
IGNORE_LABEL = 255
NUM_CLASSES = 19
SET = "val"
#: The original's fixed sizes, as (W, H): network input and saved prediction.
INPUT_SIZE = "1024,512"
OUTPUT_SIZE = "2048,1024"
#: A whole run: default memory for cached images (MiB), --watch's give-up time and poll interval (seconds).
IMAGE_CACHE_MB = 1024.0
WATCH_TIMEOUT = 3600.0
WATCH_INTERVAL = 30.0


def _scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1.0,0.75, got {text!r}") from None
    if not scales or min(scales) <= 0:
        raise argparse.ArgumentTypeError(f"scales must be positive, got {text!r}")
    return scales


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="DeepLab-ResNet / AdaptSegNet evaluation on Cityscapes",
                                     add_help=add_help)
    parser.add_argument("--model", type=str, default=MODEL, choices=["DeeplabMulti", "DeeplabVGG", "Oracle"],
                        help="available options : DeeplabMulti, DeeplabVGG and Oracle")
    parser.add_argument("--data-dir", type=str, default=DATA_DIRECTORY,
                        help="Path to the directory containing the Cityscapes dataset.")
    parser.add_argument("--data-list", type=str, default=DATA_LIST_PATH,
                        help="Path to the file listing the images in the dataset.")
    parser.add_argument("--ignore-label", type=int, default=IGNORE_LABEL,
                        help="The index of the label to ignore during the training.")
    parser.add_argument("--num-classes", type=int, default=NUM_CLASSES,
                        help="Number of classes to predict (including background).")
    parser.add_argument("--restore-from", type=str, default=None,
                        help="Where restore model parameters from (path or URL; default: the released model of "
                             "--model: " + ", ".join(f"{k}: {v}" for k, v in RELEASED_WEIGHTS.items()) + "); "
                             "or a training run's snapshot directory: evaluate every <prefix>_<iter>.pth in it "
                             "(needs --gt-dir; see --watch, --save-all)")
    parser.add_argument("--gpu", type=int, default=0, help="choose gpu device.")
    parser.add_argument("--set", type=str, default=SET, help="choose evaluation set.")
    parser.add_argument("--save", type=str, default=SAVE_PATH, help="Path to save result.")
    parser.add_argument("--cpu", action="store_true", help="choose to use cpu device.")

    beyond = parser.add_argument_group("beyond the original")
    beyond.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    beyond.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader processes decoding and resizing images (default: min(4, cores) on CUDA; "
                             "0 on the CPU, where they would only take cores from the network)")
    beyond.add_argument("--gt-dir", type=str, default=None,
                        help="gtFine directory of --set (e.g. ./data/Cityscapes/data/gtFine/val): also print "
                             "compute_iou.py's per-class IoU table, computed in the same pass")
    beyond.add_argument("--json", type=str, default=None, metavar="OUT.json",
                        help="with --gt-dir: write per-class IoU, mIoU, number of images, confusion matrix")
    beyond.add_argument("--flip", action="store_true",
                        help="test-time augmentation: also predict the mirrored image (softmax averaged)")
    beyond.add_argument("--scales", type=_scales, default=(1.0,),
                        help="test-time augmentation: input scales, e.g. 1.0,0.75,0.5 (softmax averaged; "
                             "default 1.0 = off)")
    beyond.add_argument("--amp", action="store_true",
                        help="mixed precision forward pass (float16 on CUDA, bfloat16 on CPU); may change a few "
                             "pixels")
    beyond.add_argument("--save-overlay", action="store_true",
                        help="also save SAVE/<stem>_overlay.png: the image blended with the colour prediction")
    beyond.add_argument("--input-size", type=parse_size, default=parse_size(INPUT_SIZE),
                        help=f"W,H the images are resized to before the network (default {INPUT_SIZE})")
    beyond.add_argument("--output-size", type=parse_size, default=parse_size(OUTPUT_SIZE),
                        help=f"W,H of the saved predictions (default {OUTPUT_SIZE}, Cityscapes' resolution)")
    beyond.add_argument("--resnet-layers", type=parse_layers, default=RESNET101_LAYERS,
                        help="blocks per ResNet stage (default 3,4,23,3 = ResNet-101; tests use 1,1,1,1)")
    beyond.add_argument("--no-progress", action="store_true", help="no progress bar (it is off when not a TTY)")
    beyond.add_argument("--classes", type=int, default=None, choices=CLASS_SUBSETS,
                        help="with --gt-dir: report this class subset, 19 (all), 16 (without terrain, truck, train) "
                             "or 13 (16 without wall, fence, pole); default 13 with --target crosscity, else 19")
    beyond.add_argument("--target", type=str, default="cityscapes", choices=("cityscapes", "crosscity"),
                        help="cityscapes (default), or crosscity: --data-dir is the NTHU_Datasets directory, "
                             "--city the city, the images <City>/Images/Test/* (all of them unless --data-list is "
                             "given) and --gt-dir <City>/Labels/Test (labels <stem>_eval.png)")
    beyond.add_argument("--city", type=str, default=None, choices=CITIES, help="the city of --target crosscity")
    # a whole run: --restore-from SNAPSHOT_DIR
    beyond.add_argument("--save-all", action="store_true",
                        help="with --restore-from SNAPSHOT_DIR: write every snapshot's label maps to "
                             "SAVE/<snapshot stem>/ (default: only the best snapshot's, into SAVE/)")
    beyond.add_argument("--image-cache-mb", type=float, default=IMAGE_CACHE_MB,
                        help="with --restore-from SNAPSHOT_DIR: memory for the decoded, resized images kept between "
                             "snapshots (uint8, W*H*3 bytes each: 1.5 MiB at 1024x512, so the 500 val images take "
                             "750 MiB); images beyond it are decoded again for every snapshot (default "
                             f"{IMAGE_CACHE_MB:g} MiB)")
    beyond.add_argument("--watch", action="store_true",
                        help="with --restore-from SNAPSHOT_DIR: keep evaluating new snapshots while a training run "
                             "writes them; stop when the run's last snapshot (from its args.json) is evaluated, or "
                             "after --watch-timeout seconds without a new snapshot")
    beyond.add_argument("--watch-timeout", type=float, default=WATCH_TIMEOUT,
                        help="with --watch: seconds without a new snapshot before giving up "
                             f"(default {WATCH_TIMEOUT:g})")
    beyond.add_argument("--watch-interval", type=float, default=WATCH_INTERVAL,
                        help=f"with --watch: seconds between looks at the directory (default {WATCH_INTERVAL:g})")
    beyond.add_argument("--data-cache", type=str, default=None, metavar="DIR",
                        help="read the images already resized from this cache (tools/prepare_cache.py --target ... "
                             "--set val --skip-source, docs/data.md); the same predictions")
    return parser


# --------------------------------------------------------------------------------------------------------------
# Prediction


def _forward(model: torch.nn.Module, x: torch.Tensor, amp: bool) -> torch.Tensor:
    """Main logits [N, C, h, w] in float32 (autocast only with --amp)."""
    if amp:
        dtype = torch.float16 if x.device.type == "cuda" else torch.bfloat16
        with torch.autocast(device_type=x.device.type, dtype=dtype):
            return model_outputs(model, x).float()
    return model_outputs(model, x)


def predict_labels(
    model: torch.nn.Module,
    images: torch.Tensor,
    output_hw: tuple[int, int],
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    amp: bool = False,
) -> torch.Tensor:
    """trainId maps [N, H, W] uint8 (on the images' device) for a batch ``images`` [N, 3, h, w].

    Default (no TTA): the original's operations in its order, in float32: logits, bilinear upsampling with
    ``align_corners=True`` to ``output_hw`` (H, W), argmax over classes (``torch.argmax`` returns the first
    maximum, as the original's ``np.argmax``). With ``flip`` / ``scales``: the softmax probabilities at
    ``output_hw`` of every (scale, mirror) variant are averaged, then the argmax; an input scale ``s`` resizes the
    (mean-subtracted) batch bilinearly to ``round(s * h) x round(s * w)``.
    """
    if not flip and tuple(scales) == (1.0,):
        logits = _forward(model, images, amp)
        up = F.interpolate(logits, size=output_hw, mode="bilinear", align_corners=True)
        # max(dim).indices: the first maximum like argmax, and 3x faster than argmax over dim 1 on the CPU
        return up.max(dim=1).indices.to(torch.uint8)
    h, w = images.shape[-2:]
    probs = None
    count = 0
    for s in scales:
        x = images
        if s != 1.0:
            size = (max(1, round(s * h)), max(1, round(s * w)))
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=True)
        for mirrored in (False, True) if flip else (False,):
            logits = _forward(model, x.flip(-1) if mirrored else x, amp)
            if mirrored:
                logits = logits.flip(-1)
            p = F.softmax(F.interpolate(logits, size=output_hw, mode="bilinear", align_corners=True), dim=1)
            probs = p if probs is None else probs.add_(p)
            count += 1
    return (probs / count).max(dim=1).indices.to(torch.uint8)


# --------------------------------------------------------------------------------------------------------------
# Output files (run in background threads)


def _save_png(img: Image.Image, path: Path) -> None:
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


@dataclass
class Outputs:
    """Where and what to write for each image; also the ground truth for ``--gt-dir``."""

    save_dir: Path
    overlay: bool
    data_dir: str
    set: str
    num_classes: int
    gt_dir: str | None = None
    lut: np.ndarray | None = None
    label2train: list | None = None
    #: list entry -> gt file name under gt_dir, and -> image path (Cityscapes' by default; Cross-City's)
    gt_name: Callable[[str], str] = gtfine_name
    image_path: Callable[[str], Path] | None = None

    def stem(self, name: str) -> tuple[str, str]:
        """The original's names: ``<basename of name>`` and ``<basename up to its first dot>``."""
        base = name.split("/")[-1]
        return base, base.split(".")[0]

    def gt_path(self, name: str) -> str:
        assert self.gt_dir is not None
        return os.path.join(self.gt_dir, self.gt_name(name))

    def write(self, label: np.ndarray, name: str) -> np.ndarray | None:
        """Save the trainId PNG, the colour PNG (and overlay); return this image's confusion matrix if gt."""
        base, stem = self.stem(name)
        _save_png(Image.fromarray(label), self.save_dir / base)
        _save_png(colorize_mask(label), self.save_dir / f"{stem}_color.png")
        if self.overlay:
            path = self.image_path(name) if self.image_path else cityscapes_image_path(self.data_dir, self.set, name)
            image = open_rgb(path)
            if image.size != (label.shape[1], label.shape[0]):
                image = image.resize((label.shape[1], label.shape[0]), Image.Resampling.BILINEAR)
            blend = Image.blend(image, Image.fromarray(colorize_rgb(label)), 0.5)
            _save_png(blend, self.save_dir / f"{stem}_overlay.png")
        if self.gt_dir is None:
            return None
        gt_path = self.gt_path(name)
        gt = read_label_png(gt_path, "ground truth")
        return evaluate_pair(gt, label, self.lut, self.label2train, self.num_classes, gt_path,
                             str(self.save_dir / base))


# --------------------------------------------------------------------------------------------------------------
# Checks before any work


def resolve_restore_from(args: argparse.Namespace) -> str:
    """``--restore-from``, defaulting to the released weights of ``--model`` (as the original)."""
    if args.restore_from is None:
        return RELEASED_WEIGHTS[args.model]
    if is_none_restore(args.restore_from):
        raise ValueError(f"--restore-from {args.restore_from!r}: evaluation needs trained weights "
                         "(a .pth file or URL)")
    return args.restore_from


def check_gt(args: argparse.Namespace, names: Sequence[str], outputs: Outputs) -> None:
    """--gt-dir: every gtFine file exists and has the --output-size; the devkit matches --num-classes."""
    gt_dir = args.gt_dir
    if not os.path.isdir(gt_dir):
        raise MetricsError(f"--gt-dir {gt_dir} is not a directory")
    paths = [outputs.gt_path(n) for n in names]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        listing = "\n".join("  " + p for p in missing[:20])
        more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise MetricsError(f"--gt-dir: {len(missing)} of {len(paths)} ground-truth files are missing:\n"
                           f"{listing}{more}")
    want = tuple(args.output_size)
    wrong = []
    for p in paths:
        size, bands, _ = read_png_header(p, "ground truth")
        if size != want or bands != 1:
            wrong.append(f"  {p} is {size[0]}x{size[1]}" + (f" with {bands} channels" if bands != 1 else ""))
    if wrong:
        raise MetricsError(
            f"--gt-dir: {len(wrong)} ground-truth files do not match --output-size {want[0]},{want[1]} "
            "(single-channel labelIds expected):\n" + "\n".join(wrong[:20])
        )


def load_weights(model: torch.nn.Module, args: argparse.Namespace, restore_from: str | Path) -> None:
    """Load the checkpoint ``restore_from`` (file or URL) into ``model`` strictly. Raises ``FileNotFoundError`` /
    ``ValueError`` (unreadable, truncated) or :class:`CheckpointMismatchError` (another model: the message names the
    file and the flags that shape the model); the model is unchanged then."""
    state = load_state_dict_from(restore_from, map_location="cpu")
    try:
        load_checkpoint(model, state, model_name=args.model, source=str(restore_from))
    except CheckpointMismatchError as exc:
        raise CheckpointMismatchError(
            f"{exc}\n(--restore-from {restore_from}; --model {args.model}"
            + (f", --resnet-layers {','.join(map(str, args.resnet_layers))}" if args.model != "DeeplabVGG" else "")
            + f", --num-classes {args.num_classes})",
            exc.missing, exc.unexpected, exc.shape_mismatches, exc.hint,
        ) from None


def new_model(args: argparse.Namespace) -> torch.nn.Module:
    return build_model(args.model, args.num_classes, layers=tuple(args.resnet_layers))


def build_and_load(args: argparse.Namespace, restore_from: str) -> torch.nn.Module:
    model = new_model(args)
    load_weights(model, args, restore_from)
    return model


# --------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class EvalSetup:
    """What both modes need, checked before any work: the images, where the outputs go, the classes, the device."""

    dataset: torch.utils.data.Dataset
    outputs: Outputs
    class_names: list[str]
    classes: int
    device: torch.device


def prepare(args: argparse.Namespace) -> EvalSetup:
    """Check the flags and the data (list, images, ground truth, --save) and build the dataset. Raises on bad input."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_workers is not None and args.num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0, got {args.num_workers}")
    if not 1 <= args.num_classes <= 256:
        raise ValueError(f"--num-classes must be in 1..256 (predictions are 8-bit PNGs), got {args.num_classes}")
    if args.json and not args.gt_dir:
        raise ValueError("--json needs --gt-dir (the IoU table is what it stores)")
    target = getattr(args, "target", "cityscapes")
    crosscity = target == "crosscity"
    city = getattr(args, "city", None)
    resolve_setting(None, target, city)  # --target crosscity needs --city, and --city needs it
    classes = getattr(args, "classes", None)
    if classes is not None and not args.gt_dir:
        raise ValueError("--classes needs --gt-dir (it selects the classes of the IoU table)")
    classes = classes if classes is not None else TARGETS[target].eval_classes
    device = select_device(args.cpu, args.gpu)
    save_dir = check_writable_dir(args.save, "--save")
    if args.json:
        check_writable_dir(Path(args.json).resolve().parent, "--json")

    # uint8 items, converted to the network's float32 input on the device (bitwise the original's); --data-cache
    items = dict(uint8=True, data_cache=getattr(args, "data_cache", None))
    if crosscity:  # the labelled Test split by default; every image of it unless a list is given
        cc_set = TARGETS["crosscity"].eval_set if args.set in ("val", "test") else args.set
        data_list = None if args.data_list == DATA_LIST_PATH else args.data_list
        dataset = CrossCityDataSet(args.data_dir, city, data_list, crop_size=tuple(args.input_size), mean=IMG_MEAN,
                                   scale=False, mirror=False, ignore_label=args.ignore_label, set=cc_set, **items)
    else:
        dataset = cityscapesDataSet(args.data_dir, args.data_list, crop_size=tuple(args.input_size), mean=IMG_MEAN,
                                    scale=False, mirror=False, ignore_label=args.ignore_label, set=args.set, **items)
    names = [f["name"] for f in dataset.files]
    outputs = Outputs(save_dir=save_dir, overlay=args.save_overlay, data_dir=args.data_dir, set=args.set,
                      num_classes=args.num_classes)
    if crosscity:
        image_dir = crosscity_image_dir(args.data_dir, city, cc_set)
        outputs.gt_name, outputs.image_path = crosscity_gt_name, lambda name: image_dir / name
    class_names: list[str] = []
    if args.gt_dir:
        info = load_info()
        if int(info["classes"]) != args.num_classes:
            raise ValueError(f"--gt-dir: the devkit has {info['classes']} classes but --num-classes is "
                             f"{args.num_classes}")
        outputs.gt_dir, outputs.label2train = args.gt_dir, info["label2train"]
        outputs.lut = label_mapping_lut(info["label2train"])
        class_names = list(info["label"])
        subset_indices(class_names, classes)  # raises MetricsError for a subset the devkit does not have
        check_gt(args, names, outputs)
    return EvalSetup(dataset, outputs, class_names, classes, device)


def make_loader(dataset: torch.utils.data.Dataset, args: argparse.Namespace, device: torch.device,
                persistent: bool = False) -> torch.utils.data.DataLoader:
    """Batches in list order; ``--num-workers`` processes (default: min(4, cores) on CUDA, 0 on the CPU)."""
    num_workers = args.num_workers
    if num_workers is None:
        num_workers = min(4, os.cpu_count() or 1) if device.type == "cuda" else 0
    return torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False,
                                       num_workers=num_workers, pin_memory=device.type == "cuda",
                                       persistent_workers=persistent and num_workers > 0)


def predict_all(model: torch.nn.Module, loader: torch.utils.data.DataLoader, outputs: Outputs,
                args: argparse.Namespace, device: torch.device, progress_lines: bool = True,
                desc: str | None = None) -> tuple[np.ndarray | None, int]:
    """Predict every image of ``loader`` and hand each label map to ``outputs.write`` (background threads: PNGs,
    confusion matrix). Returns (the summed confusion matrix [C, C] when ``outputs`` has a gt dir else None, the
    number of images). ``progress_lines``: the original's ``<i> processd`` line every 100 images."""
    output_hw = (args.output_size[1], args.output_size[0])
    hist = np.zeros((args.num_classes, args.num_classes), dtype=np.int64) if outputs.gt_dir else None
    writers = max(1, min(4, os.cpu_count() or 1))
    max_pending = 2 * max(writers, args.batch_size)
    pending: deque[Future] = deque()

    def collect(fut: Future) -> None:
        result = fut.result()
        if hist is not None and result is not None:
            hist[...] += result

    from tqdm import tqdm

    disable = args.no_progress or not sys.stderr.isatty()
    done = 0
    with ThreadPoolExecutor(max_workers=writers) as pool, \
            tqdm(total=len(loader.dataset), unit="img", file=sys.stderr, disable=disable, dynamic_ncols=True,
                 desc=desc) as bar:
        try:
            with torch.inference_mode():
                for batch in loader:
                    image, _, batch_names = batch
                    labels = predict_labels(model, to_network_input(image, device, mean=IMG_MEAN), output_hw,
                                            flip=args.flip, scales=args.scales, amp=args.amp)
                    labels = labels.cpu().numpy()
                    for label, name in zip(labels, batch_names):
                        if progress_lines and done % 100 == 0:
                            tqdm.write("%d processd" % done, file=sys.stdout)
                        pending.append(pool.submit(outputs.write, label, name))
                        done += 1
                    while len(pending) > max_pending:
                        collect(pending.popleft())
                    bar.update(len(batch_names))
            while pending:
                collect(pending.popleft())
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return hist, done


def report(args: argparse.Namespace, setup: EvalSetup, hist: np.ndarray, num_images: int, restore_from: str,
           pred_dir: Path) -> None:
    """compute_iou.py's per-class table on stdout, and the ``--json`` file."""
    if args.json:
        data = subset_result_dict(hist, setup.class_names, num_images, setup.classes, gt_dir=args.gt_dir,
                                  pred_dir=str(pred_dir), model=args.model, restore_from=str(restore_from),
                                  flip=args.flip, scales=list(args.scales), amp=args.amp)
        text = json.dumps(data, indent=1) + "\n"
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
    for line in subset_iou_lines(per_class_iu(hist), setup.class_names, setup.classes):
        print(line)


def evaluate(args: argparse.Namespace) -> np.ndarray | None:
    """Write the predictions; return the confusion matrix [C, C] with --gt-dir (else None). Raises on bad input."""
    restore_from = resolve_restore_from(args)
    setup = prepare(args)
    model = build_and_load(args, restore_from)
    model.eval().to(setup.device)
    loader = make_loader(setup.dataset, args, setup.device)
    start = time.perf_counter()
    hist, done = predict_all(model, loader, setup.outputs, args, setup.device)
    seconds = time.perf_counter() - start
    logger.info("%d images in %.1f s (%.2f images/s) -> %s", done, seconds, done / max(1e-9, seconds),
                setup.outputs.save_dir)
    if hist is not None:
        report(args, setup, hist, done, restore_from, setup.outputs.save_dir)
    return hist


# --------------------------------------------------------------------------------------------------------------
# A whole run: every snapshot of a training run's directory

#: The segmentation snapshots ``<prefix>_<iteration>.pth``: not ``_D1``/``_D2``, ``resume.pth``, ``<prefix>_best.pth``,
#: nor the training's temporary files (``.GTA5_<i>.pth.<random>.tmp``, renamed to the final name when complete).
SNAPSHOT_NAME = re.compile(r"(?P<prefix>[A-Za-z][A-Za-z0-9]*)_(?P<iteration>[0-9]+)\.pth")
RESULTS_FORMAT = "adaptsegnet-snapshot-results/1"
RESULTS_JSON = "snapshots.json"
RESULTS_CSV = "snapshots.csv"
#: Where a snapshot's label maps go during its pass; moved into SAVE/ when it is the best so far, else removed.
STAGING = ".label-maps.tmp"


class ResizedImages(torch.utils.data.Dataset):
    """The evaluation images decoded and resized once, for every snapshot of a run: the wrapped dataset's items
    (uint8 ``[H, W, 3]`` RGB, ``size``, ``name``), the first that fit ``budget_bytes`` (W*H*3 each) kept in memory
    by :meth:`fill`, the others read by the dataset again for every snapshot."""

    def __init__(self, dataset: torch.utils.data.Dataset, budget_bytes: int) -> None:
        self.dataset = dataset
        width, height = dataset.crop_size
        self.capacity = min(len(dataset), max(0, int(budget_bytes)) // (width * height * 3))
        self.cache: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def fill(self, threads: int) -> None:
        """Read and keep the first :attr:`capacity` items (``threads`` at once; decoding releases the GIL)."""
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            self.cache = dict(enumerate(pool.map(self.dataset.__getitem__, range(self.capacity))))
        logger.info("%d images decoded and resized in %.1f s, kept in memory (%.0f MiB); %d read again for every "
                    "snapshot (--image-cache-mb)", len(self.cache), time.perf_counter() - start,
                    sum(item[0].nbytes for item in self.cache.values()) / 2**20, len(self) - len(self.cache))

    def __getitem__(self, index: int):
        return self.cache[index] if index in self.cache else self.dataset[index]


@dataclass(frozen=True)
class Snapshot:
    """One ``<prefix>_<iteration>.pth`` file as listed (size and mtime_ns tell whether it changed since)."""

    path: Path
    prefix: str
    iteration: int
    size: int
    mtime_ns: int

    @property
    def name(self) -> str:
        return self.path.name

    def matches(self, record: dict | None) -> bool:
        """True when ``record`` (a result of snapshots.json) was computed from this very file."""
        return record is not None and (record.get("size"), record.get("mtime_ns")) == (self.size, self.mtime_ns)


def find_snapshots(directory: Path, prefix: str | None) -> list[Snapshot]:
    """The segmentation snapshots in ``directory`` (none when it does not exist yet), in iteration order.

    ``prefix`` None: any prefix, but a single one (two runs' snapshots in one folder raise ``ValueError``).
    """
    found = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = SNAPSHOT_NAME.fullmatch(entry.name)
        if not match or (prefix is not None and match["prefix"] != prefix):
            continue
        try:
            if not entry.is_file():
                continue
            st = entry.stat()
        except FileNotFoundError:  # removed since the listing
            continue
        found.append(Snapshot(Path(entry.path), match["prefix"], int(match["iteration"]), st.st_size,
                              st.st_mtime_ns))
    prefixes = sorted({s.prefix for s in found})
    if len(prefixes) > 1:
        raise ValueError(f"--restore-from {directory}: snapshots of several runs ("
                         + ", ".join(f"{p}_<iter>.pth" for p in prefixes) + ") and no args.json naming the run's "
                         "source, move each run's snapshots into a directory of its own")
    return sorted(found, key=lambda s: s.iteration)


@dataclass(frozen=True)
class RunPlan:
    """What the training run's ``args.json`` says: its snapshot prefix and the iteration of its last snapshot
    (None when unknown; ``problem`` says why when args.json exists but cannot be used)."""

    prefix: str | None = None
    last_iteration: int | None = None
    problem: str | None = None


def read_run_plan(directory: Path) -> RunPlan:
    """The training saves ``<prefix>_<i>.pth`` at every ``i % save_pred_every == 0`` below ``min(num_steps,
    num_steps_stop)`` and, at the end, ``<prefix>_<num_steps_stop>.pth`` when ``num_steps_stop <= num_steps``, else
    ``<prefix>_<num_steps>.pth``; the prefix is its source's (``gta5`` -> ``GTA5``, ``synthia`` -> ``SYNTHIA``...)."""
    path = directory / "args.json"
    if not path.is_file():
        return RunPlan()
    try:
        run = json.loads(path.read_text())
        prefix = SOURCES[run.get("source", "gta5")].snapshot_prefix
        num_steps, stop = int(run["num_steps"]), int(run["num_steps_stop"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return RunPlan(problem=f"{path} does not tell the run's snapshots ({type(exc).__name__}: {exc})")
    return RunPlan(prefix, stop if stop <= num_steps else num_steps)


def run_settings(args: argparse.Namespace, snapshot_dir: Path) -> dict:
    """Everything the numbers of snapshots.json depend on besides the snapshot files themselves."""
    def where(path: str | None) -> str | None:
        return None if path is None else str(Path(path).expanduser().resolve())

    return {"snapshot_dir": where(str(snapshot_dir)), "data_dir": where(args.data_dir),
            "data_list": where(args.data_list), "set": args.set, "gt_dir": where(args.gt_dir),
            "target": getattr(args, "target", "cityscapes"), "city": getattr(args, "city", None),
            "input_size": list(args.input_size), "output_size": list(args.output_size), "model": args.model,
            "resnet_layers": list(args.resnet_layers), "num_classes": args.num_classes,
            "classes": getattr(args, "classes", None), "flip": args.flip, "scales": list(args.scales),
            "amp": args.amp}


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def _compact_json(data: dict) -> str:
    """``json.dumps(indent=1)`` with every innermost list of numbers on one line (confusion matrix rows)."""
    text = json.dumps(data, indent=1)
    return re.sub(r"\[([^\[\]{}\"]*)\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


@dataclass
class RunResults:
    """The content of ``SAVE/snapshots.json``: the settings, one record per snapshot file, and which snapshot's
    label maps SAVE/ holds (``label_maps``: file, size, mtime_ns, overlay; None before any are written)."""

    settings: dict
    records: dict[str, dict]
    label_maps: dict | None = None

    @classmethod
    def load(cls, path: Path, settings: dict) -> "RunResults":
        """An earlier call's results when made with the same ``settings``; else none (the reason logged)."""
        if not path.is_file():
            return cls(settings, {})
        try:
            data = json.loads(path.read_text())
            if data.get("format") != RESULTS_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {RESULTS_FORMAT!r}")
            records = {r["file"]: r for r in data["snapshots"]}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("%s cannot be used (%s): evaluating every snapshot again", path, exc)
            return cls(settings, {})
        old = data.get("settings") or {}
        if old != settings:
            changed = [f"{k} {old.get(k)!r} -> {settings.get(k)!r}" for k in sorted(set(old) | set(settings))
                       if old.get(k) != settings.get(k)]
            logger.warning("%s was made with other settings (%s): not used, evaluating every snapshot again", path,
                           "; ".join(changed))
            return cls(settings, {})
        return cls(settings, records, data.get("label_maps"))

    def ordered(self) -> list[dict]:
        return sorted(self.records.values(), key=lambda r: (r["iteration"], r["file"]))

    def best(self) -> dict | None:
        """The record with the highest mIoU (the earliest on ties), None when there is none."""
        scored = [r for r in self.ordered() if r.get("mIoU") is not None]
        return max(scored, key=lambda r: r["mIoU"]) if scored else None

    def save(self, save_dir: Path) -> None:
        """Write snapshots.json and snapshots.csv atomically."""
        ordered, best = self.ordered(), self.best()
        data = {"format": RESULTS_FORMAT, "settings": self.settings,
                "best": None if best is None else {k: best[k] for k in ("file", "iteration", "mIoU")},
                "label_maps": self.label_maps, "snapshots": ordered}
        text = _compact_json(data)
        atomic_write(save_dir / RESULTS_JSON, lambda tmp: tmp.write_text(text))
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        names = list(ordered[0]["per_class_iou"]) if ordered else []
        writer.writerow(["iteration", "file", "mIoU", *names, "best"])
        for r in ordered:
            writer.writerow([r["iteration"], r["file"], _pct(r["mIoU"]),
                             *(_pct(r["per_class_iou"].get(n)) for n in names), int(r is best)])
        atomic_write(save_dir / RESULTS_CSV, lambda tmp: tmp.write_text(buf.getvalue()))


def run_table(records: Sequence[dict], skipped: dict[str, tuple[Snapshot, str]], best: dict | None) -> list[str]:
    """The lines printed at the end: iteration, file, mIoU (%), the best marked, skipped files listed."""
    rows = [(r["iteration"], r["file"], _pct(r["mIoU"]) or "n/a", "<- best" if r is best else "") for r in records]
    rows += [(s.iteration, s.name, "-", "skipped") for s, _ in skipped.values()]
    rows.sort()
    width = max([len("snapshot")] + [len(r[1]) for r in rows])
    lines = [f"{'iteration':>9}  {'snapshot':<{width}}  {'mIoU':>6}"]
    lines += [f"{it:>9}  {name:<{width}}  {miou:>6}  {mark}".rstrip() for it, name, miou, mark in rows]
    if best is not None:
        lines.append(f"best: {best['file']} (iteration {best['iteration']}), mIoU {_pct(best['mIoU'])}")
    return lines


def _error(message: str) -> None:
    print(f"evaluate_cityscapes.py: error: {message}", file=sys.stderr, flush=True)


def label_maps_of(record: dict, args: argparse.Namespace) -> dict:
    """What ``label_maps`` of snapshots.json says when SAVE/ holds the label maps of ``record``'s file."""
    return {"file": record["file"], "size": record["size"], "mtime_ns": record["mtime_ns"],
            "overlay": args.save_overlay}


def keep_if_best(staging: Path, record: dict, results: RunResults, args: argparse.Namespace) -> None:
    """After a snapshot's pass: its label maps (in ``staging``) replace SAVE/'s when it is the best so far (file by
    file, atomically), else they are dropped."""
    if results.best() is record:
        for path in staging.iterdir():
            os.replace(path, staging.parent / path.name)
        results.label_maps = label_maps_of(record, args)
    shutil.rmtree(staging, ignore_errors=True)


def write_best_label_maps(model: torch.nn.Module, loader: torch.utils.data.DataLoader, setup: EvalSetup,
                          args: argparse.Namespace, results: RunResults, snapshot_dir: Path) -> None:
    """Write the best snapshot's label maps into SAVE/ unless they are there already (they are, when it was
    evaluated in this call: see :func:`keep_if_best`); one more pass over the images."""
    best = results.best()
    if best is None or results.label_maps == label_maps_of(best, args):
        return
    path = snapshot_dir / best["file"]
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    if st is None or (st.st_size, st.st_mtime_ns) != (best["size"], best["mtime_ns"]):
        logger.warning("the best snapshot %s is gone or changed since it was evaluated: its label maps are not "
                       "written (run again to evaluate it again)", path)
        return
    load_weights(model, args, path)
    predict_all(model, loader, replace(setup.outputs, gt_dir=None), args, setup.device, progress_lines=False,
                desc=f"{best['file']} label maps")
    results.label_maps = label_maps_of(best, args)
    results.save(setup.outputs.save_dir)
    logger.info("label maps of the best snapshot %s -> %s", best["file"], setup.outputs.save_dir)


class RunEvaluator:
    """One model, one set of decoded images and one SAVE/snapshots.json for every snapshot of a run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.snapshot_dir = Path(args.restore_from).expanduser()
        self.setup = prepare(args)
        self.save_dir = self.setup.outputs.save_dir
        self.results = RunResults.load(self.save_dir / RESULTS_JSON, run_settings(args, self.snapshot_dir))
        self.model = new_model(args).eval().to(self.setup.device)
        self.images = ResizedImages(self.setup.dataset, int(args.image_cache_mb * 2**20))
        self.loader = make_loader(self.images, args, self.setup.device, persistent=True)
        #: file name -> (the file as it was when it failed, why); tried again only once it changes
        self.skipped: dict[str, tuple[Snapshot, str]] = {}

    def pending(self, snapshots: Sequence[Snapshot]) -> list[Snapshot]:
        """The snapshots without an up-to-date result (nor, with --save-all, their label maps), bad ones left out."""
        def done(s: Snapshot) -> bool:
            record = self.results.records.get(s.name)
            return s.matches(record) and (not self.args.save_all or record.get("label_maps_dir") == s.path.stem)

        return [s for s in snapshots if not done(s) and self.skipped.get(s.name, (None,))[0] != s]

    def evaluate(self, snap: Snapshot) -> None:
        """Load ``snap`` into the model, predict every image, record the IoUs (snapshots.json written at once);
        its label maps go to SAVE/<stem>/ (--save-all) or replace SAVE/'s when it is the best so far. A snapshot
        that cannot be loaded is reported on stderr and skipped."""
        args, results = self.args, self.results
        try:
            load_weights(self.model, args, snap.path)
        except (CheckpointMismatchError, ValueError, OSError) as exc:
            self.skipped[snap.name] = (snap, str(exc))
            if results.records.pop(snap.name, None) is not None:  # its record is of an earlier file
                results.save(self.save_dir)
            _error(f"skipped {snap.name}: {exc}")
            return
        self.skipped.pop(snap.name, None)
        if len(self.images.cache) < self.images.capacity:
            self.images.fill(threads=min(4, os.cpu_count() or 1))
        staging = self.save_dir / (snap.path.stem if args.save_all else STAGING)
        shutil.rmtree(staging, ignore_errors=True)  # an earlier pass's (or a killed call's) files
        start = time.perf_counter()
        hist, done = predict_all(self.model, self.loader, replace(self.setup.outputs, save_dir=staging), args,
                                 self.setup.device, progress_lines=False, desc=snap.name)
        record = {"file": snap.name, "iteration": snap.iteration, "size": snap.size, "mtime_ns": snap.mtime_ns,
                  **subset_result_dict(hist, self.setup.class_names, done, self.setup.classes),
                  "seconds": round(time.perf_counter() - start, 3)}
        results.records[snap.name] = record
        if args.save_all:
            record["label_maps_dir"] = snap.path.stem
        else:
            keep_if_best(staging, record, results, args)
        results.save(self.save_dir)
        best = results.best()
        print(f"{snap.name}: mIoU {_pct(record['mIoU']) or 'n/a'} ({done} images, {record['seconds']:.1f} s); best "
              f"so far {best['file'] if best else '-'} {_pct(best['mIoU']) if best else ''}".rstrip(), flush=True)

    def finish(self) -> int:
        """The best's label maps (if not there yet), its per-class table (and --json), the table of the run.
        Returns the exit status: 1 when a snapshot was skipped."""
        args, results, save_dir = self.args, self.results, self.save_dir
        best = results.best()
        if not args.save_all:
            write_best_label_maps(self.model, self.loader, self.setup, args, results, self.snapshot_dir)
        if best is not None:
            print(f"best snapshot {best['file']}:")
            report(args, self.setup, np.asarray(best["confusion_matrix"], dtype=np.int64), best["num_images"],
                   str(self.snapshot_dir / best["file"]), save_dir / (Path(best["file"]).stem if args.save_all else ""))
        for line in run_table(results.ordered(), self.skipped, best):
            print(line)
        if self.skipped:
            _error(f"{len(self.skipped)} snapshot(s) skipped: {', '.join(self.skipped)} (reasons above), fix or "
                   f"remove them and run again: the others' results are kept in {save_dir / RESULTS_JSON}")
            return 1
        return 0


def evaluate_run(args: argparse.Namespace) -> int:
    """``--restore-from SNAPSHOT_DIR``: evaluate every snapshot without a result in SAVE/snapshots.json, in
    iteration order; with ``--watch`` keep looking for new ones until the run's last snapshot (args.json) is there
    or none came for ``--watch-timeout`` s. Returns the exit status (1 when a snapshot was skipped). Raises on bad
    input (data, ground truth, --save, a folder without snapshots)."""
    run = RunEvaluator(args)
    waiting_since, problem = None, None
    while True:
        plan = read_run_plan(run.snapshot_dir)
        if plan.problem and plan.problem != problem:
            logger.warning("%s; every <prefix>_<iter>.pth counts", plan.problem)
        problem = plan.problem
        snapshots = find_snapshots(run.snapshot_dir, plan.prefix)
        todo = run.pending(snapshots)
        for snap in todo:
            run.evaluate(snap)
        if not args.watch or (plan.last_iteration is not None
                              and any(s.iteration == plan.last_iteration for s in snapshots)):
            break
        last = f"{plan.prefix}_{plan.last_iteration}.pth" if plan.last_iteration is not None else None
        if todo or waiting_since is None:
            waiting_since = time.monotonic()
            logger.info("--watch: waiting for new snapshots in %s (%s; giving up after %g s without one)",
                        run.snapshot_dir, f"the run's last is {last}" if last else "no args.json names the run's last",
                        args.watch_timeout)
        elif time.monotonic() - waiting_since >= args.watch_timeout:
            logger.warning("--watch: no new snapshot in %s for %g s%s: stopping", run.snapshot_dir,
                           args.watch_timeout, f" (the run's last would be {last})" if last else "")
            break
        time.sleep(args.watch_interval)
    if not run.results.records and not run.skipped:
        what = f"{plan.prefix}_<iteration>.pth" if plan.prefix else "<prefix>_<iteration>.pth"
        raise ValueError(f"--restore-from {run.snapshot_dir}: no snapshot {what} in it"
                         + (f" after waiting {args.watch_timeout:g} s" if args.watch else "")
                         + ", pass the --snapshot-dir of a training run (or a single .pth file)")
    return run.finish()


def is_run_mode(args: argparse.Namespace) -> bool:
    """``--restore-from`` names a directory (or, with --watch, a path that is not a file: a run about to start)."""
    if args.restore_from is None or is_none_restore(args.restore_from):
        return False
    path = Path(args.restore_from).expanduser()
    return path.is_dir() or (args.watch and not path.exists())


def usage_error(args: argparse.Namespace) -> str | None:
    """Flags that do not go together (exit status 2), or None."""
    if not is_run_mode(args):
        for flag, given in (("--watch", args.watch), ("--save-all", args.save_all)):
            if given:
                return (f"{flag} needs --restore-from SNAPSHOT_DIR, a training run's snapshot directory (got "
                        f"{args.restore_from or 'no --restore-from'})")
        return None
    if not args.gt_dir:
        return (f"--restore-from {args.restore_from} is a snapshot directory: comparing its snapshots needs --gt-dir, "
                "pass the gtFine directory of --set (e.g. --gt-dir ./data/Cityscapes/data/gtFine/val)")
    for flag, value, ok in (("--image-cache-mb", args.image_cache_mb, ">= 0"),
                            ("--watch-timeout", args.watch_timeout, ">= 0"),
                            ("--watch-interval", args.watch_interval, "> 0")):
        if not math.isfinite(value) or value < 0 or (ok == "> 0" and value == 0):
            return f"{flag} must be a number {ok}, got {value:g}"
    return None


def main(args: argparse.Namespace) -> int:
    problem = usage_error(args)
    if problem:
        _error(problem)
        return 2
    try:
        if is_run_mode(args):
            return evaluate_run(args)
        evaluate(args)
    except (CheckpointMismatchError, DatasetError, MetricsError, ValueError, OSError) as exc:
        _error(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main(get_args_parser().parse_args()))
