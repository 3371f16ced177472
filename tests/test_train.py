"""train_gta2cityscapes_multi.py end to end on generated data (CPU, tiny sizes, ResNet blocks 1,1,1,1)."""
from __future__ import annotations

import math
import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_gta2cityscapes_multi as train
from dataset.transforms import to_network_input
from model import DeeplabMulti, FCDiscriminator, build_model
from tiny_training import make_tiny_data, one_thread  # noqa: F401 (one_thread: a fixture)
from tiny_training import train_argv as _argv
from utils.optim import lr_poly
from utils.device import seed_everything
import utils.training
from utils.training import build_networks
from utils.weights import restore_segmentation_weights

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
LOG_LINE = re.compile(
    r"iter = +(\d+)/ +(\d+), loss_seg1 = (\S+) loss_seg2 = (\S+) loss_adv1 = (\S+), loss_adv2 = (\S+) "
    r"loss_D1 = (\S+) loss_D2 = (\S+)$"
)
LAYERS = (1, 1, 1, 1)




@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("synth"))




def _run(data, snap: Path, *extra: str) -> int:
    return train.main(train.get_args_parser().parse_args(_argv(data, snap, *extra)))


def _load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_weights(dir_a: Path, dir_b: Path, tag) -> None:
    for suffix in ("", "_D1", "_D2"):
        a, b = _load(dir_a / f"GTA5_{tag}{suffix}.pth"), _load(dir_b / f"GTA5_{tag}{suffix}.pth")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"GTA5_{tag}{suffix}.pth: {k} differs"


def _log_lines(text: str) -> list[tuple]:
    return [LOG_LINE.match(line).groups() for line in text.splitlines() if LOG_LINE.match(line)]


REFERENCE = ("--random-mirror", "--random-scale")


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """Multi-level Vanilla run of 4 iterations (snapshots at 2 and 4), with TensorBoard."""
    snap = tmp_path_factory.mktemp("reference")
    log_dir = snap / "tb"
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        rc = _run(data, snap, *REFERENCE, "--tensorboard", "--log-dir", str(log_dir), "--save-num-images", "1")
    assert rc == 0
    return snap, out.getvalue()


# ---- the CLI end to end -------------------------------------------------------------------------------------------


def test_reference_run_snapshots_log_and_schedule(reference):
    snap, out = reference
    names = sorted(p.name for p in snap.iterdir() if p.is_file())
    assert names == [".lock", "GTA5_2.pth", "GTA5_2_D1.pth", "GTA5_2_D2.pth", "GTA5_4.pth", "GTA5_4_D1.pth", "GTA5_4_D2.pth",
                     "args.json", "resume.pth"]
    # plain state_dicts that load strictly into the networks
    DeeplabMulti(19, layers=LAYERS).load_state_dict(_load(snap / "GTA5_4.pth"))
    FCDiscriminator(19).load_state_dict(_load(snap / "GTA5_4_D1.pth"))
    FCDiscriminator(19).load_state_dict(_load(snap / "GTA5_4_D2.pth"))
    assert not torch.equal(_load(snap / "GTA5_2.pth")["layer6.conv2d_list.0.weight"],
                           _load(snap / "GTA5_4.pth")["layer6.conv2d_list.0.weight"])
    lines = _log_lines(out)
    assert [int(g[0]) for g in lines] == [0, 1, 2, 3] and all(int(g[1]) == 10 for g in lines)
    first = [float(v) for v in lines[0][2:]]
    # fresh discriminators output ~0 logits: BCE against either label is ln 2
    assert first[3] == pytest.approx(math.log(2), abs=0.02) and first[5] == pytest.approx(math.log(2), abs=0.02)
    assert first[0] > 1.0 and first[1] > 1.0  # untrained segmentation: ~ln 19
    assert "taking snapshot ..." in out and "save model ..." in out
    # poly schedule: the state holds the rates set at the last iteration (3) over the horizon --num-steps 10
    state = torch.load(snap / "resume.pth", weights_only=True)
    assert state["next_iter"] == 4
    lr = lr_poly(2.5e-4, 3, 10, 0.9)
    assert lr == pytest.approx(2.5e-4 * 0.7 ** 0.9, rel=1e-12)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == pytest.approx([lr, 10 * lr], rel=1e-12)
    for key in ("optimizer_D1", "optimizer_D2"):
        assert [g["lr"] for g in state[key]["param_groups"]] == pytest.approx([1e-4 * 0.7 ** 0.9], rel=1e-12)
    assert state["optimizer_class"] == ["FaithfulSGD", "Adam04", "Adam04"]
    assert state["data_positions"] == {"source": 4, "target": 4}
    import json

    saved = json.loads((snap / "args.json").read_text())
    assert saved["input_size"] == [40, 32] and saved["gan"] == "Vanilla" and saved["random_mirror"] is True


