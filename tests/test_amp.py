"""--amp (bfloat16 / float16 with one GradScaler), --channels-last and --deterministic on the CPU (ResNet 1,1,1,1).

The float32 default must stay untouched (tests/test_train.py); here: what runs in reduced precision and what stays
float32, that the faithful optimizers step through the scaler (and skip on overflow), that the scaler's state is in
the resume file only when there is a scaler, and that channels_last changes the layout, not the result.
"""
from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch

import train_gta2cityscapes_multi as train
from tools.make_synthetic_data import make_synthetic_datasets
from utils.device import configure_backends, resolve_amp_dtype, seed_everything


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _setup(*extra: str, seed: int = 0) -> train.Trainer:
    args = train.get_args_parser().parse_args(
        ["--restore-from", "none", "--resnet-layers", "1,1,1,1", "--input-size", "40,32",
         "--input-size-target", "32,32", "--cpu", "--learning-rate", "1e-2", "--learning-rate-D", "1e-3", *extra])
    train.validate_args(args)
    seed_everything(seed)
    return train.build_training(args, torch.device("cpu"))


def _batches(n: int = 1, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(n, 3, 32, 40, generator=g) * 50
    lab = torch.randint(0, 19, (n, 32, 40), generator=g).float()
    tgt = torch.randn(n, 3, 32, 32, generator=g) * 50
    return iter([(src[i:i + 1], lab[i:i + 1]) for i in range(n)]), iter([tgt[i:i + 1] for i in range(n)])


def _params(setup) -> dict[str, torch.Tensor]:
    out = {}
    for prefix, net in (("model.", setup.model), ("D1.", setup.model_D1), ("D2.", setup.model_D2)):
        out.update({prefix + k: p.detach().clone() for k, p in net.named_parameters()})
    return out


def _update(setup, n_steps: int = 1) -> tuple[dict[str, torch.Tensor], list[dict]]:
    before = _params(setup)
    losses = [train.train_step(setup, *_batches(seed=5 + i), i_iter=i) for i in range(n_steps)]
    after = _params(setup)
    return {k: after[k] - before[k] for k in before}, losses


def _rel(a: dict, b: dict, prefix: str) -> float:
    num = sum(float((a[k] - b[k]).double().pow(2).sum()) for k in a if k.startswith(prefix))
    den = sum(float(b[k].double().pow(2).sum()) for k in b if k.startswith(prefix))
    return (num / den) ** 0.5


@pytest.fixture(scope="module")
def fp32_update():
    return _update(_setup())


def _record_dtypes(setup) -> dict[str, list]:
    """Forward hooks noting the dtypes that reach the losses, the networks' outputs and D2's first conv."""
    seen: dict[str, list] = {"seg_loss_in": [], "adv_loss_in": [], "model_out": [], "D2_in": [], "D2_out": []}
    setup.seg_loss.register_forward_pre_hook(lambda m, a: seen["seg_loss_in"].append(a[0].dtype))
    setup.adv_loss.register_forward_pre_hook(lambda m, a: seen["adv_loss_in"].append(a[0].dtype))
    setup.model.layer6.register_forward_hook(lambda m, a, out: seen["model_out"].append(out.dtype))
    setup.model_D2.conv1.register_forward_pre_hook(lambda m, a: seen["D2_in"].append(a[0].dtype))
    setup.model_D2.register_forward_hook(lambda m, a, out: seen["D2_out"].append(out.dtype))
    return seen


def test_resolve_amp_dtype():
    cpu = torch.device("cpu")
    assert resolve_amp_dtype(cpu) == torch.bfloat16 and resolve_amp_dtype(cpu, "auto") == torch.bfloat16
    assert resolve_amp_dtype(cpu, "float16") == torch.float16
    with pytest.raises(ValueError, match="--amp-dtype"):
        resolve_amp_dtype(cpu, "float8")


def test_default_has_no_autocast_and_float32_everywhere():
    setup = _setup()
    seen = _record_dtypes(setup)
    train.train_step(setup, *_batches(), i_iter=0)
    assert not setup.scaler.is_enabled() and setup.amp_dtype is None and setup.memory_format == torch.preserve_format
    assert set(sum(seen.values(), [])) == {torch.float32}


def test_bfloat16_autocast_what_stays_float32(fp32_update):
    setup = _setup("--amp")
    assert not setup.scaler.is_enabled()  # bfloat16 has float32's exponent range: no scaler
    seen = _record_dtypes(setup)
    upd, losses = _update(setup)
    # the networks compute in bfloat16 ...
    assert set(seen["model_out"]) == {torch.bfloat16} and set(seen["D2_out"]) == {torch.bfloat16}
    # ... the losses and the softmax fed to D run on float32
    assert set(seen["seg_loss_in"]) == {torch.float32} and set(seen["adv_loss_in"]) == {torch.float32}
    assert set(seen["D2_in"]) == {torch.float32}
    # parameters, gradients and optimizer state stay float32
    for net in (setup.model, setup.model_D1, setup.model_D2):
        for p in net.parameters():
            assert p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32)
    for opt in (setup.optimizer, setup.optimizer_D1, setup.optimizer_D2):
        for st in opt.state.values():
            assert all(v.dtype == torch.float32 for v in st.values() if isinstance(v, torch.Tensor) and v.dim())
    # close to the float32 step. bfloat16 keeps ~3 significant digits: the losses and the classifiers' update agree
    # to ~2%. The backbone's and the discriminators' first updates from a random init are ill-conditioned (merely
    # rounding the *input images* to bfloat16 changes the float32 backbone update by ~16%; Adam's first step is
    # ~lr * sign(g)), so there the bound only catches gross errors (a missing or doubled scale, wrong signs).
    ref_upd, ref_losses = fp32_update
    for name in train.LOSS_NAMES:
        assert losses[0][name] == pytest.approx(ref_losses[0][name], rel=2e-2)
    for prefix in ("model.layer5.", "model.layer6."):
        assert _rel(upd, ref_upd, prefix) < 5e-2, prefix
    for prefix in ("model.", "D2."):
        assert _rel(upd, ref_upd, prefix) < 0.6, prefix
    assert _rel(upd, ref_upd, "model.") > 0  # it did run in reduced precision


