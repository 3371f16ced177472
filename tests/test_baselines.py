"""The paper's baselines from the training script: --source-only (and the oracle with --source cityscapes
--model Oracle) and --adapt-space feature (a discriminator on layer4's features)."""
from __future__ import annotations

import copy
import math

import pytest
import torch

import train_gta2cityscapes_multi as train
from model import DeeplabMulti, FCDiscriminator, Res_Deeplab
from tiny_training import make_tiny_data, one_thread  # noqa: F401 (one_thread: a fixture)
from tiny_training import train_argv
from tools.make_synthetic_data import make_synthetic_datasets
from utils.device import seed_everything
from utils.training import FEATURE_CHANNELS

pytestmark = pytest.mark.usefixtures("one_thread")
LAYERS = (1, 1, 1, 1)


def _trainer(*extra: str, size=(40, 32), size_t=(32, 32)) -> train.Trainer:
    args = train.get_args_parser().parse_args(
        ["--restore-from", "none", "--resnet-layers", "1,1,1,1", "--input-size", "%d,%d" % size,
         "--input-size-target", "%d,%d" % size_t, "--cpu", "--learning-rate", "1e-2", *extra])
    train.validate_args(args)
    seed_everything(0)
    return train.build_training(args, torch.device("cpu"))


def _batches(size=(40, 32), size_t=(32, 32), seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    src = (torch.randn(1, 3, size[1], size[0], generator=g) * 50,
           torch.randint(0, 19, (1, size[1], size[0]), generator=g).float())
    return src, torch.randn(1, 3, size_t[1], size_t[0], generator=g) * 50


def test_source_only_step_is_the_segmentation_part_of_a_normal_step():
    """One --source-only step moves every parameter of the network exactly as a normal step whose adversarial
    weights are 0 (the adversarial terms then add exact zeros to the gradients); it builds no discriminator and
    never draws a target batch."""
    normal = _trainer("--lambda-adv-target1", "0", "--lambda-adv-target2", "0")
    source_only = _trainer("--source-only")
    assert source_only.model_D1 is None and source_only.model_D2 is None and not source_only.discriminators
    assert list(source_only.optimizers) == ["optimizer"] and list(source_only.nets) == ["model"]
    source_only.model.load_state_dict(normal.model.state_dict())
    src, tgt = _batches()

    def no_target():
        raise AssertionError("--source-only drew a target batch")
        yield  # pragma: no cover

    losses = train.train_step(source_only, iter([src]), no_target(), 0)
    reference = train.train_step(normal, iter([src]), iter([tgt]), 0)
    for name, p in normal.model.named_parameters():
        assert torch.equal(p, dict(source_only.model.named_parameters())[name]), name
    assert losses["loss_seg1"] == reference["loss_seg1"] and losses["loss_seg2"] == reference["loss_seg2"]
    assert all(losses[n] == 0 for n in train.LOSS_NAMES[2:]) and reference["loss_D2"] > 0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("synth"))


def test_source_only_cli_needs_no_target_and_writes_no_discriminator(data, tmp_path, capsys):
    argv = train_argv(data, tmp_path, "--source-only")
    argv[argv.index("--data-dir-target") + 1] = str(tmp_path / "no_target_here")
    assert train.main(train.get_args_parser().parse_args(argv)) == 0
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["GTA5_2.pth", "GTA5_4.pth", "resume.pth"]
    DeeplabMulti(19, layers=LAYERS).load_state_dict(torch.load(tmp_path / "GTA5_4.pth", weights_only=True))
    state = torch.load(tmp_path / "resume.pth", weights_only=True)
    assert state["optimizer_class"] == ["FaithfulSGD"] and "model_D1" not in state
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("iter =")]
    assert len(lines) == 4 and all(line.endswith("loss_adv1 = 0.000, loss_adv2 = 0.000 loss_D1 = 0.000 loss_D2 = 0.000")
                                   for line in lines)
    # a resume must keep the setting
    assert train.main(train.get_args_parser().parse_args(train_argv(data, tmp_path, "--num-steps-stop", "5",
                                                                    "--resume", "auto"))) == 1
    assert "--source-only exactly as in the interrupted run" in capsys.readouterr().err


def test_oracle_row_cityscapes_source_only(tmp_path):
    """The oracle: the single-level ResNet-101 (the released oracle's layout) on Cityscapes' own labels."""
    synth = make_synthetic_datasets(tmp_path / "synth", num_source=2, num_target_train=2, num_val=1,
                                    source_size=(48, 32), target_size=(48, 32), seed=1, cityscapes_train_labels=True)
    argv = ["--source", "cityscapes", "--source-only", "--model", "Oracle", "--data-dir", str(synth.cityscapes_root),
            "--data-list", str(synth.cityscapes_train_list), "--input-size", "40,32", "--restore-from", "none",
            "--resnet-layers", "1,1,1,1", "--num-workers", "0", "--cpu", "--num-steps", "10", "--num-steps-stop", "2",
            "--save-pred-every", "100", "--snapshot-dir", str(tmp_path / "snap")]
    assert train.main(train.get_args_parser().parse_args(argv)) == 0
    Res_Deeplab(19, layers=LAYERS).load_state_dict(torch.load(tmp_path / "snap" / "Cityscapes_2.pth",
                                                               weights_only=True))


