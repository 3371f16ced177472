"""tools/visualize.py: the prediction sheet and the per-class IoU chart (Pillow only)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools import visualize
from tools.visualize import (
    RUN_COLOURS,
    VisualizeError,
    format_table,
    make_chart,
    make_sheet,
    read_iou_json,
    sheet_rows,
)

REPO = Path(__file__).resolve().parents[1]

# Values written by hand, independent of dataset/labels.py: Cityscapes labelId 7 = road = trainId 0 with colour
# (128, 64, 128); labelId 26 = car = trainId 13 with colour (0, 0, 142); labelId 0 (unlabeled) is ignored.
ROAD_RGB = (128, 64, 128)
CAR_RGB = (0, 0, 142)
CAR_TRAIN_ID = 13
ROAD_LABEL_ID = 7
NAMES19 = ["road", "sidewalk", "building", "wall", "fence", "pole", "light", "sign", "vegetation", "terrain", "sky",
           "person", "rider", "car", "truck", "bus", "train", "motocycle", "bicycle"]


def count_colour(img: Image.Image, rgb: tuple[int, int, int]) -> int:
    a = np.asarray(img.convert("RGB"))
    return int(np.all(a == np.array(rgb, dtype=np.uint8), axis=-1).sum())


# ---- sheet --------------------------------------------------------------------------------------------------------


def write_scene(root: Path, w: int = 40, h: int = 20, n: int = 2) -> tuple[Path, Path, Path, Path]:
    """A Cityscapes-like folder by hand: solid images, gt all road (top rows unlabeled), predictions all car."""
    data = root / "cs"
    pred = root / "pred"
    gt_dir = data / "gtFine" / "val"
    names = []
    for i in range(n):
        name = f"lindau/lindau_00000{i}_000019_leftImg8bit.png"
        names.append(name)
        img_path = data / "leftImg8bit" / "val" / name
        img_path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h), (1, 2, 3)).save(img_path)
        gt = np.full((h, w), ROAD_LABEL_ID, np.uint8)
        gt[:2] = 0  # unlabeled -> ignore -> black
        gt_path = gt_dir / f"lindau/lindau_00000{i}_000019_gtFine_labelIds.png"
        gt_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gt, mode="L").save(gt_path)
        pred.mkdir(exist_ok=True)
        Image.fromarray(np.full((h, w), CAR_TRAIN_ID, np.uint8), mode="L").save(pred / name.split("/")[-1])
    lst = root / "val.txt"
    lst.write_text("\n".join(names) + "\n")
    return data, lst, pred, gt_dir


def test_sheet_tiles_show_image_prediction_and_mapped_ground_truth(tmp_path):
    w, h, n = 40, 20, 2
    data, lst, pred, gt_dir = write_scene(tmp_path, w, h, n)
    rows = sheet_rows(data, visualize.read_list(lst), pred, gt_dir)
    sheet = make_sheet(rows, width=w)  # tiles at native size: exact pixel counts
    assert sheet.width >= 3 * w
    assert count_colour(sheet, (1, 2, 3)) == n * w * h  # the image column
    legend_car = count_colour(sheet, CAR_RGB) - n * w * h
    legend_road = count_colour(sheet, ROAD_RGB) - n * w * (h - 2)
    # each column holds exactly its tiles' pixels plus one legend swatch of the same size for both classes
    assert legend_car > 0 and legend_car == legend_road


def test_sheet_scales_tiles_and_works_without_ground_truth(tmp_path):
    data, lst, pred, _ = write_scene(tmp_path, 40, 20, 1)
    rows = sheet_rows(data, visualize.read_list(lst), pred, None)
    sheet = make_sheet(rows, width=80)  # twice the native width: each tile 80x40
    assert count_colour(sheet, (1, 2, 3)) == 80 * 40
    assert count_colour(sheet, CAR_RGB) > 80 * 40  # the tile plus the legend swatch
    assert count_colour(sheet, ROAD_RGB) == 0  # no ground-truth column, no road in the legend
    assert sheet.width < 3 * 80


def test_sheet_cli_writes_png_and_reports_missing_files(tmp_path, capsys):
    data, lst, pred, gt_dir = write_scene(tmp_path)
    out = tmp_path / "out" / "sheet.png"
    args = ["sheet", "--data-dir", str(data), "--data-list", str(lst), "--pred-dir", str(pred),
            "--gt-dir", str(gt_dir), "--num-images", "5", "--width", "64", "--out", str(out)]
    assert visualize.main(visualize.get_args_parser().parse_args(args)) == 0
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width >= 3 * 64
    missing = pred / "lindau_000001_000019_leftImg8bit.png"
    missing.unlink()
    assert visualize.main(visualize.get_args_parser().parse_args(args)) == 1
    err = capsys.readouterr().err
    assert "visualize.py sheet: error: 1 files for the sheet do not exist" in err and str(missing) in err


def test_sheet_refuses_colour_prediction(tmp_path):
    data, lst, pred, gt_dir = write_scene(tmp_path, n=1)
    path = pred / "lindau_000000_000019_leftImg8bit.png"
    Image.new("RGB", (40, 20), CAR_RGB).save(path)
    rows = sheet_rows(data, visualize.read_list(lst), pred, gt_dir)
    with pytest.raises(VisualizeError, match="mode 'RGB'"):
        make_sheet(rows)


# ---- chart --------------------------------------------------------------------------------------------------------


def write_json(path: Path, ious: list[float | None], miou: float | None) -> Path:
    path.write_text(json.dumps({"num_classes": len(ious), "per_class_iou": dict(zip(NAMES19, ious)),
                                "mIoU": miou, "num_images": 3, "confusion_matrix": []}))
    return path


def test_read_iou_json_and_table(tmp_path):
    ious = [0.5] * 19
    ious[12] = None
    run = read_iou_json(write_json(tmp_path / "adapted.json", ious, 0.5))
    assert run.label == "adapted" and run.names == NAMES19
    assert math.isnan(run.ious[12]) and run.ious[0] == 0.5
    table = format_table([run, read_iou_json(write_json(tmp_path / "b.json", [0.25] * 19, 0.25), "source")])
    lines = table.splitlines()
    assert lines[0].split() == ["class", "adapted", "source"]
    assert lines[2].split() == ["road", "50.0", "25.0"]
    assert lines[2 + 12].split() == ["rider", "nan", "25.0"]  # no IoU: compute_iou.py's spelling
    assert lines[-1].split() == ["mIoU", "50.0", "25.0"]


def test_chart_bar_lengths_are_proportional_to_iou(tmp_path):
    runs = [read_iou_json(write_json(tmp_path / f"{k}.json", [v] * 19, v), k)
            for k, v in (("a", 0.8), ("b", 0.4), ("c", 0.0))]
    chart = make_chart(runs)
    a, b, c = (count_colour(chart, RUN_COLOURS[k]) for k in range(3))
    # c has no bar, only its legend swatch (the same size for every run): subtract it
    ratio = (a - c) / (b - c)
    assert 1.9 < ratio < 2.1


def test_chart_leaves_out_classes_without_iou(tmp_path):
    full = read_iou_json(write_json(tmp_path / "a.json", [0.6] * 19, 0.6), "x")
    ious = [0.6] * 19
    ious[16] = None  # train: no pixels
    holed = read_iou_json(write_json(tmp_path / "b.json", ious, 0.6), "x")
    full_count = count_colour(make_chart([full]), RUN_COLOURS[0])  # legend swatch + 20 equal bars
    holed_count = count_colour(make_chart([holed]), RUN_COLOURS[0])  # legend swatch + 19 bars
    bar = full_count - holed_count
    swatch = full_count - 20 * bar
    assert bar > 0 and 0 < swatch < bar


def test_chart_cli(tmp_path):
    j1 = write_json(tmp_path / "run1.json", [0.3] * 19, 0.3)
    j2 = write_json(tmp_path / "run2.json", [0.6] * 19, 0.6)
    out = tmp_path / "chart.png"
    proc = subprocess.run([sys.executable, "tools/visualize.py", "chart", str(j1), str(j2), "--labels",
                           "source-only", "adapted", "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["class", "source-only", "adapted"]
    assert "mIoU" in proc.stdout and "30.0" in proc.stdout and "60.0" in proc.stdout
    with Image.open(out) as img:
        assert img.format == "PNG"


@pytest.mark.parametrize("content, message", [
    ("not json", "cannot be read as JSON"),
    ('{"mIoU": 0.5}', "expected the --json output of compute_iou.py"),
    ('{"per_class_iou": {"road": 1.5}, "mIoU": 0.5}', "expected a fraction in [0, 1] or null"),
])
def test_chart_bad_json_names_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(VisualizeError) as err:
        read_iou_json(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_chart_errors(tmp_path, capsys):
    j1 = write_json(tmp_path / "run1.json", [0.3] * 19, 0.3)
    parser = visualize.get_args_parser()
    assert visualize.main(parser.parse_args(["chart", str(j1), "--labels", "a", "b"])) == 2  # a usage error
    assert "2 labels for 1 JSON files" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"per_class_iou": {"x": 0.1}, "mIoU": 0.1}))
    assert visualize.main(parser.parse_args(["chart", str(j1), str(other), "--out", str(tmp_path / "c.png")])) == 1
    assert "the runs must use the same classes" in capsys.readouterr().err


# ---- curve --------------------------------------------------------------------------------------------------------


def write_snapshots_json(path: Path, points) -> Path:
    """A snapshots.json by hand: (iteration, mIoU or None) per snapshot, in any order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [{"file": f"GTA5_{it}.pth", "iteration": it, "mIoU": v} for it, v in points]
    path.write_text(json.dumps({"format": "adaptsegnet-snapshot-results/1", "snapshots": records}))
    return path


