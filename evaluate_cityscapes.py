"""Predict Cityscapes label maps with a trained AdaptSegNet model (the original's evaluate_cityscapes.py).

    python evaluate_cityscapes.py --restore-from ./model/GTA2Cityscapes_multi-ed35151c.pth

The defaults give the original's label maps pixel for pixel: each image of ``--data-list`` resized to 1024x512
(bicubic), BGR minus the mean; the main output upsampled bilinearly (``align_corners=True``) to 1024x2048 in
float32; the argmax (first maximum on ties) saved as an 8-bit trainId PNG ``SAVE/<basename>`` and a palette PNG
``SAVE/<stem>_color.png``. Beyond it (off or neutral by default; docs/evaluation.md): batches, PNGs written by
background threads, ``--gt-dir`` (compute_iou.py's table in the same pass), test-time augmentation, ``--amp``,
overlays, class subsets, and a whole training run (``--restore-from SNAPSHOT_DIR``, ``--watch``).

Everything is checked before the first prediction, and nothing is created before that. Errors: one
``evaluate_cityscapes.py: error: ...`` message on stderr, exit status 1 (2 for flags that cannot work).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
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

import utils.files
from dataset.checks import DatasetError, format_paths, open_rgb
from dataset.cityscapes_dataset import cityscapes_image_path, cityscapesDataSet, gtfine_name
from dataset.crosscity_dataset import CITIES, CrossCityDataSet, crosscity_gt_name, crosscity_image_dir
from dataset.labels import CLASS_NAMES, IMG_MEAN, colorize_mask, colorize_rgb, load_info
from dataset.transforms import to_network_input
from dataset.settings import TARGETS, resolve_setting
from model import MODEL_NAMES, build_model, model_outputs
from model.resnet import RESNET101_LAYERS
from utils.cli import ArgumentParser, UsageError, fail, parse_layers, parse_scales, parse_size, repo_path
from utils.device import select_device
from utils.distributed import all_reduce_sum_, get_rank, get_world_size
from utils.files import atomic_write, check_writable_dir, human_bytes
from utils.metrics import (CLASS_SUBSETS, MAX_LISTED, MetricsError, evaluate_pair, fast_hist, ignore_other_classes,
                           label_mapping_lut, mean_iu, per_class_iu, read_label_png, read_png_header, subset_indices,
                           subset_iou_lines, subset_result_dict)
from utils.runs import (RESULTS_JSON, ResizedImages, RunResults, Snapshot, find_snapshots, pct, read_run_args,
                        read_run_plan, run_settings, run_table)
from utils.weights import (RELEASED_WEIGHTS, CheckpointMismatchError, is_none_restore, is_url, load_checkpoint,
                           load_state_dict_from)

logger = logging.getLogger("evaluate_cityscapes")

PROG = "evaluate_cityscapes.py"
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
#: --model, --resnet-layers and --num-classes left out: the training run's (its args.json), else these.
MODEL_FLAGS = {"model": MODEL, "resnet_layers": RESNET101_LAYERS, "num_classes": NUM_CLASSES}
#: A whole run: default memory for cached images (MiB), --watch's give-up time and poll interval (seconds).
IMAGE_CACHE_MB = 1024.0
WATCH_TIMEOUT = 3600.0
WATCH_INTERVAL = 30.0
#: Rough estimates of the PNG bytes per output pixel, for the free-space warning: a label map (trainIds or
#: colours; large flat regions, compressed 20x or more) and an overlay (a photo).
PNG_BYTES_PER_PIXEL = {"label": 0.05, "overlay": 2.0}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The original's flags (names and defaults unchanged), then the ones beyond it in their own group."""
    parser = ArgumentParser(prog=PROG, add_help=add_help,
                            description="Predict label maps with a trained AdaptSegNet model (DeepLab-v2) on "
                                        "Cityscapes (or Cross-City), and score them with --gt-dir.")
    from_run = "the training run's, from the args.json beside --restore-from"
    add = parser.add_argument
    add("--model", choices=MODEL_NAMES,
        help=f"segmentation network: DeeplabMulti (= DeepLab, the training script's name), DeeplabVGG or Oracle "
             f"(default: {from_run}, else {MODEL})")
    add("--data-dir", default=DATA_DIRECTORY, help="Cityscapes folder holding leftImg8bit/")
    add("--data-list", default=DATA_LIST_PATH, help="file listing the images to predict, one per line")
    add("--ignore-label", type=int, default=IGNORE_LABEL,
        help="accepted for compatibility with the original; no effect (the scores count only ground-truth ids "
             "of the classes)")
    add("--num-classes", type=int, help=f"classes the network predicts (default: {from_run}, else {NUM_CLASSES})")
    add("--restore-from",
        help="trained weights: a file or URL (default: the released model of --model, "
             + ", ".join(f"{k}: {v}" for k, v in RELEASED_WEIGHTS.items()) + "); or a training run's snapshot "
             "directory: evaluate every <prefix>_<iter>.pth in it (needs --gt-dir; see --watch, --save-all)")
    add("--gpu", type=int, help="CUDA device to run on (default 0; an error on a machine without it: pass --cpu)")
    add("--set", default=SET, help="split folder of the images, --data-dir/leftImg8bit/<set>/")
    add("--save", default=SAVE_PATH, help="folder the predictions are written to (created at the first file)")
    add("--cpu", action="store_true", help="run on the CPU")

    beyond = parser.add_argument_group("beyond the original")
    add = beyond.add_argument
    add("--batch-size", type=int, default=1, help="images per forward pass")
    add("--num-workers", type=int,
        help="processes decoding and resizing images (default: min(4, cores) on CUDA; 0 on the CPU, where they "
             "would only take cores from the network)")
    add("--gt-dir", help="gtFine folder of --set (e.g. ./data/Cityscapes/data/gtFine/val): also print "
                         "compute_iou.py's per-class IoU table, computed in the same pass")
    add("--json", metavar="OUT.json", help="with --gt-dir: also write the IoUs, images and confusion matrix")
    add("--flip", action="store_true", help="test-time augmentation: also predict the mirrored image")
    add("--scales", type=parse_scales, default=(1.0,),
        help="test-time augmentation: input scales, e.g. 1.0,0.75,0.5 (softmax averaged; 1.0 alone is off)")
    add("--amp", action="store_true", help="mixed precision (float16 on CUDA, bfloat16 on the CPU): some pixels differ")
    add("--save-overlay", action="store_true",
        help="also save SAVE/<stem>_overlay.png: the image blended with the colour prediction")
    add("--input-size", type=parse_size, default=parse_size(INPUT_SIZE), metavar="W,H",
        help="size the images are resized to before the network")
    add("--output-size", type=parse_size, default=parse_size(OUTPUT_SIZE), metavar="W,H",
        help="size of the saved predictions (Cityscapes' resolution; with --gt-dir, the ground truth's)")
    add("--resnet-layers", type=parse_layers, metavar="L1,L2,L3,L4",
        help=f"blocks per ResNet stage (default: {from_run}, else 3,4,23,3 = ResNet-101)")
    add("--no-progress", action="store_true", help="no progress bar (it is off when stderr is not a terminal)")
    add("--classes", type=int, choices=CLASS_SUBSETS,
        help="with --gt-dir: report this class subset, 19 (all), 16 (without terrain, truck, train) or 13 (16 "
             "without wall, fence, pole) (default: 13 with --target crosscity, else 19)")
    add("--ignore-other-classes", action="store_true",
        help="with --gt-dir and a class subset: ignore the ground-truth pixels of the classes outside it instead of "
             "counting them (the protocol of MaxSquareLoss's and ETM's code; docs/evaluation.md)")
    add("--target", default="cityscapes", choices=("cityscapes", "crosscity"),
        help="cityscapes, or crosscity: --data-dir is the NTHU_Datasets folder, --city the city, the images "
             "<City>/Images/Test/* (all of them unless --data-list is given), --gt-dir <City>/Labels/Test")
    add("--city", choices=CITIES, help="the Cross-City city of --target crosscity")
    add("--data-cache", metavar="DIR",
        help="read the images already resized from this cache (tools/prepare_cache.py --target ... --set val "
             "--skip-source, docs/data.md); the same predictions")
    add("--save-all", action="store_true", help="with --restore-from SNAPSHOT_DIR: every snapshot's label maps, to "
                                                "SAVE/<snapshot stem>/ (without it: the best's, into SAVE/)")
    add("--image-cache-mb", type=float, default=IMAGE_CACHE_MB,
        help="with --restore-from SNAPSHOT_DIR: MiB for the resized images kept between snapshots (1.5 MiB each at "
             "1024x512; the others are decoded again for every snapshot)")
    add("--watch", action="store_true", help="with --restore-from SNAPSHOT_DIR: evaluate new snapshots while a "
                                             "training writes them, until its last one (from its args.json)")
    add("--watch-timeout", type=float, default=WATCH_TIMEOUT, help="with --watch: seconds without a new snapshot "
                                                                   "before giving up")
    add("--watch-interval", type=float, default=WATCH_INTERVAL, help="with --watch: seconds between looks")
    return parser


