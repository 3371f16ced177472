"""A straightforward port of the original AdaptSegNet training iteration (``train_gta2cityscapes_multi.py`` of
wasidennis/AdaptSegNet, PyTorch 0.3/0.4), written independently of the project's training code: the reference that
``tests/test_original_step.py`` compares ``train_step`` with, and the "original port" of ``bench/bench_train.py``.

What is ported, as the original ran it:

* the order of the passes: segmentation on the source (both outputs upsampled by ``nn.Upsample(mode='bilinear')``,
  whose 0.3/0.4 behaviour is ``align_corners=True``), backward; adversarial on the target against the *source* label
  with the discriminators frozen, backward; the discriminators on the detached source outputs (label 0), backward;
  on the detached target outputs (label 1), backward; the losses divided by ``iter_size`` (and the discriminators'
  by 2); every loss computed in full, also in the single-level setting (``lambda = 0`` multiplies a real loss);
* the loss ``utils/loss.py:CrossEntropy2d``: the labelled pixels gathered, then ``F.cross_entropy`` (mean); no
  labelled pixel: a zero;
* the optimizers of PyTorch 0.4: SGD walking its parameter list with the duplicates of ``optim_parameters`` (weight
  decay added to the gradient in place, one momentum buffer per parameter); Adam with ``eps`` added to ``sqrt(v)``
  before the bias correction;
* the poly learning-rate schedule (10x on the second group).

Only the model classes, ``FCDiscriminator`` and the data are shared with the project.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F


class CrossEntropy2dPort(nn.Module):
    """The original ``CrossEntropy2d``: mean cross-entropy over the pixels with ``0 <= label != 255``."""

    def forward(self, predict: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n, c, h, w = predict.size()
        target_mask = (target >= 0) & (target != 255)
        target = target[target_mask]
        if target.numel() == 0:
            return torch.zeros(1, device=predict.device)
        predict = predict.transpose(1, 2).transpose(2, 3).contiguous()
        predict = predict[target_mask.view(n, h, w, 1).repeat(1, 1, 1, c)].view(-1, c)
        return F.cross_entropy(predict, target)


class SGD04:
    """PyTorch 0.4's ``optim.SGD.step`` over groups whose ``params`` may list a parameter several times."""

    def __init__(self, groups: list[dict], lr: float, momentum: float, weight_decay: float) -> None:
        self.param_groups = [{"lr": lr, **g, "params": list(g["params"])} for g in groups]
        self.momentum, self.weight_decay = momentum, weight_decay
        self.buffers: dict[int, torch.Tensor] = {}

    def zero_grad(self) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if self.weight_decay != 0:
                    d_p.add_(p, alpha=self.weight_decay)
                if self.momentum != 0:
                    if id(p) not in self.buffers:
                        buf = self.buffers[id(p)] = torch.zeros_like(p)
                        buf.mul_(self.momentum).add_(d_p)
                    else:
                        buf = self.buffers[id(p)]
                        buf.mul_(self.momentum).add_(d_p)
                    d_p = buf
                p.add_(d_p, alpha=-g["lr"])