def test_nice_ticks():
    assert visualize.nice_ticks(0, 150000) == [0, 50000, 100000, 150000]
    assert visualize.nice_ticks(30.4, 41.6) == [30, 32.5, 35, 37.5, 40, 42.5]
    assert visualize.nice_ticks(0, 6) == [0, 2, 4, 6]
    assert visualize.nice_ticks(5, 5) == [4, 4.5, 5, 5.5, 6]  # one value: a range around it


def test_curve_draws_each_run_and_rings_its_best(tmp_path):
    multi = visualize.read_snapshots_json(write_snapshots_json(
        tmp_path / "multi" / "snapshots.json", [(3000, 0.38), (1000, 0.30), (2000, 0.42), (4000, None)]))
    assert multi.label == "multi" and multi.points == [(1000, 0.30), (2000, 0.42), (3000, 0.38)]
    assert multi.best == (2000, 0.42) and multi.best_file == "GTA5_2000.pth"
    single = visualize.read_snapshots_json(write_snapshots_json(
        tmp_path / "single" / "snapshots.json", [(1000, 0.25), (2000, 0.33), (3000, 0.35)]), label="single-level")
    assert single.label == "single-level" and single.best == (3000, 0.35)
    img = visualize.make_curve([multi, single], width=600, height=400)
    assert img.size == (600, 400)
    px = np.asarray(img.convert("RGB"))
    axes = visualize.curve_axes([multi, single], 600, 400)
    assert axes.x_ticks[0] == 0 and axes.x_ticks[-1] >= 3000 and axes.y_ticks[0] <= 25 and axes.y_ticks[-1] >= 42

    def colour(x: int, y: int) -> tuple[int, ...]:
        return tuple(int(v) for v in px[y, x])

    for k, run in enumerate((multi, single)):
        for it, v in run.points:  # a dot at every snapshot
            assert colour(*axes.xy(it, 100 * v)) == RUN_COLOURS[k]
        bx, by = axes.xy(*(run.best[0], 100 * run.best[1]))
        assert colour(bx, by - 7) == RUN_COLOURS[k] and colour(bx - 7, by) == RUN_COLOURS[k]  # the ring
    x, y = axes.xy(1000, 30.0)  # not the best: no ring around it
    assert colour(x, y - 7) != RUN_COLOURS[0] and colour(x - 7, y) != RUN_COLOURS[0]
    # the point of the best is higher on the picture than the others of its run (y grows downwards)
    assert axes.xy(2000, 42.0)[1] < axes.xy(3000, 38.0)[1] < axes.xy(1000, 30.0)[1]