# --------------------------------------------------------------------------------------------------------------
# The flags


#: How a model flag's value in args.json is checked and converted (as on the command line; ValueError if unusable).
RUN_VALUE = {"model": lambda value: MODEL_NAMES[MODEL_NAMES.index(value)], "num_classes": int,
             "resnet_layers": lambda value: parse_layers(",".join(map(str, value)))}


def fill_model_flags(args: argparse.Namespace) -> None:
    """--model, --resnet-layers and --num-classes not given: the training run's, from the ``args.json`` beside the
    snapshot (or in the snapshot directory), else the defaults; one log line says what was taken. ``--model
    DeepLab`` (the training script's name) becomes DeeplabMulti. Idempotent."""
    run, where, taken = {}, None, []
    if not is_none_restore(args.restore_from) and not is_url(args.restore_from):
        path = Path(args.restore_from).expanduser()
        where = path if is_run_mode(args) else path.parent
        try:
            run = read_run_args(where)
        except ValueError as exc:
            logger.warning("%s: the model flags take their defaults", exc)
    for dest, default in MODEL_FLAGS.items():
        value = getattr(args, dest)
        if value is None and run.get(dest) is not None:
            try:
                value = RUN_VALUE[dest](run[dest])
                shown = ",".join(map(str, value)) if dest == "resnet_layers" else value
                taken.append(f"--{dest.replace('_', '-')} {shown}")
            except (ValueError, TypeError, argparse.ArgumentTypeError):
                logger.warning("%s: %s %r is not usable: using the default", where / "args.json", dest, run[dest])
        setattr(args, dest, default if value is None else value)
    if taken:
        logger.info("from the training run's %s: %s", where / "args.json", ", ".join(taken))
    args.model = MODEL if args.model == "DeepLab" else args.model


