"""Train AdaptSegNet: DeepLab-v2 on GTA5 (labelled) adapted to Cityscapes (unlabelled) by output-space adversaries.

Faithful to the original PyTorch 0.4 script step for step (same flags and defaults, same losses, the same optimizer
arithmetic including its quirks: :func:`train_step`, ``utils/optim.py``), plus resumable training, clear errors,
mixed precision, multi-GPU (``torchrun``) and other source/target settings, all opt-in.

    python train_gta2cityscapes_multi.py --snapshot-dir ./snapshots/GTA2Cityscapes_multi \\
        --lambda-seg 0.1 --lambda-adv-target1 0.0002 --lambda-adv-target2 0.001
    python train_gta2cityscapes_multi.py ... --resume auto      # continue an interrupted run
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dataset.checks import DatasetError, dataset_error_message
from dataset.labels import IMG_MEAN, colorize_rgb
from dataset.transforms import display_rgb, to_network_input
from dataset.settings import CITIES, SOURCES, TARGETS, resolve_setting
from model import FCDiscriminator, build_model
from utils.checkpoint import (RESUME_NAME, SnapshotDirBusy, SnapshotDirLock, StopRequest, find_resume_file,
                              load_training_state, remove_stale_temporaries, restore_training_state, save_snapshot,
                              save_training_state, snapshot_space_warning)
from utils.cli import ArgumentParser, UsageError, fail, parse_layers, parse_size, repo_path, usable_cpus
from utils.device import configure_backends, resolve_amp_dtype, seed_everything, select_device
from utils.distributed import (all_reduce_gradients_, all_reduce_max_int, all_reduce_mean_, broadcast_module_,
                               cleanup_distributed, get_rank, get_world_size, init_distributed, is_main_process,
                               unwrap)
from utils.files import WriteError, atomic_write, check_writable_dir
from utils.loss import GAN_CHOICES, SOURCE_LABEL, TARGET_LABEL, AdversarialLoss, CrossEntropy2d
from utils.optim import Adam04, FaithfulSGD, adjust_learning_rate, lr_poly
from utils.sampling import shutdown_loader, training_loader
from utils.weights import (RESTORE_FROM_INIT, CheckpointMismatchError, load_weights_file,
                           restore_segmentation_weights, torchvision_restore_weights)

logger = logging.getLogger("train")
PROG = "train_gta2cityscapes_multi.py"

#: The original's defaults that other code reads (every default is in :func:`get_args_parser`).
NUM_WORKERS = 4
RESTORE_FROM = RESTORE_FROM_INIT  # the ImageNet + COCO DeepLab-v2 initialisation
#: The discriminators' five stride-2 convs need at least this many pixels per side.
MIN_INPUT_SIDE = 32
#: The six logged losses in the order of the log line: the loss dict's keys and the original's TensorBoard tags.
LOSS_NAMES = ("loss_seg1", "loss_seg2", "loss_adv_target1", "loss_adv_target2", "loss_D1", "loss_D2")
LOG_FORMAT = ("iter = {0:8d}/{1:8d}, loss_seg1 = {2:.3f} loss_seg2 = {3:.3f} loss_adv1 = {4:.3f}, "
              "loss_adv2 = {5:.3f} loss_D1 = {6:.3f} loss_D2 = {7:.3f}")
#: Flags whose default depends on --source / --target (``default=None``, filled by :func:`fill_setting_defaults`).
SETTING_FLAGS = {"data_dir": "source", "data_list": "source", "input_size": "source",
                 "data_dir_target": "target", "data_list_target": "target", "input_size_target": "target"}


def get_args_parser() -> argparse.ArgumentParser:
    """The original's flags (names and defaults unchanged) and, in their own groups, the flags beyond it."""
    parser = ArgumentParser(prog=PROG, description="AdaptSegNet training: DeepLab-v2 on a labelled source adapted "
                            "to an unlabelled target by output-space discriminators (GTA5 -> Cityscapes; other "
                            "settings with --source / --target).")
    per_source = "default: the --source setting's (dataset/settings.py)"
    per_target = "default: the --target setting's (dataset/settings.py)"
    add = parser.add_argument
    add("--model", default="DeepLab", choices=("DeepLab", "DeeplabMulti", "DeeplabVGG"),
        help="segmentation network: DeepLab (= DeeplabMulti, multi-level ResNet-101) or DeeplabVGG (single output)")
    add("--target", default="cityscapes", choices=tuple(TARGETS), help="target domain (crosscity needs --city)")
    add("--batch-size", type=int, default=1, help="images per domain in one forward pass")
    add("--iter-size", type=int, default=1, help="forward/backward passes whose gradients add up to one step")
    add("--num-workers", type=int, default=min(NUM_WORKERS, usable_cpus()),
        help=f"data-loading processes per domain (the original's {NUM_WORKERS}, at most the usable CPU cores)")
    add("--data-dir", help=f"source dataset directory ({per_source}; GTA5: ./data/GTA5)")
    add("--data-list", help=f"file listing the source images ({per_source}; GTA5: ./dataset/gta5_list/train.txt)")
    add("--ignore-label", type=int, default=255, help="label value the segmentation loss ignores")
    add("--input-size", type=parse_size, metavar="W,H",
        help=f"size the source images are resized to ({per_source}; GTA5: 1280,720)")
    add("--data-dir-target", help=f"target dataset directory ({per_target}; Cityscapes: ./data/Cityscapes/data)")
    add("--data-list-target",
        help=f"file listing the target images ({per_target}; Cityscapes: ./dataset/cityscapes_list/train.txt)")
    add("--input-size-target", type=parse_size, metavar="W,H",
        help=f"size the target images are resized to ({per_target}; Cityscapes: 1024,512)")
    add("--is-training", action="store_true",
        help="accepted for compatibility, no effect: BatchNorm statistics always update during training (use "
             "--freeze-bn-stats to keep them fixed)")
    add("--learning-rate", type=float, default=2.5e-4,
        help="base learning rate of the segmentation network (poly decay; its classifiers at 10x)")
    add("--learning-rate-D", type=float, default=1e-4, help="base learning rate of the discriminators (poly decay)")
    add("--lambda-seg", type=float, default=0.1, help="weight of the auxiliary (layer5) segmentation loss")
    add("--lambda-adv-target1", type=float, default=0.0002,
        help="weight of the adversarial loss on the auxiliary output (discriminator D1)")
    add("--lambda-adv-target2", type=float, default=0.001,
        help="weight of the adversarial loss on the main output (discriminator D2)")
    add("--momentum", type=float, default=0.9, help="SGD momentum of the segmentation network")
    add("--not-restore-last", action="store_true",
        help="do not copy the classifiers (layer5/layer6, VGG's classifier) from --restore-from")
    add("--num-classes", type=int, default=19, help="classes the network predicts")
    add("--num-steps", type=int, default=250000, help="horizon of the poly learning-rate schedule (iterations)")
    add("--num-steps-stop", type=int, default=150000, help="iterations after which training stops")
    add("--power", type=float, default=0.9, help="exponent of the poly learning-rate decay")
    add("--random-mirror", action="store_true", help="randomly mirror the training images (both domains)")
    add("--random-scale", action="store_true", help="randomly rescale the source images (0.5x to 1.5x)")
    add("--random-seed", type=int, default=1234,
        help="seed of everything random (weights, data order, augmentation)")
    add("--restore-from", default=RESTORE_FROM,
        help="initial weights: a file or URL (the ImageNet+COCO DeepLab-v2 init file, or a trained snapshot), "
             "'none' (the model's own init) or 'torchvision[:WEIGHTS]' (torchvision's ImageNet backbone, "
             "docs/models.md)")
    add("--save-num-images", type=int, default=2, help="images per domain shown in TensorBoard at each snapshot")
    add("--save-pred-every", type=int, default=5000, help="iterations between snapshots (and TensorBoard images)")
    add("--snapshot-dir", default="./snapshots/", help="folder of the snapshots, resume.pth and args.json")
    add("--weight-decay", type=float, default=0.0005, help="L2 weight decay of the segmentation network")
    add("--cpu", action="store_true", help="run on the CPU")
    add("--gpu", type=int, help="CUDA device to run on (default 0; an error when the machine has no such GPU)")
    add("--tensorboard", action="store_true", help="write TensorBoard logs to --log-dir")
    add("--log-dir", default="./log", help="folder of the TensorBoard logs")
    add("--set", default="train", help="split folder of the target images (Cityscapes: leftImg8bit/<set>)")
    add("--gan", default="Vanilla", choices=GAN_CHOICES,
        help="adversarial objective: Vanilla (binary cross-entropy) or LS (least squares)")

    new = parser.add_argument_group("beyond the original")
    new.add_argument("--resume", metavar="PATH|auto",
                     help=f"continue from a training state file; 'auto': {RESUME_NAME} in --snapshot-dir if there "
                          "is one, else start afresh")
    new.add_argument("--restore-from-D1", metavar="PATH",
                     help="initial weights of discriminator D1 (e.g. a GTA5_<i>_D1.pth snapshot)")
    new.add_argument("--restore-from-D2", metavar="PATH",
                     help="initial weights of discriminator D2 (e.g. a GTA5_<i>_D2.pth snapshot)")
    new.add_argument("--modern-optim", action="store_true",
                     help="today's torch.optim.SGD on deduplicated parameter groups and torch.optim.Adam, instead "
                          "of the original's PyTorch 0.4 arithmetic (duplicated backbone listing, eps before the "
                          "bias correction)")
    new.add_argument("--freeze-bn-stats", action="store_true",
                     help="keep BatchNorm in eval mode (running statistics, not updated) during training")
    new.add_argument("--all-branches", action="store_true",
                     help="sum all four classifier branches (the original summed only the first two)")
    new.add_argument("--resnet-layers", type=parse_layers, default=(3, 4, 23, 3), metavar="L1,L2,L3,L4",
                     help="ResNet block counts (3,4,23,3 is ResNet-101; small values for tests)")
    new.add_argument("--log-every", type=int, default=1, metavar="N", help="print the loss line every N iterations")
    new.add_argument("--source", choices=tuple(SOURCES),
                     help="labelled source domain (default gta5; cityscapes with --target crosscity); the flags "
                          "not given take the setting's defaults; snapshots are named after it (GTA5_<i>.pth, "
                          "SYNTHIA_<i>.pth, Synscapes_<i>.pth, Cityscapes_<i>.pth)")
    new.add_argument("--city", choices=CITIES, help="the Cross-City city of --target crosscity")

    speed = parser.add_argument_group("speed and multi-GPU (beyond the original; several GPUs: torchrun "
                                      "--nproc-per-node=N train_gta2cityscapes_multi.py ...)")
    speed.add_argument("--amp", action="store_true",
                       help="mixed precision: the networks' forward passes under autocast (bfloat16 where supported, "
                            "else float16 with a gradient scaler); losses, softmax and optimizers stay float32")
    speed.add_argument("--amp-dtype", default="auto", choices=("auto", "bfloat16", "float16"),
                       help="autocast dtype of --amp (auto: bfloat16 on the CPU and on GPUs that support it, else "
                            "float16)")
    speed.add_argument("--channels-last", action="store_true",
                       help="networks and inputs in channels_last memory format (faster convolutions on tensor-core "
                            "GPUs, above all with --amp)")
    speed.add_argument("--deterministic", action="store_true",
                       help="deterministic cuDNN algorithms and torch.use_deterministic_algorithms(warn_only=True), "
                            "no cuDNN autotuning (off: cudnn.benchmark, as the original)")
    speed.add_argument("--data-cache", metavar="DIR",
                       help="read the frames already resized from this cache (tools/prepare_cache.py, docs/data.md): "
                            "the same batches, a fraction of the loaders' CPU time; not with --random-scale")
    return parser


