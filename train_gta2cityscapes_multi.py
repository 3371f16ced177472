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
from pathlib import Path
from typing import Any, Iterator

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
import torch.nn.functional as F

from dataset.checks import DatasetError, dataset_error_message
from dataset.labels import IMG_MEAN, colorize_rgb
from dataset.settings import CITIES, SOURCES, TARGETS, eval_classes, resolve_setting, training_sets, validation_set
from dataset.transforms import display_rgb, to_network_input
from evaluate_cityscapes import validation_miou
from utils.checkpoint import (RESUME_NAME, RunFiles, SnapshotDirBusy, SnapshotDirLock, StopRequest,
                              find_resume_file, load_training_state, remove_stale_temporaries, restore_training_state,
                              snapshot_space_warning)
from utils.cli import ArgumentParser, UsageError, fail, parse_layers, parse_size, repo_path, usable_cpus
from utils.device import configure_backends, seed_everything, select_device
from utils.distributed import (all_reduce_gradients_, all_reduce_max_int, all_reduce_mean_, cleanup_distributed, get_rank, get_world_size, init_distributed, is_main_process,
                               unwrap)
from utils.files import WriteError, atomic_torch_save, atomic_write, check_writable_dir
from utils.loss import GAN_CHOICES, SOURCE_LABEL, TARGET_LABEL
from utils.optim import adjust_learning_rate, lr_poly
from utils.sampling import shutdown_loader, training_loader
from utils.training import Trainer, build_training, wrap_distributed
from utils.weights import RESTORE_FROM_INIT, CheckpointMismatchError, torchvision_restore_weights

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
    add("--model", default="DeepLab", choices=("DeepLab", "DeeplabMulti", "DeeplabVGG", "Oracle"),
        help="segmentation network: DeepLab (= DeeplabMulti, multi-level ResNet-101), DeeplabVGG or Oracle (the "
             "single-level ResNet-101 of the released oracle, for --source-only --source cityscapes)")
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
    new.add_argument("--source-only", action="store_true",
                     help="the paper's source-only baseline (and, with --source cityscapes, the oracle): no target "
                          "images, no discriminators; the same segmentation step, schedule and snapshots")
    new.add_argument("--adapt-space", default="output", choices=("output", "feature"),
                     help="what the discriminator sees: the softmax output (the paper's method) or, for the paper's "
                          "feature-adaptation baseline, layer4's features (single-level, D2 on 2048 channels; "
                          "docs/training.md)")

    val = parser.add_argument_group("validation during training (beyond the original)")
    val.add_argument("--eval-every", type=int, default=0, metavar="N",
                     help="every N iterations (with the snapshots when N = --save-pred-every) and at the end: the "
                          "mIoU on the target's labelled split, logged and in TensorBoard (val/mIoU); the best "
                          "network kept as <prefix>_best.pth; 0: never")
    val.add_argument("--eval-list", metavar="LIST",
                     help="the validation images (default: the --target setting's, Cityscapes: "
                          "./dataset/cityscapes_list/val.txt; Cross-City: every test image of --city)")
    val.add_argument("--eval-data-dir", metavar="DIR", help="the folder of the validation images and labels "
                                                            "(default: --data-dir-target)")

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
    if args.eval_every:
        args.eval_list = repo_path(args.eval_list or TARGETS[args.target].eval_list, "--eval-list")
    try:
        resolve_setting(args.source, args.target, args.city)
        torchvision_restore_weights(args.restore_from)  # "torchvision:" without a weights name fails here
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.source == args.target == "cityscapes" and not args.source_only:
        logger.warning("--source cityscapes --target cityscapes: adapting Cityscapes to itself")
    for flag in ("batch_size", "iter_size", "num_steps", "num_steps_stop", "save_pred_every", "log_every",
                 "num_classes"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    for flag in ("num_workers", "save_num_images", "eval_every"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    if args.adapt_space == "feature" and (args.model == "DeeplabVGG" or args.source_only):
        raise UsageError("--adapt-space feature puts D2 on the ResNet's layer4 features: it needs --model DeepLab "
                         "and discriminators (not --source-only)")
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


def build_datasets(args: argparse.Namespace):
    """The source and target training sets (``dataset/settings.py``; no target with ``--source-only``), each
    repeated to cover every sample of the run on all ranks, and the validation set of ``--eval-every`` (or None).
    Their items are uint8: the float conversion happens on the device (:func:`network_outputs`), bitwise the
    original's input; ``--data-cache`` reads the frames already resized."""
    source_set, target_set = training_sets(
        args.source, None if args.source_only else args.target, data_dir=args.data_dir, data_list=args.data_list,
        input_size=args.input_size, data_dir_target=args.data_dir_target, data_list_target=args.data_list_target,
        input_size_target=args.input_size_target, city=args.city, set=args.set, mirror=args.random_mirror,
        scale=args.random_scale, ignore_label=args.ignore_label, mean=IMG_MEAN, seed=args.random_seed,
        max_iters=args.num_steps * args.iter_size * args.batch_size * get_world_size(), uint8=True,
        data_cache=args.data_cache)
    val_set = validation_set(args.target, args.eval_data_dir or args.data_dir_target, args.eval_list,
                             args.input_size_target, args.city, uint8=True) if args.eval_every else None
    return source_set, target_set, val_set


def source_batches(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    batches = iter(loader)  # the workers start now
    return ((images, labels) for images, labels, _, _ in batches)


def target_batches(loader) -> Iterator[torch.Tensor]:
    batches = iter(() if loader is None else loader)
    return (images for images, _, _ in batches)


# ---- one iteration --------------------------------------------------------------------------------------------------


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; raised before any optimizer step of that iteration."""

    def __init__(self, i_iter: int, name: str, value: float) -> None:
        super().__init__(f"non-finite loss at iteration {i_iter}: {name} = {value}")


def set_requires_grad(nets, flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad = flag


def network_outputs(t: Trainer, images: torch.Tensor, size_wh: tuple[int, int]) -> list[torch.Tensor]:
    """The network's outputs for a loader batch ``images`` (uint8 [N, H, W, 3] RGB, converted on the device to the
    float32 [N, 3, H, W] BGR-minus-mean input by :func:`~dataset.transforms.to_network_input`; or that float32
    input): ``[aux, main]`` (``[main]`` without the auxiliary path), each float32 logits [N, C, H', W'] upsampled to
    ``size_wh`` with the original's ``nn.Upsample(mode='bilinear', align_corners=True)``. Under ``--amp`` only the
    1/8-resolution logits are rounded: they are upcast before upsampling, so the losses and the softmax fed to the
    discriminators are float32."""
    t.features.clear()
    x = to_network_input(images, t.device, t.memory_format)  # a quarter of the bytes crossed as uint8
    with torch.autocast(t.device.type, dtype=t.amp_dtype, enabled=t.amp_dtype is not None):
        out = t.model(x)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    outs = outs if t.use_aux else outs[-1:]
    return [F.interpolate(o.float(), size=(size_wh[1], size_wh[0]), mode="bilinear", align_corners=True)
            for o in outs]


def adversarial_losses(t: Trainer, outputs: list[torch.Tensor], label: int, detach: bool = False) -> list:
    """``adv_loss(D(softmax(output)), label)`` for each discriminator and its output (``--adapt-space feature``:
    ``D2(layer4 features)``, no softmax), D under ``--amp``'s autocast, the loss on its float32 logits."""
    inputs = t.features[-1:] if t.args.adapt_space == "feature" else outputs
    losses = []
    for d, x in zip(t.discriminators, inputs):
        with torch.autocast(t.device.type, dtype=t.amp_dtype, enabled=t.amp_dtype is not None):
            x = x.detach() if detach else x
            d_out = d(x if t.args.adapt_space == "feature" else F.softmax(x, dim=1))
        losses.append(t.adv_loss(d_out.float(), label))
    return losses


def train_step(t: Trainer, source_iter: Iterator, target_iter: Iterator, i_iter: int,
               visuals: dict | None = None) -> dict[str, float]:
    """One iteration of the original loop; returns the six logged losses (:data:`LOSS_NAMES`).

    ``source_iter`` yields ``(images [N,3,H,W], labels [N,H,W])``, ``target_iter`` yields ``images``; each is drawn
    ``iter_size`` times (the target not at all with ``--source-only``). The losses are accumulated as the original
    logged them (segmentation and adversarial terms divided by ``iter_size``; the discriminator terms as
    backpropagated, i.e. divided by ``iter_size`` and by 2, summed over source and target); under ``torchrun`` they
    are the means over the ranks. Raises :class:`NonFiniteLossError` before any optimizer step if one of them is not
    finite. ``visuals``: when given, receives the last sub-step's inputs and argmax predictions (CPU).
    """
    a, discriminators = t.args, t.discriminators
    seg_weights = [a.lambda_seg, 1.0] if t.use_aux else [1.0]  # the aux output's loss is weighted, the main's not
    adv_weights = [a.lambda_adv_target1, a.lambda_adv_target2] if t.use_aux else [a.lambda_adv_target2]
    first = 0 if t.use_aux else 1  # index of the first computed output in LOSS_NAMES' pairs
    for opt in t.optimizers.values():
        opt.zero_grad()
    adjust_learning_rate(t.optimizer, lr_poly(a.learning_rate, i_iter, a.num_steps, a.power))
    for opt in filter(None, (t.optimizer_D1, t.optimizer_D2)):
        adjust_learning_rate(opt, lr_poly(a.learning_rate_D, i_iter, a.num_steps, a.power))
    totals = torch.zeros(len(LOSS_NAMES), device=t.device)  # seg1, seg2, adv1, adv2, D1, D2

    for _ in range(a.iter_size):
        # 1. Segmentation on the source: supervised cross-entropy on both outputs (discriminators frozen, so that
        #    the generator's backward passes accumulate no gradient in them).
        set_requires_grad(discriminators, False)
        images, labels = next(source_iter)
        labels = labels.to(t.device, non_blocking=True).long()
        source_out = network_outputs(t, images, a.input_size)
        source_features = t.features[-1:]
        seg = [t.seg_loss(out, labels) for out in source_out]
        t.scaler.scale(sum(w * loss for w, loss in zip(seg_weights, seg)) / a.iter_size).backward()
        for k, loss in enumerate(seg, start=first):
            totals[k] += loss.detach() / a.iter_size
        if not discriminators:  # --source-only: the segmentation step alone
            continue

        # 2. Adversarial on the target: make the target outputs look like source ones to the frozen
        #    discriminators, i.e. their loss against the *source* label.
        images_t = next(target_iter)
        target_out = network_outputs(t, images_t, a.input_size_target)
        target_features = t.features[-1:]
        adv = adversarial_losses(t, target_out, SOURCE_LABEL)
        t.scaler.scale(sum(w * loss for w, loss in zip(adv_weights, adv)) / a.iter_size).backward()
        for k, loss in enumerate(adv, start=first):
            totals[2 + k] += loss.detach() / a.iter_size

        # 3. and 4. Discriminators on the detached outputs: source ones are "source" (label 0), target ones
        #    "target" (label 1).
        set_requires_grad(discriminators, True)
        for outputs, features, label in ((source_out, source_features, SOURCE_LABEL),
                                         (target_out, target_features, TARGET_LABEL)):
            t.features[:] = features
            for k, loss in enumerate(adversarial_losses(t, outputs, label, detach=True), start=first):
                loss = loss / a.iter_size / 2
                t.scaler.scale(loss).backward()
                totals[4 + k] += loss.detach()

    if visuals is not None:
        visuals.update(source_image=images.detach().cpu(), source_label=labels.detach().cpu(),
                       source_pred=source_out[-1].argmax(dim=1).cpu())
        if discriminators:
            visuals.update(target_image=images_t.detach().cpu(), target_pred=target_out[-1].argmax(dim=1).cpu())
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
        for k in range(min(count, len(visuals.get(f"{domain}_image", ())))):
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


def prepare(args: argparse.Namespace, device: torch.device, lock: SnapshotDirLock):
    """Everything before the first iteration, cheapest checks first: the flags, the snapshot folder's lock (when it
    exists), the data, the training state, the networks; only then the folders are created, so that a refused run
    leaves nothing behind. Returns ``(trainer, source set, target set, training state or None, first iteration)``."""
    args.world_size = get_world_size()  # recorded in args.json and the training state (a resume compares it)
    validate_args(args)
    snapshot_dir = Path(args.snapshot_dir)
    lock.claim(snapshot_dir, device, create=False)  # a second run on a folder in use stops here
    resume_path = None
    if args.resume:
        resume_path = find_resume_file(snapshot_dir) if args.resume == "auto" else Path(args.resume)
        if resume_path is None:
            logger.info("--resume auto: no %s in %s yet; starting afresh", RESUME_NAME, snapshot_dir)
    args.resume_path = str(resume_path) if resume_path else None
    state = load_training_state(resume_path) if resume_path else None
    source_set, target_set, val_set = build_datasets(args)  # the data checks: before any expensive set-up
    seed_everything(args.random_seed)
    t = build_training(args, device)
    start_iter = restore_training_state(state, resume_path, nets=t.nets, optimizers=t.optimizers, scaler=t.scaler,
                                        args=args_to_json(args), model_name=args.model) if state else 0
    lock.claim(snapshot_dir, device, create=True)
    if args.tensorboard and is_main_process():
        check_writable_dir(args.log_dir, "--log-dir")
    if is_main_process():
        remove_stale_temporaries(snapshot_dir)
    return t, (source_set, target_set, val_set), state, start_iter


def train(args: argparse.Namespace, device: torch.device, lock: SnapshotDirLock) -> int:
    """:func:`main` after the device and process-group set-up: :func:`prepare`, then the loop and its outputs."""
    try:
        t, (source_set, target_set, val_set), state, start_iter = prepare(args, device, lock)
    except (UsageError, SnapshotDirBusy) as exc:
        return fail(PROG, str(exc), 2)
    except (DatasetError, CheckpointMismatchError, FileNotFoundError, IsADirectoryError, ValueError, OSError) as exc:
        return fail(PROG, str(exc))
    wrap_distributed(t)
    main_process, snapshot_dir = is_main_process(), Path(args.snapshot_dir)
    per_iter = args.iter_size * args.batch_size * get_world_size()
    positions = state["data_positions"] if state else {"source": 0, "target": 0}
    if main_process:
        try:
            write_args_json(args, snapshot_dir)
        except WriteError as exc:
            return fail(PROG, str(exc))
        print(f"exp = {args.snapshot_dir}", flush=True)
    zeros = [n for i, n in enumerate(LOSS_NAMES) if (i % 2 == 0 and not t.use_aux) or (i >= 2 and args.source_only)]
    if zeros:  # single level: the auxiliary output and D1 cannot change the main output, so they are not computed
        logger.info("%s logged as 0 (%s)", ", ".join(zeros), "--source-only" if args.source_only else "single level")
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

    files = RunFiles(snapshot_dir, snapshot_prefix(args), start_iter if state else None)
    best = (state or {}).get("validation") or {"mIoU": -1.0, "iteration": None}  # --eval-every's best so far
    classes = eval_classes(args.source, args.target)

    def save(tag: int | None, next_iter: int) -> None:
        """Rank 0: the snapshot set ``<prefix>_<tag>`` (unless None) and the training state before ``next_iter``."""
        if main_process:
            done = {k: positions[k] + (next_iter - start_iter) * per_iter for k in ("source", "target")}
            files.save(tag, t.nets, next_iter, optimizers=t.optimizers, data_positions=done,
                       args=args_to_json(args), scaler=t.scaler,
                       extra={"validation": best} if args.eval_every else None)

    from tqdm import tqdm

    bar = tqdm(total=end_iter, initial=start_iter, dynamic_ncols=True, unit="it", desc="train",
               disable=None if main_process else True)
    visuals: dict = {}
    # the loaders' workers start here, before the first forward pass (forked later, after the activations exist,
    # every page the training then writes would be copied once: 2.6 s of a ResNet-101 run's first iteration)
    loaders = [None if ds is None else training_loader(ds, batch_size=args.batch_size, num_workers=args.num_workers,
                                      seed=args.random_seed, start=positions[domain], salt=salt, rank=get_rank(),
                                      world_size=get_world_size(), pin_memory=device.type == "cuda")
               for salt, (domain, ds) in enumerate((("source", source_set), ("target", target_set)))]
    with StopRequest() as stop:
        try:
            batches = source_batches(loaders[0]), target_batches(loaders[1])
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
                # the original's names: <i> for a periodic snapshot, the step count at the end
                tag = i_iter if periodic and not stop_now else i_iter + 1
                if args.eval_every and (last or (i_iter % args.eval_every == 0 and i_iter)):
                    miou = validation_miou(unwrap(t.model), val_set, args.num_classes, classes, t.device,
                                           t.memory_format, min(args.num_workers, 2))
                    if main_process and miou > best["mIoU"]:
                        atomic_torch_save({k: v.detach().cpu() for k, v in unwrap(t.model).state_dict().items()},
                                          snapshot_dir / f"{snapshot_prefix(args)}_best.pth")
                        best = {"mIoU": miou, "iteration": tag}
                    if main_process:
                        tqdm.write(f"iter = {tag:8d}: val/mIoU = {miou:.2f} (best {best['mIoU']:.2f} at iteration "
                                   f"{best['iteration']}; {classes} classes)")
                        if writer is not None:
                            writer.add_scalar("val/mIoU", miou, i_iter)
                if snapshot_now:
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
                              f"to {files.resume_file}; continue with --resume {files.resume_file} (or --resume "
                              "auto)",
                              file=sys.stderr, flush=True)
                    return 128 + signum
        except WriteError as exc:
            return fail(PROG, str(exc))
        finally:
            for loader in loaders:  # first: workers left running would hang the interpreter's exit
                if loader is not None:
                    shutdown_loader(loader)
            bar.close()
            if writer is not None:
                writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
