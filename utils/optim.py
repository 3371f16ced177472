"""The optimizers as the original ran under PyTorch 0.3/0.4, and the poly learning-rate schedule.

Why these exist: the published AdaptSegNet numbers come from two optimizer behaviours that today's
``torch.optim`` no longer has.

* :class:`FaithfulSGD`. The original's backbone parameter group lists most parameters several times
  (``get_1x_lr_params_NOscale`` walks ``module.modules()`` and yields the parameters of every sub-module, so a
  bottleneck conv is listed 3 times, a downsample conv 4 times, the stem once). SGD of PyTorch 0.3/0.4 walked the
  group's list as given: for each *listing* of ``p`` it added ``weight_decay * p`` to ``p.grad`` in place (so the
  decay accumulates across listings), updated the one momentum buffer of ``p`` and moved ``p``. The backbone therefore
  moves several times per iteration. Today's ``torch.optim.SGD`` warns about duplicates and does something else.
* :class:`Adam04`. PyTorch 0.4's Adam added ``eps`` to ``sqrt(v)`` *before* the bias correction::

      p -= lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)

  Since 2019 PyTorch computes ``lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)``. With the
  discriminators' tiny gradients (~1e-6 per element early on) ``eps`` is not negligible and the two differ by tens
  of percent.

Both subclass :class:`torch.optim.Optimizer`, so ``state_dict()``/``load_state_dict()`` work for resuming.
:class:`FaithfulSGD` keeps the listing (with its duplicates) itself: each param group holds its distinct parameters
under ``"params"`` (what ``torch.optim.Optimizer`` indexes state by) and the order of listings, as positions into
that list, under ``"listing"``; both round-trip through ``state_dict()``.

Speed: the listing's order matters only *per parameter* (each listing of ``p`` touches ``p``, ``p.grad`` and the
buffer of ``p`` alone), so :class:`FaithfulSGD` runs each parameter's listings back to back, which keeps ``p``, its
gradient and its buffer in the CPU caches across the ops: bitwise the result of walking the listing one entry at a
time (``tests/test_optim.py`` keeps that loop as the reference) and 1.26x faster on the CPU (``BENCHMARKS.md``).
A multi-tensor (``torch._foreach_*``) variant was tried and removed: it was slower on the CPU (0.68x) and no GPU
measurement exists to justify it.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch.optim import Optimizer

__all__ = ["FaithfulSGD", "Adam04", "lr_poly", "adjust_learning_rate"]


def lr_poly(base_lr: float, i_iter: int, max_iter: int, power: float) -> float:
    """The original's poly schedule: ``base_lr * (1 - i_iter / max_iter) ** power`` (Python floats)."""
    return base_lr * ((1 - float(i_iter) / max_iter) ** power)


def adjust_learning_rate(optimizer: Optimizer, lr: float) -> None:
    """Set group 0 to ``lr`` and group 1 (if any: the classifiers) to ``10 * lr``, as the original did for the
    segmentation network and (with a single group) for each discriminator."""
    optimizer.param_groups[0]["lr"] = lr
    if len(optimizer.param_groups) > 1:
        optimizer.param_groups[1]["lr"] = lr * 10


def _as_param_groups(params: Any) -> list[dict]:
    """Normalise what ``torch.optim`` accepts (tensors, or dicts with ``"params"``) to a list of dicts whose
    ``"params"`` is a list (generators are consumed here, once)."""
    if isinstance(params, torch.Tensor):
        raise TypeError("params must be an iterable of tensors or of dicts, not a single tensor")
    params = list(params)
    if not params:
        raise ValueError("the optimizer got an empty parameter list")
    if not isinstance(params[0], dict):
        params = [{"params": params}]
    groups = []
    for group in params:
        group = dict(group)
        ps = group["params"]
        group["params"] = [ps] if isinstance(ps, torch.Tensor) else list(ps)
        groups.append(group)
    return groups


