"""tools/demo.py: the shortened demo end to end (the real scripts through their command lines), and its parts."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tools import demo

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = subprocess.run([sys.executable, "tools/demo.py", "--quick", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    return out, proc


def test_quick_demo_writes_every_output(quick_run):
    out, proc = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = demo.QUICK.steps
    snaps = out / "snapshots"
    for i in (steps // 2, steps):  # the middle snapshot and the stop snapshot, with both discriminators
        for suffix in ("", "_D1", "_D2"):
            assert (snaps / f"GTA5_{i}{suffix}.pth").stat().st_size > 0
    assert (snaps / "args.json").is_file() and (snaps / "resume.pth").is_file()
    events = list((out / "log").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0

    val = (out / "data" / "lists" / "cityscapes_list" / "val.txt").read_text().split()
    assert len(val) == demo.QUICK.num_val
    for name in val:
        stem = name.split("/")[-1][: -len(".png")]
        for suffix, mode in (("", "L"), ("_color", "P"), ("_overlay", "RGB")):
            with Image.open(out / "result" / f"{stem}{suffix}.png") as img:
                assert img.mode == mode
                assert img.size == demo.QUICK.target_size

    data = json.loads((out / "iou.json").read_text())
    assert data["num_classes"] == 19 and len(data["per_class_iou"]) == 19
    assert data["num_images"] == demo.QUICK.num_val
    assert len(data["confusion_matrix"]) == 19
    for name in ("sheet.png", "chart.png"):
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.width > 100 and img.height > 100


def test_quick_demo_prints_table_miou_and_places(quick_run):
    out, proc = quick_run
    assert proc.returncode == 0
    text = proc.stdout
    for k in range(1, 7):  # every step announced with its command
        assert f"[{k}/6]" in text
    assert "$ python train_gta2cityscapes_multi.py " in text and "--restore-from none" in text
    data = json.loads((out / "iou.json").read_text())
    # the closing table and mIoU are the JSON's numbers
    m = re.search(r"^mIoU: ([0-9.]+)%", text, re.M)
    assert m and float(m.group(1)) == pytest.approx(100 * data["mIoU"], abs=0.051)
    road = data["per_class_iou"]["road"]
    assert re.search(r"^road\s+" + (re.escape(f"{100 * road:.1f}") if road is not None else "nan") + "$", text,
                     re.M)
    tail = text[text.index("Everything is in"):]
    for name in ("data", "snapshots", "log", "result", "iou.json", "sheet.png", "chart.png"):
        assert str(out / name) in tail


def test_demo_clears_its_own_outputs_and_refuses_foreign_folders(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="not empty and was not written by this demo"):
        demo.prepare_out(foreign)
    assert (foreign / "thesis.tex").read_text() == "precious"

    old = tmp_path / "old_demo"
    (old / "snapshots").mkdir(parents=True)
    (old / "snapshots" / "GTA5_999.pth").write_text("stale")
    (old / "iou.json").write_text("{}")
    (old / "notes.txt").write_text("kept")
    (old / demo.MARKER).write_text("")
    demo.prepare_out(old)
    assert not (old / "snapshots").exists() and not (old / "iou.json").exists()
    assert (old / "notes.txt").read_text() == "kept"


def test_demo_refuses_foreign_out_from_the_command_line(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("")
    assert demo.main(demo.get_args_parser().parse_args(["--out", str(tmp_path)])) == 2
    assert "choose another --out" in capsys.readouterr().err


def test_failing_step_stops_with_its_status_and_name(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "fake_python"
    fake.write_text("#!/bin/sh\nexit 7\n")
    fake.chmod(0o755)
    monkeypatch.setattr(demo, "PYTHON", str(fake))
    rc = demo.main(demo.get_args_parser().parse_args(["--quick", "--out", str(tmp_path / "o")]))
    assert rc == 7
    err = capsys.readouterr().err
    assert "step 'data' failed with exit status 7" in err and "tools/make_synthetic_data.py" in err


def test_majority_miou_by_hand():
    # rows = ground truth: class 0 has 6 pixels, class 1 has 3, class 2 has 1, class 3 none
    hist = [[5, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    value, k = demo.majority_miou(hist)
    assert k == 0
    assert value == pytest.approx((6 / 10) / 3)  # IoU 0.6 for class 0, 0 for classes 1 and 2, class 3 absent


def test_steps_flag_sets_the_schedule(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(demo.Demo, "run", lambda self, *a, **k: seen.append(a[-1]))
    monkeypatch.setattr(demo, "report", lambda d, t: "")
    assert demo.main(demo.get_args_parser().parse_args(["--quick", "--steps", "6", "--out",
                                                        str(tmp_path / "o")])) == 0
    train = next(argv for argv in seen if argv[0] == "train_gta2cityscapes_multi.py")
    assert train[train.index("--num-steps-stop") + 1] == "6" and train[train.index("--save-pred-every") + 1] == "3"
    evaluate = next(argv for argv in seen if argv[0] == "evaluate_cityscapes.py")
    assert evaluate[evaluate.index("--restore-from") + 1].endswith("GTA5_6.pth")