class Adam04:
    """PyTorch 0.4's ``optim.Adam.step``: ``p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``."""

    def __init__(self, params, lr: float, betas: tuple[float, float], eps: float = 1e-8) -> None:
        self.param_groups = [{"params": list(params), "lr": lr}]
        self.betas, self.eps = betas, eps
        self.state: dict[int, dict] = {}

    def zero_grad(self) -> None:
        for p in self.param_groups[0]["params"]:
            if p.grad is not None:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for p in self.param_groups[0]["params"]:
            if p.grad is None:
                continue
            s = self.state.setdefault(id(p), {"step": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)})
            s["step"] += 1
            s["m"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
            s["v"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = s["v"].sqrt().add_(self.eps)
            step_size = self.param_groups[0]["lr"] * math.sqrt(1 - beta2 ** s["step"]) / (1 - beta1 ** s["step"])
            p.addcdiv_(s["m"], denom, value=-step_size)


def lr_poly(base_lr: float, i_iter: int, max_iter: int, power: float) -> float:
    return base_lr * ((1 - float(i_iter) / max_iter) ** power)


def adjust_learning_rate(optimizer, lr: float) -> None:
    optimizer.param_groups[0]["lr"] = lr
    if len(optimizer.param_groups) > 1:
        optimizer.param_groups[1]["lr"] = lr * 10


class OriginalIteration:
    """The original's training objects and one iteration. ``model`` is a ``DeeplabMulti`` (two outputs), ``model_D1``,
    ``model_D2`` ``FCDiscriminator``\\ s; ``hp``: any object with the original's argument names (``learning_rate``,
    ``learning_rate_D``, ``momentum``, ``weight_decay``, ``num_steps``, ``power``, ``iter_size``, ``lambda_seg``,
    ``lambda_adv_target1``, ``lambda_adv_target2``, ``gan``, ``input_size``, ``input_size_target`` as (W, H))."""

    def __init__(self, model: nn.Module, model_D1: nn.Module, model_D2: nn.Module, hp) -> None:
        self.model, self.model_D1, self.model_D2, self.hp = model, model_D1, model_D2, hp
        self.optimizer = SGD04(model.optim_parameters(hp.learning_rate), lr=hp.learning_rate, momentum=hp.momentum,
                               weight_decay=hp.weight_decay)
        self.optimizer_D1 = Adam04(model_D1.parameters(), lr=hp.learning_rate_D, betas=(0.9, 0.99))
        self.optimizer_D2 = Adam04(model_D2.parameters(), lr=hp.learning_rate_D, betas=(0.9, 0.99))
        self.bce_loss = nn.BCEWithLogitsLoss() if hp.gan == "Vanilla" else nn.MSELoss()
        self.criterion = CrossEntropy2dPort()
        w, h = hp.input_size
        wt, ht = hp.input_size_target
        self.interp = nn.Upsample(size=(h, w), mode="bilinear", align_corners=True)
        self.interp_target = nn.Upsample(size=(ht, wt), mode="bilinear", align_corners=True)

    def _label(self, d_out: torch.Tensor, value: int) -> torch.Tensor:
        return torch.full(d_out.size(), float(value), device=d_out.device)

    def step(self, source_iter: Iterator, target_iter: Iterator, i_iter: int, device: torch.device) -> list[float]:
        """One iteration; returns the six logged values (seg1, seg2, adv1, adv2, D1, D2) as the original logged
        them."""
        hp, model, model_D1, model_D2 = self.hp, self.model, self.model_D1, self.model_D2
        source_label, target_label = 0, 1
        values = [0.0] * 6
        self.optimizer.zero_grad()
        adjust_learning_rate(self.optimizer, lr_poly(hp.learning_rate, i_iter, hp.num_steps, hp.power))
        self.optimizer_D1.zero_grad()
        self.optimizer_D2.zero_grad()
        for opt in (self.optimizer_D1, self.optimizer_D2):
            adjust_learning_rate(opt, lr_poly(hp.learning_rate_D, i_iter, hp.num_steps, hp.power))
        for _ in range(hp.iter_size):
            for param in list(model_D1.parameters()) + list(model_D2.parameters()):
                param.requires_grad = False
            images, labels = next(source_iter)
            pred1, pred2 = model(images.to(device))
            pred1, pred2 = self.interp(pred1), self.interp(pred2)
            labels = labels.long().to(device)
            loss_seg1 = self.criterion(pred1, labels)
            loss_seg2 = self.criterion(pred2, labels)
            loss = (loss_seg2 + hp.lambda_seg * loss_seg1) / hp.iter_size
            loss.backward()
            values[0] += loss_seg1.item() / hp.iter_size
            values[1] += loss_seg2.item() / hp.iter_size

            images = next(target_iter)
            pred_target1, pred_target2 = model(images.to(device))
            pred_target1, pred_target2 = self.interp_target(pred_target1), self.interp_target(pred_target2)
            d_out1 = model_D1(F.softmax(pred_target1, dim=1))
            d_out2 = model_D2(F.softmax(pred_target2, dim=1))
            loss_adv_target1 = self.bce_loss(d_out1, self._label(d_out1, source_label))
            loss_adv_target2 = self.bce_loss(d_out2, self._label(d_out2, source_label))
            loss = (hp.lambda_adv_target1 * loss_adv_target1 + hp.lambda_adv_target2 * loss_adv_target2) / hp.iter_size
            loss.backward()
            values[2] += loss_adv_target1.item() / hp.iter_size
            values[3] += loss_adv_target2.item() / hp.iter_size

            for param in list(model_D1.parameters()) + list(model_D2.parameters()):
                param.requires_grad = True
            for out1, out2, label in ((pred1, pred2, source_label), (pred_target1, pred_target2, target_label)):
                d_out1 = model_D1(F.softmax(out1.detach(), dim=1))
                d_out2 = model_D2(F.softmax(out2.detach(), dim=1))
                loss_D1 = self.bce_loss(d_out1, self._label(d_out1, label)) / hp.iter_size / 2
                loss_D2 = self.bce_loss(d_out2, self._label(d_out2, label)) / hp.iter_size / 2
                loss_D1.backward()
                loss_D2.backward()
                values[4] += loss_D1.item()
                values[5] += loss_D2.item()
        self.optimizer.step()
        self.optimizer_D1.step()
        self.optimizer_D2.step()
        return values
