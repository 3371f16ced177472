"""Train AdaptSegNet: DeepLab-v2 on GTA5 (labelled) adapted to Cityscapes (unlabelled) by output-space adversaries.

Faithful to the original PyTorch 0.4 ``train_gta2cityscapes_multi.py`` step for step (same flags and defaults, same
losses, the same optimizer arithmetic including its quirks; see :func:`train_step` and ``utils/optim.py``), plus
resumable training, clear errors and opt-in deviations in a separate argument group.

Examples (the original README's commands work unchanged)::

    python train_gta2cityscapes_multi.py --snapshot-dir ./snapshots/GTA2Cityscapes_multi \\
        --lambda-seg 0.1 --lambda-adv-target1 0.0002 --lambda-adv-target2 0.001
    python train_gta2cityscapes_multi.py --snapshot-dir ./snapshots/GTA2Cityscapes_single \\
        --lambda-seg 0.0 --lambda-adv-target1 0.0 --lambda-adv-target2 0.001
    python train_gta2cityscapes_multi.py ... --resume auto      # continue an interrupted run
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dataset.checks import DatasetError
from dataset.cityscapes_dataset import cityscapesDataSet
from dataset.labels import IMG_MEAN, colorize_rgb
from dataset.settings import CITIES, SOURCES, TARGETS, resolve_setting
from model import FCDiscriminator, build_model
from model.deeplab_vgg import vgg16_to_deeplab_features
from utils.cli import parse_layers, parse_size
from utils.checkpoint import (
    DEFAULT_RESUME_NAME,
    find_resume_file,
    load_training_state,
    restore_rng_state,
    save_snapshot,
    save_training_state,
    unwrap,
)
from utils.loss import GAN_CHOICES, SOURCE_LABEL, TARGET_LABEL, AdversarialLoss, CrossEntropy2d
from utils.optim import Adam04, FaithfulSGD, adjust_learning_rate, lr_poly
from utils.runtime import (
    all_reduce_gradients_,
    all_reduce_max_int,
    all_reduce_mean_,
    atomic_torch_save,
    atomic_write,
    broadcast_module_,
    check_writable_dir,
    cleanup_distributed,
    configure_backends,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
    resolve_amp_dtype,
    seed_everything,
    select_device,
)
from utils.sampling import ResumableSampler, ignore_stop_signals_in_worker
from utils.weights import (
    RESTORE_FROM_INIT,
    CheckpointMismatchError,
    guess_model_from_keys,
    is_none_restore,
    load_checkpoint,
    load_state_dict_from,
    restore_init,
    torchvision_init,
    torchvision_restore_weights,
)

logger = logging.getLogger("train")

# The original's defaults.
MODEL = "DeepLab"
BATCH_SIZE = 1
ITER_SIZE = 1
NUM_WORKERS = 4
DATA_DIRECTORY = "./data/GTA5"
DATA_LIST_PATH = "./dataset/gta5_list/train.txt"
IGNORE_LABEL = 255
INPUT_SIZE = "1280,720"
DATA_DIRECTORY_TARGET = "./data/Cityscapes/data"
DATA_LIST_PATH_TARGET = "./dataset/cityscapes_list/train.txt"
INPUT_SIZE_TARGET = "1024,512"
LEARNING_RATE = 2.5e-4
MOMENTUM = 0.9
NUM_CLASSES = 19
NUM_STEPS = 250000
NUM_STEPS_STOP = 150000  # early stopping
POWER = 0.9
RANDOM_SEED = 1234
RESTORE_FROM = RESTORE_FROM_INIT  # the ImageNet + COCO DeepLab-v2 initialisation
SAVE_NUM_IMAGES = 2
SAVE_PRED_EVERY = 5000
SNAPSHOT_DIR = "./snapshots/"
WEIGHT_DECAY = 0.0005
LOG_DIR = "./log"
LEARNING_RATE_D = 1e-4
LAMBDA_SEG = 0.1
LAMBDA_ADV_TARGET1 = 0.0002
LAMBDA_ADV_TARGET2 = 0.001
GAN = "Vanilla"
TARGET = "cityscapes"
SET = "train"

MODEL_CHOICES = ("DeepLab", "DeeplabMulti", "DeeplabVGG")
#: Batches each DataLoader worker keeps ready.
PREFETCH_FACTOR = 2
#: The discriminators' five stride-2 convs need at least this many pixels per side.
MIN_INPUT_SIDE = 32
#: Order of the six logged losses (the log line's, TensorBoard's and the loss dict's).
LOSS_NAMES = ("loss_seg1", "loss_seg2", "loss_adv1", "loss_adv2", "loss_D1", "loss_D2")
LOG_FORMAT = ("iter = {0:8d}/{1:8d}, loss_seg1 = {2:.3f} loss_seg2 = {3:.3f} loss_adv1 = {4:.3f}, "
              "loss_adv2 = {5:.3f} loss_D1 = {6:.3f} loss_D2 = {7:.3f}")


# ---- arguments ------------------------------------------------------------------------------------------------------


#: Namespace attribute listing the dests of the (value-taking) flags given on the command line.
EXPLICIT_FLAGS = "explicit_flags"


class StoreExplicit(argparse.Action):
    """argparse's plain ``store`` that also records the flag's dest in ``namespace.explicit_flags``, so that the
    per-setting defaults (:func:`apply_setting_defaults`) replace only the flags the user did not give."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        given = set(getattr(namespace, EXPLICIT_FLAGS, None) or ())
        setattr(namespace, EXPLICIT_FLAGS, sorted(given | {self.dest}))


def flag_given(args: argparse.Namespace, dest: str) -> bool:
    """Whether ``--dest`` was on the command line; a namespace built without the parser counts as all given."""
    explicit = getattr(args, EXPLICIT_FLAGS, None)
    return explicit is None or dest in explicit


def apply_setting_defaults(args: argparse.Namespace) -> None:
    """Fill the flags the user did not give from the ``--source`` / ``--target`` rows of ``dataset/settings.py``.

    ``--source`` defaults to the target's paper setting (gta5 for cityscapes, cityscapes for crosscity); then the
    source's data directory, list and input size and the target's directory, list and input size. For the
    default gta5 -> cityscapes these equal the original's defaults, so nothing changes. Idempotent.
    """
    if not hasattr(args, "source"):  # a namespace from before these flags
        return
    if not flag_given(args, "source"):
        args.source = TARGETS[args.target].default_source
    src, tgt = SOURCES[args.source], TARGETS[args.target]
    for dest, value in (("data_dir", src.data_dir), ("data_list", src.data_list), ("input_size", src.input_size),
                        ("data_dir_target", tgt.data_dir), ("data_list_target", tgt.data_list),
                        ("input_size_target", tgt.input_size)):
        if not flag_given(args, dest):
            setattr(args, dest, value)


def snapshot_prefix(args: argparse.Namespace) -> str:
    """Snapshot file prefix of the run's source: ``GTA5`` (the original's ``GTA5_<i>.pth``), ``SYNTHIA``, ..."""
    return SOURCES[getattr(args, "source", "gta5")].snapshot_prefix


