"""Training losses: the segmentation cross-entropy and the two adversarial objectives.

* :class:`CrossEntropy2d` is the original's ``utils/loss.py`` criterion: the mean cross-entropy over the pixels whose
  label is ``>= 0`` and ``!= ignore_label``. A batch with no such pixel gives 0 with zero gradients, as PyTorch 0.4
  did (its cross-entropy divided by the total weight only when that was positive; NaN appears only when the
  original code runs on PyTorch >= 1.11). Here it is a zero connected to the prediction, so ``backward()`` works and
  a crop that happens to be all "ignore" does not stop the run.
* :class:`AdversarialLoss`: ``Vanilla`` is ``BCEWithLogitsLoss`` and ``LS`` (least-squares GAN) is ``MSELoss``,
  each against a target filled with the domain label (the original's ``source_label = 0``, ``target_label = 1``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CrossEntropy2d", "AdversarialLoss", "GAN_CHOICES", "SOURCE_LABEL", "TARGET_LABEL"]

GAN_CHOICES = ("Vanilla", "LS")
SOURCE_LABEL = 0
TARGET_LABEL = 1


class CrossEntropy2d(nn.Module):
    """Mean pixel-wise cross-entropy over labelled pixels.

    ``forward(predict [N, C, H, W] logits, target [N, H, W] integer labels) -> scalar``. Pixels with
    ``target < 0`` or ``target == ignore_label`` do not count; the mean is over the rest. No labelled pixel: a zero
    connected to ``predict`` (gradient zero), never NaN.
    """

    def __init__(self, ignore_label: int = 255) -> None:
        super().__init__()
        self.ignore_label = ignore_label

    def forward(self, predict: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if predict.dim() != 4 or target.dim() != 3:
            raise ValueError(f"CrossEntropy2d expects predict [N,C,H,W] and target [N,H,W], got "
                             f"{tuple(predict.shape)} and {tuple(target.shape)}")
        if predict.shape[0] != target.shape[0] or predict.shape[2:] != target.shape[1:]:
            raise ValueError(f"CrossEntropy2d: prediction {tuple(predict.shape)} and label {tuple(target.shape)} "
                             "do not match in batch or spatial size")
        target = target.long()
        valid = (target >= 0) & (target != self.ignore_label)
        # -100 is cross_entropy's own ignore value; mapping every excluded pixel to it keeps one fused kernel.
        masked = torch.where(valid, target, torch.full_like(target, -100))
        total = F.cross_entropy(predict, masked, ignore_index=-100, reduction="sum")
        count = valid.sum().clamp(min=1).to(total.dtype)
        return total / count


class AdversarialLoss(nn.Module):
    """``forward(d_out [N, 1, h, w] discriminator logits, label: 0 or 1) -> scalar``.

    ``gan="Vanilla"``: binary cross-entropy with logits; ``gan="LS"``: mean squared error (on the raw outputs),
    both against a tensor of ``d_out``'s shape filled with ``label``.
    """

    def __init__(self, gan: str = "Vanilla") -> None:
        super().__init__()
        if gan not in GAN_CHOICES:
            raise ValueError(f"unknown GAN objective {gan!r}: expected one of {', '.join(GAN_CHOICES)}")
        self.gan = gan

    def forward(self, d_out: torch.Tensor, label: float) -> torch.Tensor:
        target = torch.full_like(d_out, float(label))
        if self.gan == "Vanilla":
            return F.binary_cross_entropy_with_logits(d_out, target)
        return F.mse_loss(d_out, target)
