"""DeepLab-v2 on VGG-16 (``DeeplabVGG``), the layout of the released ``GTA2Cityscapes_vgg-ac4ac9f6.pth``.

``features`` is torchvision's VGG-16 ``features`` without pool4 and pool5 (its indices 23 and 30), the three conv5
convs (new indices 23, 25, 27) dilated by 2 (padding 2), followed in the same Sequential by fc6 (3x3, 512 -> 1024,
dilation 4, padding 4), ReLU, fc7 (3x3, 1024 -> 1024, dilation 4, padding 4), ReLU. ``classifier`` is the same
``Classifier_Module`` as the ResNet models (with the same two-branch quirk) on 1024 channels.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from model.resnet import ASPP_DILATIONS, Classifier_Module, _learning_rate

__all__ = ["DeeplabVGG", "vgg16_to_deeplab_features", "VGG16_CFG"]

#: torchvision's VGG-16 ("D") configuration: conv widths, "M" = 2x2 max-pool.
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)
#: Indices of pool4 and pool5 in torchvision's ``vgg16().features``, dropped here.
_DROPPED_VGG_INDICES = (23, 30)
#: Indices (after the drop) of the conv5 convs that get dilation 2.
_DILATED_CONV5 = (23, 25, 27)


def _vgg16_features_layers() -> list[nn.Module]:
    """torchvision's ``vgg16().features`` as a list (same modules, order and init: kaiming-normal fan-out, bias 0).

    Built here instead of calling ``torchvision.models.vgg16()`` so as not to allocate its 120M-parameter
    fully-connected head only to throw it away.
    """
    layers: list[nn.Module] = []
    in_ch = 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            conv = nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
            in_ch = int(v)
    return layers


def vgg16_to_deeplab_features(state_dict: Mapping[str, torch.Tensor], source: str = "the VGG-16 weights") -> dict:
    """Map a torchvision-layout VGG-16 state_dict to ``DeeplabVGG`` keys (``features.*`` only).

    torchvision ``features.{i}`` -> ours ``features.{i}`` for ``i < 23`` and ``features.{i-1}`` for ``24 <= i < 30``;
    torchvision's fully-connected ``classifier.*`` is ignored (fc6/fc7 here are new 3x3 convs, randomly initialised,
    as in the original). Raises ``ValueError`` naming ``source`` when a conv of VGG-16's ``features`` is missing,
    has the wrong shape, or a key is neither ``features.*`` nor ``classifier.*``.
    """
    reference = {f"{i}": layer for i, layer in enumerate(_vgg16_features_layers()) if isinstance(layer, nn.Conv2d)}
    out: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "classifier":
            continue
        if parts[0] != "features" or len(parts) != 3 or parts[1] not in reference or parts[2] not in ("weight", "bias"):
            unexpected.append(key)
            continue
        i = int(parts[1])
        expected_shape = tuple(getattr(reference[parts[1]], parts[2]).shape)
        if tuple(value.shape) != expected_shape:
            raise ValueError(
                f"{source}: {key} has shape {tuple(value.shape)}, VGG-16 expects {expected_shape}"
            )
        new_i = i if i < _DROPPED_VGG_INDICES[0] else i - 1
        out[f"features.{new_i}.{parts[2]}"] = value
    expected_keys = [f"features.{i}.{n}" for i in reference for n in ("weight", "bias")]
    missing = [k for k in expected_keys if k not in state_dict]
    if unexpected or missing:
        raise ValueError(
            f"{source}: not a torchvision VGG-16 state_dict (keys features.<i>.weight/bias, classifier.*): "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)})"
        )
    return out


class DeeplabVGG(nn.Module):
    """DeepLab-v2 VGG-16: ``forward(x [N, 3, H, W]) -> logits [N, num_classes, h, w]``.

    ``h = floor(floor(floor(H / 2) / 2) / 2)`` (three 2x2 pools without ceil mode; everything after keeps the size),
    the same for ``w``. Input as for the ResNet models (BGR, mean-subtracted, no std).

    Random initialisation (torchvision's VGG init; fc6/fc7 PyTorch's default). The original constructor could read
    a Caffe-converted VGG-16 file (``vgg16_caffe_path``); here weights come as state_dicts, through
    ``utils.weights`` (``--restore-from`` with a torchvision-layout VGG-16 file, or ``torchvision``), which maps
    them with :func:`vgg16_to_deeplab_features`.

    Args:
        num_classes: output classes.
        all_branches: sum all four classifier branches (deviation, opt-in; see ``Classifier_Module``).
    """

    def __init__(self, num_classes: int, all_branches: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        layers = [m for i, m in enumerate(_vgg16_features_layers()) if i not in _DROPPED_VGG_INDICES]
        for i in _DILATED_CONV5:
            conv = layers[i]
            assert isinstance(conv, nn.Conv2d)
            conv.dilation = (2, 2)
            conv.padding = (2, 2)
        fc6 = nn.Conv2d(512, 1024, kernel_size=3, padding=4, dilation=4)
        fc7 = nn.Conv2d(1024, 1024, kernel_size=3, padding=4, dilation=4)
        self.features = nn.Sequential(*layers, fc6, nn.ReLU(inplace=True), fc7, nn.ReLU(inplace=True))
        self.classifier = Classifier_Module(1024, ASPP_DILATIONS, ASPP_DILATIONS, num_classes, all_branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def optim_parameters(self, lr_or_args: Any) -> list[dict[str, Any]]:
        """FAITHFUL: ONE parameter group with every parameter at ``lr`` (the original's ``optim_parameters``
        returned ``self.parameters()``, and its ``adjust_learning_rate`` sets a 10x rate only when a second group
        exists, so VGG's classifier never got one). No parameter is listed twice."""
        return [{"params": list(self.parameters()), "lr": _learning_rate(lr_or_args)}]

    optim_parameters_dedup = optim_parameters  # nothing to deduplicate
