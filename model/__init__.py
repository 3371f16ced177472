"""AdaptSegNet's networks: DeepLab-v2 (ResNet-101 multi-level and single-level, VGG-16) and the discriminator.

``build_model(name, num_classes, **kw)`` builds a segmentation network by the scripts' ``--model`` name;
``model_outputs(model, x)`` returns its main logits whatever the model.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from model.deeplab import Res_Deeplab
from model.deeplab_multi import DeeplabMulti
from model.deeplab_vgg import DeeplabVGG
from model.discriminator import FCDiscriminator
from model.resnet import RESNET101_LAYERS, Classifier_Module, parameter_multiplicity

logger = logging.getLogger(__name__)

__all__ = [
    "DeeplabMulti",
    "Res_Deeplab",
    "DeeplabVGG",
    "FCDiscriminator",
    "Classifier_Module",
    "build_model",
    "model_outputs",
    "parameter_multiplicity",
    "MODEL_NAMES",
    "RESNET101_LAYERS",
]

#: ``--model`` names: "DeepLab" (the training script's name) and "DeeplabMulti" (the evaluation script's) are the
#: multi-level ResNet-101; "Oracle" is the single-level ``Res_Deeplab``.
MODEL_NAMES: tuple[str, ...] = ("DeepLab", "DeeplabMulti", "DeeplabVGG", "Oracle")


def build_model(
    name: str,
    num_classes: int,
    *,
    all_branches: bool = False,
    freeze_bn_stats: bool = False,
    layers: Any = RESNET101_LAYERS,
    **kw: Any,
) -> nn.Module:
    """Build the segmentation network called ``name`` (one of :data:`MODEL_NAMES`) with ``num_classes`` outputs.

    ``all_branches``/``freeze_bn_stats``/``layers`` go to the ResNet models; for ``DeeplabVGG`` (no BatchNorm, no
    ResNet blocks) ``freeze_bn_stats`` and a non-default ``layers`` are ignored with a warning, so scripts can pass
    their flags unconditionally. Other keywords go to the constructor.
    Raises ``ValueError`` listing the choices for an unknown name.
    """
    if name in ("DeepLab", "DeeplabMulti"):
        return DeeplabMulti(
            num_classes=num_classes, all_branches=all_branches, freeze_bn_stats=freeze_bn_stats, layers=layers, **kw
        )
    if name == "Oracle":
        return Res_Deeplab(
            num_classes=num_classes, all_branches=all_branches, freeze_bn_stats=freeze_bn_stats, layers=layers, **kw
        )
    if name == "DeeplabVGG":
        if freeze_bn_stats:
            logger.warning("DeeplabVGG has no BatchNorm: freeze_bn_stats (--freeze-bn-stats) has no effect")
        if tuple(layers) != RESNET101_LAYERS:
            logger.warning("DeeplabVGG is not a ResNet: layers (--resnet-layers) %s is ignored", tuple(layers))
        return DeeplabVGG(num_classes=num_classes, all_branches=all_branches, **kw)
    raise ValueError(f"--model {name!r}: unknown model; choose one of {', '.join(MODEL_NAMES)}")


def model_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``'s main logits ``[N, C, h, w]``: DeeplabMulti's second output (layer6), else the only one."""
    out = model(x)
    if isinstance(out, (tuple, list)):
        return out[-1]
    return out
