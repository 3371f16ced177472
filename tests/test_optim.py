"""The faithful optimizers against independent step-by-step computations, and the poly schedule."""
from __future__ import annotations

import io
import math
import warnings

import pytest
import torch

from utils.optim import Adam04, FaithfulSGD, adjust_learning_rate, lr_poly


def _grad(step: int, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A deterministic gradient for (step, parameter name), different at every step."""
    g = torch.Generator().manual_seed(1000 * step + sum(map(ord, name)))
    return torch.randn(shape, generator=g)


def _make_params() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {name: torch.randn(shape, generator=g).requires_grad_()
            for name, shape in {"a": (3, 2), "b": (4,), "c": (2, 2), "d": (5,), "e": (2,)}.items()}


# group 0 lists a three times, b once, c (never gets a gradient) twice; group 1 lists d twice and e once.
LISTING = [["a", "b", "a", "c", "a", "c"], ["d", "e", "d"]]
NO_GRAD = {"c"}


def _reference_sgd(init: dict[str, torch.Tensor], steps: int, lrs: list[float], momentum: float,
                   wd: float) -> dict[str, torch.Tensor]:
    """Plain-tensor loops: each listing in turn decays the gradient in place, updates one buffer, moves p."""
    val = {k: v.detach().clone() for k, v in init.items()}
    buf: dict[str, torch.Tensor] = {}
    for step in range(steps):
        grad = {k: _grad(step, k, v.shape) for k, v in val.items() if k not in NO_GRAD}
        for group, lr in zip(LISTING, lrs):
            for name in group:
                if name not in grad:
                    continue
                grad[name] = grad[name] + wd * val[name]
                if name not in buf:
                    buf[name] = grad[name].clone()
                else:
                    buf[name] = momentum * buf[name] + grad[name]
                val[name] = val[name] - lr * buf[name]
    return val


def _run_optimizer(opt, params, steps: int, start: int = 0) -> None:
    for step in range(start, start + steps):
        opt.zero_grad()
        for k, p in params.items():
            if k not in NO_GRAD:
                p.grad = _grad(step, k, p.shape)
        opt.step()


def _faithful_sgd(params, lr=0.01, momentum=0.9, wd=5e-4):
    groups = [{"params": [params[n] for n in LISTING[0]], "lr": lr},
              {"params": [params[n] for n in LISTING[1]], "lr": 10 * lr}]
    return FaithfulSGD(groups, lr=lr, momentum=momentum, weight_decay=wd)


def test_faithful_sgd_matches_independent_loop_with_duplicates_and_missing_grads():
    params = _make_params()
    init = {k: v.detach().clone() for k, v in params.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no duplicate-parameter warning from torch.optim
        opt = _faithful_sgd(params, lr=0.01, momentum=0.9, wd=0.05)
    _run_optimizer(opt, params, steps=4)
    expected = _reference_sgd(init, steps=4, lrs=[0.01, 0.1], momentum=0.9, wd=0.05)
    for k in params:
        torch.testing.assert_close(params[k].detach(), expected[k], rtol=1e-6, atol=1e-7)
    # the parameter without a gradient did not move, not even by weight decay
    assert torch.equal(params["c"].detach(), init["c"])


def test_faithful_sgd_one_step_by_hand():
    # p listed twice, momentum 0.9, no decay: buf = g, p1 = p - lr g; buf = 0.9 g + g, p2 = p1 - 1.9 lr g.
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = FaithfulSGD([{"params": [p, p]}], lr=0.1, momentum=0.9)
    p.grad = torch.tensor([0.5, 1.0])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([1.0 - 2.9 * 0.05, -2.0 - 2.9 * 0.1]))
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], torch.tensor([0.95, 1.9]))
    # with weight decay the gradient itself accumulates the decay of each listing (in place)
    q = torch.tensor([2.0], requires_grad=True)
    opt = FaithfulSGD([{"params": [q, q, q]}], lr=0.1, momentum=0.0, weight_decay=0.5)
    q.grad = torch.tensor([0.0])
    opt.step()
    # listing 1: g = 0 + 0.5*2 = 1, q = 2 - 0.1 = 1.9; listing 2: g = 1 + 0.95 = 1.95, q = 1.705;
    # listing 3: g = 1.95 + 0.8525 = 2.8025, q = 1.705 - 0.28025 = 1.42475
    assert q.item() == pytest.approx(1.42475, rel=1e-6)
    assert q.grad.item() == pytest.approx(2.8025, rel=1e-6)


def test_faithful_sgd_differs_from_modern_sgd_on_deduplicated_groups():
    params = _make_params()
    modern_params = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    faithful = _faithful_sgd(params)
    modern = torch.optim.SGD([{"params": [modern_params[n] for n in dict.fromkeys(LISTING[0])], "lr": 0.01},
                              {"params": [modern_params[n] for n in dict.fromkeys(LISTING[1])], "lr": 0.1}],
                             lr=0.01, momentum=0.9, weight_decay=5e-4)
    _run_optimizer(faithful, params, steps=2)
    _run_optimizer(modern, modern_params, steps=2)
    # listed once: the same; listed several times: moved more than once per step
    torch.testing.assert_close(params["b"].detach(), modern_params["b"].detach())
    assert not torch.allclose(params["a"].detach(), modern_params["a"].detach(), rtol=1e-3, atol=1e-4)
    assert not torch.allclose(params["d"].detach(), modern_params["d"].detach(), rtol=1e-3, atol=1e-4)


def _roundtrip(sd: dict) -> dict:
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_faithful_sgd_state_dict_round_trip_keeps_listing_and_buffers():
    params = _make_params()
    twin = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    opt = _faithful_sgd(params)
    _run_optimizer(opt, params, steps=3)
    sd = _roundtrip(opt.state_dict())
    assert sd["param_groups"][0]["listing"] == [0, 1, 0, 2, 0, 2]
    # a fresh optimizer on copies of the current weights, restored from the state dict
    for k in twin:
        twin[k].data.copy_(params[k].detach())
    opt2 = _faithful_sgd(twin)
    opt2.load_state_dict(sd)
    _run_optimizer(opt, params, steps=2, start=3)
    _run_optimizer(opt2, twin, steps=2, start=3)
    for k in params:
        assert torch.equal(params[k].detach(), twin[k].detach()), k


def _reference_adam04(init, steps, lr, betas, eps, grads_scale):
    """Float64 loops of PyTorch 0.4's formula (eps before the bias correction)."""
    b1, b2 = betas
    val = {k: v.detach().double().clone() for k, v in init.items()}
    m = {k: torch.zeros_like(v) for k, v in val.items()}
    v2 = {k: torch.zeros_like(v) for k, v in val.items()}
    t = {k: 0 for k in val}
    for step in range(steps):
        for k in val:
            if k in NO_GRAD:
                continue
            g = _grad(step, k, val[k].shape).double() * grads_scale
            t[k] += 1
            m[k] = b1 * m[k] + (1 - b1) * g
            v2[k] = b2 * v2[k] + (1 - b2) * g * g
            val[k] = val[k] - lr * math.sqrt(1 - b2 ** t[k]) / (1 - b1 ** t[k]) * m[k] / (v2[k].sqrt() + eps)
    return val


def _run_scaled(opt, params, steps, scale, start=0):
    for step in range(start, start + steps):
        opt.zero_grad()
        for k, p in params.items():
            if k not in NO_GRAD:
                p.grad = _grad(step, k, p.shape) * scale
        opt.step()


@pytest.mark.parametrize("scale", [1.0, 1e-6])
def test_adam04_matches_independent_loop(scale):
    params = _make_params()
    init = {k: v.detach().clone() for k, v in params.items()}
    opt = Adam04(params.values(), lr=1e-3, betas=(0.9, 0.99))
    _run_scaled(opt, params, steps=5, scale=scale)
    expected = _reference_adam04(init, 5, 1e-3, (0.9, 0.99), 1e-8, scale)
    for k in params:
        torch.testing.assert_close(params[k].detach().double(), expected[k], rtol=1e-5, atol=1e-7)
    assert torch.equal(params["c"].detach(), init["c"])
    assert "c" not in {k for k, p in params.items() if p in opt.state}


def test_adam04_differs_from_modern_adam_for_tiny_gradients():
    params = _make_params()
    modern_params = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    init = {k: v.detach().clone() for k, v in params.items()}
    old = Adam04(params.values(), lr=1e-3, betas=(0.9, 0.99))
    new = torch.optim.Adam(modern_params.values(), lr=1e-3, betas=(0.9, 0.99))
    _run_scaled(old, params, steps=3, scale=1e-7)
    _run_scaled(new, modern_params, steps=3, scale=1e-7)
    upd_old = (params["a"].detach() - init["a"]).abs().mean()
    upd_new = (modern_params["a"].detach() - init["a"]).abs().mean()
    assert abs(upd_old - upd_new) / upd_new > 0.2  # eps before/after the bias correction: tens of percent
    # and with ordinary gradients the two agree closely
    p1 = {k: v.clone().requires_grad_() for k, v in init.items()}
    p2 = {k: v.clone().requires_grad_() for k, v in init.items()}
    _run_scaled(Adam04(p1.values(), lr=1e-3, betas=(0.9, 0.99)), p1, steps=3, scale=1.0)
    _run_scaled(torch.optim.Adam(p2.values(), lr=1e-3, betas=(0.9, 0.99)), p2, steps=3, scale=1.0)
    torch.testing.assert_close(p1["a"].detach(), p2["a"].detach(), rtol=1e-4, atol=1e-6)


def test_adam04_state_dict_round_trip():
    params = _make_params()
    twin = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    opt = Adam04(params.values(), lr=1e-3, betas=(0.9, 0.99))
    _run_scaled(opt, params, steps=2, scale=1e-3)
    sd = _roundtrip(opt.state_dict())
    for k in twin:
        twin[k].data.copy_(params[k].detach())
    opt2 = Adam04(twin.values(), lr=1e-3, betas=(0.9, 0.99))
    opt2.load_state_dict(sd)
    _run_scaled(opt, params, steps=2, scale=1e-3, start=2)
    _run_scaled(opt2, twin, steps=2, scale=1e-3, start=2)
    for k in params:
        assert torch.equal(params[k].detach(), twin[k].detach()), k


def test_lr_poly_values_and_group_scaling():
    assert lr_poly(2.5e-4, 0, 250000, 0.9) == 2.5e-4
    # (1 - 1/2) ** 0.9 = exp(-0.9 ln 2) = 0.5358867312681466
    assert lr_poly(2.5e-4, 125000, 250000, 0.9) == pytest.approx(2.5e-4 * 0.5358867312681466, rel=1e-12)
    assert lr_poly(1e-4, 3, 10, 1.0) == pytest.approx(0.7e-4, rel=1e-12)
    p, q = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = FaithfulSGD([{"params": [p]}, {"params": [q]}], lr=1.0)
    adjust_learning_rate(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 2.5]
    single = Adam04([p], lr=1.0)
    adjust_learning_rate(single, 0.5)
    assert [g["lr"] for g in single.param_groups] == [0.5]


# ---- FaithfulSGD (each parameter's listings back to back) against the one-listing-at-a-time loop ---------------------


class ListingLoopSGD:
    """The reference: PyTorch 0.4's SGD loop over a parameter list with duplicates, one listing at a time, with the
    same in-place tensor ops (so the comparison can be bitwise). ``groups``: [(listed params, lr)]."""

    def __init__(self, groups, momentum, dampening, weight_decay, nesterov):
        self.groups, self.buf = groups, {}
        self.momentum, self.dampening, self.wd, self.nesterov = momentum, dampening, weight_decay, nesterov

    @torch.no_grad()
    def step(self):
        for listed, lr in self.groups:
            for p in listed:
                if p.grad is None:
                    continue
                d_p = p.grad
                if self.wd != 0:
                    d_p.add_(p, alpha=self.wd)
                if self.momentum != 0:
                    if id(p) not in self.buf:
                        buf = self.buf[id(p)] = d_p.clone()
                    else:
                        buf = self.buf[id(p)]
                        buf.mul_(self.momentum).add_(d_p, alpha=1 - self.dampening)
                    d_p = d_p.add(buf, alpha=self.momentum) if self.nesterov else buf
                p.add_(d_p, alpha=-lr)

    def zero_grad(self):
        for listed, _ in self.groups:
            for p in listed:
                if p.grad is not None:
                    p.grad.zero_()


@pytest.mark.parametrize("momentum, dampening, nesterov, wd", [(0.9, 0.0, False, 0.05), (0.9, 0.0, True, 5e-4),
                                                                (0.5, 0.3, False, 0.0), (0.0, 0.0, False, 0.05)])
def test_per_parameter_order_equals_listing_loop_bitwise_small(momentum, dampening, nesterov, wd):
    params = _make_params()
    twin = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    opt = FaithfulSGD([{"params": [params[n] for n in LISTING[0]], "lr": 0.01},
                       {"params": [params[n] for n in LISTING[1]], "lr": 0.1}], lr=0.01, momentum=momentum,
                      dampening=dampening, weight_decay=wd, nesterov=nesterov)
    ref = ListingLoopSGD([([twin[n] for n in LISTING[0]], 0.01), ([twin[n] for n in LISTING[1]], 0.1)],
                         momentum, dampening, wd, nesterov)
    _run_optimizer(opt, params, steps=3)
    _run_optimizer(ref, twin, steps=3)
    for k in params:
        assert torch.equal(params[k].detach(), twin[k].detach()), k
        if params[k].grad is not None:
            assert torch.equal(params[k].grad, twin[k].grad), k  # the decay accumulated in the gradient too


def test_per_parameter_order_equals_listing_loop_bitwise_on_deeplab_multi():
    """The real listing (ResNet blocks 1,1,1,1: convs listed 3-4 times, unused classifier branches without
    gradients), real gradients, 2 steps with momentum and weight decay: parameters, gradients (with their
    accumulated decay) and momentum buffers bitwise equal to the listing loop."""
    from model import DeeplabMulti

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is as fast and does not spin against other work
    try:
        torch.manual_seed(0)
        nets = [DeeplabMulti(19, layers=(1, 1, 1, 1)) for _ in range(2)]
        nets[1].load_state_dict(nets[0].state_dict())
        opt = FaithfulSGD(nets[0].optim_parameters(1e-2), lr=1e-2, momentum=0.9, weight_decay=5e-4)
        ref = ListingLoopSGD([(g["params"], g["lr"]) for g in nets[1].optim_parameters(1e-2)], 0.9, 0.0, 5e-4, False)
        assert len(opt.param_groups[0]["listing"]) > len(opt.param_groups[0]["params"])  # duplicates
        g = torch.Generator().manual_seed(1)
        for step in range(2):
            x = torch.randn(1, 3, 33, 41, generator=g) * 50
            for net, o in zip(nets, (opt, ref)):
                o.zero_grad()
                aux, main = net(x)
                (main.square().mean() + 0.1 * aux.square().mean() + (step + 1) * main.mean()).backward()
                o.step()
    finally:
        torch.set_num_threads(threads)
    ours, theirs = dict(nets[0].named_parameters()), dict(nets[1].named_parameters())
    assert ours["layer6.conv2d_list.2.weight"].grad is None  # the unused branch never got a gradient
    for k, p in ours.items():
        q = theirs[k]
        assert torch.equal(p.detach(), q.detach()), k
        assert (p.grad is None) == (q.grad is None), k
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad), k
            assert torch.equal(opt.state[p]["momentum_buffer"], ref.buf[id(q)]), k


