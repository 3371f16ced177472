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
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
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
from dataset.settings import TARGETS, resolve_setting
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
                             "--model: " + ", ".join(f"{k}: {v}" for k, v in RELEASED_WEIGHTS.items()) + ")")
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


def build_and_load(args: argparse.Namespace, restore_from: str) -> torch.nn.Module:
    model = build_model(args.model, args.num_classes, layers=tuple(args.resnet_layers))
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
    return model


# --------------------------------------------------------------------------------------------------------------
# The run


def evaluate(args: argparse.Namespace) -> np.ndarray | None:
    """Write the predictions; return the confusion matrix [C, C] with --gt-dir (else None). Raises on bad input."""
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
    restore_from = resolve_restore_from(args)
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

    model = build_and_load(args, restore_from)
    model.eval().to(device)

    num_workers = args.num_workers
    if num_workers is None:
        num_workers = min(4, os.cpu_count() or 1) if device.type == "cuda" else 0
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False,
                                         num_workers=num_workers, pin_memory=device.type == "cuda")
    output_hw = (args.output_size[1], args.output_size[0])
    hist = np.zeros((args.num_classes, args.num_classes), dtype=np.int64) if args.gt_dir else None
    writers = max(1, min(4, os.cpu_count() or 1))
    max_pending = 2 * max(writers, args.batch_size)
    pending: deque[Future] = deque()

    def collect(fut: Future) -> None:
        result = fut.result()
        if hist is not None and result is not None:
            hist[...] += result

    from tqdm import tqdm

    disable = args.no_progress or not sys.stderr.isatty()
    start = time.perf_counter()
    done = 0
    with ThreadPoolExecutor(max_workers=writers) as pool, \
            tqdm(total=len(dataset), unit="img", file=sys.stderr, disable=disable, dynamic_ncols=True) as bar:
        try:
            with torch.inference_mode():
                for batch in loader:
                    image, _, batch_names = batch
                    labels = predict_labels(model, to_network_input(image, device, mean=IMG_MEAN), output_hw,
                                            flip=args.flip, scales=args.scales, amp=args.amp)
                    labels = labels.cpu().numpy()
                    for label, name in zip(labels, batch_names):
                        if done % 100 == 0:
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
    logger.info("%d images in %.1f s (%.2f images/s) -> %s", done, time.perf_counter() - start,
                done / max(1e-9, time.perf_counter() - start), save_dir)
    if hist is not None:
        if args.json:
            data = subset_result_dict(hist, class_names, done, classes, gt_dir=args.gt_dir, pred_dir=str(save_dir),
                                      model=args.model, restore_from=str(restore_from), flip=args.flip,
                                      scales=list(args.scales), amp=args.amp)
            text = json.dumps(data, indent=1) + "\n"
            atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
        for line in subset_iou_lines(per_class_iu(hist), class_names, classes):
            print(line)
    return hist


def main(args: argparse.Namespace) -> int:
    try:
        evaluate(args)
    except (CheckpointMismatchError, DatasetError, MetricsError, ValueError, OSError) as exc:
        print(f"evaluate_cityscapes.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main(get_args_parser().parse_args()))