def get_args_parser() -> argparse.ArgumentParser:
    """The original's flags (names, defaults) and, in their own group, the flags beyond the original."""
    parser = argparse.ArgumentParser(description="AdaptSegNet training: GTA5 -> Cityscapes (DeepLab-v2); other "
                                                 "settings with --source / --target")
    for name in (None, "store"):  # argparse's default action: every value flag records that it was given
        parser.register("action", name, StoreExplicit)
    parser.set_defaults(**{EXPLICIT_FLAGS: []})
    parser.add_argument("--model", type=str, default=MODEL, choices=MODEL_CHOICES,
                        help="DeepLab (= DeeplabMulti, multi-level ResNet-101) or DeeplabVGG (single output)")
    parser.add_argument("--target", type=str, default=TARGET, choices=tuple(TARGETS),
                        help="available options : " + ", ".join(TARGETS) + " (crosscity needs --city)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                        help="Number of images sent to the network in one step.")
    parser.add_argument("--iter-size", type=int, default=ITER_SIZE,
                        help="Accumulate gradients for ITER_SIZE iterations.")
    parser.add_argument("--num-workers", type=int, default=NUM_WORKERS,
                        help="number of workers for multithread dataloading.")
    parser.add_argument("--data-dir", type=str, default=DATA_DIRECTORY,
                        help="Path to the directory containing the source dataset.")
    parser.add_argument("--data-list", type=str, default=DATA_LIST_PATH,
                        help="Path to the file listing the images in the source dataset.")
    parser.add_argument("--ignore-label", type=int, default=IGNORE_LABEL,
                        help="The index of the label to ignore during the training.")
    parser.add_argument("--input-size", type=parse_size, default=INPUT_SIZE,
                        help="Comma-separated W,H of source images (the original's help said height and width; "
                             "the order is width,height).")
    parser.add_argument("--data-dir-target", type=str, default=DATA_DIRECTORY_TARGET,
                        help="Path to the directory containing the target dataset.")
    parser.add_argument("--data-list-target", type=str, default=DATA_LIST_PATH_TARGET,
                        help="Path to the file listing the images in the target dataset.")
    parser.add_argument("--input-size-target", type=parse_size, default=INPUT_SIZE_TARGET,
                        help="Comma-separated W,H of target images.")
    parser.add_argument("--is-training", action="store_true",
                        help="Accepted for compatibility: BatchNorm statistics always update during training "
                             "(use --freeze-bn-stats to keep them fixed).")
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE,
                        help="Base learning rate for training with polynomial decay.")
    parser.add_argument("--learning-rate-D", type=float, default=LEARNING_RATE_D,
                        help="Base learning rate for discriminator.")
    parser.add_argument("--lambda-seg", type=float, default=LAMBDA_SEG, help="lambda_seg.")
    parser.add_argument("--lambda-adv-target1", type=float, default=LAMBDA_ADV_TARGET1,
                        help="lambda_adv for adversarial training.")
    parser.add_argument("--lambda-adv-target2", type=float, default=LAMBDA_ADV_TARGET2,
                        help="lambda_adv for adversarial training.")
    parser.add_argument("--momentum", type=float, default=MOMENTUM, help="Momentum component of the optimiser.")
    parser.add_argument("--not-restore-last", action="store_true",
                        help="Whether to not restore last (FC) layers: the classifiers (layer5/layer6, VGG's "
                             "classifier) are not copied from --restore-from and keep their initialisation.")
    parser.add_argument("--num-classes", type=int, default=NUM_CLASSES,
                        help="Number of classes to predict (including background).")
    parser.add_argument("--num-steps", type=int, default=NUM_STEPS,
                        help="Number of training steps (horizon of the poly learning-rate schedule).")
    parser.add_argument("--num-steps-stop", type=int, default=NUM_STEPS_STOP,
                        help="Number of training steps for early stopping.")
    parser.add_argument("--power", type=float, default=POWER, help="Decay parameter to compute the learning rate.")
    parser.add_argument("--random-mirror", action="store_true",
                        help="Whether to randomly mirror the inputs during the training (both domains).")
    parser.add_argument("--random-scale", action="store_true",
                        help="Whether to randomly scale the inputs during the training (source domain).")
    parser.add_argument("--random-seed", type=int, default=RANDOM_SEED,
                        help="Random seed to have reproducible results (Python, NumPy, torch, data order and "
                             "augmentation).")
    parser.add_argument("--restore-from", type=str, default=RESTORE_FROM,
                        help="Where restore model parameters from (file or URL; 'none': the model's own init; "
                             "'torchvision[:WEIGHTS]': torchvision's ImageNet backbone, see the README).")
    parser.add_argument("--save-num-images", type=int, default=SAVE_NUM_IMAGES,
                        help="How many images to save (to TensorBoard, per domain, at each snapshot).")
    parser.add_argument("--save-pred-every", type=int, default=SAVE_PRED_EVERY,
                        help="Save summaries and checkpoint every often.")
    parser.add_argument("--snapshot-dir", type=str, default=SNAPSHOT_DIR, help="Where to save snapshots of the model.")
    parser.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY, help="Regularisation parameter for L2-loss.")
    parser.add_argument("--cpu", action="store_true", help="choose to use cpu device.")
    parser.add_argument("--gpu", type=int, default=0, help="choose gpu device.")
    parser.add_argument("--tensorboard", action="store_true", help="choose whether to use tensorboard.")
    parser.add_argument("--log-dir", type=str, default=LOG_DIR, help="Path to the directory of log.")
    parser.add_argument("--set", type=str, default=SET, help="choose adaptation set.")
    parser.add_argument("--gan", type=str, default=GAN, choices=GAN_CHOICES, help="choose the GAN objective.")

    new = parser.add_argument_group("beyond the original")
    new.add_argument("--resume", type=str, default=None, metavar="PATH|auto",
                     help=f"continue from a training state file; 'auto': {DEFAULT_RESUME_NAME} in --snapshot-dir "
                          "if there is one, else start afresh")
    new.add_argument("--restore-from-D1", type=str, default=None, metavar="PATH",
                     help="initial weights of discriminator D1 (e.g. a GTA5_<i>_D1.pth snapshot)")
    new.add_argument("--restore-from-D2", type=str, default=None, metavar="PATH",
                     help="initial weights of discriminator D2 (e.g. a GTA5_<i>_D2.pth snapshot)")
    new.add_argument("--modern-optim", action="store_true",
                     help="standard torch.optim.SGD on deduplicated parameter groups and torch.optim.Adam, instead "
                          "of the original's PyTorch 0.4 arithmetic (duplicated backbone listing, eps before the "
                          "bias correction)")
    new.add_argument("--freeze-bn-stats", action="store_true",
                     help="keep BatchNorm in eval mode (running statistics, not updated) during training")
    new.add_argument("--all-branches", action="store_true",
                     help="sum all four classifier branches (the original summed only the first two)")
    new.add_argument("--resnet-layers", type=parse_layers, default="3,4,23,3", metavar="L1,L2,L3,L4",
                     help="ResNet block counts (default ResNet-101; small values for tests)")
    new.add_argument("--log-every", type=int, default=1, metavar="N", help="print the loss line every N iterations")
    new.add_argument("--source", type=str, default="gta5", choices=tuple(SOURCES),
                     help="labelled source domain (default gta5; cityscapes with --target crosscity). Flags not given "
                          "(--data-dir, --data-list, --input-size and the target's) take the setting's defaults "
                          "from dataset/settings.py; snapshots are named after the source (GTA5_<i>.pth, "
                          "SYNTHIA_<i>.pth, Synscapes_<i>.pth, Cityscapes_<i>.pth)")
    new.add_argument("--city", type=str, default=None, choices=CITIES,
                     help="the Cross-City city of --target crosscity")
    # Testing hooks (hidden).
    new.add_argument("--debug-full-step", action="store_true", help=argparse.SUPPRESS)
    new.add_argument("--debug-nan-at", type=int, default=None, help=argparse.SUPPRESS)
    new.add_argument("--debug-signal-at", type=int, default=None, help=argparse.SUPPRESS)

    speed = parser.add_argument_group(
        "speed and multi-GPU (beyond the original; several GPUs: torchrun --nproc-per-node=N "
        "train_gta2cityscapes_multi.py ...)")
    speed.add_argument("--amp", action="store_true",
                       help="mixed precision: the networks' forward passes under autocast (bfloat16 where supported, "
                            "else float16 with a gradient scaler); losses, softmax and optimizers stay float32")
    speed.add_argument("--amp-dtype", type=str, default="auto", choices=("auto", "bfloat16", "float16"),
                       help="autocast dtype for --amp (auto: bfloat16 on the CPU and on GPUs that support it, "
                            "else float16)")
    speed.add_argument("--channels-last", action="store_true",
                       help="networks and inputs in channels_last memory format (faster convolutions on tensor-core "
                            "GPUs, above all with --amp)")
    speed.add_argument("--deterministic", action="store_true",
                       help="deterministic cuDNN algorithms and torch.use_deterministic_algorithms(warn_only=True), "
                            "no cuDNN autotuning (default: cudnn.benchmark on, as the original)")
    speed.add_argument("--debug-dump-ranks", type=str, default=None, help=argparse.SUPPRESS)  # testing hook
    return parser


