"""The other settings end to end: per-setting defaults of the training script (GTA5's unchanged), a short CPU
training run per setting with its snapshot names, the 19/16/13 class subsets against a hand-worked example, and
an evaluation on the Cross-City layout checked against compute_iou.py and a confusion matrix computed here."""
from __future__ import annotations

import contextlib
import io
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import compute_iou
import evaluate_cityscapes as ev
import train_gta2cityscapes_multi as train
from dataset.labels import CITYSCAPES_LIST_DIR
from model import DeeplabMulti
from tools.make_synthetic_data import make_synthetic_datasets, make_synthetic_other_settings
from utils.metrics import subset_iou_lines

LOSS_LINE = re.compile(r"iter = +0/ +\d+, loss_seg1 = (\S+) loss_seg2 = (\S+) loss_adv1")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("settings")
    base = make_synthetic_datasets(root, num_source=1, num_target_train=2, num_val=1, target_size=(48, 32), seed=1,
                                   cityscapes_train_labels=True)
    other = make_synthetic_other_settings(root, num_source=2, num_target_train=2, num_test=2, synthia_size=(48, 32),
                                          synscapes_size=(48, 32), crosscity_size=(48, 32), city="Rome", seed=1)
    return base, other


# ---- per-setting defaults -------------------------------------------------------------------------------------------


def _resolved(*argv: str):
    args = train.get_args_parser().parse_args(list(argv))
    train.validate_args(args)
    return args


def test_gta5_defaults_are_the_originals_and_given_flags_win():
    args = _resolved()
    assert (args.source, args.target, args.input_size, args.input_size_target) == ("gta5", "cityscapes", (1280, 720),
                                                                                    (1024, 512))
    assert (args.data_dir, args.data_list) == ("./data/GTA5", "./dataset/gta5_list/train.txt")
    assert (args.data_dir_target, args.data_list_target) == ("./data/Cityscapes/data",
                                                             "./dataset/cityscapes_list/train.txt")
    assert train.snapshot_prefix(args) == "GTA5"
    args = _resolved("--source", "synthia")
    assert (args.input_size, args.data_dir, args.data_list) == ((1280, 760), "./data/SYNTHIA", None)
    assert args.input_size_target == (1024, 512) and train.snapshot_prefix(args) == "SYNTHIA"
    # a flag given explicitly is kept, even when it equals GTA5's default
    args = _resolved("--source", "synthia", "--input-size", "1280,720", "--data-list", "my.txt")
    assert (args.input_size, args.data_list) == ((1280, 720), "my.txt")
    assert _resolved("--source", "synscapes").input_size == (1440, 720)
    args = _resolved("--target", "crosscity", "--city", "Taipei")
    assert (args.source, args.input_size, args.data_dir_target, args.data_list_target) == (
        "cityscapes", (1024, 512), "./data/NTHU_Datasets", None)
    assert train.snapshot_prefix(args) == "Cityscapes"
    with pytest.raises(ValueError, match=r"--target crosscity needs --city"):
        _resolved("--target", "crosscity")
    with pytest.raises(ValueError, match=r"--city Rome applies to --target crosscity only"):
        _resolved("--city", "Rome")


# ---- a short training run per setting ---------------------------------------------------------------------------------


SETTINGS = {
    "synthia": lambda b, o: ["--source", "synthia", "--data-dir", str(o.synthia_root),
                             "--data-dir-target", str(b.cityscapes_root),
                             "--data-list-target", str(b.cityscapes_train_list)],
    "synscapes": lambda b, o: ["--source", "synscapes", "--data-dir", str(o.synscapes_root),
                               "--data-dir-target", str(b.cityscapes_root),
                               "--data-list-target", str(b.cityscapes_train_list)],
    "crosscity": lambda b, o: ["--target", "crosscity", "--city", "Rome", "--data-dir", str(b.cityscapes_root),
                               "--data-list", str(b.cityscapes_train_list), "--data-dir-target", str(o.crosscity_root)],
}
PREFIX = {"synthia": "SYNTHIA", "synscapes": "Synscapes", "crosscity": "Cityscapes"}