def check_usage(args: argparse.Namespace) -> None:
    """Raise :class:`UsageError` for flag values that cannot work, or flags that do not go together (exit 2)."""
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--num-workers", args.num_workers, 0),
                               ("--num-classes", args.num_classes, 1)):
        if value is not None and value < least:
            raise UsageError(f"{flag} must be at least {least}, got {value}")
    if args.num_classes > 256:
        raise UsageError(f"--num-classes must be at most 256 (predictions are 8-bit PNGs), got {args.num_classes}")
    try:
        resolve_setting(None, args.target, args.city)  # --target crosscity needs --city, and --city needs it
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for flag, given in (("--json", args.json), ("--classes", args.classes),
                        ("--ignore-other-classes", args.ignore_other_classes)):
        if given and not args.gt_dir:
            raise UsageError(f"{flag} needs --gt-dir, the ground truth it scores against")
    if args.ignore_other_classes and eval_classes(args) == max(CLASS_SUBSETS):
        raise UsageError("--ignore-other-classes needs a class subset, pass --classes 16 or 13")
    if not is_run_mode(args):
        for flag, given in (("--watch", args.watch), ("--save-all", args.save_all)):
            if given:
                raise UsageError(f"{flag} needs --restore-from SNAPSHOT_DIR, a training run's snapshot directory "
                                 f"(got {args.restore_from or 'no --restore-from'})")
        return
    if not args.gt_dir:
        raise UsageError(f"--restore-from {args.restore_from} is a snapshot directory: comparing its snapshots "
                         "needs --gt-dir, pass the gtFine directory of --set (e.g. --gt-dir "
                         "./data/Cityscapes/data/gtFine/val)")
    for flag, value, ok in (("--image-cache-mb", args.image_cache_mb, ">= 0"),
                            ("--watch-timeout", args.watch_timeout, ">= 0"),
                            ("--watch-interval", args.watch_interval, "> 0")):
        if not math.isfinite(value) or value < 0 or (ok == "> 0" and value == 0):
            raise UsageError(f"{flag} must be a number {ok}, got {value:g}")


def resolve_args(args: argparse.Namespace) -> torch.device:
    """Fill the defaults that depend on the run (model flags, the list found in the repository), check the flags
    and pick the device, before anything is read or built. Raises :class:`UsageError`."""
    fill_model_flags(args)
    if not (args.target == "crosscity" and args.data_list == DATA_LIST_PATH):  # Cross-City: every test image
        args.data_list = repo_path(args.data_list, "--data-list")
    check_usage(args)
    return select_device(args.cpu, args.gpu)