def _read_events(log_dir: Path) -> list:
    """All Event protos of the TensorBoard files in ``log_dir`` (TFRecord framing: length, crc, data, crc)."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        raw = path.read_bytes()
        pos = 0
        while pos < len(raw):
            (length,) = struct.unpack("<Q", raw[pos:pos + 8])
            event = event_pb2.Event()
            event.ParseFromString(raw[pos + 12:pos + 12 + length])
            events.append(event)
            pos += 12 + length + 4
    return events


def test_tensorboard_scalars_and_images(reference):
    snap, _ = reference
    events = _read_events(snap / "tb")
    scalars = {(v.tag, e.step) for e in events for v in e.summary.value if v.HasField("simple_value")}
    for name in ("loss_seg1", "loss_seg2", "loss_adv_target1", "loss_adv_target2", "loss_D1", "loss_D2"):
        assert (name, 0) in scalars  # the original's tags  # every 10 iterations: only iteration 0 in a 4-iteration run
    assert not any(step != 0 for _, step in scalars)
    images = {(v.tag, e.step) for e in events for v in e.summary.value if v.HasField("image")}
    assert {("source/0/prediction", 2), ("source/0/label", 2), ("target/0/prediction", 2),
            ("source/0/image", 3), ("target/0/image", 3)} <= images  # at each snapshot, the final one included
    assert not any(tag.startswith("source/1/") for tag, _ in images)  # --save-num-images 1


@pytest.mark.parametrize("gan", ["Vanilla", "LS"])
def test_single_level_cli(data, tmp_path, capsys, gan):
    """The README's single-level commands: no aux loss, D1 untouched (logged as 0), D2 trained."""
    rc = _run(data, tmp_path, "--lambda-seg", "0.0", "--lambda-adv-target1", "0.0", "--lambda-adv-target2", "0.01",
              "--gan", gan, "--num-steps-stop", "2")
    out = capsys.readouterr()
    assert rc == 0
    lines = _log_lines(out.out)
    assert len(lines) == 2
    for g in lines:
        assert g[2] == "0.000" and g[4] == "0.000" and g[6] == "0.000"
    first_d2 = float(lines[0][7])
    # loss_D2 = (adv(D(src), 0) + adv(D(tgt), 1)) / 2 with D outputs ~0: ln 2 (BCE) or (0 + 1) / 2 (least squares)
    assert first_d2 == pytest.approx(math.log(2) if gan == "Vanilla" else 0.5, abs=0.03)
    # D1 was never trained: equal to a discriminator built in the original's order after the seed
    seed_everything(1234)
    build_model("DeepLab", 19, layers=LAYERS)
    d1 = FCDiscriminator(19)
    d2 = FCDiscriminator(19)
    saved_d1, saved_d2 = _load(tmp_path / "GTA5_2_D1.pth"), _load(tmp_path / "GTA5_2_D2.pth")
    assert all(torch.equal(saved_d1[k], v) for k, v in d1.state_dict().items())
    assert not torch.equal(saved_d2["conv1.weight"], d2.state_dict()["conv1.weight"])


def test_multi_level_ls_cli(data, tmp_path, capsys):
    rc = _run(data, tmp_path, "--gan", "LS", "--num-steps-stop", "2", "--iter-size", "2")
    out = capsys.readouterr().out
    assert rc == 0
    lines = _log_lines(out)
    assert len(lines) == 2
    first = [float(v) for v in lines[0][2:]]
    assert first[2] == pytest.approx(0.0, abs=0.05) and first[3] == pytest.approx(0.0, abs=0.05)  # LS: D~0
    assert first[4] == pytest.approx(0.5, abs=0.03) and first[5] == pytest.approx(0.5, abs=0.03)
    state = torch.load(tmp_path / "resume.pth", weights_only=True)
    assert state["data_positions"] == {"source": 4, "target": 4}  # 2 iterations x iter-size 2 x batch 1


