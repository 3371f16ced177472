"""What a training run trains: the networks, their optimizers, the losses and the speed options, in one
:class:`Trainer` that ``train_gta2cityscapes_multi.py``'s ``train_step`` takes.

Built from the training script's arguments (an ``argparse.Namespace``, already validated by the script), as the
original built them: the segmentation network and the discriminators in the original's order (so that a seed gives
the same initial weights), the PyTorch 0.4 optimizers (``utils/optim.py``), the original's losses.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

import torch
import torch.nn as nn

from model import FCDiscriminator, build_model
from utils.device import resolve_amp_dtype
from utils.distributed import broadcast_module_, get_world_size
from utils.loss import AdversarialLoss, CrossEntropy2d
from utils.optim import Adam04, FaithfulSGD
from utils.weights import load_weights_file, restore_segmentation_weights

logger = logging.getLogger(__name__)

#: layer4's channels: what the discriminator of ``--adapt-space feature`` sees.
FEATURE_CHANNELS = 2048


@dataclass
class Trainer:
    """Everything :func:`train_step` needs. ``model`` may be wrapped in DDP (snapshots unwrap it); ``--source-only``
    builds no discriminators (``model_D1``, ``model_D2`` and their optimizers None)."""

    args: argparse.Namespace
    device: torch.device
    model: nn.Module
    model_D1: nn.Module | None
    model_D2: nn.Module | None
    optimizer: torch.optim.Optimizer
    optimizer_D1: torch.optim.Optimizer | None
    optimizer_D2: torch.optim.Optimizer | None
    seg_loss: nn.Module
    adv_loss: nn.Module
    #: aux classifier loss and D1 computed (False: a single-output model, or the single-level shortcut)
    use_aux: bool
    #: ``--amp``'s autocast dtype (None: float32), and the gradient scaler (enabled for float16 only)
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    memory_format: torch.memory_format
    #: ``--adapt-space feature``: the last layer4 output, caught by a forward hook (what D2 sees)
    features: list

    @property
    def discriminators(self) -> list[nn.Module]:
        """The discriminators this run trains: D1 and D2, D2 only (single-level, feature space) or none."""
        active = [self.model_D1, self.model_D2] if self.use_aux else [self.model_D2]
        return [d for d in active if d is not None]

    @property
    def nets(self) -> dict[str, nn.Module]:
        nets = {"model": self.model, "model_D1": self.model_D1, "model_D2": self.model_D2}
        return {k: v for k, v in nets.items() if v is not None}

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = {"optimizer": self.optimizer, "optimizer_D1": self.optimizer_D1, "optimizer_D2": self.optimizer_D2}
        return {k: v for k, v in opts.items() if v is not None}


def build_networks(args: argparse.Namespace, device: torch.device) -> list[nn.Module | None]:
    """The segmentation network (``--restore-from``'s weights unless resuming) and D1, D2, built in the original's
    order (network, D1, D2: the seeded RNG gives the same initial weights), in train mode, on ``device``. D2 of
    ``--adapt-space feature`` sees layer4's 2048 feature channels; ``--source-only`` builds no discriminator."""
    resuming = bool(getattr(args, "resume_path", None))
    model = build_model(args.model, args.num_classes, all_branches=args.all_branches,
                        freeze_bn_stats=args.freeze_bn_stats, layers=args.resnet_layers)
    if not resuming:
        restore_segmentation_weights(model, args.restore_from, args.model, args.num_classes, args.not_restore_last)
    nets = [model, None, None]
    if not args.source_only:
        d2_channels = FEATURE_CHANNELS if args.adapt_space == "feature" else args.num_classes
        nets[1:] = FCDiscriminator(num_classes=args.num_classes), FCDiscriminator(num_classes=d2_channels)
    for net, path, flag in zip(nets[1:], (args.restore_from_D1, args.restore_from_D2),
                               ("--restore-from-D1", "--restore-from-D2")):
        if net is not None and path and not resuming:
            load_weights_file(net, path, flag, "FCDiscriminator")
    return [net if net is None else net.train().to(device) for net in nets]


def build_optimizers(args: argparse.Namespace, model: nn.Module, *discriminators: nn.Module | None):
    """The original's optimizers: SGD on ``model.optim_parameters`` (backbone with its duplicate listings at lr,
    classifiers at 10x) and Adam(betas=(0.9, 0.99)) per discriminator, with PyTorch 0.4's arithmetic
    (:class:`~utils.optim.FaithfulSGD`, :class:`~utils.optim.Adam04`); ``--modern-optim``: today's torch.optim on
    deduplicated groups."""
    if args.modern_optim:
        sgd, adam, groups = torch.optim.SGD, torch.optim.Adam, model.optim_parameters_dedup(args.learning_rate)
    else:
        sgd, adam, groups = FaithfulSGD, Adam04, model.optim_parameters(args.learning_rate)
    optimizer = sgd(groups, lr=args.learning_rate, momentum=args.momentum, weight_decay=args.weight_decay)
    return optimizer, *(d and adam(d.parameters(), lr=args.learning_rate_D, betas=(0.9, 0.99)) for d in discriminators)


def is_single_level(args: argparse.Namespace) -> bool:
    """No auxiliary path: a single-output model (VGG, Oracle), ``--adapt-space feature``, ``--source-only`` with
    ``--lambda-seg 0``, or ``--lambda-seg 0 --lambda-adv-target1 0`` (the shortcut: the auxiliary output then cannot
    change the main output, so neither it nor D1 is computed)."""
    return (args.model in ("DeeplabVGG", "Oracle") or args.adapt_space == "feature"
            or (args.lambda_seg == 0 and (args.lambda_adv_target1 == 0 or args.source_only)))


def build_training(args: argparse.Namespace, device: torch.device) -> Trainer:
    """Networks, optimizers, losses and the speed options for :func:`train_step`.

    ``--channels-last``: networks (in place, the optimizers keep their parameters) and inputs in channels_last.
    ``--amp``: forward passes under ``torch.autocast`` in bfloat16 (or float16, :func:`utils.device.resolve_amp_dtype`);
    parameters, gradients, optimizers, the upsampled logits, losses and softmax stay float32. float16 only: one
    ``GradScaler`` shared by the three optimizers (bfloat16 has float32's exponent range and needs none).
    """
    nets = build_networks(args, device)
    amp_dtype = resolve_amp_dtype(device, args.amp_dtype) if args.amp else None
    if not args.amp and args.amp_dtype != "auto":
        logger.warning("--amp-dtype %s has no effect without --amp (training in float32)", args.amp_dtype)
    if amp_dtype is not None:
        logger.info("--amp: autocast to %s%s", str(amp_dtype).replace("torch.", ""),
                    " with a gradient scaler" if amp_dtype == torch.float16 else "")
    if args.channels_last:
        for net in filter(None, nets):
            net.to(memory_format=torch.channels_last)
    features: list = []
    if args.adapt_space == "feature":
        nets[0].layer4.register_forward_hook(lambda module, inputs, output: features.__setitem__(slice(None), [output]))
    return Trainer(args, device, *nets, *build_optimizers(args, *nets),
                   seg_loss=CrossEntropy2d(ignore_label=args.ignore_label), adv_loss=AdversarialLoss(args.gan),
                   use_aux=not is_single_level(args), amp_dtype=amp_dtype,
                   scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
                   memory_format=torch.channels_last if args.channels_last else torch.preserve_format,
                   features=features)


def wrap_distributed(t: Trainer) -> None:
    """``torchrun``: the segmentation network in ``DistributedDataParallel`` (``find_unused_parameters``: the
    classifier branches the original never used, layer5 in single-level runs); the discriminators start equal and
    :func:`train_step` averages their gradients by hand (docs/speed.md says why not DDP for them)."""
    if get_world_size() == 1:
        return
    device_ids = [t.device.index] if t.device.type == "cuda" else None
    t.model = nn.parallel.DistributedDataParallel(t.model, device_ids=device_ids, find_unused_parameters=True)
    for d in filter(None, (t.model_D1, t.model_D2)):
        broadcast_module_(d)