def test_curve_cli(tmp_path):
    a = write_snapshots_json(tmp_path / "a" / "snapshots.json", [(1000, 0.30), (2000, 0.42)])
    b = write_snapshots_json(tmp_path / "b" / "snapshots.json", [(1000, 0.25)])
    out = tmp_path / "curve.png"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "visualize.py"), "curve", str(a), str(b),
                           "--labels", "adapted", "source-only", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "adapted: 2 snapshots, best GTA5_2000.pth (iteration 2000), mIoU 42.00" in proc.stdout
    assert "source-only: 1 snapshots, best GTA5_1000.pth (iteration 1000), mIoU 25.00" in proc.stdout
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (800, 480)
        assert count_colour(img, RUN_COLOURS[0]) > 50 and count_colour(img, RUN_COLOURS[1]) > 20


def test_curve_errors(tmp_path, capsys):
    iou_json = tmp_path / "r.json"
    iou_json.write_text(json.dumps({"per_class_iou": {"road": 0.5}, "mIoU": 0.5}))
    none = write_snapshots_json(tmp_path / "none" / "snapshots.json", [(1000, None)])
    good = write_snapshots_json(tmp_path / "good" / "snapshots.json", [(1000, 0.3)])
    for argv, message in (
        ([str(iou_json)], "expected evaluate_cityscapes.py's snapshots.json (key 'snapshots')"),
        ([str(none)], "no evaluated snapshot with an mIoU"),
        ([str(tmp_path / "missing.json")], "missing.json: no such file"),
        ([str(good), "--labels", "a", "b"], "--labels: 2 labels for 1 JSON files"),
        ([str(good), "--width", "10"], "--width/--height must be at least 200x150"),
    ):
        args = visualize.get_args_parser().parse_args(["curve", *argv, "--out", str(tmp_path / "c.png")])
        assert visualize.main(args) == (2 if "--" in message else 1)  # flag values: usage errors
        err = capsys.readouterr().err
        assert err.startswith("visualize.py curve: error: ") and message in err, err
    assert not (tmp_path / "c.png").exists()
