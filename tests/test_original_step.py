"""The golden test of the training step: ``train_step`` against a port of the original iteration
(``tests/original_port.py``: its order of passes, detach points, labels, scaling, PyTorch 0.4 SGD and Adam), two
iterations from the same weights on the tiny model, every weight (BatchNorm statistics included) and the six logged
losses compared, for ``--gan Vanilla`` and ``LS``, multi- and single-level, ``--iter-size`` 1 and 2.

The two compute the cross-entropy in a different order (the original gathers the labelled pixels first), so they
agree to float32 rounding, not bit for bit: the bound is on each tensor's *update* (after minus before), which a
real difference (e.g. ``align_corners=False`` in the upsampling, a missing ``/ 2``, a detach in the wrong place)
moves by far more than rounding does (measured: rounding up to 7e-5 of a tensor's update, ``align_corners=False``
0.44 and a 4-in-6 mismatch of the losses).
"""
from __future__ import annotations

import copy

import pytest
import torch

import train_gta2cityscapes_multi as train
from original_port import OriginalIteration
from utils.device import seed_everything

SIZE, SIZE_T = (40, 32), (36, 32)


def _batches(n: int, seed: int):
    """n source (image, label) pairs with some ignored (255) pixels, n target images."""
    g = torch.Generator().manual_seed(seed)
    src = [(torch.randn(1, 3, SIZE[1], SIZE[0], generator=g) * 60,
            torch.randint(0, 19, (1, SIZE[1], SIZE[0]), generator=g).float()) for _ in range(n)]
    for _, label in src:
        label[:, :4] = 255
    tgt = [torch.randn(1, 3, SIZE_T[1], SIZE_T[0], generator=g) * 60 for _ in range(n)]
    return src, tgt


def _state(nets) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v.detach().clone() for name, net in zip(("model", "D1", "D2"), nets)
            for k, v in net.state_dict().items() if v.is_floating_point()}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    den = float(b.double().norm())
    return float((a.double() - b.double()).norm()) / den if den > 0 else float(a.double().norm())


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("gan", ["Vanilla", "LS"])
@pytest.mark.parametrize("level, iter_size", [("multi", 1), ("single", 1), ("multi", 2)])
def test_train_step_equals_the_original_iteration(gan, level, iter_size):
    """(iter-size 2 with BatchNorm on batch statistics of 1-image batches is so ill-conditioned that a 1e-6 change of
    the weights moves the second update by 20%: that case runs with --freeze-bn-stats, which tests the same
    accumulation and scaling.)"""
    lambdas = (["--lambda-seg", "0.1", "--lambda-adv-target1", "0.02", "--lambda-adv-target2", "0.1"]
               if level == "multi" else ["--lambda-seg", "0", "--lambda-adv-target1", "0", "--lambda-adv-target2", "0.1"])
    args = train.get_args_parser().parse_args(
        ["--restore-from", "none", "--resnet-layers", "1,1,1,1", "--input-size", "%d,%d" % SIZE,
         "--input-size-target", "%d,%d" % SIZE_T, "--cpu", "--gan", gan, "--iter-size", str(iter_size),
         "--learning-rate", "1e-2", "--learning-rate-D", "1e-3", "--num-steps", "10", *lambdas,
         *(["--freeze-bn-stats"] if iter_size > 1 else [])])
    train.validate_args(args)
    seed_everything(0)
    t = train.build_training(args, torch.device("cpu"))
    assert t.use_aux == (level == "multi")
    nets = [copy.deepcopy(n) for n in (t.model, t.model_D1, t.model_D2)]
    port = OriginalIteration(*nets, args)
    initial = _state(nets)
    src, tgt = _batches(2 * iter_size, seed=7)
    ours_src, ours_tgt = iter(src), iter(tgt)
    port_src, port_tgt = iter(src), iter(tgt)
    for i_iter in range(2):
        before = _state(nets)
        ours = train.train_step(t, ours_src, ours_tgt, i_iter)
        theirs = port.step(port_src, port_tgt, i_iter, torch.device("cpu"))
        after_ours, after_port = _state((t.model, t.model_D1, t.model_D2)), _state(nets)
        if level == "multi":
            assert list(ours.values()) == pytest.approx(theirs, rel=1e-5, abs=1e-7)
        else:  # the shortcut logs the auxiliary terms as 0; the main ones are the original's
            for k in (1, 3, 5):
                assert ours[train.LOSS_NAMES[k]] == pytest.approx(theirs[k], rel=1e-5, abs=1e-7)
            assert ours["loss_seg1"] == ours["loss_adv_target1"] == ours["loss_D1"] == 0
        compared, worst = 0, (0.0, "")
        for key, value in after_port.items():
            if level == "single" and (key.startswith(("model.layer5.", "D1."))):
                continue  # the documented difference: the original steps layer5 (zero gradients + decay) and D1
            update_port, update_ours = value - before[key], after_ours[key] - before[key]
            if "num_batches_tracked" in key:
                continue
            worst = max(worst, (_relative(update_ours, update_port), key))
            compared += 1
        assert worst[0] < 1e-3, worst  # rounding: up to ~7e-5; align_corners=False in the upsampling: 0.44
        assert compared > 50
    if level == "single":  # what the shortcut skips: layer5 and D1 keep their initial weights; the original's move
        final_ours, final_port = _state((t.model, t.model_D1, t.model_D2)), _state(nets)
        for key in [k for k in initial if k.startswith(("model.layer5.", "D1."))]:
            assert torch.equal(final_ours[key], initial[key]), key
        assert not torch.equal(final_port["D1.conv1.weight"], initial["D1.conv1.weight"])
        assert not torch.equal(final_port["model.layer5.conv2d_list.0.weight"],
                               initial["model.layer5.conv2d_list.0.weight"])