class FaithfulSGD(Optimizer):
    """SGD exactly as PyTorch 0.3/0.4 ran it on a parameter list **with duplicates**.

    ``params``: like ``torch.optim.SGD`` (tensors, or dicts with ``"params"`` and per-group options); a parameter may
    be listed several times in a group. For each group, for each listing of ``p`` in order:

    1. skip if ``p.grad is None`` (weight decay included: the classifier branches the forward never uses stay put);
    2. ``p.grad += weight_decay * p`` in place, so a parameter listed k times has k decays in its gradient by the
       last listing;
    3. momentum buffer of ``p`` (one per parameter, shared by its listings; on first use a copy of that gradient):
       ``buf = momentum * buf + (1 - dampening) * p.grad``;
    4. ``p -= lr * buf`` (or ``lr * (p.grad + momentum * buf)`` with ``nesterov``).

    ``zero_grad`` has 0.4's in-place semantics by default (``set_to_none=False``), so a parameter that once had a
    gradient keeps being decayed even in an iteration that gives it none (implemented lazily, see :meth:`zero_grad`).
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"invalid momentum: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum requires a momentum and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
        self._zeroed: dict[int, torch.Tensor] = {}  # parameters whose gradient zero_grad() released
        super().__init__(_as_param_groups(params), defaults)

    def __setstate__(self, state: dict) -> None:  # copies and unpickled optimizers: nothing zeroed yet
        super().__setstate__(state)
        self.__dict__.setdefault("_zeroed", {})

    def add_param_group(self, param_group: dict) -> None:
        """Store the distinct parameters under ``"params"`` and the listing order under ``"listing"``."""
        group = dict(param_group)
        listed = group["params"]
        listed = [listed] if isinstance(listed, torch.Tensor) else list(listed)
        distinct: list[torch.Tensor] = []
        position: dict[int, int] = {}
        listing: list[int] = []
        for p in listed:
            if id(p) not in position:
                position[id(p)] = len(distinct)
                distinct.append(p)
            listing.append(position[id(p)])
        group["params"] = distinct
        group.setdefault("listing", listing)
        super().add_param_group(group)

    def zero_grad(self, set_to_none: bool = False) -> None:
        """0.4's in-place zeroing (default), done lazily: the gradients are released now (``None``: the next backward
        stores its gradient instead of adding it to zeros, one pass over the weights less) and each parameter that
        had one but has none at the next :meth:`step` gets a zero gradient there, so it is weight-decayed exactly as
        with in-place zeroing. Only ``p.grad`` read between this call and the backward differs (``None``).
        ``set_to_none=True``: today's semantics (no gradient, no decay)."""
        pending = self._zeroed
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if not set_to_none:
                        pending[id(p)] = p
                    p.grad = None
        if set_to_none:
            pending.clear()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for p in self._zeroed.values():  # zeroed by zero_grad() and no gradient since: 0.4 would hold zeros here
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self._zeroed.clear()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict) -> None:
        """Each parameter's listings back to back, in first-listing order (see the module docstring)."""
        weight_decay, momentum, dampening = group["weight_decay"], group["momentum"], group["dampening"]
        lr, params = group["lr"], group["params"]
        counts: dict[int, int] = {}
        for index in group["listing"]:
            counts[index] = counts.get(index, 0) + 1
        for index, times in counts.items():
            p = params[index]
            if p.grad is None:
                continue
            d_p = p.grad
            state = self.state[p] if momentum != 0 else None
            for _ in range(times):
                if weight_decay != 0:
                    d_p.add_(p, alpha=weight_decay)  # in place: accumulates across listings
                step = d_p
                if momentum != 0:
                    if "momentum_buffer" not in state:
                        buf = state["momentum_buffer"] = d_p.clone()
                    else:
                        buf = state["momentum_buffer"]
                        buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
                    step = d_p.add(buf, alpha=momentum) if group["nesterov"] else buf
                p.add_(step, alpha=-lr)


class Adam04(Optimizer):
    """Adam as PyTorch 0.4 computed it (``eps`` added before the bias correction).

    Per parameter with a gradient ``g`` (step count ``t`` per parameter)::

        g = g + weight_decay * p                       (only if weight_decay != 0)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        p = p - lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)

    Parameters without a gradient are skipped (their ``t`` does not advance). ``zero_grad`` zeroes in place by
    default, as 0.4 did.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate: {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas: {betas}")
        if eps < 0.0:
            raise ValueError(f"invalid eps: {eps}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(_as_param_groups(params), defaults)

    def zero_grad(self, set_to_none: bool = False) -> None:  # 0.4 zeroed in place
        super().zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("Adam04 does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] = int(state["step"]) + 1
                if group["weight_decay"] != 0:
                    grad = grad.add(p, alpha=group["weight_decay"])
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = exp_avg_sq.sqrt().add_(group["eps"])
                bias_correction1 = 1 - beta1 ** state["step"]
                bias_correction2 = 1 - beta2 ** state["step"]
                step_size = group["lr"] * math.sqrt(bias_correction2) / bias_correction1
                p.addcdiv_(exp_avg, denom, value=-step_size)
        return loss