def is_run_mode(args: argparse.Namespace) -> bool:
    """``--restore-from`` names a directory (or, with --watch, a path that is not a file: a run about to start)."""
    if is_none_restore(args.restore_from) or is_url(args.restore_from):
        return False
    path = Path(args.restore_from).expanduser()
    return path.is_dir() or (args.watch and not path.exists())


def eval_classes(args: argparse.Namespace) -> int:
    """The reported class subset: --classes, else the target's (13 for Cross-City, 19 for Cityscapes)."""
    return args.classes if args.classes is not None else TARGETS[args.target].eval_classes


def resolve_restore_from(args: argparse.Namespace) -> str:
    """``--restore-from``, defaulting to the released weights of ``--model`` (as the original)."""
    if args.restore_from is None:
        return RELEASED_WEIGHTS.get(args.model) or RELEASED_WEIGHTS[MODEL]  # (DeepLab or None: DeeplabMulti)
    if is_none_restore(args.restore_from):
        raise ValueError(f"--restore-from {args.restore_from!r}: evaluation needs trained weights, pass a .pth "
                         "file or URL")
    return args.restore_from


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
    views = [(s, mirrored) for s in scales for mirrored in ((False, True) if flip else (False,))]
    probs = 0
    for s, mirrored in views:
        x = images if s == 1.0 else F.interpolate(images, size=(max(1, round(s * h)), max(1, round(s * w))),
                                                  mode="bilinear", align_corners=True)
        logits = _forward(model, x.flip(-1) if mirrored else x, amp)
        logits = logits.flip(-1) if mirrored else logits
        probs = probs + F.softmax(F.interpolate(logits, size=output_hw, mode="bilinear", align_corners=True), dim=1)
    return (probs / len(views)).max(dim=1).indices.to(torch.uint8)


def validation_miou(model: torch.nn.Module, dataset, num_classes: int, classes: int, device: torch.device,
                    memory_format: torch.memory_format = torch.preserve_format, num_workers: int = 0) -> float:
    """The mIoU (%) of ``model`` on a labelled ``dataset`` (items ``(image, label at native size, size, name)``)
    over the class subset ``classes``, as this script computes it (the main output upsampled to each label's size,
    float32). For validation during training: under ``torchrun`` the ranks share the images and add up their
    confusion matrices; the model is evaluated in eval mode without gradients (BatchNorm uses its running statistics
    and keeps them) and put back in train mode; no random number is drawn (the loader has its own generator)."""
    shard = torch.utils.data.Subset(dataset, range(get_rank(), len(dataset), get_world_size()))
    loader = torch.utils.data.DataLoader(shard, batch_size=1, num_workers=num_workers,
                                         generator=torch.Generator().manual_seed(0))
    hist = np.zeros((num_classes, num_classes), dtype=np.int64)
    model.eval()
    try:
        with torch.no_grad():
            for image, label, _, _ in loader:
                pred = predict_labels(model, to_network_input(image, device, memory_format), tuple(label.shape[-2:]))
                hist += fast_hist(label.numpy(), pred.cpu().numpy(), num_classes)
    finally:
        model.train()
    hist = all_reduce_sum_(torch.from_numpy(hist).to(device)).cpu().numpy()
    return 100 * mean_iu(per_class_iu(hist)[subset_indices(CLASS_NAMES, classes)])


def _save_png(img: Image.Image, path: Path, kind: str = "label") -> None:
    """Write a PNG atomically (a full disk: :class:`utils.files.WriteError`, its size estimated for the message)."""
    needed = int(img.width * img.height * PNG_BYTES_PER_PIXEL[kind]) + 1
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"), needed=needed)


