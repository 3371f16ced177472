"""Shared pieces of the Caffe-style DeepLab-v2 ResNet used by ``DeeplabMulti`` and ``Res_Deeplab``.

The layout (module names, strides, dilations, which blocks own a ``downsample``) is fixed by the released
AdaptSegNet checkpoints and the ImageNet+COCO initialisation file: a state_dict from the original code must load
into these modules unchanged and give the same outputs. Differences from torchvision's ResNet are deliberate:

* the stride of a bottleneck sits on its first 1x1 conv (``conv1``), not on the 3x3 (Caffe convention);
* the stem max-pool uses ``ceil_mode=True``;
* ``layer3``/``layer4`` keep stride 1 and use dilation 2/4 (output stride 8), and every layer's first block
  has a ``downsample`` branch, even where neither the stride nor the width changes;
* every BatchNorm is affine with its weight and bias frozen (``requires_grad=False``) while it still runs in
  training mode (batch statistics, running statistics update) unless ``freeze_bn_stats`` is set.

Also here: ``Classifier_Module`` (the ASPP-style classifier, with the original's two-branch quirk), the
original's learning-rate parameter listing (with its duplicates) and :func:`parameter_multiplicity`.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: ResNet-101 block counts (the default everywhere; tests use small variants such as ``(1, 1, 1, 1)``).
RESNET101_LAYERS: tuple[int, int, int, int] = (3, 4, 23, 3)

#: Dilations (= paddings) of the four classifier branches, as in the original.
ASPP_DILATIONS: tuple[int, int, int, int] = (6, 12, 18, 24)


def frozen_batchnorm(num_features: int) -> nn.BatchNorm2d:
    """An affine ``BatchNorm2d`` whose weight and bias do not train (``requires_grad=False``).

    WHY: the original froze the affine parameters of every BN (batches of 1 on 321x321 crops are too small to
    learn them) but left the module in training mode, so batch statistics are used and the running statistics
    keep updating during training. That behaviour is the default here; see ``freeze_bn_stats`` on the models.
    """
    bn = nn.BatchNorm2d(num_features, affine=True)
    for p in bn.parameters():
        p.requires_grad = False
    return bn


class Bottleneck(nn.Module):
    """Caffe-style bottleneck: 1x1 (stride here) -> 3x3 (dilated) -> 1x1 (x4 channels), plus the shortcut.

    Input ``[N, inplanes, H, W]`` -> output ``[N, planes * 4, H', W']`` with ``H' = floor((H - 1) / stride) + 1``.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        # The stride is on the first 1x1 conv (Caffe/DeepLab convention), not on the 3x3 as in torchvision.
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False)
        self.bn1 = frozen_batchnorm(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, kernel_size=3, stride=1, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = frozen_batchnorm(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = frozen_batchnorm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out = out + residual
        return self.relu(out)


class Classifier_Module(nn.Module):  # noqa: N801 (the original's name: it appears in users' code)
    """DeepLab-v2 ASPP classifier: parallel dilated 3x3 convs ``inplanes -> num_classes`` (attribute ``conv2d_list``).

    Input ``[N, inplanes, h, w]`` -> logits ``[N, num_classes, h, w]`` (padding = dilation keeps the size).

    FAITHFUL QUIRK: the original's ``forward`` returned from inside its summing loop, so only the first two
    branches (dilation 6 and 12) are summed; the dilation-18 and -24 convs exist in the state_dict (and in the
    released checkpoints) but never act. The released weights were trained that way, so this is the default.
    ``all_branches=True`` sums all four (a deviation, for new experiments); the attribute may also be set later.
    """

    def __init__(
        self,
        inplanes: int,
        dilation_series: Sequence[int] = ASPP_DILATIONS,
        padding_series: Sequence[int] = ASPP_DILATIONS,
        num_classes: int = 19,
        all_branches: bool = False,
    ) -> None:
        super().__init__()
        if len(dilation_series) != len(padding_series) or len(dilation_series) < 2:
            raise ValueError(
                "Classifier_Module needs at least two branches and as many paddings as dilations, got "
                f"dilation_series={list(dilation_series)}, padding_series={list(padding_series)}"
            )
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(inplanes, num_classes, kernel_size=3, stride=1, padding=p, dilation=d, bias=True)
            for d, p in zip(dilation_series, padding_series)
        )
        for conv in self.conv2d_list:
            nn.init.normal_(conv.weight, 0.0, 0.01)
        self.all_branches = bool(all_branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.all_branches:
            out = self.conv2d_list[0](x)
            for conv in self.conv2d_list[1:]:
                out = out + conv(x)
            return out
        # The original's early return: branch 0 + branch 1 only (see the class docstring).
        return self.conv2d_list[0](x) + self.conv2d_list[1](x)


def check_layers(layers: Sequence[int]) -> tuple[int, int, int, int]:
    """Validate block counts for ``layer1..layer4`` (``--resnet-layers``): four positive integers."""
    try:
        out = tuple(int(n) for n in layers)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 4 or any(n < 1 for n in out) or any(float(a) != float(b) for a, b in zip(out, layers)):
        raise ValueError(
            f"layers (--resnet-layers) must be four positive block counts such as 3,4,23,3 (ResNet-101), got {layers!r}"
        )
    return out  # type: ignore[return-value]


class CaffeResNetBase(nn.Module):
    """Stem + ``layer1..layer4`` of the DeepLab-v2 ResNet and the methods both ResNet models share.

    Subclasses add their classifiers (``layer5``, ``layer6``), list them in :meth:`classifier_modules`, then call
    :meth:`_init_weights`. Attribute names are the state_dict names of the released checkpoints.
    """

    def __init__(self, layers: Sequence[int] = RESNET101_LAYERS, freeze_bn_stats: bool = False) -> None:
        super().__init__()
        layers = check_layers(layers)
        self.resnet_layers = layers
        self.freeze_bn_stats = bool(freeze_bn_stats)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = frozen_batchnorm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=1, dilation=2)
        self.layer4 = self._make_layer(512, layers[3], stride=1, dilation=4)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        downsample = None
        # The original's rule; with these layers it gives every layer's first block a downsample branch
        # (layer1 widens 64 -> 256, layer2 strides, layer3/layer4 are dilated).
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion or dilation in (2, 4):
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
                frozen_batchnorm(planes * Bottleneck.expansion),
            )
        blocks_list = [Bottleneck(self.inplanes, planes, stride, dilation=dilation, downsample=downsample)]
        self.inplanes = planes * Bottleneck.expansion
        for _ in range(1, blocks):
            blocks_list.append(Bottleneck(self.inplanes, planes, dilation=dilation))
        return nn.Sequential(*blocks_list)

    def _init_weights(self) -> None:
        """The original's init: every conv weight (classifiers included) ~ N(0, 0.01); BN weight 1, bias 0.

        Conv biases (classifier convs only) keep PyTorch's default init, as in the original.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.train(self.training)  # applies freeze_bn_stats to the fresh model

    def backbone(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[N, 3, H, W]`` -> (layer3 output ``[N, 1024, h, w]``, layer4 output ``[N, 2048, h, w]``), 1/8 scale."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x3 = self.layer3(x)
        return x3, self.layer4(x3)

    def train(self, mode: bool = True) -> "CaffeResNetBase":
        """As ``nn.Module.train``; with ``freeze_bn_stats`` every BatchNorm stays in eval mode.

        Default (faithful): BNs follow the model's mode, so in training they normalise with batch statistics and
        update their running statistics (only their affine parameters are frozen).
        """
        super().train(mode)
        if self.freeze_bn_stats:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # ---- learning-rate groups -------------------------------------------------------------------------------

    def classifier_modules(self) -> list[nn.Module]:
        """The classifiers trained at 10x the learning rate (``layer5``, and ``layer6`` where present)."""
        raise NotImplementedError

    def get_1x_lr_params_NOscale(self) -> Iterator[nn.Parameter]:  # noqa: N802 (the original's name)
        """The original's backbone listing, duplicates included.

        For each of ``conv1, bn1, layer1..layer4`` it walks ``.modules()`` (the root and every descendant) and
        yields each one's recursive trainable ``parameters()``. A parameter is therefore yielded once per module
        on its path from the root: the stem conv once, a bottleneck conv 3 times (layerK, layerK.i,
        layerK.i.convJ), a downsample conv 4 times (layerK, layerK.0, layerK.0.downsample, ...downsample.0).
        Frozen BN parameters never appear. The original's optimizer received this list, so it applied the
        update to a parameter once per listing.
        """
        for root in (self.conv1, self.bn1, self.layer1, self.layer2, self.layer3, self.layer4):
            for module in root.modules():
                for p in module.parameters():
                    if p.requires_grad:
                        yield p

    def get_10x_lr_params(self) -> Iterator[nn.Parameter]:
        """The classifiers' parameters, each once (the original's 10x group)."""
        for module in self.classifier_modules():
            yield from module.parameters()

    def optim_parameters(self, lr_or_args: Any) -> list[dict[str, Any]]:
        """The original's two parameter groups: backbone (WITH its duplicates) at ``lr``, classifiers at ``10 * lr``.

        ``lr_or_args`` is the learning rate or an object with ``.learning_rate`` (the original passed ``args``).
        The first group's ``params`` repeats parameters (see :meth:`get_1x_lr_params_NOscale`); modern optimizers
        warn about or reject duplicates, so the training script decides how to apply them (see
        :func:`parameter_multiplicity` and :meth:`optim_parameters_dedup`).
        """
        lr = _learning_rate(lr_or_args)
        return [
            {"params": list(self.get_1x_lr_params_NOscale()), "lr": lr},
            {"params": list(self.get_10x_lr_params()), "lr": 10 * lr},
        ]

    def optim_parameters_dedup(self, lr_or_args: Any) -> list[dict[str, Any]]:
        """The same two groups with each parameter once (first-occurrence order)."""
        return [
            {"params": _dedup(group["params"]), "lr": group["lr"]}
            for group in self.optim_parameters(lr_or_args)
        ]


def _learning_rate(lr_or_args: Any) -> float:
    lr = getattr(lr_or_args, "learning_rate", lr_or_args)
    try:
        return float(lr)
    except (TypeError, ValueError):
        raise TypeError(
            f"optim_parameters expects a learning rate or an object with .learning_rate, got {lr_or_args!r}"
        ) from None


def _dedup(params: Sequence[nn.Parameter]) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def parameter_multiplicity(model: nn.Module) -> dict[str, int]:
    """``{parameter name: number of times it appears in the model's faithful optimizer listing}``.

    Works for any of the segmentation models (anything with ``optim_parameters``; a DDP/DataParallel wrapper is
    unwrapped). For the ResNet models: stem conv 1, bottleneck convs 3, downsample convs 4, classifier
    parameters 1; frozen BN parameters are absent (never listed). With plain SGD, no momentum and no weight
    decay, a parameter listed ``k`` times moves ``k`` times as far per step as a deduplicated one.
    """
    model = getattr(model, "module", model)
    names = {id(p): name for name, p in model.named_parameters()}
    counts: dict[str, int] = {}
    for group in model.optim_parameters(1.0):
        for p in group["params"]:
            name = names[id(p)]
            counts[name] = counts.get(name, 0) + 1
    return counts