def test_modern_optim_differs_where_the_quirks_act(data, tmp_path, capsys):
    """One iteration from the same start: parameters listed once (layer6) take the same first SGD step; the
    backbone (listed 3-4 times) and the discriminators (Adam's eps) do not."""
    assert _run(data, tmp_path / "faithful", "--num-steps-stop", "1") == 0
    assert _run(data, tmp_path / "modern", "--num-steps-stop", "1", "--modern-optim") == 0
    a, b = _load(tmp_path / "faithful" / "GTA5_1.pth"), _load(tmp_path / "modern" / "GTA5_1.pth")
    torch.testing.assert_close(a["layer6.conv2d_list.0.weight"], b["layer6.conv2d_list.0.weight"])
    assert not torch.allclose(a["layer1.0.conv1.weight"], b["layer1.0.conv1.weight"], rtol=1e-5, atol=1e-7)
    da, db = _load(tmp_path / "faithful" / "GTA5_1_D2.pth"), _load(tmp_path / "modern" / "GTA5_1_D2.pth")
    assert not torch.allclose(da["conv1.weight"], db["conv1.weight"], rtol=1e-5, atol=1e-7)
    state = torch.load(tmp_path / "modern" / "resume.pth", weights_only=True)
    assert state["optimizer_class"] == ["SGD", "Adam", "Adam"]
    faithful = torch.load(tmp_path / "faithful" / "resume.pth", weights_only=True)
    listing = faithful["optimizer"]["param_groups"][0]["listing"]
    backbone = DeeplabMulti(19, layers=LAYERS).optim_parameters(1.0)[0]["params"]
    assert len(listing) == len(backbone) > len(set(listing))  # the duplicates are kept
    capsys.readouterr()
    assert _run(data, tmp_path / "modern", "--num-steps-stop", "2", "--resume", "auto") == 1
    assert "pass --modern-optim and --source-only exactly as in the interrupted run" in capsys.readouterr().err


# ---- reproducibility and resume ------------------------------------------------------------------------------------


def test_same_seed_same_weights_different_seed_differs(data, reference, tmp_path):
    snap, _ = reference
    assert _run(data, tmp_path / "again", *REFERENCE) == 0
    _assert_same_weights(snap, tmp_path / "again", 4)
    assert _run(data, tmp_path / "other", *REFERENCE, "--random-seed", "7", "--num-steps-stop", "2") == 0
    a, b = _load(snap / "GTA5_2.pth"), _load(tmp_path / "other" / "GTA5_2.pth")
    assert not torch.equal(a["layer6.conv2d_list.0.weight"], b["layer6.conv2d_list.0.weight"])


def test_resume_equals_straight_run(data, reference, tmp_path):
    snap, _ = reference
    half = tmp_path / "half"
    assert _run(data, half, *REFERENCE, "--resume", "auto", "--num-steps-stop", "2") == 0  # auto: nothing yet
    assert torch.load(half / "resume.pth", weights_only=True)["next_iter"] == 2
    assert _run(data, half, *REFERENCE, "--resume", "auto") == 0
    _assert_same_weights(snap, half, 4)