@dataclass
class Outputs:
    """Where and what to write for each image; also the ground truth for ``--gt-dir``."""

    save_dir: Path
    overlay: bool
    #: list entry -> image path (for overlays), and -> ground-truth file name under gt_dir (Cityscapes' or Cross-City's)
    image_path: Callable[[str], Path]
    gt_name: Callable[[str], str]
    #: the reported class subset (19, 16, 13), and with --ignore-other-classes the ground truth outside it ignored
    classes: int = 19
    ignore_outside: bool = False
    gt_dir: str | None = None
    lut: np.ndarray | None = None
    label2train: list | None = None
    class_names: Sequence[str] = ()

    def gt_path(self, name: str) -> str:
        assert self.gt_dir is not None
        return os.path.join(self.gt_dir, self.gt_name(name))

    def write(self, label: np.ndarray, name: str) -> np.ndarray | None:
        """Save the trainId PNG as ``<basename of name>``, the colour PNG (and overlay) as ``<basename up to its
        first dot>_color.png`` (the original's names); return this image's confusion matrix with a gt dir."""
        base = name.split("/")[-1]
        stem = base.split(".")[0]
        _save_png(Image.fromarray(label), self.save_dir / base)
        _save_png(colorize_mask(label), self.save_dir / f"{stem}_color.png")
        if self.overlay:
            image = open_rgb(self.image_path(name))
            if image.size != (label.shape[1], label.shape[0]):
                image = image.resize((label.shape[1], label.shape[0]), Image.Resampling.BILINEAR)
            blend = Image.blend(image, Image.fromarray(colorize_rgb(label)), 0.5)
            _save_png(blend, self.save_dir / f"{stem}_overlay.png", "overlay")
        if self.gt_dir is None:
            return None
        gt_path = self.gt_path(name)
        hist = evaluate_pair(read_label_png(gt_path, "ground truth"), label, self.lut, self.label2train,
                             len(self.class_names), gt_path, str(self.save_dir / base))
        return ignore_other_classes(hist, self.class_names, self.classes) if self.ignore_outside else hist


# --------------------------------------------------------------------------------------------------------------
# Checks and set-up before any work


def check_gt(args: argparse.Namespace, names: Sequence[str], outputs: Outputs) -> None:
    """--gt-dir: every ground-truth file exists and has the --output-size."""
    if not os.path.isdir(args.gt_dir):
        raise MetricsError(f"--gt-dir {args.gt_dir} is not a directory, pass the gtFine folder of --set")
    paths = [outputs.gt_path(n) for n in names]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise MetricsError(f"--gt-dir: {len(missing)} of {len(paths)} ground-truth files are missing:\n"
                           + format_paths(missing, MAX_LISTED))
    want = tuple(args.output_size)
    headers = [(p, *read_png_header(p, "ground truth")[:2]) for p in paths]
    wrong = [f"{p} is {w}x{h}" + (f" with {bands} channels" if bands != 1 else "")
             for p, (w, h), bands in headers if (w, h) != want or bands != 1]
    if wrong:
        raise MetricsError(f"--gt-dir: {len(wrong)} ground-truth files do not match --output-size {want[0]},{want[1]} "
                           "(single-channel labelIds expected):\n" + format_paths(wrong, MAX_LISTED))


def load_weights(model: torch.nn.Module, args: argparse.Namespace, restore_from: str | Path) -> None:
    """Load the checkpoint ``restore_from`` (file or URL) into ``model`` strictly. Raises ``FileNotFoundError`` /
    ``ValueError`` (unreadable, truncated) or :class:`CheckpointMismatchError` (another model: the message names the
    file and the flags that shape the model); the model is unchanged then."""
    state = load_state_dict_from(restore_from, map_location="cpu")
    try:
        load_checkpoint(model, state, model_name=args.model, source=str(restore_from))
    except CheckpointMismatchError as exc:
        layers = f", --resnet-layers {','.join(map(str, args.resnet_layers))}" if args.model != "DeeplabVGG" else ""
        raise CheckpointMismatchError(
            f"{exc}\n(--restore-from {restore_from}; --model {args.model}{layers}, --num-classes {args.num_classes})",
            exc.missing, exc.unexpected, exc.shape_mismatches, exc.hint,
        ) from None


def new_model(args: argparse.Namespace) -> torch.nn.Module:
    return build_model(args.model, args.num_classes, layers=tuple(args.resnet_layers))