def _train(argv: list[str], snap: Path) -> str:
    common = ["--input-size", "40,32", "--input-size-target", "32,32", "--restore-from", "none", "--resnet-layers",
              "1,1,1,1", "--num-workers", "0", "--cpu", "--num-steps", "10", "--num-steps-stop", "1",
              "--snapshot-dir", str(snap)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = train.main(train.get_args_parser().parse_args(argv + common))
    assert rc == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def crosscity_snapshot(data, tmp_path_factory):
    snap = tmp_path_factory.mktemp("snap_crosscity")
    _train(SETTINGS["crosscity"](*data), snap)
    return snap


@pytest.mark.parametrize("setting", ["synthia", "synscapes", "crosscity"])
def test_one_training_iteration_per_setting(setting, data, tmp_path, crosscity_snapshot):
    if setting == "crosscity":
        snap, out = crosscity_snapshot, None
    else:
        snap = tmp_path / setting
        out = _train(SETTINGS[setting](*data), snap)
        seg1, seg2 = (float(v) for v in LOSS_LINE.search(out).groups())
        assert 1.0 < seg2 < 5.0 and math.isfinite(seg1)  # an untrained 19-class head on real labels: ~ln 19
    prefix = PREFIX[setting]
    names = sorted(p.name for p in snap.glob("*.pth"))
    assert names == [f"{prefix}_1.pth", f"{prefix}_1_D1.pth", f"{prefix}_1_D2.pth", "resume.pth"]
    DeeplabMulti(19, layers=(1, 1, 1, 1)).load_state_dict(torch.load(snap / f"{prefix}_1.pth", weights_only=True))
    saved = json.loads((snap / "args.json").read_text())
    assert saved["source"] == {"synthia": "synthia", "synscapes": "synscapes", "crosscity": "cityscapes"}[setting]


# ---- class subsets --------------------------------------------------------------------------------------------------

# Hand-worked example (trainIds; one 2x4 image). gt / prediction:
#   road road road wall      road road wall wall
#   terrain terrain sky sky  vegetation terrain sky road
# road: 2 hits, 1 missed (-> wall), 1 false (sky -> road): 2/4 = 0.5    wall: 1 hit, 1 false: 0.5
# terrain: 1 hit, 1 missed: 0.5    vegetation: 0 hits, 1 false: 0.0    sky: 1 hit, 1 missed: 0.5
# 19: mean(.5, .5, 0, .5, .5) = 40.0    16 (no terrain): mean(.5, .5, 0, .5) = 37.5
# 13 (no terrain, wall): mean(.5, 0, .5) = 33.33
GT_LABELIDS = np.array([[7, 7, 7, 12], [22, 22, 23, 23]], dtype=np.uint8)  # road=7 wall=12 terrain=22 sky=23
PRED_TRAINIDS = np.array([[0, 0, 3, 3], [8, 9, 10, 0]], dtype=np.uint8)
NAMES_13 = ["road", "sidewalk", "building", "light", "sign", "vegetation", "sky", "person", "rider", "car", "bus",
            "motocycle", "bicycle"]


@pytest.fixture
def example(tmp_path):
    gt_dir, pred_dir, devkit = tmp_path / "gt", tmp_path / "pred", tmp_path / "devkit"
    for d in (gt_dir / "lindau", pred_dir, devkit):
        d.mkdir(parents=True)
    Image.fromarray(GT_LABELIDS).save(gt_dir / "lindau" / "lindau_000000_000019_gtFine_labelIds.png")
    Image.fromarray(PRED_TRAINIDS).save(pred_dir / "lindau_000000_000019_leftImg8bit.png")
    shutil.copy(CITYSCAPES_LIST_DIR / "info.json", devkit / "info.json")
    (devkit / "val.txt").write_text("lindau/lindau_000000_000019_leftImg8bit.png\n")
    (devkit / "label.txt").write_text("lindau/lindau_000000_000019_gtFine_labelIds.png\n")
    return gt_dir, pred_dir, devkit


def _compute_iou(*argv: str) -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert compute_iou.main(compute_iou.get_args_parser().parse_args([*argv, "--workers", "1"])) == 0
    return out.getvalue().splitlines()


@pytest.mark.parametrize("classes, miou, n_lines", [(19, "40.0", 19), (16, "37.5", 16), (13, "33.33", 13)])
def test_class_subsets_against_the_hand_worked_example(example, classes, miou, n_lines, tmp_path):
    gt_dir, pred_dir, devkit = example
    lines = _compute_iou(str(gt_dir), str(pred_dir), "--devkit_dir", str(devkit), "--classes", str(classes),
                         "--json", str(tmp_path / "r.json"))
    table = [line for line in lines if line.startswith("===>")]
    assert len(table) == n_lines + 1 and table[-1] == f"===> mIoU: {miou}"
    rows = dict(line[4:].split(":\t") for line in table[:-1])
    assert rows["road"] == "50.0" and rows["sky"] == "50.0" and rows["vegetation"] == "0.0"
    assert ("terrain" in rows) == (classes == 19) and ("wall" in rows) == (classes >= 16)
    if classes == 13:
        assert list(rows) == NAMES_13
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["mIoU"] == pytest.approx(float(miou) / 100, abs=1e-4) and len(result["per_class_iou"]) == n_lines
    if classes == 19:
        assert lines == _compute_iou(str(gt_dir), str(pred_dir), "--devkit_dir", str(devkit))  # the default


def test_subset_lines_of_the_full_table():
    ious = np.full(19, np.nan)
    ious[[0, 3, 8, 9, 10]] = [0.5, 0.5, 0.0, 0.5, 0.5]
    from dataset.labels import CLASS_NAMES

    assert subset_iou_lines(ious, CLASS_NAMES, 13)[-1] == "===> mIoU: 33.33"
    with pytest.raises(ValueError, match="--classes must be one of 19, 16, 13"):
        subset_iou_lines(ious, CLASS_NAMES, 12)


# ---- evaluation on the Cross-City layout ----------------------------------------------------------------------------


def test_evaluate_on_crosscity_equals_compute_iou_and_an_independent_matrix(data, crosscity_snapshot, tmp_path):
    _, other = data
    save = tmp_path / "pred"
    argv = ["--target", "crosscity", "--city", "Rome", "--data-dir", str(other.crosscity_root), "--restore-from",
            str(crosscity_snapshot / "Cityscapes_1.pth"), "--resnet-layers", "1,1,1,1", "--cpu", "--num-workers",
            "0", "--input-size", "48,32", "--output-size", "48,32", "--save", str(save), "--gt-dir",
            str(other.crosscity_gt_dir)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert ev.main(ev.get_args_parser().parse_args(argv)) == 0
    table = [line for line in out.getvalue().splitlines() if line.startswith("===>")]
    assert [line[4:].split(":")[0] for line in table[:-1]] == NAMES_13  # 13 classes by default for Cross-City
    names = ["pano_01000_0_180.png", "pano_01001_0_180.png"]
    assert sorted(p.name for p in save.glob("pano_*_180.png")) == names
    # the same table from compute_iou.py over the saved predictions with the generated devkit
    lines = _compute_iou(str(other.crosscity_gt_dir), str(save), "--devkit_dir", str(other.crosscity_devkit_dir),
                         "--classes", "13")
    assert [line for line in lines if line.startswith("===>")] == table
    # and from a confusion matrix computed here
    lut = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
           27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    hist = np.zeros((19, 19))
    for name in names:
        gt = np.asarray(Image.open(other.crosscity_gt_dir / name.replace(".png", "_eval.png")))
        pred = np.asarray(Image.open(save / name))
        for g, p in zip(gt.ravel(), pred.ravel()):
            if lut.get(int(g), 255) < 19:
                hist[lut[int(g)], p] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.diag(hist) / (hist.sum(0) + hist.sum(1) - np.diag(hist))
    keep = [0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]
    assert table[-1] == "===> mIoU: " + str(round(np.nanmean(iou[keep]) * 100, 2))
