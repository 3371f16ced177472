"""DeepLab-v2 ResNet-101 with two outputs (AdaptSegNet's multi-level model): ``DeeplabMulti``.

``layer5`` classifies layer3's features (1024 channels): the auxiliary output; ``layer6`` classifies layer4's
features (2048 channels): the main output. The state_dict layout is exactly the released checkpoints'
(``GTA2Cityscapes_multi-ed35151c.pth``, the LS-GAN and baseline multi-level models).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from model.resnet import (
    ASPP_DILATIONS,
    RESNET101_LAYERS,
    Bottleneck,
    CaffeResNetBase,
    Classifier_Module,
    parameter_multiplicity,
)

__all__ = ["DeeplabMulti", "Bottleneck", "Classifier_Module", "parameter_multiplicity"]


class DeeplabMulti(CaffeResNetBase):
    """Multi-level DeepLab-v2: ``forward(x [N, 3, H, W]) -> (aux, main)``, each ``[N, num_classes, h, w]``.

    ``h = floor((m - 1) / 2) + 1`` with ``m = ceil((c - 1) / 2) + 1`` and ``c = floor((H - 1) / 2) + 1`` (stem conv,
    ceil-mode max-pool, layer2's stride), the same for ``w``: about H/8, e.g. 512x1024 -> 65x129. Logits, not
    upsampled (the scripts interpolate). Input: BGR, mean-subtracted, not divided by a std (the Caffe convention
    of the released weights).

    Args:
        num_classes: classes of both classifiers.
        all_branches: sum all four classifier branches instead of the original's first two (deviation, opt-in;
            see ``Classifier_Module``).
        freeze_bn_stats: keep every BatchNorm in eval mode even in ``train()`` (deviation, opt-in). Default: BNs
            run in training mode as in the original, only their affine parameters are frozen.
        layers: block counts of layer1..layer4; ``(3, 4, 23, 3)`` is ResNet-101 (the released weights). Smaller
            variants keep the same key pattern (for fast tests).
    """

    def __init__(
        self,
        num_classes: int = 19,
        all_branches: bool = False,
        freeze_bn_stats: bool = False,
        layers: Sequence[int] = RESNET101_LAYERS,
    ) -> None:
        super().__init__(layers=layers, freeze_bn_stats=freeze_bn_stats)
        self.num_classes = num_classes
        self.layer5 = Classifier_Module(1024, ASPP_DILATIONS, ASPP_DILATIONS, num_classes, all_branches)
        self.layer6 = Classifier_Module(2048, ASPP_DILATIONS, ASPP_DILATIONS, num_classes, all_branches)
        self._init_weights()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x3, x4 = self.backbone(x)
        return self.layer5(x3), self.layer6(x4)

    def classifier_modules(self) -> list[nn.Module]:
        return [self.layer5, self.layer6]