def prepare(args: argparse.Namespace) -> tuple[torch.utils.data.Dataset, Outputs]:
    """Check the data (list, images, ground truth) and --save / --json; build the dataset and say where and what
    the outputs are. Creates nothing. Raises on bad input."""
    save_dir = check_writable_dir(args.save, "--save", create=False)
    if args.json:
        check_writable_dir(Path(args.json).absolute().parent, "--json", create=False)
    # uint8 items, converted to the network's float32 input on the device (bitwise the original's); --data-cache
    common = dict(crop_size=tuple(args.input_size), mean=IMG_MEAN, scale=False, mirror=False,
                  ignore_label=args.ignore_label, uint8=True, data_cache=args.data_cache)
    if args.target == "crosscity":  # the labelled Test split by default; every image of it unless a list is given
        cc_set = TARGETS["crosscity"].eval_set if args.set in ("val", "test") else args.set
        data_list = None if args.data_list == DATA_LIST_PATH else args.data_list
        dataset = CrossCityDataSet(args.data_dir, args.city, data_list, set=cc_set, **common)
        image_dir = crosscity_image_dir(args.data_dir, args.city, cc_set)
        image_path, gt_name = (lambda name: image_dir / name), crosscity_gt_name
    else:
        dataset = cityscapesDataSet(args.data_dir, args.data_list, set=args.set, **common)
        image_path, gt_name = (lambda name: cityscapes_image_path(args.data_dir, args.set, name)), gtfine_name
    outputs = Outputs(save_dir, args.save_overlay, image_path, gt_name, eval_classes(args), args.ignore_other_classes)
    if args.gt_dir:
        info = load_info()
        if int(info["classes"]) != args.num_classes:
            raise ValueError(f"--gt-dir: the devkit has {info['classes']} classes but --num-classes is "
                             f"{args.num_classes}")
        outputs = replace(outputs, gt_dir=args.gt_dir, label2train=info["label2train"], class_names=list(info["label"]),
                          lut=label_mapping_lut(info["label2train"]))
        subset_indices(outputs.class_names, outputs.classes)  # MetricsError for a subset the devkit does not have
        check_gt(args, [f["name"] for f in dataset.files], outputs)
    return dataset, outputs


def warn_if_short_of_space(save_dir: Path, num_images: int, args: argparse.Namespace, sets: int = 1) -> None:
    """Log a warning when the disk of ``save_dir`` cannot hold ``sets`` x ``num_images`` images' PNGs (a rough
    estimate from --output-size, :data:`PNG_BYTES_PER_PIXEL`). A warning, not an error: disks get freed."""
    per_pixel = 2 * PNG_BYTES_PER_PIXEL["label"] + (PNG_BYTES_PER_PIXEL["overlay"] if args.save_overlay else 0)
    needed = int(sets * num_images * args.output_size[0] * args.output_size[1] * per_pixel)
    free = utils.files.free_bytes(save_dir)
    if free < needed:
        logger.warning("--save %s: %s free, but the predictions may need about %s (%d images at %dx%d); free space "
                       "or choose another --save before the run fills the disk", save_dir, human_bytes(free),
                       human_bytes(needed), sets * num_images, *args.output_size)


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
    number of images). ``progress_lines``: the original's ``<i> processd`` line every 100 images. The first
    failed write (a full disk) stops the run: the work not started is cancelled and its error raised."""
    from tqdm import tqdm

    output_hw = (args.output_size[1], args.output_size[0])
    hist = np.zeros((args.num_classes, args.num_classes), dtype=np.int64) if outputs.gt_dir else None
    writers = max(1, min(4, os.cpu_count() or 1))
    pending: deque[Future] = deque()

    def collect(fut: Future) -> None:
        result = fut.result()
        if hist is not None and result is not None:
            hist[...] += result

    done = 0
    pool = ThreadPoolExecutor(max_workers=writers)
    bar = tqdm(total=len(loader.dataset), unit="img", file=sys.stderr, dynamic_ncols=True, desc=desc,
               disable=args.no_progress or not sys.stderr.isatty())
    try:
        with torch.inference_mode():
            for image, _, batch_names in loader:
                image = to_network_input(image, device, mean=IMG_MEAN)  # the batch goes to the device here
                labels = predict_labels(model, image, output_hw, args.flip, args.scales, args.amp).cpu().numpy()
                for label, name in zip(labels, batch_names):
                    if progress_lines and done % 100 == 0:
                        tqdm.write("%d processd" % done, file=sys.stdout)
                    pending.append(pool.submit(outputs.write, label, name))
                    done += 1
                while len(pending) > 2 * max(writers, args.batch_size):
                    collect(pending.popleft())
                bar.update(len(batch_names))
        while pending:
            collect(pending.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return hist, done


def report(args: argparse.Namespace, outputs: Outputs, hist: np.ndarray, num_images: int, restore_from: str,
           pred_dir: Path) -> None:
    """compute_iou.py's per-class table on stdout, and the ``--json`` file."""
    names = outputs.class_names
    if args.json:
        extra = {"ignore_other_classes": True} if args.ignore_other_classes else {}
        data = subset_result_dict(hist, names, num_images, outputs.classes, gt_dir=args.gt_dir,
                                  pred_dir=str(pred_dir), model=args.model, restore_from=str(restore_from),
                                  flip=args.flip, scales=list(args.scales), amp=args.amp, **extra)
        text = json.dumps(data, indent=1) + "\n"
        atomic_write(args.json, lambda tmp: tmp.write_text(text), needed=len(text))
    for line in subset_iou_lines(per_class_iu(hist), names, outputs.classes):
        print(line)


