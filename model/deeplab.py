"""Single-level DeepLab-v2 ResNet-101: ``Res_Deeplab`` (the "Oracle" model, e.g. ``cityscapes_oracle-b7b9934.pth``).

Same backbone as ``DeeplabMulti``; one classifier ``layer5`` on layer4's output (2048 channels).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from model.resnet import ASPP_DILATIONS, RESNET101_LAYERS, CaffeResNetBase, Classifier_Module

__all__ = ["Res_Deeplab"]


class Res_Deeplab(CaffeResNetBase):  # noqa: N801 (the original's name)
    """``forward(x [N, 3, H, W]) -> logits [N, num_classes, h, w]`` at about 1/8 scale (sizes as ``DeeplabMulti``).

    ``num_classes`` defaults to 21 as in the original (its PASCAL VOC heritage); the Cityscapes oracle uses 19.
    ``all_branches``, ``freeze_bn_stats`` and ``layers`` as in ``DeeplabMulti``.
    """

    def __init__(
        self,
        num_classes: int = 21,
        all_branches: bool = False,
        freeze_bn_stats: bool = False,
        layers: Sequence[int] = RESNET101_LAYERS,
    ) -> None:
        super().__init__(layers=layers, freeze_bn_stats=freeze_bn_stats)
        self.num_classes = num_classes
        self.layer5 = Classifier_Module(2048, ASPP_DILATIONS, ASPP_DILATIONS, num_classes, all_branches)
        self._init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, x4 = self.backbone(x)
        return self.layer5(x4)

    def classifier_modules(self) -> list[nn.Module]:
        return [self.layer5]