def test_float16_grad_scaler_steps_the_faithful_optimizers_and_skips_overflow(fp32_update):
    setup = _setup("--amp", "--amp-dtype", "float16")
    scaler = setup.scaler
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
    assert type(setup.optimizer).__name__ == "FaithfulSGD" and type(setup.optimizer_D2).__name__ == "Adam04"
    seen = _record_dtypes(setup)
    upd, _ = _update(setup)
    assert set(seen["model_out"]) == {torch.float16}
    assert scaler.get_scale() == 2.0 ** 16  # no overflow at the initial scale: steps taken, scale unchanged
    ref_upd, _ = fp32_update
    # the update was unscaled before the step (else it would be 65536 times too large); float16's 11-bit mantissa
    # is ~8x finer than bfloat16's (see the bound's reasons above)
    for prefix in ("model.layer5.", "model.layer6."):
        assert _rel(upd, ref_upd, prefix) < 1e-2, prefix
    for prefix in ("model.", "D2."):
        assert _rel(upd, ref_upd, prefix) < 0.25, prefix
    # a scale that overflows float16 gradients: every optimizer skips its step, the scale backs off once
    scaler.update(new_scale=2.0 ** 40)
    before = _params(setup)
    losses = train.train_step(setup, *_batches(seed=9), i_iter=1)
    assert all(v == v for v in losses.values())  # the (unscaled) losses themselves are finite
    after = _params(setup)
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert scaler.get_scale() == 2.0 ** 39


def test_channels_last_changes_layout_not_result(fp32_update):
    setup = _setup("--channels-last")
    assert setup.memory_format == torch.channels_last
    for net in (setup.model, setup.model_D1, setup.model_D2):
        for p in net.parameters():
            if p.dim() == 4:
                assert p.is_contiguous(memory_format=torch.channels_last)
    formats = []
    setup.model.conv1.register_forward_pre_hook(
        lambda m, a: formats.append(a[0].is_contiguous(memory_format=torch.channels_last)))
    upd, _ = _update(setup)
    assert formats == [True, True]  # source and target batches
    ref_upd, _ = fp32_update
    for prefix in ("model.", "D1.", "D2."):
        assert _rel(upd, ref_upd, prefix) < 1e-3, prefix


def test_deterministic_and_benchmark_switches():
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.backends.cudnn.benchmark = False
        configure_backends(torch.device("cuda", 0), deterministic=False)  # only sets flags: no GPU needed
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
        configure_backends(torch.device("cpu"), deterministic=True)
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
    parser = train.get_args_parser()
    defaults = parser.parse_args([])
    assert not (defaults.amp or defaults.channels_last or defaults.deterministic) and defaults.amp_dtype == "auto"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_datasets(tmp_path_factory.mktemp("synth"), num_source=2, num_target_train=2, num_val=1,
                                   source_size=(48, 32), target_size=(48, 32), seed=4)


def _run(data, snap: Path, *extra: str) -> int:
    argv = ["--data-dir", str(data.gta5_root), "--data-list", str(data.gta5_list),
            "--data-dir-target", str(data.cityscapes_root), "--data-list-target", str(data.cityscapes_train_list),
            "--input-size", "40,32", "--input-size-target", "32,32", "--restore-from", "none",
            "--resnet-layers", "1,1,1,1", "--num-workers", "0", "--cpu", "--num-steps", "10",
            "--save-pred-every", "100", "--snapshot-dir", str(snap), *extra]
    with redirect_stdout(io.StringIO()):
        return train.main(train.get_args_parser().parse_args(argv))


def test_scaler_state_in_the_resume_file_only_when_enabled(data, tmp_path):
    for name, flags in (("fp32", ()), ("bf16", ("--amp",))):
        assert _run(data, tmp_path / name, "--num-steps-stop", "1", *flags) == 0
        assert "scaler" not in torch.load(tmp_path / name / "resume.pth", weights_only=True)
    fp16 = ("--amp", "--amp-dtype", "float16")
    assert _run(data, tmp_path / "fp16", "--num-steps-stop", "1", *fp16) == 0
    path = tmp_path / "fp16" / "resume.pth"
    state = torch.load(path, weights_only=True)
    # the scaler's state: GradScaler starts at 2**16 and halves on each overflowing (skipped) iteration; these tiny
    # crops give D a single output pixel, whose float16 weight gradients overflow at 2**16 in the first iteration
    scale = float(state["scaler"]["scale"])
    assert scale in (2.0 ** 16, 2.0 ** 15) and state["scaler"]["growth_interval"] == 2000
    # resuming restores the scale (here edited to 1024: no overflow, and growth only every 2000 steps, so an
    # iteration later it is still 1024 only if it was loaded)
    state["scaler"]["scale"] = 1024.0
    torch.save(state, path)
    assert _run(data, tmp_path / "fp16", "--num-steps-stop", "2", "--resume", "auto", *fp16) == 0
    state = torch.load(path, weights_only=True)
    assert state["next_iter"] == 2 and float(state["scaler"]["scale"]) == 1024.0