def validate_args(args: argparse.Namespace) -> None:
    """Fill the per-setting defaults (:func:`apply_setting_defaults`), then raise ``ValueError`` naming the flag for
    values the run cannot use (before any work)."""
    apply_setting_defaults(args)
    resolve_setting(getattr(args, "source", "gta5"), args.target, getattr(args, "city", None))
    if getattr(args, "source", "gta5") == args.target == "cityscapes":
        logger.warning("--source cityscapes --target cityscapes: adapting Cityscapes to itself")
    for flag in ("batch_size", "iter_size", "num_steps", "num_steps_stop", "save_pred_every", "log_every",
                 "num_classes"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    for flag in ("num_workers", "save_num_images"):
        if getattr(args, flag) < 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    torchvision_restore_weights(args.restore_from)  # "torchvision:" without a weights name fails here, not later
    if args.model == "DeeplabVGG" and args.restore_from == RESTORE_FROM:
        raise ValueError("--model DeeplabVGG: the default --restore-from is the ResNet-101 initialisation and does "
                         "not fit VGG-16; pass --restore-from with a torchvision-layout VGG-16 state_dict (features "
                         "are copied), 'torchvision' (its ImageNet VGG-16), a DeeplabVGG checkpoint, or 'none'")
    for flag in ("input_size", "input_size_target"):
        w, h = getattr(args, flag)
        if min(w, h) < MIN_INPUT_SIDE:
            raise ValueError(f"--{flag.replace('_', '-')} {w},{h}: the discriminators need W and H of at least "
                             f"{MIN_INPUT_SIDE} pixels")


# ---- setup ----------------------------------------------------------------------------------------------------------


@dataclass
class TrainingSetup:
    """Everything :func:`train_step` needs. Networks may be wrapped (e.g. DDP); snapshots unwrap them."""

    model: nn.Module
    model_D1: nn.Module
    model_D2: nn.Module
    optimizer: torch.optim.Optimizer
    optimizer_D1: torch.optim.Optimizer
    optimizer_D2: torch.optim.Optimizer
    seg_loss: nn.Module
    adv_loss: nn.Module
    device: torch.device
    input_size: tuple[int, int]  # (W, H) of the source crops
    input_size_target: tuple[int, int]  # (W, H) of the target crops
    iter_size: int = 1
    lambda_seg: float = LAMBDA_SEG
    lambda_adv_target1: float = LAMBDA_ADV_TARGET1
    lambda_adv_target2: float = LAMBDA_ADV_TARGET2
    learning_rate: float = LEARNING_RATE
    learning_rate_D: float = LEARNING_RATE_D
    num_steps: int = NUM_STEPS
    power: float = POWER
    #: aux classifier loss and D1 computed (False: single output model, or the single-level shortcut)
    use_aux: bool = True
    #: hooks for mixed precision: the forward/loss context (e.g. ``torch.autocast``), and where ``backward`` and
    #: the optimizer steps go through (e.g. a gradient scaler's ``scale(loss).backward()`` / ``step(opt)``)
    autocast: Any = field(default=contextlib.nullcontext)
    backward: Any = field(default=lambda loss: loss.backward())
    step_optimizer: Any = field(default=lambda opt: opt.step())
    #: called once per iteration after the optimizer steps (e.g. ``GradScaler.update``)
    end_step: Any = field(default=lambda: None)
    #: the stacked losses [6] -> the values to log and check (distributed: the mean over the ranks, so that every
    #: rank takes the same decision on a non-finite loss)
    reduce_losses: Any = field(default=lambda losses: losses)
    #: memory format of the input batches (``torch.channels_last`` with ``--channels-last``)
    memory_format: torch.memory_format = torch.preserve_format
    #: the float16 gradient scaler (``--amp`` with float16 only), saved in the resume file
    scaler: Any = None


def _drop_classifier_keys(state_dict: dict[str, torch.Tensor], model_name: str) -> dict[str, torch.Tensor]:
    """``--not-restore-last``: leave out the last (classifier) layers of the file."""
    if model_name == "DeeplabVGG":
        return {k: v for k, v in state_dict.items() if "classifier" not in k.split(".")[:2]}
    return {k: v for k, v in state_dict.items() if not {"layer5", "layer6"} & set(k.split(".")[:2])}


def restore_segmentation_weights(model: nn.Module, args: argparse.Namespace) -> None:
    """Initialise the segmentation network from ``--restore-from`` by the original's rule.

    DeepLab: :func:`utils.weights.restore_init` (strip ``Scale.``, skip ``layer5`` for 19 classes); a trained
    DeeplabMulti state_dict (``layer6.*`` keys without prefix, e.g. a ``GTA5_<i>.pth`` snapshot) loads strictly
    instead. DeeplabVGG (the original never trained it): a torchvision-layout VGG-16 state_dict initialises
    ``features`` (like the original constructor's ``vgg16_caffe_path``); a DeeplabVGG checkpoint (e.g. the released
    GTA2Cityscapes_vgg) loads strictly. ``--not-restore-last`` keeps the model's own classifiers.
    ``torchvision[:WEIGHTS]``: torchvision's ImageNet ResNet-101 / VGG-16 backbone through the hub cache
    (:func:`utils.weights.torchvision_init`; not the paper's initialisation, results differ).
    Raises ``CheckpointMismatchError``/``FileNotFoundError``/``ValueError``/``OSError`` with the file named.
    """
    if is_none_restore(args.restore_from):
        logger.info("--restore-from %s: starting from the model's own initialisation", args.restore_from)
        return
    tv_weights = torchvision_restore_weights(args.restore_from)
    if tv_weights is not None:  # not the paper's initialisation: torchvision_init warns that results will differ
        torchvision_init(unwrap(model), weights=tv_weights)
        return
    state_dict = load_state_dict_from(args.restore_from, none_allowed=True)
    source = f"--restore-from {args.restore_from}"
    trained = guess_model_from_keys(state_dict) == ("DeeplabVGG" if args.model == "DeeplabVGG" else "DeeplabMulti")
    if args.model == "DeeplabVGG":
        w = state_dict.get("classifier.0.weight")
        if isinstance(w, torch.Tensor) and w.dim() == 2:  # torchvision VGG-16: its FC head is never used
            unwrap(model).load_state_dict(vgg16_to_deeplab_features(state_dict, source=source), strict=False)
            logger.info("DeeplabVGG: VGG-16 features initialised from %s (fc6, fc7, classifier keep their init)",
                        args.restore_from)
            return
    if args.not_restore_last:
        before = len(state_dict)
        state_dict = _drop_classifier_keys(state_dict, args.model)
        logger.info("--not-restore-last: %d classifier tensors of %s not restored", before - len(state_dict),
                    args.restore_from)
    if args.model != "DeeplabVGG" and not trained:
        restore_init(model, state_dict, args.num_classes)  # the original's rule (Scale.-prefixed init file)
        return
    # A trained checkpoint of this very model (e.g. GTA5_<i>.pth): loaded as it is (the original would crash).
    if args.not_restore_last:  # keep the model's own classifiers
        own = unwrap(model).state_dict()
        heads = ("classifier.",) if args.model == "DeeplabVGG" else ("layer5.", "layer6.")
        state_dict = {**{k: v for k, v in own.items() if k.startswith(heads)}, **state_dict}
    load_checkpoint(model, state_dict, model_name=args.model, source=source)


def build_networks(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The segmentation network (restored from ``--restore-from`` unless resuming) and D1, D2, built in the
    original's order (network, then D1, then D2, so that the seeded RNG gives the same initial weights), in train
    mode, on ``device``."""
    model = build_model(args.model, args.num_classes, all_branches=args.all_branches,
                        freeze_bn_stats=args.freeze_bn_stats, layers=args.resnet_layers)
    resuming = bool(getattr(args, "resume_path", None))
    if not resuming:
        restore_segmentation_weights(model, args)
    model.train()
    model.to(device)

    model_D1 = FCDiscriminator(num_classes=args.num_classes)
    model_D2 = FCDiscriminator(num_classes=args.num_classes)
    if not resuming:
        for net, path, flag in ((model_D1, args.restore_from_D1, "--restore-from-D1"),
                                (model_D2, args.restore_from_D2, "--restore-from-D2")):
            if path:
                load_checkpoint(net, load_state_dict_from(path, flag=flag), model_name="FCDiscriminator",
                                source=f"{flag} {path}")
    model_D1.train().to(device)
    model_D2.train().to(device)
    return model, model_D1, model_D2


def build_optimizers(args: argparse.Namespace, model: nn.Module, model_D1: nn.Module, model_D2: nn.Module):
    """The original's optimizers: SGD on ``model.optim_parameters`` (backbone with its duplicate listings at lr,
    classifiers at 10x) and Adam(betas=(0.9, 0.99)) per discriminator, with PyTorch 0.4's arithmetic
    (:class:`~utils.optim.FaithfulSGD`, :class:`~utils.optim.Adam04`); ``--modern-optim``: today's torch.optim on
    deduplicated groups."""
    net = unwrap(model)
    if args.modern_optim:
        optimizer = torch.optim.SGD(net.optim_parameters_dedup(args.learning_rate), lr=args.learning_rate,
                                    momentum=args.momentum, weight_decay=args.weight_decay)
        optimizer_D1 = torch.optim.Adam(unwrap(model_D1).parameters(), lr=args.learning_rate_D, betas=(0.9, 0.99))
        optimizer_D2 = torch.optim.Adam(unwrap(model_D2).parameters(), lr=args.learning_rate_D, betas=(0.9, 0.99))
    else:
        optimizer = FaithfulSGD(net.optim_parameters(args.learning_rate), lr=args.learning_rate,
                                momentum=args.momentum, weight_decay=args.weight_decay)
        optimizer_D1 = Adam04(unwrap(model_D1).parameters(), lr=args.learning_rate_D, betas=(0.9, 0.99))
        optimizer_D2 = Adam04(unwrap(model_D2).parameters(), lr=args.learning_rate_D, betas=(0.9, 0.99))
    for opt in (optimizer, optimizer_D1, optimizer_D2):
        opt.zero_grad()
    return optimizer, optimizer_D1, optimizer_D2


def is_single_level(args: argparse.Namespace) -> bool:
    """No auxiliary path: a single-output model, or ``--lambda-seg 0 --lambda-adv-target1 0`` (the shortcut)."""
    if args.model == "DeeplabVGG":
        return True
    return args.lambda_seg == 0 and args.lambda_adv_target1 == 0 and not args.debug_full_step


def build_training(args: argparse.Namespace, device: torch.device) -> TrainingSetup:
    """Networks, optimizers and losses for :func:`train_step` (weights restored unless resuming)."""
    model, model_D1, model_D2 = build_networks(args, device)
    optimizer, optimizer_D1, optimizer_D2 = build_optimizers(args, model, model_D1, model_D2)
    setup = TrainingSetup(
        model=model, model_D1=model_D1, model_D2=model_D2,
        optimizer=optimizer, optimizer_D1=optimizer_D1, optimizer_D2=optimizer_D2,
        seg_loss=CrossEntropy2d(ignore_label=args.ignore_label), adv_loss=AdversarialLoss(args.gan),
        device=device, input_size=tuple(args.input_size), input_size_target=tuple(args.input_size_target),
        iter_size=args.iter_size, lambda_seg=args.lambda_seg, lambda_adv_target1=args.lambda_adv_target1,
        lambda_adv_target2=args.lambda_adv_target2, learning_rate=args.learning_rate,
        learning_rate_D=args.learning_rate_D, num_steps=args.num_steps, power=args.power,
        use_aux=not is_single_level(args),
    )
    configure_speed(setup, args)
    return setup


# ---- speed: mixed precision, channels-last, DistributedDataParallel --------------------------------------------------


class Float32Loss(nn.Module):
    """``loss(x.float(), *rest)``: the adversarial loss on the discriminator's float16/bfloat16 logits, computed in
    float32 (``--amp``). BCE-with-logits and MSE are on autocast's float32 lists on CUDA; this makes it explicit and
    the same on every device. The wrapped loss is ``.loss``."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, x: torch.Tensor, *rest: Any) -> torch.Tensor:
        return self.loss(x.float(), *rest)


def configure_speed(setup: TrainingSetup, args: argparse.Namespace) -> None:
    """Apply ``--channels-last`` and ``--amp`` to ``setup`` (no-ops by default, which keeps the faithful float32
    step bit for bit).

    ``--amp``: the forward passes (segmentation network, discriminators) run under ``torch.autocast`` in bfloat16
    (or float16, see :func:`utils.runtime.resolve_amp_dtype`). What stays float32: the parameters, gradients and the
    optimizers' arithmetic (autocast only casts copies of the weights for each op); the segmentation logits, which
    :func:`train_step` upcasts before upsampling them, so the cross-entropy, the softmax fed to the discriminators
    and the adversarial losses (:class:`Float32Loss`) are float32. float16 only: one ``torch.amp.GradScaler`` shared
    by the three optimizers (each backward scaled, each optimizer stepped through ``scaler.step`` -- unscale, skip on
    inf/NaN --, ``scaler.update()`` once per iteration); bfloat16 has float32's exponent range and needs none.
    """
    if args.channels_last:
        for net in (setup.model, setup.model_D1, setup.model_D2):
            unwrap(net).to(memory_format=torch.channels_last)  # in place: the optimizers keep their parameters
        setup.memory_format = torch.channels_last
    if not args.amp:
        if args.amp_dtype != "auto":
            logger.warning("--amp-dtype %s has no effect without --amp (training in float32)", args.amp_dtype)
        return
    dtype = resolve_amp_dtype(setup.device, args.amp_dtype)
    setup.autocast = functools.partial(torch.autocast, device_type=setup.device.type, dtype=dtype)
    setup.adv_loss = Float32Loss(setup.adv_loss)
    if dtype == torch.float16:
        scaler = torch.amp.GradScaler(setup.device.type)
        setup.scaler = scaler
        setup.backward = lambda loss: scaler.scale(loss).backward()
        setup.step_optimizer = scaler.step
        setup.end_step = scaler.update
    logger.info("--amp: autocast to %s%s", str(dtype).replace("torch.", ""),
                " with a gradient scaler" if setup.scaler is not None else "")


def wrap_distributed(setup: TrainingSetup) -> None:
    """Multi-process training (``torchrun``): the segmentation network in ``DistributedDataParallel``; the
    discriminators' gradients averaged by hand before their optimizer steps; the logged losses averaged.

    Why not DDP for the discriminators: each iteration uses them frozen (``requires_grad=False``) inside the
    generator's adversarial backward and only then trains them, and D1 is never used in the single-level setting;
    DDP expects every forward it runs to be followed by a backward reaching all of its parameters. One flattened
    all-reduce of their (small: 2.8M parameters each) gradients before the steps is simpler and exactly DDP's
    averaging. The segmentation network's two forward/backward pairs per sub-step (source, then target) each
    all-reduce through DDP: the second averages ``g_source_mean + g_target_local``, i.e. ``g_source_mean +
    g_target_mean`` (the same on every rank). ``find_unused_parameters`` because the classifiers' last two branches
    never act (the original's quirk) and layer5 is unused in the single-level setting; DDP leaves such parameters'
    gradients ``None``, so the faithful SGD skips them (no weight decay) exactly as in one process. BatchNorm stays
    per-rank (batch statistics of each rank's own images, like the original's batch of 1); its running statistics
    are rank 0's (DDP broadcasts buffers at each forward). Weights start equal: DDP broadcasts rank 0's network and
    the discriminators are broadcast here.
    """
    from torch.nn.parallel import DistributedDataParallel

    if get_world_size() == 1:
        return
    device_ids = [setup.device.index] if setup.device.type == "cuda" else None
    setup.model = DistributedDataParallel(setup.model, device_ids=device_ids, find_unused_parameters=True)
    for net in (setup.model_D1, setup.model_D2):
        broadcast_module_(net)
    by_hand = {id(setup.optimizer_D1): setup.model_D1, id(setup.optimizer_D2): setup.model_D2}
    inner_step = setup.step_optimizer

    def step_optimizer(opt) -> None:
        net = by_hand.get(id(opt))
        if net is not None:
            all_reduce_gradients_(net.parameters())
        inner_step(opt)

    setup.step_optimizer = step_optimizer
    setup.reduce_losses = all_reduce_mean_


def build_datasets(args: argparse.Namespace):
    """The source and target training sets of ``--source`` / ``--target`` (``dataset/settings.py``), built as the
    original built GTA5 and Cityscapes (their checks raise ``DatasetError``). Every source loader gives GTA5's
    items (image, trainId label, size, name); every target loader cityscapesDataSet's (image, size, name)."""
    max_iters = args.num_steps * args.iter_size * args.batch_size * get_world_size()  # samples of all ranks
    source_cls = SOURCES[getattr(args, "source", "gta5")].dataset  # GTA5DataSet by default
    source = source_cls(args.data_dir, args.data_list, max_iters=max_iters, crop_size=args.input_size,
                        scale=args.random_scale, mirror=args.random_mirror, mean=IMG_MEAN,
                        ignore_label=args.ignore_label, seed=args.random_seed)
    if args.target == "crosscity":
        target = TARGETS["crosscity"].dataset(args.data_dir_target, args.city, args.data_list_target,
                                              max_iters=max_iters, crop_size=args.input_size_target, scale=False,
                                              mirror=args.random_mirror, mean=IMG_MEAN, set=args.set,
                                              seed=args.random_seed)
    else:
        target = cityscapesDataSet(args.data_dir_target, args.data_list_target, max_iters=max_iters,
                                   crop_size=args.input_size_target, scale=False, mirror=args.random_mirror,
                                   mean=IMG_MEAN, set=args.set, seed=args.random_seed)
    return source, target


def build_loader(dataset, args: argparse.Namespace, device: torch.device, start: int, salt: int):
    """A DataLoader over ``dataset`` in the seeded, resumable order, from global sample position ``start``.

    Distributed: each rank reads its own share of the global order (:class:`~utils.sampling.ResumableSampler`).
    Keeping the GPU fed: ``--num-workers`` processes per domain (the original's 4), each keeping
    ``PREFETCH_FACTOR`` batches ready; pinned host memory on CUDA (the copies to the device are asynchronous);
    persistent workers (the order never ends, so they are started once anyway).
    """
    sampler = ResumableSampler(len(dataset), seed=args.random_seed, start=start, rank=get_rank(),
                               num_replicas=get_world_size(), salt=salt)
    workers = args.num_workers > 0
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.num_workers,
        pin_memory=device.type == "cuda", worker_init_fn=ignore_stop_signals_in_worker,
        generator=torch.Generator().manual_seed(args.random_seed),
        persistent_workers=workers, prefetch_factor=PREFETCH_FACTOR if workers else None,
    )
    return loader, sampler


