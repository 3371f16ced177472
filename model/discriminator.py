"""AdaptSegNet's fully-convolutional discriminator on the segmentation softmax: ``FCDiscriminator``."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["FCDiscriminator"]


class FCDiscriminator(nn.Module):
    """Five 4x4 stride-2 convs with bias: ``num_classes -> ndf -> 2ndf -> 4ndf -> 8ndf -> 1``.

    LeakyReLU(0.2) after the first four, no normalisation, no sigmoid (the losses take logits).
    ``forward(x [N, num_classes, H, W]) -> [N, 1, h, w]`` with ``h = H // 32`` (each conv: ``floor(H / 2)``), so
    H and W must be at least 32. PyTorch's default init, as in the original.
    """

    def __init__(self, num_classes: int, ndf: int = 64) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(num_classes, ndf, kernel_size=4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(ndf, ndf * 2, kernel_size=4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(ndf * 2, ndf * 4, kernel_size=4, stride=2, padding=1)
        self.conv4 = nn.Conv2d(ndf * 4, ndf * 8, kernel_size=4, stride=2, padding=1)
        self.classifier = nn.Conv2d(ndf * 8, 1, kernel_size=4, stride=2, padding=1)
        self.leaky_relu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_classes or min(x.shape[-2:]) < 32:
            raise ValueError(
                f"FCDiscriminator expects [N, {self.num_classes}, H, W] with H, W >= 32, got {list(x.shape)}"
            )
        x = self.leaky_relu(self.conv1(x))
        x = self.leaky_relu(self.conv2(x))
        x = self.leaky_relu(self.conv3(x))
        x = self.leaky_relu(self.conv4(x))
        return self.classifier(x)