def test_feature_space_adaptation_step():
    """--adapt-space feature: single level, D2 sees layer4's 2048 channels (no softmax) and its adversarial
    gradient reaches the backbone; D1 stays untouched."""
    size = (256, 256)  # layer4 at 1/8: 33x33, enough for D's five stride-2 convs
    t = _trainer("--adapt-space", "feature", "--lambda-adv-target2", "1.0", size=size, size_t=size)
    assert not t.use_aux and t.model_D2.conv1.in_channels == FEATURE_CHANNELS
    assert t.model_D1.conv1.in_channels == 19
    d1 = copy.deepcopy(t.model_D1.state_dict())
    no_adv = copy.deepcopy(t)
    no_adv.args = copy.copy(t.args)
    no_adv.args.lambda_adv_target2 = 0.0
    no_adv.features = []
    no_adv.model.layer4._forward_hooks.clear()
    no_adv.model.layer4.register_forward_hook(lambda m, i, o: no_adv.features.__setitem__(slice(None), [o]))
    seen = []
    t.model_D2.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape)))
    src, tgt = _batches(size, size)
    losses = train.train_step(t, iter([src]), iter([tgt]), 0)
    train.train_step(no_adv, iter([src]), iter([tgt]), 0)
    assert seen == [(1, 2048, 33, 33)] * 3  # target (generator), source and target (discriminator)
    assert losses["loss_adv_target2"] == pytest.approx(math.log(2), abs=0.05)  # a fresh D outputs ~0 logits
    assert losses["loss_adv_target1"] == losses["loss_D1"] == losses["loss_seg1"] == 0
    assert all(torch.equal(v, d1[k]) for k, v in t.model_D1.state_dict().items())
    assert not torch.equal(t.model.layer4[0].conv1.weight, no_adv.model.layer4[0].conv1.weight)
    assert torch.equal(t.model.layer6.conv2d_list[0].weight, no_adv.model.layer6.conv2d_list[0].weight)


def test_feature_space_needs_the_resnet(capsys):
    for extra in (["--model", "DeeplabVGG"], ["--source-only"]):
        args = train.get_args_parser().parse_args(["--adapt-space", "feature", "--restore-from", "none", *extra])
        with pytest.raises(train.UsageError, match="--adapt-space feature"):
            train.validate_args(args)
    FCDiscriminator(FEATURE_CHANNELS)  # the discriminator itself takes any channel count


def test_validation_during_training_changes_nothing_and_keeps_the_best(data, tmp_path, capsys):
    """--eval-every: the same snapshots bit for bit as without it; val/mIoU lines at the snapshots and at the end;
    <prefix>_best.pth is the best of them, and its mIoU is what evaluate_cityscapes.py computes for it."""
    import json
    import re

    import evaluate_cityscapes

    base = train_argv(data, tmp_path / "plain", "--random-mirror", "--num-workers", "1")
    assert train.main(train.get_args_parser().parse_args(base)) == 0
    capsys.readouterr()
    val = ["--eval-every", "2", "--eval-data-dir", str(data.cityscapes_root), "--eval-list",
           str(data.cityscapes_val_list)]
    argv = train_argv(data, tmp_path / "val", "--random-mirror", "--num-workers", "1", *val)
    assert train.main(train.get_args_parser().parse_args(argv)) == 0
    out = capsys.readouterr().out
    for name in ("GTA5_2.pth", "GTA5_2_D1.pth", "GTA5_4.pth", "GTA5_4_D2.pth"):
        a = torch.load(tmp_path / "plain" / name, weights_only=True)
        b = torch.load(tmp_path / "val" / name, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    found = re.findall(r"iter = +(\d+): val/mIoU = ([\d.]+) \(best ([\d.]+) at iteration (\d+); 19 classes\)", out)
    assert [int(i) for i, *_ in found] == [2, 4]
    mious = {int(i): float(m) for i, m, *_ in found}
    best_iter = max(mious, key=mious.get)  # the first of equal ones stays the best
    assert int(found[-1][3]) == best_iter
    best = torch.load(tmp_path / "val" / "GTA5_best.pth", weights_only=True)
    snapshot = torch.load(tmp_path / "val" / f"GTA5_{best_iter}.pth", weights_only=True)
    assert all(torch.equal(best[k], snapshot[k]) for k in snapshot)
    state = torch.load(tmp_path / "val" / "resume.pth", weights_only=True)
    assert state["validation"]["iteration"] == best_iter
    eval_args = evaluate_cityscapes.get_args_parser().parse_args(
        ["--restore-from", str(tmp_path / "val" / "GTA5_best.pth"), "--resnet-layers", "1,1,1,1", "--cpu",
         "--data-dir", str(data.cityscapes_root), "--data-list", str(data.cityscapes_val_list),
         "--input-size", "32,32", "--output-size", "48,32", "--gt-dir", str(data.gt_dir),
         "--save", str(tmp_path / "pred"), "--json", str(tmp_path / "iou.json")])
    assert evaluate_cityscapes.main(eval_args) == 0
    assert json.loads((tmp_path / "iou.json").read_text())["mIoU"] * 100 == pytest.approx(mious[best_iter], abs=0.006)
