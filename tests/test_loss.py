"""Segmentation cross-entropy (the original's CrossEntropy2d) and the adversarial losses."""
from __future__ import annotations

import math

import pytest
import torch

from utils.loss import AdversarialLoss, CrossEntropy2d


def _reference_ce(predict: torch.Tensor, target: torch.Tensor, ignore: int) -> float:
    """Loop over pixels: -log softmax at the label, averaged over labels >= 0 and != ignore."""
    total, count = 0.0, 0
    n, c, h, w = predict.shape
    for i in range(n):
        for y in range(h):
            for x in range(w):
                t = int(target[i, y, x])
                if t < 0 or t == ignore:
                    continue
                logits = [float(predict[i, k, y, x]) for k in range(c)]
                mx = max(logits)
                lse = mx + math.log(sum(math.exp(v - mx) for v in logits))
                total += lse - logits[t]
                count += 1
    return total / count


def test_cross_entropy_matches_pixel_loop_and_ignores_labels():
    g = torch.Generator().manual_seed(0)
    predict = torch.randn(2, 4, 3, 5, generator=g)
    target = torch.randint(0, 4, (2, 3, 5), generator=g)
    target[0, 0, :] = 255
    target[1, 2, 1] = -1
    target[1, 0, 0] = 7  # custom ignore label below
    target_7 = target.clone()
    target[1, 0, 0] = 255
    got = CrossEntropy2d(ignore_label=255)(predict, target)
    assert got.item() == pytest.approx(_reference_ce(predict, target, 255), rel=1e-5)
    # matches torch's CrossEntropyLoss(ignore_index=255) (the 0.4 script) when no label is negative
    t2 = target.clone()
    t2[t2 < 0] = 255
    torch.testing.assert_close(got, torch.nn.CrossEntropyLoss(ignore_index=255)(predict, t2))
    target_7 = torch.where(target_7 == 255, 7, target_7)
    got7 = CrossEntropy2d(ignore_label=7)(predict, target_7)
    assert got7.item() == pytest.approx(_reference_ce(predict, target_7, 7), rel=1e-5)
    assert got7.item() == pytest.approx(got.item(), rel=1e-6)  # the same pixels count


def test_cross_entropy_all_ignored_is_zero_and_backpropagates():
    predict = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.full((1, 2, 2), 255, dtype=torch.long)
    loss = CrossEntropy2d()(predict, target)
    assert loss.item() == 0.0 and not math.isnan(loss.item())
    loss.backward()
    assert predict.grad is not None and torch.count_nonzero(predict.grad) == 0


def test_cross_entropy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="do not match"):
        CrossEntropy2d()(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))


def test_adversarial_losses_against_hand_formulas():
    d_out = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]]]])
    sig = [1 / (1 + math.exp(-v)) for v in (0.5, -1.0, 2.0, 0.0)]
    bce0 = sum(-math.log(1 - s) for s in sig) / 4
    bce1 = sum(-math.log(s) for s in sig) / 4
    assert AdversarialLoss("Vanilla")(d_out, 0).item() == pytest.approx(bce0, rel=1e-6)
    assert AdversarialLoss("Vanilla")(d_out, 1).item() == pytest.approx(bce1, rel=1e-6)
    vals = (0.5, -1.0, 2.0, 0.0)
    assert AdversarialLoss("LS")(d_out, 0).item() == pytest.approx(sum(v * v for v in vals) / 4, rel=1e-6)
    assert AdversarialLoss("LS")(d_out, 1).item() == pytest.approx(sum((v - 1) ** 2 for v in vals) / 4, rel=1e-6)
    with pytest.raises(ValueError, match="Vanilla, LS"):
        AdversarialLoss("WGAN")