def test_signal_saves_state_and_resume_equals_straight_run(data, reference, tmp_path, capsys, monkeypatch):
    snap, _ = reference
    step = train.train_step

    def signalled_step(t, source, target, i_iter, **kw):  # a SIGTERM arrives during iteration 1
        if i_iter == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(t, source, target, i_iter, **kw)

    monkeypatch.setattr(train, "train_step", signalled_step)
    rc = _run(data, tmp_path, *REFERENCE)
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert rc == 128 + signal.SIGTERM
    assert "SIGTERM: saved the training state after iteration 1" in err
    assert torch.load(tmp_path / "resume.pth", weights_only=True)["next_iter"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    assert _run(data, tmp_path, *REFERENCE, "--resume", str(tmp_path / "resume.pth")) == 0
    _assert_same_weights(snap, tmp_path, 4)


def _spawn(data, snap: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(REPO / "train_gta2cityscapes_multi.py"), *_argv(data, snap, *REFERENCE, *extra)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for_iteration(proc: subprocess.Popen, i: int) -> None:
    for line in proc.stdout:
        m = LOG_LINE.match(line.strip())
        if m and int(m.group(1)) >= i:
            return
    raise AssertionError(f"the run ended before iteration {i}: {proc.wait()} {proc.stderr.read()}")


@pytest.mark.parametrize("sig, workers", [(signal.SIGINT, "1"), (signal.SIGKILL, "0")], ids=["SIGINT", "SIGKILL"])
def test_killed_process_resumes_to_the_straight_result(data, tmp_path, sig, workers):
    """A real run interrupted by Ctrl-C (SIGINT to the whole process group, DataLoader worker included: the run
    saves its state at the end of the iteration) or killed (SIGKILL: the state of the last snapshot stays): every
    file left is complete, and resuming ends with the weights of an uninterrupted run."""
    run_dir = tmp_path / "killed"
    proc = _spawn(data, run_dir, "--num-steps", "400", "--num-steps-stop", "400", "--save-pred-every", "1",
                  "--num-workers", workers)
    try:
        _wait_for_iteration(proc, 2)
        os.killpg(proc.pid, sig)
        rc = proc.wait(timeout=60)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if sig == signal.SIGINT:
        assert rc == 128 + signal.SIGINT, err
        assert "SIGINT: saved the training state after iteration" in err and "Traceback" not in err
    else:
        assert rc == -signal.SIGKILL
    next_iter = torch.load(run_dir / "resume.pth", weights_only=True)["next_iter"]
    assert 2 <= next_iter < 400
    for path in run_dir.glob("GTA5_*.pth"):  # nothing half-written
        _load(path)
    stop = str(next_iter + 1)
    assert _run(data, run_dir, *REFERENCE, "--num-steps", "400", "--num-steps-stop", stop, "--save-pred-every",
                "1000", "--resume", "auto") == 0
    assert not list(run_dir.glob(".*.tmp"))  # a killed write's temporary file is cleaned up
    straight = tmp_path / "straight"
    assert _run(data, straight, *REFERENCE, "--num-steps", "400", "--num-steps-stop", stop, "--save-pred-every",
                "1000") == 0
    _assert_same_weights(run_dir, straight, stop)


def test_non_finite_loss_stops_and_keeps_last_snapshot(data, tmp_path, capsys, monkeypatch):
    batches = train.source_batches

    def corrupt_fourth(loader):  # the 4th source batch (iteration 3) holds NaN pixels
        for k, (images, labels) in enumerate(batches(loader)):  # uint8 batches: NaN needs the float32 input
            yield (to_network_input(images, "cpu") * float("nan") if k == 3 else images), labels

    monkeypatch.setattr(train, "source_batches", corrupt_fourth)
    rc = _run(data, tmp_path, "--num-steps-stop", "6")
    err = capsys.readouterr().err
    assert rc == 1
    assert "non-finite loss at iteration 3: loss_seg1 = nan" in err
    assert "Traceback" not in err
    snapshot = _load(tmp_path / "GTA5_2.pth")
    assert all(torch.isfinite(v).all() for v in snapshot.values() if v.is_floating_point())
    assert not (tmp_path / "GTA5_6.pth").exists()
    assert torch.load(tmp_path / "resume.pth", weights_only=True)["next_iter"] == 3


# ---- the step itself -------------------------------------------------------------------------------------------------


def _state(setup) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.detach().clone() for k, v in setup.model.state_dict().items()}
    out.update({f"D1.{k}": v.detach().clone() for k, v in setup.model_D1.state_dict().items()})
    out.update({f"D2.{k}": v.detach().clone() for k, v in setup.model_D2.state_dict().items()})
    return out


def _setup(argv_extra: list[str], seed: int = 0):
    args = train.get_args_parser().parse_args(
        ["--restore-from", "none", "--resnet-layers", "1,1,1,1", "--input-size", "40,32",
         "--input-size-target", "32,32", "--cpu", *argv_extra])
    train.validate_args(args)
    seed_everything(seed)
    return train.build_training(args, torch.device("cpu"))


def test_single_level_shortcut_leaves_main_path_unchanged(data, tmp_path, monkeypatch):
    single = ("--lambda-seg", "0", "--lambda-adv-target1", "0", "--lambda-adv-target2", "0.01", "--num-steps-stop", "2")
    assert _run(data, tmp_path / "shortcut", *single) == 0
    monkeypatch.setattr(utils.training, "is_single_level", lambda args: False)  # the full step, as the original ran
    assert _run(data, tmp_path / "full", *single) == 0
    a, b = _load(tmp_path / "shortcut" / "GTA5_2.pth"), _load(tmp_path / "full" / "GTA5_2.pth")
    main_path = [k for k in a if not k.startswith("layer5.")]
    assert any(k.startswith("layer6.") for k in main_path) and any(k.startswith("layer4.") for k in main_path)
    for k in main_path:
        assert torch.equal(a[k], b[k]), k
    # the forced run did the full work: layer5 got (zero) gradients, so weight decay moved it
    assert not torch.equal(a["layer5.conv2d_list.0.weight"], b["layer5.conv2d_list.0.weight"])
    d2a, d2b = _load(tmp_path / "shortcut" / "GTA5_2_D2.pth"), _load(tmp_path / "full" / "GTA5_2_D2.pth")
    for k in d2a:
        assert torch.equal(d2a[k], d2b[k]), k


def _batches(n: int, bn_batch: int, seed: int = 5):
    """n source images with fully valid labels and n target images, grouped in batches of ``bn_batch``."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(n, 3, 32, 40, generator=g) * 50
    lab = torch.randint(0, 19, (n, 32, 40), generator=g).float()
    tgt = torch.randn(n, 3, 32, 32, generator=g) * 50
    source = [(src[i:i + bn_batch], lab[i:i + bn_batch]) for i in range(0, n, bn_batch)]
    target = [tgt[i:i + bn_batch] for i in range(0, n, bn_batch)]
    return iter(source), iter(target)


def _update_after_one_step(iter_size: int, batch: int, extra: list[str]):
    setup = _setup(["--iter-size", str(iter_size), "--learning-rate", "1e-2", "--learning-rate-D", "1e-3", *extra])
    before = _state(setup)
    losses = train.train_step(setup, *_batches(2, batch), i_iter=0)
    after = _state(setup)
    return {k: after[k] - before[k] for k in before if before[k].is_floating_point()}, losses


def _relative_difference(a: dict, b: dict, prefix: str) -> float:
    num = sum(float((a[k] - b[k]).pow(2).sum()) for k in a if k.startswith(prefix) and "running" not in k)
    den = sum(float(b[k].pow(2).sum()) for k in b if k.startswith(prefix) and "running" not in k)
    return math.sqrt(num / den)


def test_iter_size_equals_bigger_batch_with_frozen_bn_statistics():
    """iter-size 2 x batch 1 = iter-size 1 x batch 2 when nothing couples the images of a batch: BN on running
    statistics (--freeze-bn-stats) and the same number of labelled pixels per image (the CE means per batch)."""
    upd_acc, loss_acc = _update_after_one_step(2, 1, ["--freeze-bn-stats"])
    upd_big, loss_big = _update_after_one_step(1, 2, ["--freeze-bn-stats"])
    for prefix in ("model.", "D1.", "D2."):
        assert _relative_difference(upd_acc, upd_big, prefix) < 1e-4, prefix
    for name in train.LOSS_NAMES:
        assert loss_acc[name] == pytest.approx(loss_big[name], rel=1e-4, abs=1e-7)
    # with the original's BN batch statistics a batch of 2 normalises differently: not the same update
    upd_acc, _ = _update_after_one_step(2, 1, [])
    upd_big, _ = _update_after_one_step(1, 2, [])
    assert _relative_difference(upd_acc, upd_big, "model.") > 1e-2


def test_deeplab_vgg_trains_single_output():
    setup = _setup(["--model", "DeeplabVGG", "--restore-from", "none"])
    assert not setup.use_aux
    before = _state(setup)
    losses = train.train_step(setup, *_batches(1, 1), i_iter=0)
    after = _state(setup)
    assert losses["loss_seg1"] == 0 and losses["loss_adv_target1"] == 0 and losses["loss_D1"] == 0
    assert losses["loss_seg2"] > 0 and losses["loss_D2"] > 0
    assert not torch.equal(before["model.features.0.weight"], after["model.features.0.weight"])
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("D1."))
    assert not torch.equal(before["D2.conv1.weight"], after["D2.conv1.weight"])


# ---- initialisation flags --------------------------------------------------------------------------------------------


def test_restore_from_init_file_and_not_restore_last(tmp_path):
    seed_everything(11)
    donor = DeeplabMulti(19, layers=LAYERS)
    init = {f"Scale.{k}": v for k, v in donor.state_dict().items()}
    torch.save(init, tmp_path / "init.pth")
    for not_last, layer6_copied in ((False, True), (True, False)):
        args = train.get_args_parser().parse_args(
            ["--restore-from", str(tmp_path / "init.pth"), "--resnet-layers", "1,1,1,1"]
            + (["--not-restore-last"] if not_last else []))
        seed_everything(0)
        model = build_model("DeepLab", 19, layers=LAYERS)
        fresh = {k: v.clone() for k, v in model.state_dict().items()}
        restore_segmentation_weights(model, args.restore_from, "DeepLab", 19, args.not_restore_last)
        got = model.state_dict()
        assert torch.equal(got["layer4.0.conv1.weight"], donor.state_dict()["layer4.0.conv1.weight"])
        assert torch.equal(got["layer5.conv2d_list.0.weight"], fresh["layer5.conv2d_list.0.weight"])  # 19 classes
        assert torch.equal(got["layer6.conv2d_list.0.weight"],
                           (donor if layer6_copied else model).state_dict()["layer6.conv2d_list.0.weight"])
        assert torch.equal(got["layer6.conv2d_list.0.weight"], fresh["layer6.conv2d_list.0.weight"]) != layer6_copied


def test_restore_from_torchvision_reads_the_hub_cache(tmp_path, monkeypatch):
    """``--restore-from torchvision[:WEIGHTS]`` takes torchvision's ImageNet ResNet from the hub cache (here a tiny
    torchvision-layout ResNet placed under the file names torchvision's URLs give, so nothing is downloaded)."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    donors = {}
    for file_name, seed in (("resnet101-63fe2227.pth", 1), ("resnet101-cd907fc2.pth", 2)):  # V1, V2
        torch.manual_seed(seed)
        tv = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, list(LAYERS)).state_dict()
        torch.save(tv, cache / file_name)
        donors[file_name] = tv
    for flag, file_name in (("torchvision", "resnet101-63fe2227.pth"),
                            ("torchvision:imagenet1k_v2", "resnet101-cd907fc2.pth")):
        args = train.get_args_parser().parse_args(["--restore-from", flag, "--resnet-layers", "1,1,1,1"])
        seed_everything(0)
        model = build_model("DeepLab", 19, layers=LAYERS)
        fresh = {k: v.clone() for k, v in model.state_dict().items()}
        restore_segmentation_weights(model, args.restore_from, "DeepLab", 19, args.not_restore_last)
        got = model.state_dict()
        for key in ("conv1.weight", "bn1.running_mean", "layer4.0.conv3.weight", "layer4.0.downsample.1.weight"):
            assert torch.equal(got[key], donors[file_name][key]), (flag, key)
        assert torch.equal(got["layer6.conv2d_list.0.weight"], fresh["layer6.conv2d_list.0.weight"])
    for bad in ("torchvision:", "torchvision:NOPE"):
        args = train.get_args_parser().parse_args(["--restore-from", bad, "--resnet-layers", "1,1,1,1"])
        with pytest.raises(ValueError, match="torchvision"):
            restore_segmentation_weights(build_model("DeepLab", 19, layers=LAYERS), args.restore_from, "DeepLab", 19)