def test_lazy_zero_grad_decays_like_in_place_zeroing():
    """zero_grad() releases the gradients; a parameter that had one and gets none before step() is decayed as with
    0.4's in-place zeros; one that gets a new gradient uses it; set_to_none=True means no gradient, no decay."""
    def run(mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.tensor([1.0, -2.0], requires_grad=True)
        b = torch.tensor([3.0], requires_grad=True)
        opt = FaithfulSGD([{"params": [a, b, a]}], lr=0.1, momentum=0.9, weight_decay=0.5)
        a.grad, b.grad = torch.tensor([0.5, 0.25]), torch.tensor([1.0])
        opt.step()
        if mode == "reference":  # 0.4: zeroed in place, then only b gets a gradient
            a.grad.zero_()
            b.grad.zero_()
        else:
            opt.zero_grad(set_to_none=(mode == "none"))
            assert a.grad is None and b.grad is None
        b.grad = (b.grad if b.grad is not None else 0) + torch.tensor([2.0])
        opt.step()
        return a.detach().clone(), b.detach().clone()

    ref_a, ref_b = run("reference")
    lazy_a, lazy_b = run("lazy")
    assert torch.equal(lazy_a, ref_a) and torch.equal(lazy_b, ref_b)
    none_a, none_b = run("none")
    assert torch.equal(none_b, ref_b) and not torch.equal(none_a, ref_a)  # without a gradient a stays put