def evaluate(args: argparse.Namespace) -> np.ndarray | None:
    """Predict with one checkpoint and write the label maps; return the confusion matrix [C, C] with --gt-dir (else
    None). Raises :class:`UsageError` for flags that cannot work, other ``ValueError`` / ``OSError`` on bad input."""
    device = resolve_args(args)
    restore_from = resolve_restore_from(args)
    dataset, outputs = prepare(args)
    model = new_model(args)
    load_weights(model, args, restore_from)
    model.eval().to(device)
    warn_if_short_of_space(outputs.save_dir, len(dataset), args)
    start = time.perf_counter()
    hist, done = predict_all(model, make_loader(dataset, args, device), outputs, args, device)
    seconds = time.perf_counter() - start
    logger.info("%d images in %.1f s (%.2f images/s) -> %s", done, seconds, done / max(1e-9, seconds),
                outputs.save_dir)
    if hist is not None:
        report(args, outputs, hist, done, restore_from, outputs.save_dir)
    return hist


# --------------------------------------------------------------------------------------------------------------
# A whole run: every snapshot of a training run's directory

#: Where a snapshot's label maps go during its pass; moved into SAVE/ when it is the best so far, else removed.
STAGING = ".label-maps.tmp"


class RunEvaluator:
    """One model, one set of decoded images and one SAVE/snapshots.json for every snapshot of a run."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args, self.device = args, device
        self.snapshot_dir = Path(args.restore_from).expanduser()
        dataset, self.outputs = prepare(args)
        self.save_dir = self.outputs.save_dir
        self.results = RunResults.load(self.save_dir / RESULTS_JSON, run_settings(args, self.snapshot_dir))
        self.model = new_model(args).eval().to(device)
        self.images = ResizedImages(dataset, int(args.image_cache_mb * 2**20))
        self.loader = make_loader(self.images, args, device, persistent=True)
        #: file name -> (the file as it was when it failed, why); tried again only once it changes
        self.skipped: dict[str, tuple[Snapshot, str]] = {}

    def pending(self, snapshots: Sequence[Snapshot]) -> list[Snapshot]:
        """The snapshots without an up-to-date result (nor, with --save-all, their label maps), bad ones left out."""
        def done(s: Snapshot) -> bool:
            record = self.results.records.get(s.name)
            return s.matches(record) and (not self.args.save_all or record.get("label_maps_dir") == s.path.stem)

        return [s for s in snapshots if not done(s) and self.skipped.get(s.name, (None,))[0] != s]

    def label_maps_of(self, record: dict) -> dict:
        """What ``label_maps`` of snapshots.json says when SAVE/ holds the label maps of ``record``'s file."""
        return {"file": record["file"], "size": record["size"], "mtime_ns": record["mtime_ns"],
                "overlay": self.args.save_overlay}

    def predict(self, outputs: Outputs, desc: str) -> tuple[np.ndarray | None, int]:
        """Predict every image with the weights loaded, into ``outputs`` (the images decoded once, at the first)."""
        if len(self.images.cache) < self.images.capacity:
            self.images.fill(threads=min(4, os.cpu_count() or 1))
        return predict_all(self.model, self.loader, outputs, self.args, self.device, progress_lines=False, desc=desc)

    def evaluate(self, snap: Snapshot) -> None:
        """Predict every image with ``snap``, record the IoUs (snapshots.json written at once); its label maps go to
        SAVE/<stem>/ (--save-all), or replace SAVE/'s (file by file, atomically) when it is the best so far. A
        snapshot that cannot be loaded is reported on stderr and skipped."""
        args, results = self.args, self.results
        try:
            load_weights(self.model, args, snap.path)
        except (CheckpointMismatchError, ValueError, OSError) as exc:
            self.skipped[snap.name] = (snap, str(exc))
            if results.records.pop(snap.name, None) is not None:  # its record is of an earlier file
                results.save(self.save_dir)
            fail(PROG, f"skipped {snap.name}: {exc}")
            return
        self.skipped.pop(snap.name, None)
        staging = self.save_dir / (snap.path.stem if args.save_all else STAGING)
        shutil.rmtree(staging, ignore_errors=True)  # an earlier pass's (or a killed call's) files
        start = time.perf_counter()
        hist, done = self.predict(replace(self.outputs, save_dir=staging), snap.name)
        record = {"file": snap.name, "iteration": snap.iteration, "size": snap.size, "mtime_ns": snap.mtime_ns,
                  **subset_result_dict(hist, self.outputs.class_names, done, self.outputs.classes),
                  "seconds": round(time.perf_counter() - start, 3)}
        results.records[snap.name] = record
        if args.save_all:
            record["label_maps_dir"] = snap.path.stem
        else:
            if results.best() is record:
                for path in staging.iterdir():
                    os.replace(path, self.save_dir / path.name)
                results.label_maps = self.label_maps_of(record)
            shutil.rmtree(staging, ignore_errors=True)
        results.save(self.save_dir)
        best = results.best()
        print(f"{snap.name}: mIoU {pct(record['mIoU']) or 'nan'} ({done} images, {record['seconds']:.1f} s); best "
              f"so far {best['file'] if best else '-'} {pct(best['mIoU']) if best else ''}".rstrip(), flush=True)

    def write_best_label_maps(self) -> None:
        """Write the best snapshot's label maps into SAVE/ unless they are there already (they are when it was
        evaluated in this call); one more pass over the images."""
        best = self.results.best()
        if best is None or self.results.label_maps == self.label_maps_of(best):
            return
        path = self.snapshot_dir / best["file"]
        st = path.stat() if path.is_file() else None
        if st is None or (st.st_size, st.st_mtime_ns) != (best["size"], best["mtime_ns"]):
            logger.warning("the best snapshot %s is gone or changed since it was evaluated: its label maps are not "
                           "written (run again to evaluate it again)", path)
            return
        load_weights(self.model, self.args, path)
        self.predict(replace(self.outputs, gt_dir=None), f"{best['file']} label maps")
        self.results.label_maps = self.label_maps_of(best)
        self.results.save(self.save_dir)
        logger.info("label maps of the best snapshot %s -> %s", best["file"], self.save_dir)

    def finish(self) -> int:
        """The best's label maps (if not there yet), its per-class table (and --json), the table of the run.
        Returns the exit status: 1 when a snapshot was skipped."""
        args, results, save_dir = self.args, self.results, self.save_dir
        best = results.best()
        if not args.save_all:
            self.write_best_label_maps()
        if best is not None:
            print(f"best snapshot {best['file']}:")
            report(args, self.outputs, np.asarray(best["confusion_matrix"], dtype=np.int64), best["num_images"],
                   str(self.snapshot_dir / best["file"]), save_dir / (Path(best["file"]).stem if args.save_all else ""))
        for line in run_table(results.ordered(), [snap for snap, _ in self.skipped.values()], best):
            print(line)
        if self.skipped:
            return fail(PROG, f"{len(self.skipped)} snapshot(s) skipped: {', '.join(self.skipped)} (reasons above), "
                              f"fix or remove them and run again: the others' results are kept in "
                              f"{save_dir / RESULTS_JSON}")
        return 0