def test_restore_discriminators_from_files(tmp_path):
    seed_everything(2)
    d1, d2 = FCDiscriminator(19), FCDiscriminator(19)
    torch.save(d1.state_dict(), tmp_path / "d1.pth")
    torch.save(d2.state_dict(), tmp_path / "d2.pth")
    args = train.get_args_parser().parse_args(
        ["--restore-from", "none", "--resnet-layers", "1,1,1,1", "--restore-from-D1", str(tmp_path / "d1.pth"),
         "--restore-from-D2", str(tmp_path / "d2.pth")])
    _, m1, m2 = build_networks(args, torch.device("cpu"))
    assert all(torch.equal(m1.state_dict()[k], v) for k, v in d1.state_dict().items())
    assert all(torch.equal(m2.state_dict()[k], v) for k, v in d2.state_dict().items())


# ---- clear errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--gan", "WGAN"], "invalid choice: 'WGAN'"),
    (["--model", "ResNet"], "invalid choice: 'ResNet'"),
    (["--input-size", "1280x720"], "expected W,H as two positive integers"),
    (["--input-size-target", "1024"], "expected W,H as two positive integers"),
    (["--resnet-layers", "3,4"], "expected four positive block counts"),
    (["--target", "synthia"], "invalid choice: 'synthia'"),
])
def test_bad_flags_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        train.get_args_parser().parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_model_aliases_accepted():
    parser = train.get_args_parser()
    assert parser.parse_args(["--model", "DeeplabMulti"]).model == "DeeplabMulti"
    defaults = parser.parse_args([])
    train.fill_setting_defaults(defaults)
    assert defaults.input_size == (1280, 720) and defaults.input_size_target == (1024, 512)
    assert defaults.restore_from == train.RESTORE_FROM and defaults.num_steps_stop == 150000
    assert defaults.gan == "Vanilla" and defaults.model == "DeepLab" and defaults.resume is None
    assert parser.parse_args(["--is-training"]).is_training  # accepted (documented: no effect)