def fill_setting_defaults(args: argparse.Namespace) -> None:
    """Fill the flags left at ``None`` from the ``--source`` / ``--target`` rows of ``dataset/settings.py``.

    ``--source`` defaults to the target's paper setting (gta5 for cityscapes, cityscapes for crosscity). For the
    default GTA5 -> Cityscapes these are the original's defaults. Idempotent.
    """
    args.source = args.source or TARGETS[args.target].default_source
    rows = {"source": SOURCES[args.source], "target": TARGETS[args.target]}
    for dest, domain in SETTING_FLAGS.items():
        if getattr(args, dest) is None:
            setattr(args, dest, getattr(rows[domain], dest.removesuffix("_target")))


def validate_args(args: argparse.Namespace) -> None:
    """Fill the per-setting defaults, then raise :class:`~utils.cli.UsageError` naming the flag for values the run
    cannot use (before any work). Default list files are found in the repository when run from another folder."""
    fill_setting_defaults(args)
    args.data_list = repo_path(args.data_list, "--data-list")
    args.data_list_target = repo_path(args.data_list_target, "--data-list-target")
    try:
        resolve_setting(args.source, args.target, args.city)
        torchvision_restore_weights(args.restore_from)  # "torchvision:" without a weights name fails here
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.source == args.target == "cityscapes":
        logger.warning("--source cityscapes --target cityscapes: adapting Cityscapes to itself")
    for flag in ("batch_size", "iter_size", "num_steps", "num_steps_stop", "save_pred_every", "log_every",
                 "num_classes"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    for flag in ("num_workers", "save_num_images"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    if args.model == "DeeplabVGG" and args.restore_from == RESTORE_FROM:
        raise UsageError("--model DeeplabVGG: the default --restore-from is the ResNet-101 initialisation and does "
                         "not fit VGG-16; pass --restore-from with a torchvision-layout VGG-16 state_dict (features "
                         "are copied), 'torchvision' (its ImageNet VGG-16), a DeeplabVGG checkpoint, or 'none'")
    if args.data_cache and args.random_scale:
        raise UsageError(f"--random-scale rescales the full-resolution frames, which --data-cache {args.data_cache} "
                         "does not hold (its frames are resized to the input size): drop one of the two")
    for flag in ("input_size", "input_size_target"):
        w, h = getattr(args, flag)
        if min(w, h) < MIN_INPUT_SIDE:
            raise UsageError(f"--{flag.replace('_', '-')} {w},{h}: the discriminators need W and H of at least "
                             f"{MIN_INPUT_SIDE} pixels")


# ---- set-up ---------------------------------------------------------------------------------------------------------


@dataclass
class Trainer:
    """Everything :func:`train_step` needs. ``model`` may be wrapped in DDP (snapshots unwrap it)."""

    args: argparse.Namespace
    device: torch.device
    model: nn.Module
    model_D1: nn.Module
    model_D2: nn.Module
    optimizer: torch.optim.Optimizer
    optimizer_D1: torch.optim.Optimizer
    optimizer_D2: torch.optim.Optimizer
    seg_loss: nn.Module
    adv_loss: nn.Module
    #: aux classifier loss and D1 computed (False: a single-output model, or the single-level shortcut)
    use_aux: bool
    #: ``--amp``'s autocast dtype (None: float32), and the gradient scaler (enabled for float16 only)
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    memory_format: torch.memory_format

    @property
    def nets(self) -> dict[str, nn.Module]:
        return {"model": self.model, "model_D1": self.model_D1, "model_D2": self.model_D2}

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"optimizer": self.optimizer, "optimizer_D1": self.optimizer_D1, "optimizer_D2": self.optimizer_D2}


def build_networks(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The segmentation network (``--restore-from``'s weights unless resuming) and D1, D2, built in the original's
    order (network, D1, D2: the seeded RNG gives the same initial weights), in train mode, on ``device``."""
    resuming = bool(getattr(args, "resume_path", None))
    model = build_model(args.model, args.num_classes, all_branches=args.all_branches,
                        freeze_bn_stats=args.freeze_bn_stats, layers=args.resnet_layers)
    if not resuming:
        restore_segmentation_weights(model, args.restore_from, args.model, args.num_classes, args.not_restore_last)
    discriminators = FCDiscriminator(num_classes=args.num_classes), FCDiscriminator(num_classes=args.num_classes)
    for net, path, flag in zip(discriminators, (args.restore_from_D1, args.restore_from_D2),
                               ("--restore-from-D1", "--restore-from-D2")):
        if path and not resuming:
            load_weights_file(net, path, flag, "FCDiscriminator")
    return tuple(net.train().to(device) for net in (model, *discriminators))


def build_optimizers(args: argparse.Namespace, model: nn.Module, model_D1: nn.Module, model_D2: nn.Module):
    """The original's optimizers: SGD on ``model.optim_parameters`` (backbone with its duplicate listings at lr,
    classifiers at 10x) and Adam(betas=(0.9, 0.99)) per discriminator, with PyTorch 0.4's arithmetic
    (:class:`~utils.optim.FaithfulSGD`, :class:`~utils.optim.Adam04`); ``--modern-optim``: today's torch.optim on
    deduplicated groups."""
    if args.modern_optim:
        sgd, adam, groups = torch.optim.SGD, torch.optim.Adam, model.optim_parameters_dedup(args.learning_rate)
    else:
        sgd, adam, groups = FaithfulSGD, Adam04, model.optim_parameters(args.learning_rate)
    optimizer = sgd(groups, lr=args.learning_rate, momentum=args.momentum, weight_decay=args.weight_decay)
    return (optimizer, *(adam(d.parameters(), lr=args.learning_rate_D, betas=(0.9, 0.99)) for d in (model_D1, model_D2)))


def is_single_level(args: argparse.Namespace) -> bool:
    """No auxiliary path: a single-output model, or ``--lambda-seg 0 --lambda-adv-target1 0`` (the shortcut: the
    auxiliary output then cannot change the main output, so neither it nor D1 is computed)."""
    return args.model == "DeeplabVGG" or (args.lambda_seg == 0 and args.lambda_adv_target1 == 0)


def build_training(args: argparse.Namespace, device: torch.device) -> Trainer:
    """Networks, optimizers, losses and the speed options for :func:`train_step`.

    ``--channels-last``: networks (in place, the optimizers keep their parameters) and inputs in channels_last.
    ``--amp``: forward passes under ``torch.autocast`` in bfloat16 (or float16, :func:`utils.device.resolve_amp_dtype`);
    parameters, gradients, optimizers, the upsampled logits, losses and softmax stay float32. float16 only: one
    ``GradScaler`` shared by the three optimizers (bfloat16 has float32's exponent range and needs none).
    """
    model, model_D1, model_D2 = build_networks(args, device)
    amp_dtype = resolve_amp_dtype(device, args.amp_dtype) if args.amp else None
    if not args.amp and args.amp_dtype != "auto":
        logger.warning("--amp-dtype %s has no effect without --amp (training in float32)", args.amp_dtype)
    if amp_dtype is not None:
        logger.info("--amp: autocast to %s%s", str(amp_dtype).replace("torch.", ""),
                    " with a gradient scaler" if amp_dtype == torch.float16 else "")
    memory_format = torch.channels_last if args.channels_last else torch.preserve_format
    if args.channels_last:
        for net in (model, model_D1, model_D2):
            net.to(memory_format=torch.channels_last)
    return Trainer(args, device, model, model_D1, model_D2, *build_optimizers(args, model, model_D1, model_D2),
                   seg_loss=CrossEntropy2d(ignore_label=args.ignore_label), adv_loss=AdversarialLoss(args.gan),
                   use_aux=not is_single_level(args), amp_dtype=amp_dtype,
                   scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
                   memory_format=memory_format)


def wrap_distributed(t: Trainer) -> None:
    """Multi-process training (``torchrun``): the segmentation network in ``DistributedDataParallel``; the
    discriminators start equal (broadcast) and their gradients are averaged by hand in :func:`train_step`.

    Why not DDP for the discriminators: each iteration uses them frozen inside the generator's adversarial backward
    and only then trains them, and D1 is unused in the single-level setting; DDP expects every forward to be
    followed by a backward reaching all of its parameters. ``find_unused_parameters``: the classifiers' last two
    branches never act (the original's quirk) and layer5 is unused in the single-level setting; DDP leaves such
    gradients ``None``, so the faithful SGD skips them (no weight decay), as in one process. BatchNorm stays
    per-rank (each rank's own images, like the original's batch of 1); its running statistics are rank 0's.
    """
    if get_world_size() == 1:
        return
    device_ids = [t.device.index] if t.device.type == "cuda" else None
    t.model = nn.parallel.DistributedDataParallel(t.model, device_ids=device_ids, find_unused_parameters=True)
    broadcast_module_(t.model_D1)
    broadcast_module_(t.model_D2)


def build_datasets(args: argparse.Namespace):
    """The training sets of ``--source`` / ``--target`` (``dataset/settings.py``), as the original built GTA5 and
    Cityscapes (their checks raise ``DatasetError``): source items ``(image, label, size, name)``, target items
    ``(image, size, name)``, each list repeated to cover every sample of the run (all ranks)."""
    max_iters = args.num_steps * args.iter_size * args.batch_size * get_world_size()
    # uint8 items: the float conversion happens on the device (upsampled_outputs), bitwise the original's input
    common = dict(max_iters=max_iters, mirror=args.random_mirror, mean=IMG_MEAN, seed=args.random_seed, uint8=True,
                  data_cache=getattr(args, "data_cache", None))
    source = SOURCES[args.source].dataset(args.data_dir, args.data_list, crop_size=args.input_size,
                                          scale=args.random_scale, ignore_label=args.ignore_label, **common)
    target_cls = TARGETS[args.target].dataset
    if args.target == "crosscity":
        target = target_cls(args.data_dir_target, args.city, args.data_list_target, crop_size=args.input_size_target,
                            scale=False, set=args.set, **common)
    else:
        target = target_cls(args.data_dir_target, args.data_list_target, crop_size=args.input_size_target,
                            scale=False, set=args.set, **common)
    return source, target


def source_batches(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for images, labels, _, _ in loader:
        yield images, labels


def target_batches(loader) -> Iterator[torch.Tensor]:
    for images, _, _ in loader:
        yield images


# ---- one iteration --------------------------------------------------------------------------------------------------


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; raised before any optimizer step of that iteration."""

    def __init__(self, i_iter: int, name: str, value: float) -> None:
        super().__init__(f"non-finite loss at iteration {i_iter}: {name} = {value}")


def set_requires_grad(nets, flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad = flag


def upsampled_outputs(t: Trainer, images: torch.Tensor, size_wh: tuple[int, int]) -> list[torch.Tensor]:
    """The network's outputs for a loader batch ``images`` (uint8 [N, H, W, 3] RGB, converted on the device to the
    float32 [N, 3, H, W] BGR-minus-mean input by :func:`~dataset.transforms.to_network_input`; or that float32
    input): ``[aux, main]`` (``[main]`` without the auxiliary path), each float32 logits [N, C, H', W'] upsampled to
    ``size_wh`` with the original's ``nn.Upsample(mode='bilinear', align_corners=True)``. Under ``--amp`` only the
    1/8-resolution logits are rounded: they are upcast before upsampling, so the losses and the softmax fed to the
    discriminators are float32."""
    x = to_network_input(images, t.device, t.memory_format)  # a quarter of the bytes crossed as uint8
    with torch.autocast(t.device.type, dtype=t.amp_dtype, enabled=t.amp_dtype is not None):
        out = t.model(x)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    outs = outs if t.use_aux else outs[-1:]
    return [F.interpolate(o.float(), size=(size_wh[1], size_wh[0]), mode="bilinear", align_corners=True)
            for o in outs]


def adversarial_losses(t: Trainer, discriminators, outputs: list[torch.Tensor], label: int) -> list[torch.Tensor]:
    """``adv_loss(D(softmax(output)), label)`` for each (discriminator, output) pair (D under ``--amp``'s autocast,
    the loss on its float32 logits)."""
    losses = []
    for d, out in zip(discriminators, outputs):
        with torch.autocast(t.device.type, dtype=t.amp_dtype, enabled=t.amp_dtype is not None):
            d_out = d(F.softmax(out, dim=1))
        losses.append(t.adv_loss(d_out.float(), label))
    return losses


def train_step(t: Trainer, source_iter: Iterator, target_iter: Iterator, i_iter: int,
               visuals: dict | None = None) -> dict[str, float]:
    """One iteration of the original loop; returns the six logged losses (:data:`LOSS_NAMES`).

    ``source_iter`` yields ``(images [N,3,H,W], labels [N,H,W])``, ``target_iter`` yields ``images``; each is drawn
    ``iter_size`` times. The losses are accumulated as the original logged them (segmentation and adversarial terms
    divided by ``iter_size``; the discriminator terms as backpropagated, i.e. divided by ``iter_size`` and by 2,
    summed over source and target); under ``torchrun`` they are the means over the ranks. Raises
    :class:`NonFiniteLossError` before any optimizer step if one of them is not finite. ``visuals``: when given,
    receives the last sub-step's inputs and argmax predictions (CPU) for TensorBoard.
    """
    a = t.args
    discriminators = [t.model_D1, t.model_D2] if t.use_aux else [t.model_D2]
    seg_weights = [a.lambda_seg, 1.0] if t.use_aux else [1.0]  # the aux output's loss is weighted, the main's not
    adv_weights = [a.lambda_adv_target1, a.lambda_adv_target2] if t.use_aux else [a.lambda_adv_target2]
    first = 0 if t.use_aux else 1  # index of the first computed output in LOSS_NAMES' pairs
    for opt in t.optimizers.values():
        opt.zero_grad()
    adjust_learning_rate(t.optimizer, lr_poly(a.learning_rate, i_iter, a.num_steps, a.power))
    for opt in (t.optimizer_D1, t.optimizer_D2):
        adjust_learning_rate(opt, lr_poly(a.learning_rate_D, i_iter, a.num_steps, a.power))
    totals = torch.zeros(len(LOSS_NAMES), device=t.device)  # seg1, seg2, adv1, adv2, D1, D2

    for _ in range(a.iter_size):
        # 1. Segmentation on the source: supervised cross-entropy on both outputs (discriminators frozen, so that
        #    the generator's backward passes accumulate no gradient in them).
        set_requires_grad(discriminators, False)
        images, labels = next(source_iter)
        labels = labels.to(t.device, non_blocking=True).long()
        source_out = upsampled_outputs(t, images, a.input_size)
        seg = [t.seg_loss(out, labels) for out in source_out]
        t.scaler.scale(sum(w * loss for w, loss in zip(seg_weights, seg)) / a.iter_size).backward()

        # 2. Adversarial on the target: make the target outputs look like source ones to the frozen
        #    discriminators, i.e. their loss against the *source* label.
        images_t = next(target_iter)
        target_out = upsampled_outputs(t, images_t, a.input_size_target)
        adv = adversarial_losses(t, discriminators, target_out, SOURCE_LABEL)
        t.scaler.scale(sum(w * loss for w, loss in zip(adv_weights, adv)) / a.iter_size).backward()
        for k, (s_loss, a_loss) in enumerate(zip(seg, adv), start=first):
            totals[k] += s_loss.detach() / a.iter_size
            totals[2 + k] += a_loss.detach() / a.iter_size

        # 3. and 4. Discriminators on the detached outputs: source ones are "source" (label 0), target ones
        #    "target" (label 1).
        set_requires_grad(discriminators, True)
        for outputs, label in ((source_out, SOURCE_LABEL), (target_out, TARGET_LABEL)):
            d_losses = adversarial_losses(t, discriminators, [o.detach() for o in outputs], label)
            for k, loss in enumerate(d_losses, start=first):
                loss = loss / a.iter_size / 2
                t.scaler.scale(loss).backward()
                totals[4 + k] += loss.detach()

    if visuals is not None:
        visuals.update(source_image=images.detach().cpu(), source_label=labels.detach().cpu(),
                       source_pred=source_out[-1].argmax(dim=1).cpu(), target_image=images_t.detach().cpu(),
                       target_pred=target_out[-1].argmax(dim=1).cpu())
    losses = dict(zip(LOSS_NAMES, all_reduce_mean_(totals).tolist()))  # one device sync per iteration
    for name, value in losses.items():
        if not math.isfinite(value):
            raise NonFiniteLossError(i_iter, name, value)
    t.scaler.step(t.optimizer)
    for d, opt in zip((t.model_D1, t.model_D2), (t.optimizer_D1, t.optimizer_D2)):
        if d in discriminators:
            all_reduce_gradients_(d.parameters())  # what DDP would do for them (see wrap_distributed)
            t.scaler.step(opt)
    t.scaler.update()
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


def log_images(writer, visuals: dict, count: int, step: int) -> None:
    """Up to ``count`` source images (input, label, prediction) and target images (input, prediction)."""
    for domain in ("source", "target"):
        for k in range(min(count, visuals[f"{domain}_image"].shape[0])):
            # uint8 [H, W, 3] RGB as loaded, or float32 [3, H, W] BGR minus the mean (--random-scale)
            shown = {"image": display_rgb(visuals[f"{domain}_image"][k], IMG_MEAN),
                     "prediction": colorize_rgb(visuals[f"{domain}_pred"][k].numpy())}
            if domain == "source":
                label = visuals["source_label"][k].numpy().astype(np.int64)
                label[(label < 0) | (label > 255)] = 255
                shown["label"] = colorize_rgb(label)
            for name, image in shown.items():
                writer.add_image(f"{domain}/{k}/{name}", image, step, dataformats="HWC")


def snapshot_prefix(args: argparse.Namespace) -> str:
    """Snapshot file prefix of the run's source: ``GTA5`` (the original's ``GTA5_<i>.pth``), ``SYNTHIA``, ..."""
    return SOURCES[args.source or "gta5"].snapshot_prefix


# ---- the run --------------------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    """Run the training; returns the exit status (0 done, 1 data or runtime error, 2 usage error, 128+signal when
    stopped by a signal).

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
        return fail(PROG, str(exc), 2 if isinstance(exc, UsageError) else 1)
    rc, lock = 1, SnapshotDirLock()
    try:
        rc = train(args, device, lock)
    finally:
        lock.release()
        cleanup_distributed(barrier=rc not in (1, 2))  # after an error another rank may not reach the barrier
    return rc


def claim_snapshot_dir(lock: SnapshotDirLock, snapshot_dir: Path, device: torch.device, create: bool) -> None:
    """Rank 0 locks ``--snapshot-dir`` (creating it first with ``create``; without, only if it exists already) and
    every rank learns the verdict: all raise :class:`SnapshotDirBusy` when another run holds it."""
    busy = None
    if is_main_process() and not lock.held and (create or snapshot_dir.is_dir()):
        try:
            if create:
                check_writable_dir(snapshot_dir, "--snapshot-dir")
            lock.acquire(snapshot_dir)
        except SnapshotDirBusy as exc:
            busy = exc
    if all_reduce_max_int(busy is not None, device):
        raise busy or SnapshotDirBusy(f"--snapshot-dir {snapshot_dir} is in use by another training run")


def prepare(args: argparse.Namespace, device: torch.device, lock: SnapshotDirLock):
    """Everything before the first iteration, cheapest checks first: the flags, the snapshot folder's lock (when it
    exists), the data, the training state, the networks; only then the folders are created, so that a refused run
    leaves nothing behind. Returns ``(trainer, source set, target set, training state or None, first iteration)``."""
    args.world_size = get_world_size()  # recorded in args.json and the training state (a resume compares it)
    validate_args(args)
    snapshot_dir = Path(args.snapshot_dir)
    claim_snapshot_dir(lock, snapshot_dir, device, create=False)  # a second run on a folder in use stops here
    resume_path = None
    if args.resume:
        resume_path = find_resume_file(snapshot_dir) if args.resume == "auto" else Path(args.resume)
        if resume_path is None:
            logger.info("--resume auto: no %s in %s yet; starting afresh", RESUME_NAME, snapshot_dir)
    args.resume_path = str(resume_path) if resume_path else None
    state = load_training_state(resume_path) if resume_path else None
    source_set, target_set = build_datasets(args)  # data checks: before any expensive set-up
    seed_everything(args.random_seed)
    t = build_training(args, device)
    start_iter = restore_training_state(state, resume_path, nets=t.nets, optimizers=t.optimizers, scaler=t.scaler,
                                        args=args_to_json(args), model_name=args.model) if state else 0
    claim_snapshot_dir(lock, snapshot_dir, device, create=True)
    if args.tensorboard and is_main_process():
        check_writable_dir(args.log_dir, "--log-dir")
    if is_main_process():
        remove_stale_temporaries(snapshot_dir)
    return t, source_set, target_set, state, start_iter


def train(args: argparse.Namespace, device: torch.device, lock: SnapshotDirLock) -> int:
    """:func:`main` after the device and process-group set-up: :func:`prepare`, then the loop and its outputs."""
    try:
        t, source_set, target_set, state, start_iter = prepare(args, device, lock)
    except (UsageError, SnapshotDirBusy) as exc:
        return fail(PROG, str(exc), 2)
    except (DatasetError, CheckpointMismatchError, FileNotFoundError, IsADirectoryError, ValueError, OSError) as exc:
        return fail(PROG, str(exc))
    wrap_distributed(t)
    main_process, snapshot_dir = is_main_process(), Path(args.snapshot_dir)
    per_iter = args.iter_size * args.batch_size * get_world_size()
    positions = state["data_positions"] if state else {"source": 0, "target": 0}
    loaders = [training_loader(ds, batch_size=args.batch_size, num_workers=args.num_workers, seed=args.random_seed,
                               start=positions[domain], salt=salt, rank=get_rank(), world_size=get_world_size(),
                               pin_memory=device.type == "cuda")
               for salt, (domain, ds) in enumerate((("source", source_set), ("target", target_set)))]
    batches = source_batches(loaders[0]), target_batches(loaders[1])
    if main_process:
        try:
            write_args_json(args, snapshot_dir)
        except WriteError as exc:
            return fail(PROG, str(exc))
        print(f"exp = {args.snapshot_dir}", flush=True)
    if not t.use_aux:
        reason = ("DeeplabVGG has a single output" if args.model == "DeeplabVGG"
                  else "single-level setting (--lambda-seg 0 --lambda-adv-target1 0)")
        logger.info("%s: the auxiliary segmentation loss and discriminator D1 are skipped (they cannot change "
                    "the main output); loss_seg1, loss_adv1 and loss_D1 are logged as 0", reason)
    resume_file = snapshot_dir / RESUME_NAME
    end_iter = min(args.num_steps, args.num_steps_stop)
    if start_iter >= end_iter:
        print(f"nothing to do: the training state is at iteration {start_iter}, the run stops at {end_iter}")
        return 0
    if main_process:
        to_come = len({i for i in range(start_iter, end_iter) if i % args.save_pred_every == 0 and i} | {end_iter - 1})
        warning = snapshot_space_warning(snapshot_dir, t.nets, to_come)
        if warning:
            logger.warning(warning)
    writer = None
    if args.tensorboard and main_process:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(args.log_dir)

    good = {"snapshot": None, "state": start_iter if state else None}  # the last complete files of this run

    def save(tag: int | None, next_iter: int) -> None:
        """Rank 0: the snapshot ``<prefix>_<tag>`` (unless None) and the training state before ``next_iter``. A
        failed write (full disk, ...) raises WriteError saying which files are good and how to continue."""
        if not main_process:
            return
        try:
            if tag is not None:
                save_snapshot(snapshot_dir, tag, (t.model, t.model_D1, t.model_D2), prefix=snapshot_prefix(args))
                good["snapshot"] = tag
            done = {k: positions[k] + (next_iter - start_iter) * per_iter for k in ("source", "target")}
            save_training_state(resume_file, next_iter=next_iter, nets=t.nets, optimizers=t.optimizers,
                                data_positions=done, args=args_to_json(args), scaler=t.scaler)
            good["state"] = next_iter
        except WriteError as exc:
            snap = (f"{snapshot_prefix(args)}_{good['snapshot']}.pth (with _D1, _D2)" if good["snapshot"] is not None
                    else "none written by this run")
            resume = (f"{resume_file} continues at iteration {good['state']}" if good["state"] is not None
                      else f"no {RESUME_NAME} from this run")
            raise WriteError(f"{exc}; the last complete snapshot: {snap}; {resume}. Free space (or move the folder "
                             "elsewhere) and continue with --resume auto") from None

    from tqdm import tqdm

    bar = tqdm(total=end_iter, initial=start_iter, dynamic_ncols=True, unit="it", desc="train",
               disable=None if main_process else True)
    visuals: dict = {}
    with StopRequest() as stop:
        try:
            for i_iter in range(start_iter, end_iter):
                last = i_iter == end_iter - 1
                periodic = i_iter % args.save_pred_every == 0 and i_iter != 0
                stop_now = i_iter == args.num_steps_stop - 1
                snapshot_now = periodic or stop_now or last  # the original's two kinds, and a final model always
                want_visuals = writer is not None and args.save_num_images > 0 and snapshot_now
                try:
                    losses = train_step(t, *batches, i_iter, visuals=visuals if want_visuals else None)
                except NonFiniteLossError as exc:
                    return fail(PROG, f"{exc}; stopping (snapshots already written are intact; the weights of "
                                      "this iteration were not updated or saved)")
                except DatasetError as exc:  # a file that broke after the start-up checks (read by a worker)
                    return fail(PROG, f"iteration {i_iter}: {dataset_error_message(exc)}; stopping (snapshots "
                                      "already written are intact; run tools/check_data.py, fix the file, then "
                                      "--resume auto)")
                if main_process:
                    if i_iter % args.log_every == 0 or last:
                        tqdm.write(format_log_line(i_iter, args.num_steps, losses))
                        sys.stdout.flush()
                    bar.set_postfix({k: f"{losses[k]:.3f}" for k in ("loss_seg2", "loss_adv_target2", "loss_D2")},
                                    refresh=False)
                    bar.update(1)
                    if writer is not None and i_iter % 10 == 0:
                        for name, value in losses.items():
                            writer.add_scalar(name, value, i_iter)
                if snapshot_now:
                    # the original's names: <i> for a periodic snapshot, the step count at the end
                    tag = i_iter if periodic and not stop_now else i_iter + 1
                    if main_process:
                        tqdm.write("taking snapshot ..." if tag == i_iter else "save model ...")
                    save(tag, i_iter + 1)
                    if writer is not None and visuals:
                        log_images(writer, visuals, args.save_num_images, i_iter)
                signum = all_reduce_max_int(stop.signum or 0, device)  # a signal to any rank stops them all here
                if signum and not last:
                    save(None, i_iter + 1)
                    if main_process:
                        print(f"{signal.Signals(signum).name}: saved the training state after iteration {i_iter} "
                              f"to {resume_file}; continue with --resume {resume_file} (or --resume auto)",
                              file=sys.stderr, flush=True)
                    return 128 + signum
        except WriteError as exc:
            return fail(PROG, str(exc))
        finally:
            bar.close()
            if writer is not None:
                writer.close()
            for it in batches:
                it.close()
            for loader in loaders:
                shutdown_loader(loader)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