def evaluate_run(args: argparse.Namespace) -> int:
    """``--restore-from SNAPSHOT_DIR``: evaluate every snapshot without a result in SAVE/snapshots.json, in
    iteration order; with ``--watch`` keep looking for new ones until the run's last snapshot (args.json) is there
    or none came for ``--watch-timeout`` s. Returns the exit status (1 when a snapshot was skipped). Raises on bad
    input (flags, data, ground truth, --save, a folder without snapshots)."""
    run = RunEvaluator(args, resolve_args(args))
    waiting_since, problem, warned = None, None, False
    while True:
        plan = read_run_plan(run.snapshot_dir)
        if plan.problem and plan.problem != problem:
            logger.warning("%s; every <prefix>_<iter>.pth counts", plan.problem)
        problem = plan.problem
        snapshots = find_snapshots(run.snapshot_dir, plan.prefix)
        todo = run.pending(snapshots)
        if todo and not warned:
            warn_if_short_of_space(run.save_dir, len(run.images), args, len(todo) if args.save_all else 2)
            warned = True
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


def main(args: argparse.Namespace) -> int:
    """Evaluate one checkpoint, or a whole run (``--restore-from SNAPSHOT_DIR``); returns the exit status (0 done,
    1 a data or runtime error or a skipped snapshot, 2 flags that cannot work)."""
    try:
        if is_run_mode(args):
            return evaluate_run(args)
        evaluate(args)
    except UsageError as exc:
        return fail(PROG, str(exc), 2)
    except (CheckpointMismatchError, DatasetError, MetricsError, ValueError, OSError) as exc:
        return fail(PROG, str(exc))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main(get_args_parser().parse_args()))