def test_clear_errors_before_training_and_nothing_created(data, tmp_path, capsys):
    """Each refused run: exit 1 (data, files) or 2 (flags), one line ``train_gta2cityscapes_multi.py: error: ...``,
    no traceback, and no --snapshot-dir created."""
    prefix = "train_gta2cityscapes_multi.py: error: "
    missing = tmp_path / "nowhere"
    argv = _argv(data, tmp_path / "snap")
    argv[argv.index("--data-dir") + 1] = str(missing)
    torch.save(FCDiscriminator(19).state_dict(), tmp_path / "d.pth")
    cases = [
        (argv, 1, f"{prefix}GTA5 data directory {missing} does not exist"),
        (_argv(data, tmp_path / "snap", "--restore-from", str(tmp_path / "d.pth")), 1,
         f"{prefix}initialisation weights do not fit DeeplabMulti"),
        (_argv(data, tmp_path / "snap", "--restore-from", str(tmp_path / "absent.pth")), 1, "no such file"),
        (_argv(data, tmp_path / "snap", "--input-size-target", "24,24"), 2,
         f"{prefix}--input-size-target 24,24: the discriminators need W and H of at least 32"),
        (_argv(data, tmp_path / "snap", "--model", "DeeplabVGG", "--restore-from", train.RESTORE_FROM), 2,
         "does not fit VGG-16"),
        (_argv(data, tmp_path / "snap", "--resume", str(tmp_path / "d.pth")), 1, "not a training state"),
        (_argv(data, tmp_path / "snap", "--target", "crosscity"), 2, f"{prefix}--target crosscity needs --city"),
    ]
    for case_argv, code, message in cases:
        assert train.main(train.get_args_parser().parse_args(case_argv)) == code, message
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert not (tmp_path / "snap").exists(), message  # a refused run leaves no empty --snapshot-dir

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert _run(data, blocker / "snap") == 1
    assert f"{prefix}--snapshot-dir" in capsys.readouterr().err


