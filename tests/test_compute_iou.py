"""compute_iou.py end to end on small generated files: the original's printed lines (against a straightforward port
of its loop written here), JSON, and every bad input answered with a clear message and no numbers."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from os.path import join
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import compute_iou
from dataset.labels import CITYSCAPES_LIST_DIR

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 13  # > 10, so the original's "10 / N: ..." progress line appears
W, H = 40, 24
#: Cityscapes labelIds that map to one of the 19 classes (from the devkit's table).
COUNTED_IDS = [a for a, b in json.loads((CITYSCAPES_LIST_DIR / "info.json").read_text())["label2train"] if b < 19]


@dataclass
class Data:
    gt_dir: Path
    pred_dir: Path
    devkit: Path
    val: list[str]
    label: list[str]


def _make(root: Path, seed: int = 0) -> Data:
    rng = np.random.default_rng(seed)
    info = json.loads((CITYSCAPES_LIST_DIR / "info.json").read_text())
    gt_dir, pred_dir, devkit = root / "gt", root / "pred", root / "devkit"
    devkit.mkdir(parents=True)
    pred_dir.mkdir()
    shutil.copy(CITYSCAPES_LIST_DIR / "info.json", devkit / "info.json")
    table = dict((a, b) for a, b in info["label2train"])
    val, label = [], []
    for i in range(N_IMAGES):
        city = ("lindau", "munster")[i % 2]
        stem = f"{city}_{i:06d}_000019"
        val.append(f"{city}/{stem}_leftImg8bit.png")
        label.append(f"{city}/{stem}_gtFine_labelIds.png")
        (gt_dir / city).mkdir(parents=True, exist_ok=True)
        # labelIds in blocks (0..33, so ignored ids too); predictions partly right
        gt = np.repeat(np.repeat(rng.integers(0, 34, (H // 4, W // 4)), 4, 0), 4, 1).astype(np.uint8)
        pred = np.vectorize(lambda v: table.get(int(v), 255))(gt).astype(np.uint8)
        pred[pred == 255] = rng.integers(0, 19, int((pred == 255).sum()))
        wrong = rng.random((H, W)) < 0.3
        pred[wrong] = rng.integers(0, 19, int(wrong.sum()))
        if i == 0:
            pred[pred == 18] = 17  # bicycle never predicted in one image: class counts stay uneven
        Image.fromarray(gt).save(gt_dir / label[-1])
        Image.fromarray(pred).save(pred_dir / f"{stem}_leftImg8bit.png")
    (devkit / "val.txt").write_text("\n".join(val) + "\n")
    (devkit / "label.txt").write_text("\n".join(label) + "\n")
    return Data(gt_dir, pred_dir, devkit, val, label)


@pytest.fixture
def data(tmp_path) -> Data:
    return _make(tmp_path)


def original_port(gt_dir, pred_dir, devkit_dir) -> tuple[list[str], np.ndarray]:
    """The original compute_iou.py loop, written out plainly: returns its stdout lines and per-class IoUs."""
    out = []
    info = json.loads(Path(join(devkit_dir, "info.json")).read_text())
    n = int(info["classes"])
    out.append(f"Num classes {n}")
    hist = np.zeros((n, n))
    gt_imgs = [join(gt_dir, x) for x in open(join(devkit_dir, "label.txt")).read().splitlines()]
    pred_imgs = [join(pred_dir, x.split("/")[-1]) for x in open(join(devkit_dir, "val.txt")).read().splitlines()]
    for ind in range(len(gt_imgs)):
        pred = np.array(Image.open(pred_imgs[ind]))
        gt = np.array(Image.open(gt_imgs[ind]))
        label = gt.copy()
        for a, b in info["label2train"]:
            if 0 <= a < 256:
                label[gt == a] = b
        label = label.astype(np.int64)
        if len(label.flatten()) != len(pred.flatten()):
            out.append("Skipping: len(gt) = {:d}, len(pred) = {:d}, {:s}, {:s}".format(
                len(label.flatten()), len(pred.flatten()), gt_imgs[ind], pred_imgs[ind]))
            continue
        a, b = label.flatten(), pred.flatten()
        k = (a >= 0) & (a < n)
        hist += np.bincount(n * a[k].astype(int) + b[k], minlength=n ** 2).reshape(n, n)
        if ind > 0 and ind % 10 == 0:
            with np.errstate(invalid="ignore"):
                iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
            out.append("{:d} / {:d}: {:0.2f}".format(ind, len(gt_imgs), 100 * np.mean(iu)))
    with np.errstate(invalid="ignore"):
        ious = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
    for i in range(n):
        out.append("===>" + info["label"][i] + ":\t" + str(round(ious[i] * 100, 2)))
    out.append("===> mIoU: " + str(round(np.nanmean(ious) * 100, 2)))
    return out, ious


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = compute_iou.main(compute_iou.get_args_parser().parse_args([str(a) for a in argv]))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.parametrize("workers,executor", [("1", "process"), ("2", "process"), ("2", "thread")])
def test_output_equals_the_originals(data, capsys, workers, executor):
    expected, ious = original_port(data.gt_dir, data.pred_dir, data.devkit)
    assert any(line.startswith("10 / 13: ") for line in expected)
    rc, out, err = run(capsys, data.gt_dir, data.pred_dir, "--devkit_dir", data.devkit, "--workers", workers,
                       "--executor", executor)
    assert rc == 0, err
    assert out.splitlines() == expected
    # and the function keeps the original's name and return value
    got = compute_iou.compute_mIoU(str(data.gt_dir), str(data.pred_dir), str(data.devkit), progress=False)
    np.testing.assert_array_equal(got, ious)


def test_json_output(data, capsys, tmp_path):
    _, ious = original_port(data.gt_dir, data.pred_dir, data.devkit)
    out_json = tmp_path / "sub" / "iou.json"
    rc, _, err = run(capsys, data.gt_dir, data.pred_dir, "--devkit_dir", data.devkit, "--json", out_json)
    assert rc == 0, err
    result = json.loads(out_json.read_text())
    names = json.loads((data.devkit / "info.json").read_text())["label"]
    assert list(result["per_class_iou"]) == names
    for name, v in zip(names, ious):
        assert (result["per_class_iou"][name] is None) if np.isnan(v) else result["per_class_iou"][name] == v
    assert result["mIoU"] == pytest.approx(np.nanmean(ious), abs=1e-15)
    assert result["num_images"] == N_IMAGES and result["num_skipped"] == 0
    hist = np.array(result["confusion_matrix"])
    assert hist.shape == (19, 19)
    # every counted pixel: labelIds that map to a class
    counted = sum(int(np.isin(np.array(Image.open(data.gt_dir / p)), COUNTED_IDS).sum()) for p in data.label)
    assert hist.sum() == counted
    assert not list(out_json.parent.glob(".*tmp"))  # atomic write left no temp file


def test_missing_predictions_are_all_reported_before_any_number(data, capsys):
    for i in (2, 5, 7):
        (data.pred_dir / data.val[i].split("/")[1]).unlink()
    (data.gt_dir / data.label[3]).unlink()
    rc, out, err = run(capsys, data.gt_dir, data.pred_dir, "--devkit_dir", data.devkit)
    assert rc != 0
    assert out == ""
    assert "3 of 13 prediction files are missing" in err
    for i in (2, 5, 7):
        assert data.val[i].split("/")[1] in err
    assert "1 of 13 ground-truth files are missing" in err and data.label[3] in err


def test_size_mismatch_is_an_error_by_default(data, capsys):
    bad = data.pred_dir / data.val[4].split("/")[1]
    Image.fromarray(np.zeros((H // 2, W // 2), np.uint8)).save(bad)
    rc, out, err = run(capsys, data.gt_dir, data.pred_dir, "--devkit_dir", data.devkit)
    assert rc != 0 and out == ""
    assert "1 of 13 predictions differ in size" in err and "--skip-mismatched" in err
    assert f"{bad} is {W // 2}x{H // 2} but {data.gt_dir / data.label[4]} is {W}x{H}" in err


def test_skip_mismatched_restores_the_originals_skip(data, capsys):
    bad = data.pred_dir / data.val[4].split("/")[1]
    Image.fromarray(np.zeros((H // 2, W // 2), np.uint8)).save(bad)
    expected, _ = original_port(data.gt_dir, data.pred_dir, data.devkit)
    assert f"Skipping: len(gt) = {W * H}, len(pred) = {W * H // 4}" in "\n".join(expected)
    rc, out, err = run(capsys, data.gt_dir, data.pred_dir, "--devkit_dir", data.devkit, "--skip-mismatched")
    assert rc == 0
    assert out.splitlines() == expected
    assert "WARNING: skipped 1 of 13 images" in err and "12 images only" in err


def test_colour_prediction_is_reported_as_such(data, capsys):
    bad = data.pred_dir / data.val[1].split("/")[1]
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(bad)
    rc, out, err = run(capsys, data.gt_dir, data.pred_dir, "--devkit_dir", data.devkit)
    assert rc != 0 and out == ""
    assert f"{bad} is {W}x{H} with 3 channels" in err


def test_out_of_range_predictions_name_the_file_and_values(data, capsys):
    for i, value in ((3, 19), (6, 255)):
        p = data.pred_dir / data.val[i].split("/")[1]
        gt = np.array(Image.open(data.gt_dir / data.label[i]))
        pred = np.array(Image.open(p))
        counted = np.isin(gt, COUNTED_IDS)
        assert counted.any()
        pred[counted] = value  # on pixels that count
        Image.fromarray(pred).save(p)
    rc, out, err = run(capsys, data.gt_dir, data.pred_dir, "--devkit_dir", data.devkit)
    assert rc != 0 and out == ""
    assert "2 of 13 image pairs could not be evaluated" in err
    assert f"{data.pred_dir / data.val[3].split('/')[1]}: prediction values outside [0, 19) on labelled pixels: 19" in err
    assert f"{data.pred_dir / data.val[6].split('/')[1]}: prediction values outside [0, 19) on labelled pixels: 255" in err


def test_truncated_png_names_the_file(data, capsys):
    p = data.pred_dir / data.val[8].split("/")[1]
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) - 30])  # header intact, image data cut
    rc, out, err = run(capsys, data.gt_dir, data.pred_dir, "--devkit_dir", data.devkit)
    assert rc != 0 and out == ""
    assert f"cannot read prediction {p}" in err


def test_bad_devkit_and_dirs(data, capsys, tmp_path):
    rc, out, err = run(capsys, data.gt_dir, tmp_path / "nope", "--devkit_dir", data.devkit)
    assert rc != 0 and out == "" and "PRED_DIR" in err and "nope" in err
    rc, out, err = run(capsys, data.gt_dir, data.pred_dir, "--devkit_dir", tmp_path / "nodevkit")
    assert rc != 0 and out == "" and "info.json" in err
    (data.devkit / "label.txt").write_text("\n".join(data.label[:-1]) + "\n")
    rc, out, err = run(capsys, data.gt_dir, data.pred_dir, "--devkit_dir", data.devkit)
    assert rc != 0 and out == "" and "lists 13 images" in err and "lists 12 ground-truth files" in err


def test_cli_exit_codes(data):
    ok = subprocess.run([sys.executable, str(ROOT / "compute_iou.py"), str(data.gt_dir), str(data.pred_dir),
                         "--devkit_dir", str(data.devkit)], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[-1].startswith("===> mIoU: ")
    (data.pred_dir / data.val[0].split("/")[1]).unlink()
    bad = subprocess.run([sys.executable, str(ROOT / "compute_iou.py"), str(data.gt_dir), str(data.pred_dir),
                          "--devkit_dir", str(data.devkit)], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and bad.stdout == ""
    assert "compute_iou.py: error: 1 of 13 prediction files are missing" in bad.stderr