def shutdown_loader(loader) -> None:
    """Stop a DataLoader's persistent worker processes now.

    Our workers ignore SIGINT/SIGTERM (so a Ctrl-C lets the iteration finish). If an error ends the run, the
    exception's traceback can keep the loader alive until after interpreter exit starts, where multiprocessing
    terminates and then joins its children: workers that ignore SIGTERM would then never exit and the process would
    hang. Shutting them down explicitly avoids that.
    """
    iterator = getattr(loader, "_iterator", None)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    if iterator is not None:
        loader._iterator = None


def _source_batches(loader, nan_at: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for k, (images, labels, _, _) in enumerate(loader):
        if k == nan_at:  # testing hook (--debug-nan-at): a corrupt batch
            images = images * float("nan")
        yield images, labels


def _target_batches(loader) -> Iterator[torch.Tensor]:
    for images, _, _ in loader:
        yield images


# ---- one iteration --------------------------------------------------------------------------------------------------


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; raised before any optimizer step of that iteration."""

    def __init__(self, i_iter: int, name: str, value: float) -> None:
        super().__init__(f"non-finite loss at iteration {i_iter}: {name} = {value}")
        self.i_iter, self.name, self.value = i_iter, name, value


def set_learning_rates(setup: TrainingSetup, i_iter: int) -> None:
    """Poly schedule over ``num_steps``: segmentation group 0 at lr, group 1 at 10 lr; each D at lr_D's poly."""
    adjust_learning_rate(setup.optimizer, lr_poly(setup.learning_rate, i_iter, setup.num_steps, setup.power))
    lr_d = lr_poly(setup.learning_rate_D, i_iter, setup.num_steps, setup.power)
    adjust_learning_rate(setup.optimizer_D1, lr_d)
    adjust_learning_rate(setup.optimizer_D2, lr_d)


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (``--amp``) -> float32; a float32 tensor is returned as it is (the default path is
    untouched)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _split_outputs(out) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(aux, main)`` from DeeplabMulti's pair; ``(None, out)`` for a single-output model. Under ``--amp`` the
    logits are upcast to float32 here: upsampling, cross-entropy and the softmax fed to the discriminators run in
    float32 (the 1/8-resolution logits are the only rounded values)."""
    if isinstance(out, (tuple, list)):
        return _fp32(out[0]), _fp32(out[-1])
    return None, _fp32(out)


def _upsample(x: torch.Tensor, size_wh: tuple[int, int]) -> torch.Tensor:
    """The original's ``nn.Upsample(size=(H, W), mode='bilinear', align_corners=True)``."""
    return F.interpolate(x, size=(size_wh[1], size_wh[0]), mode="bilinear", align_corners=True)


def _set_requires_grad(nets, flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad = flag


def train_step(setup: TrainingSetup, source_batches: Iterator, target_batches: Iterator, i_iter: int,
               visuals: dict | None = None) -> dict[str, float]:
    """One iteration of the original loop; returns the six logged losses (:data:`LOSS_NAMES`).

    ``source_batches`` yields ``(images [N,3,H,W], labels [N,H,W])``, ``target_batches`` yields ``images``; each is
    drawn ``iter_size`` times. The losses are accumulated as the original logged them (the segmentation and
    adversarial terms divided by ``iter_size``; the discriminator terms are the values that were backpropagated,
    i.e. already divided by ``iter_size`` and by 2, summed over source and target). Raises
    :class:`NonFiniteLossError` before any optimizer step if one of them is not finite. ``visuals``: when a dict
    is given, it receives the last sub-step's inputs and argmax predictions (CPU) for TensorBoard.

    Speed hooks (:func:`configure_speed`, :func:`wrap_distributed`; identity by default): ``autocast`` around the
    forward passes and losses, ``backward``/``step_optimizer``/``end_step`` (gradient scaler, gradient averaging of
    the discriminators), ``reduce_losses`` (distributed: the returned losses are the means over the ranks) and the
    inputs' ``memory_format``.
    """
    s = setup
    discriminators = (s.model_D1, s.model_D2) if s.use_aux else (s.model_D2,)
    for opt in (s.optimizer, s.optimizer_D1, s.optimizer_D2):
        opt.zero_grad()
    set_learning_rates(s, i_iter)
    zero = torch.zeros((), device=s.device)
    totals = {name: zero.clone() for name in LOSS_NAMES}

    for _ in range(s.iter_size):
        # 1. Segmentation on the source: supervised cross-entropy on both outputs (discriminators frozen so the
        #    generator's backward passes do not accumulate gradients in them).
        _set_requires_grad(discriminators, False)
        images, labels = next(source_batches)
        images = images.to(s.device, non_blocking=True, memory_format=s.memory_format)
        labels = labels.to(s.device, non_blocking=True).long()
        with s.autocast():
            aux, main = _split_outputs(s.model(images))
            pred2 = _upsample(main, s.input_size)
            loss_seg2 = s.seg_loss(pred2, labels)
            loss = loss_seg2
            if s.use_aux:
                pred1 = _upsample(aux, s.input_size)
                loss_seg1 = s.seg_loss(pred1, labels)
                loss = loss_seg2 + s.lambda_seg * loss_seg1
                totals["loss_seg1"] += loss_seg1.detach() / s.iter_size
        s.backward(loss / s.iter_size)
        totals["loss_seg2"] += loss_seg2.detach() / s.iter_size

        # 2. Adversarial on the target: make the target outputs look like source ones to the (frozen)
        #    discriminators, i.e. their loss against the *source* label.
        images_t = next(target_batches).to(s.device, non_blocking=True, memory_format=s.memory_format)
        with s.autocast():
            aux_t, main_t = _split_outputs(s.model(images_t))
            pred_target2 = _upsample(main_t, s.input_size_target)
            loss_adv2 = s.adv_loss(s.model_D2(F.softmax(pred_target2, dim=1)), SOURCE_LABEL)
            loss = s.lambda_adv_target2 * loss_adv2
            if s.use_aux:
                pred_target1 = _upsample(aux_t, s.input_size_target)
                loss_adv1 = s.adv_loss(s.model_D1(F.softmax(pred_target1, dim=1)), SOURCE_LABEL)
                loss = s.lambda_adv_target1 * loss_adv1 + s.lambda_adv_target2 * loss_adv2
                totals["loss_adv1"] += loss_adv1.detach() / s.iter_size
        s.backward(loss / s.iter_size)
        totals["loss_adv2"] += loss_adv2.detach() / s.iter_size

        # 3. Discriminators on the source: detached source outputs are "source" (label 0).
        _set_requires_grad(discriminators, True)
        pred2 = pred2.detach()
        with s.autocast():
            loss_D2 = s.adv_loss(s.model_D2(F.softmax(pred2, dim=1)), SOURCE_LABEL) / s.iter_size / 2
            if s.use_aux:
                pred1 = pred1.detach()
                loss_D1 = s.adv_loss(s.model_D1(F.softmax(pred1, dim=1)), SOURCE_LABEL) / s.iter_size / 2
        if s.use_aux:
            s.backward(loss_D1)
            totals["loss_D1"] += loss_D1.detach()
        s.backward(loss_D2)
        totals["loss_D2"] += loss_D2.detach()

        # 4. Discriminators on the target: detached target outputs are "target" (label 1).
        pred_target2 = pred_target2.detach()
        with s.autocast():
            loss_D2 = s.adv_loss(s.model_D2(F.softmax(pred_target2, dim=1)), TARGET_LABEL) / s.iter_size / 2
            if s.use_aux:
                pred_target1 = pred_target1.detach()
                loss_D1 = s.adv_loss(s.model_D1(F.softmax(pred_target1, dim=1)), TARGET_LABEL) / s.iter_size / 2
        if s.use_aux:
            s.backward(loss_D1)
            totals["loss_D1"] += loss_D1.detach()
        s.backward(loss_D2)
        totals["loss_D2"] += loss_D2.detach()

    if visuals is not None:
        visuals.update(source_image=images.detach().cpu(), source_label=labels.detach().cpu(),
                       source_pred=pred2.argmax(dim=1).cpu(), target_image=images_t.detach().cpu(),
                       target_pred=pred_target2.argmax(dim=1).cpu())
    values = s.reduce_losses(torch.stack([totals[name] for name in LOSS_NAMES])).tolist()  # one sync per iteration
    losses = dict(zip(LOSS_NAMES, values))
    for name, value in losses.items():
        if not math.isfinite(value):
            raise NonFiniteLossError(i_iter, name, value)
    s.step_optimizer(s.optimizer)
    if s.use_aux:
        s.step_optimizer(s.optimizer_D1)
    s.step_optimizer(s.optimizer_D2)
    s.end_step()
    return losses


# ---- outputs --------------------------------------------------------------------------------------------------------


def format_log_line(i_iter: int, num_steps: int, losses: dict[str, float]) -> str:
    """The original's per-iteration line."""
    return LOG_FORMAT.format(i_iter, num_steps, *(losses[name] for name in LOSS_NAMES))


def args_to_json(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(vars(args).items())}


def write_args_json(args: argparse.Namespace, snapshot_dir: Path) -> Path:
    text = json.dumps(args_to_json(args), indent=2, sort_keys=True) + "\n"
    return atomic_write(snapshot_dir / "args.json", lambda tmp: tmp.write_text(text))


def _to_rgb(image_bgr_minus_mean: torch.Tensor) -> np.ndarray:
    """[3, H, W] network input (BGR minus the mean) -> [H, W, 3] uint8 RGB."""
    arr = image_bgr_minus_mean.float().numpy().transpose(1, 2, 0) + IMG_MEAN
    return np.clip(arr[:, :, ::-1], 0, 255).astype(np.uint8)


def log_images(writer, visuals: dict, count: int, step: int) -> None:
    """Up to ``count`` source images (input, label, prediction) and target images (input, prediction)."""
    n_src = min(count, visuals["source_image"].shape[0])
    for k in range(n_src):
        label = visuals["source_label"][k].numpy().astype(np.int64)
        label[(label < 0) | (label > 255)] = 255
        writer.add_image(f"source/{k}/image", _to_rgb(visuals["source_image"][k]), step, dataformats="HWC")
        writer.add_image(f"source/{k}/label", colorize_rgb(label), step, dataformats="HWC")
        writer.add_image(f"source/{k}/prediction", colorize_rgb(visuals["source_pred"][k].numpy()), step,
                         dataformats="HWC")
    for k in range(min(count, visuals["target_image"].shape[0])):
        writer.add_image(f"target/{k}/image", _to_rgb(visuals["target_image"][k]), step, dataformats="HWC")
        writer.add_image(f"target/{k}/prediction", colorize_rgb(visuals["target_pred"][k].numpy()), step,
                         dataformats="HWC")


class StopRequest:
    """SIGINT/SIGTERM handler: the first signal asks the loop to stop at the end of the current iteration (after
    saving a training state); a second one exits at once (atomic writes leave no half-written file)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise SystemExit(128 + signum)
        self.signum = signum
        print(f"\nreceived {signal.Signals(signum).name}: stopping after this iteration (send it again to stop "
              "at once)", file=sys.stderr, flush=True)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _progress(total: int, initial: int):
    """tqdm with rate and ETA when stderr is a terminal (rank 0 only), else None."""
    if not (sys.stderr.isatty() and is_main_process()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, dynamic_ncols=True, unit="it", desc="train")


#: Arguments whose change between an interrupted run and its resumption changes the result.
_RESUME_SENSITIVE = ("model", "num_classes", "resnet_layers", "all_branches", "freeze_bn_stats", "batch_size",
                     "iter_size", "learning_rate", "learning_rate_D", "momentum", "weight_decay", "num_steps",
                     "power", "lambda_seg", "lambda_adv_target1", "lambda_adv_target2", "gan", "random_seed",
                     "input_size", "input_size_target", "random_mirror", "random_scale", "data_list",
                     "data_list_target", "modern_optim", "ignore_label", "amp", "amp_dtype", "source", "target", "city")


def load_resume_into(setup: TrainingSetup, state: dict, args: argparse.Namespace, path: Path) -> int:
    """Restore networks, optimizers and RNG states from a training state; returns the next iteration."""
    saved_args = state.get("args", {})
    current = args_to_json(args)
    for key in _RESUME_SENSITIVE:
        if key in saved_args and saved_args[key] != current.get(key):
            logger.warning("--resume %s: --%s was %r, now %r: the run will differ from an uninterrupted one",
                           path, key.replace("_", "-"), saved_args[key], current.get(key))
    if saved_args.get("world_size", 1) != get_world_size():
        logger.warning("--resume %s: saved by a run of %s process(es), now %d: the data order continues, but the "
                       "effective batch (processes x --batch-size x --iter-size) changes", path,
                       saved_args.get("world_size", 1), get_world_size())
    classes = [type(o).__name__ for o in (setup.optimizer, setup.optimizer_D1, setup.optimizer_D2)]
    if state.get("optimizer_class") != classes:
        raise ValueError(f"--resume {path}: saved with optimizers {state.get('optimizer_class')}, this run uses "
                         f"{classes}; pass --modern-optim exactly as in the interrupted run")
    for net, key in ((setup.model, "model"), (setup.model_D1, "model_D1"), (setup.model_D2, "model_D2")):
        load_checkpoint(net, state[key], model_name=args.model if key == "model" else "FCDiscriminator",
                        source=f"--resume {path} ({key})")
    setup.optimizer.load_state_dict(state["optimizer"])
    setup.optimizer_D1.load_state_dict(state["optimizer_D1"])
    setup.optimizer_D2.load_state_dict(state["optimizer_D2"])
    if setup.scaler is not None:
        if "scaler" in state:
            setup.scaler.load_state_dict(state["scaler"])
        else:
            logger.info("--resume %s: no gradient scaler state in it (saved without float16 --amp); starting with "
                        "a fresh scale", path)
    restore_rng_state(state["rng"])
    return int(state["next_iter"])


# ---- main -----------------------------------------------------------------------------------------------------------


def remove_stale_temporaries(snapshot_dir: Path) -> None:
    """Delete temporary files a killed run left behind (``.GTA5_*.pth.*.tmp`` etc. from the atomic writes); the
    snapshots themselves are always complete."""
    snapshots = tuple(f".{s.snapshot_prefix}_*.pth.*.tmp" for s in SOURCES.values())  # .GTA5_*, .SYNTHIA_*, ...
    for pattern in (*snapshots, f".{DEFAULT_RESUME_NAME}.*.tmp", ".args.json.*.tmp"):
        for tmp in snapshot_dir.glob(pattern):
            logger.info("removing %s (left by an interrupted write)", tmp)
            tmp.unlink(missing_ok=True)


def dataset_error_message(exc: Exception) -> str:
    """The one-line message of a :class:`DatasetError`, also when a DataLoader worker re-raised it.

    A worker's exception arrives as "Caught DatasetError in DataLoader worker process 0. Original Traceback
    ...": only its last line, the loader's own message, is useful to a user.
    """
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split("DatasetError: ", 1)[-1]
    return text


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 1


def main(args: argparse.Namespace) -> int:
    """Run the training; returns the exit status (0 done, 1 error, 128+signal when stopped by a signal).

    Under ``torchrun`` every rank runs this: it joins the process group first (NCCL on CUDA, gloo on the CPU; one
    GPU per rank, ``LOCAL_RANK``) and leaves it at the end; only rank 0 logs at INFO level and writes files.
    """
    if not logging.getLogger().handlers:
        level = logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        device = select_device(args.cpu, args.gpu)
        configure_backends(device, args.deterministic)
        init_distributed(device)
    except (ValueError, RuntimeError) as exc:
        return _error(str(exc))
    rc = 1
    try:
        rc = run_training(args, device)
    finally:
        cleanup_distributed(barrier=rc != 1)  # after an error another rank may not reach the barrier
    return rc


def run_training(args: argparse.Namespace, device: torch.device) -> int:
    """:func:`main` after the device and process-group set-up."""
    args.world_size = get_world_size()  # recorded in args.json and the training state (a resume compares it)
    try:
        validate_args(args)
        snapshot_dir = check_writable_dir(args.snapshot_dir, "--snapshot-dir")
        if args.tensorboard and is_main_process():
            check_writable_dir(args.log_dir, "--log-dir")
    except ValueError as exc:
        return _error(str(exc))
    if is_main_process():
        remove_stale_temporaries(snapshot_dir)
    resume_path: Path | None = None
    if args.resume:
        resume_path = find_resume_file(snapshot_dir) if args.resume == "auto" else Path(args.resume)
        if resume_path is None:
            logger.info("--resume auto: no %s in %s yet; starting afresh", DEFAULT_RESUME_NAME, snapshot_dir)
    args.resume_path = str(resume_path) if resume_path else None
    try:
        state = load_training_state(resume_path) if resume_path else None
        source_set, target_set = build_datasets(args)  # data checks first: before any expensive setup
        seed_everything(args.random_seed)
        setup = build_training(args, device)
        start_iter = load_resume_into(setup, state, args, resume_path) if state else 0
    except (DatasetError, CheckpointMismatchError, FileNotFoundError, IsADirectoryError, ValueError, OSError) as exc:
        return _error(str(exc))
    wrap_distributed(setup)  # no-op in one process

    per_iter = args.iter_size * args.batch_size * get_world_size()
    positions = state["data_positions"] if state else {"source": 0, "target": 0}
    source_loader, _ = build_loader(source_set, args, device, positions["source"], salt=0)
    target_loader, _ = build_loader(target_set, args, device, positions["target"], salt=1)
    nan_at = None if args.debug_nan_at is None else (args.debug_nan_at - start_iter) * args.iter_size
    source_batches = _source_batches(source_loader, nan_at)
    target_batches = _target_batches(target_loader)

    main_process = is_main_process()
    if main_process:
        write_args_json(args, snapshot_dir)
        print(f"exp = {args.snapshot_dir}", flush=True)
    if not setup.use_aux:
        reason = ("DeeplabVGG has a single output" if args.model == "DeeplabVGG"
                  else "single-level setting (--lambda-seg 0 --lambda-adv-target1 0)")
        logger.info("%s: the auxiliary segmentation loss and discriminator D1 are skipped (they cannot change "
                    "the main output); loss_seg1, loss_adv1 and loss_D1 are logged as 0", reason)
    resume_file = snapshot_dir / DEFAULT_RESUME_NAME
    end_iter = min(args.num_steps, args.num_steps_stop)
    if start_iter >= end_iter:
        print(f"nothing to do: the training state is at iteration {start_iter}, the run stops at {end_iter}")
        return 0
    writer = None
    if args.tensorboard and main_process:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(args.log_dir)

    def save_state(next_iter: int) -> None:
        if main_process:
            done = {"source": positions["source"] + (next_iter - start_iter) * per_iter,
                    "target": positions["target"] + (next_iter - start_iter) * per_iter}
            save_training_state(resume_file, next_iter=next_iter, model=setup.model, model_D1=setup.model_D1,
                                model_D2=setup.model_D2, optimizer=setup.optimizer,
                                optimizer_D1=setup.optimizer_D1, optimizer_D2=setup.optimizer_D2,
                                data_positions=done, args=args_to_json(args),
                                extra={"scaler": setup.scaler.state_dict()} if setup.scaler is not None else None)

    stop = StopRequest().install()
    bar = _progress(end_iter, start_iter)
    emit = bar.write if bar is not None else functools.partial(print, flush=True)
    visuals: dict = {}
    try:
        for i_iter in range(start_iter, args.num_steps):
            if args.debug_signal_at == i_iter and get_rank() == get_world_size() - 1:
                os.kill(os.getpid(), signal.SIGTERM)  # testing hook: a signal mid-iteration (to the last rank only)
            snapshot_now = i_iter >= args.num_steps_stop - 1 or (i_iter % args.save_pred_every == 0 and i_iter != 0)
            want_visuals = writer is not None and args.save_num_images > 0 and snapshot_now
            try:
                losses = train_step(setup, source_batches, target_batches, i_iter,
                                    visuals=visuals if want_visuals else None)
            except NonFiniteLossError as exc:
                return _error(f"{exc}; stopping (snapshots already written are intact; the weights of this "
                              "iteration were not updated or saved)")
            except DatasetError as exc:  # a file that broke after the start-up checks (read by a loader worker)
                return _error(f"iteration {i_iter}: {dataset_error_message(exc)}; stopping (snapshots already "
                              "written are intact; run tools/check_data.py, fix the file, then --resume auto)")
            if main_process:
                if i_iter % args.log_every == 0 or i_iter == end_iter - 1:
                    emit(format_log_line(i_iter, args.num_steps, losses))
                if bar is not None:
                    bar.set_postfix({k: f"{losses[k]:.3f}" for k in ("loss_seg2", "loss_adv2", "loss_D2")},
                                    refresh=False)
                    bar.update(1)
                if writer is not None and i_iter % 10 == 0:
                    for name, value in losses.items():
                        writer.add_scalar(name, value, i_iter)

            if i_iter >= args.num_steps_stop - 1:
                if main_process:
                    emit("save model ...")
                    save_snapshot(snapshot_dir, args.num_steps_stop, setup.model, setup.model_D1, setup.model_D2,
                                  prefix=snapshot_prefix(args))
                    save_state(i_iter + 1)
                    if writer is not None and visuals:
                        log_images(writer, visuals, args.save_num_images, i_iter)
                break
            if i_iter % args.save_pred_every == 0 and i_iter != 0:
                if main_process:
                    emit("taking snapshot ...")
                    save_snapshot(snapshot_dir, i_iter, setup.model, setup.model_D1, setup.model_D2,
                                  prefix=snapshot_prefix(args))
                    save_state(i_iter + 1)
                    if writer is not None and visuals:
                        log_images(writer, visuals, args.save_num_images, i_iter)
            signum = all_reduce_max_int(stop.signum or 0, device)  # a signal to any rank stops them all here
            if signum:
                save_state(i_iter + 1)
                if main_process:
                    print(f"{signal.Signals(signum).name}: saved the training state after iteration {i_iter} to "
                          f"{resume_file}; continue with --resume {resume_file} (or --resume auto)",
                          file=sys.stderr, flush=True)
                return 128 + signum
    finally:
        stop.restore()
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        source_batches.close()
        target_batches.close()
        shutdown_loader(source_loader)
        shutdown_loader(target_loader)
    if args.debug_dump_ranks:  # testing hook: every rank's final weights, to compare them
        dump = Path(args.debug_dump_ranks) / f"rank{get_rank()}.pth"
        atomic_torch_save({f"{key}.{k}": v.detach().cpu() for key, net in
                           (("model", setup.model), ("D1", setup.model_D1), ("D2", setup.model_D2))
                           for k, v in unwrap(net).state_dict().items()}, dump)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