def test_usage_error_is_short(capsys):
    with pytest.raises(SystemExit) as exc:
        train.get_args_parser().parse_args(["--gan", "WGAN"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("usage: train_gta2cityscapes_multi.py [options]") and len(err) == 2
    assert err[1].startswith("train_gta2cityscapes_multi.py: error: argument --gan: invalid choice: 'WGAN'")


def test_help_shows_defaults_without_python_reprs(capsys):
    with pytest.raises(SystemExit):
        train.get_args_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    for expected in ("(default: 1234)", "(default: 0.0002)", "(default: ./snapshots/)", "(default: 3,4,23,3)",
                     "GTA5: 1280,720", "(default: Vanilla)"):
        assert expected in text, expected
    for vague in ("lambda_seg.", "choose adaptation set", "every often", "including background", "(default: None)",
                  "(default: False)", "(1280, 720)"):
        assert vague not in text, vague


def test_final_model_when_the_schedule_ends_before_a_snapshot(data, tmp_path):
    """--num-steps 3 --num-steps-stop 20 --save-pred-every 100: the original saved nothing; a final model now."""
    argv = _argv(data, tmp_path) + ["--num-steps", "3", "--num-steps-stop", "20", "--save-pred-every", "100"]
    assert train.main(train.get_args_parser().parse_args(argv)) == 0
    names = sorted(p.name for p in tmp_path.glob("GTA5_*.pth"))
    assert names == ["GTA5_3.pth", "GTA5_3_D1.pth", "GTA5_3_D2.pth"]
    assert torch.load(tmp_path / "resume.pth", weights_only=True)["next_iter"] == 3
    # no second copy when the last iteration is a periodic snapshot: --num-steps 3 --save-pred-every 2 -> GTA5_2
    assert _run(data, tmp_path / "b", "--num-steps", "3", "--num-steps-stop", "20", "--save-pred-every", "2") == 0
    assert sorted(p.name for p in (tmp_path / "b").glob("GTA5_*.pth")) == ["GTA5_2.pth", "GTA5_2_D1.pth",
                                                                          "GTA5_2_D2.pth"]


def test_files_follow_the_umask(data, tmp_path):
    old = os.umask(0o022)
    try:
        assert _run(data, tmp_path, "--num-steps-stop", "2") == 0
    finally:
        os.umask(old)
    import utils.files

    expected = 0o666 & ~utils.files.UMASK  # read once at import: 0o644 under the usual 022
    for name in ("GTA5_2.pth", "GTA5_2_D1.pth", "resume.pth", "args.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected, name


# ---- data order and RNG state ----------------------------------------------------------------------------------------


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_resumable_sampler_order_skip_and_shards():
    from utils.sampling import ResumableSampler

    full = _take(iter(ResumableSampler(5, seed=3)), 13)  # crosses two epoch boundaries
    assert sorted(full[:5]) == sorted(full[5:10]) == list(range(5))  # each pass is a permutation
    assert full[:5] != full[5:10]  # a fresh permutation per pass
    assert _take(iter(ResumableSampler(5, seed=3)), 13) == full  # a function of the seed
    assert _take(iter(ResumableSampler(5, seed=4)), 10) != full[:10]
    assert _take(iter(ResumableSampler(5, seed=3, salt=1)), 10) != full[:10]  # the other domain's order
    assert _take(iter(ResumableSampler(5, seed=3, start=7)), 6) == full[7:13]  # resume: skip what was consumed
    # two ranks interleave the global order; from a start position too
    r0 = _take(iter(ResumableSampler(5, seed=3, start=3, rank=0, num_replicas=2)), 5)
    r1 = _take(iter(ResumableSampler(5, seed=3, start=3, rank=1, num_replicas=2)), 5)
    assert r1 == full[3:13:2] and r0 == full[4:13:2]
    with pytest.raises(ValueError):
        ResumableSampler(0)


def test_rng_state_round_trip(tmp_path):
    import random

    import numpy as np

    from utils.checkpoint import capture_rng_state, restore_rng_state

    seed_everything(9)
    torch.save({"rng": capture_rng_state()}, tmp_path / "s.pth")
    first = (random.random(), float(np.random.rand()), float(torch.rand(())))
    restore_rng_state(torch.load(tmp_path / "s.pth", weights_only=True)["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == first


def test_restore_from_trained_snapshot_loads_as_is(tmp_path):
    seed_everything(12)
    donor = DeeplabMulti(19, layers=LAYERS).state_dict()
    torch.save(donor, tmp_path / "GTA5_7.pth")
    for not_last in (False, True):
        args = train.get_args_parser().parse_args(
            ["--restore-from", str(tmp_path / "GTA5_7.pth"), "--resnet-layers", "1,1,1,1"]
            + (["--not-restore-last"] if not_last else []))
        seed_everything(0)
        model = build_model("DeepLab", 19, layers=LAYERS)
        fresh = {k: v.clone() for k, v in model.state_dict().items()}
        restore_segmentation_weights(model, args.restore_from, "DeepLab", 19, args.not_restore_last)
        got = model.state_dict()
        for k in got:
            expected = fresh[k] if not_last and k.startswith(("layer5.", "layer6.")) else donor[k]
            assert torch.equal(got[k], expected), k


def test_num_workers_default_fits_the_machine(monkeypatch):
    """The original's 4 loader processes per domain, at most the usable cores (no DataLoader warning about too
    many workers on a 2-core machine)."""
    for cores, expected in ((2, 2), (1, 1), (16, 4)):
        monkeypatch.setattr(train, "usable_cpus", lambda cores=cores: cores)
        assert train.get_args_parser().parse_args([]).num_workers == expected


def test_gpu_without_cuda_is_a_usage_error(data, tmp_path, capsys, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = [a for a in _argv(data, tmp_path / "snap") if a != "--cpu"]
    assert train.main(train.get_args_parser().parse_args(argv + ["--gpu", "1"])) == 2
    err = capsys.readouterr().err
    assert "train_gta2cityscapes_multi.py: error: --gpu 1: CUDA is not available on this machine; pass --cpu" in err
    assert not (tmp_path / "snap").exists()
    import logging

    with caplog.at_level(logging.WARNING):
        assert train.main(train.get_args_parser().parse_args(argv + ["--num-steps-stop", "1"])) == 0
    assert any(r.levelno == logging.WARNING and "CUDA is not available: running on the CPU" in r.getMessage()
               for r in caplog.records)


def test_default_lists_found_from_another_folder(tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.chdir(tmp_path)
    args = train.get_args_parser().parse_args(["--restore-from", "none", "--eval-every", "5"])
    with caplog.at_level(logging.INFO):
        train.validate_args(args)
    assert args.data_list == str(REPO / "dataset" / "gta5_list" / "train.txt")
    assert args.data_list_target == str(REPO / "dataset" / "cityscapes_list" / "train.txt")
    assert args.eval_list == str(REPO / "dataset" / "cityscapes_list" / "val.txt")
    assert "--data-list ./dataset/gta5_list/train.txt: not in the current folder" in caplog.text
    (tmp_path / "dataset" / "gta5_list").mkdir(parents=True)  # a list of the same name here wins
    (tmp_path / "dataset" / "gta5_list" / "train.txt").write_text("00001.png\n")
    args = train.get_args_parser().parse_args(["--restore-from", "none"])
    train.validate_args(args)
    assert args.data_list == "./dataset/gta5_list/train.txt"


def test_a_run_with_nothing_to_do_leaves_no_loader_worker(data, tmp_path, capsys):
    """A finished run started again (--resume auto) ends at once; its loader workers, which ignore SIGTERM, must not
    be started (or must be stopped): left alive they would hang the interpreter's exit."""
    import multiprocessing

    assert _run(data, tmp_path, "--num-steps-stop", "2", "--num-workers", "1") == 0
    assert _run(data, tmp_path, "--num-steps-stop", "2", "--num-workers", "1", "--resume", "auto") == 0
    assert "nothing to do: the training state is at iteration 2" in capsys.readouterr().out
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]
