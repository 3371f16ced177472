"""Faults while writing on the evaluation side (issue 15) and files that follow the umask (issue 12, item 1).

A full disk is simulated by patching the writers (PIL's ``Image.save``, ``Path.write_text``) to write part of the
file and then raise ``OSError(ENOSPC)``, for each kind of file: prediction, colour and overlay PNGs (written by
background threads), the IoU JSON, snapshots.json / snapshots.csv, compute_iou.py's JSON, generated data and the
tools' outputs. Each time: one ``<script>: error: cannot write <file>: no space left on the device (...)`` line on
stderr, exit status 1, no traceback, no temporary file left, every file written before whole."""
from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import compute_iou
import evaluate_cityscapes as ev
import utils.files
from model.deeplab_multi import DeeplabMulti
from tools import check_data, make_synthetic_data, visualize
from tools.make_synthetic_data import make_synthetic_datasets

REPO = Path(__file__).resolve().parents[1]
WH = (48, 32)
SECOND = "lindau_000000_000019_leftImg8bit"  # the second of the three generated val images
FULL = re.compile(r": no space left on the device \(\d[\d.]* [kMGT]?B free, about \d[\d.]* [kMGT]?B needed\)$")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalfaults")
    paths = make_synthetic_datasets(root / "data", num_source=1, num_target_train=1, num_val=3, target_size=WH,
                                    seed=6)
    run = root / "run"
    run.mkdir()
    torch.manual_seed(0)
    torch.save(DeeplabMulti(num_classes=19, layers=(1, 1, 1, 1)).state_dict(), run / "GTA5_2.pth")
    (run / "args.json").write_text(json.dumps({"model": "DeepLab", "resnet_layers": [1, 1, 1, 1], "num_classes": 19,
                                               "num_steps": 2, "num_steps_stop": 2}))
    return paths, run


def eval_argv(paths, restore, save, *extra) -> list[str]:
    return ["--restore-from", str(restore), "--data-dir", str(paths.cityscapes_root), "--data-list",
            str(paths.cityscapes_val_list), "--save", str(save), "--cpu", "--input-size", "32,32", "--output-size",
            f"{WH[0]},{WH[1]}", "--resnet-layers", "1,1,1,1", "--num-workers", "0", *map(str, extra)]


def run(main, parser, argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(parser().parse_args([str(a) for a in argv]))
    return rc, out.getvalue(), err.getvalue()


def fill_disk_at(monkeypatch, name: str) -> None:
    """The write of the file called ``name`` (its temporary file ``.<name>.<random>.tmp``) writes a few bytes, then
    fails as a full disk does; every other write goes through."""
    real_save, real_write_text = Image.Image.save, Path.write_text

    def failing(path) -> bool:
        return Path(path).name.startswith(f".{name}.")

    def save(self, fp, *args, **kwargs):
        if isinstance(fp, (str, os.PathLike)) and failing(fp):
            Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    def write_text(self, text, *args, **kwargs):
        if failing(self):
            real_write_text(self, text[: len(text) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    monkeypatch.setattr(Path, "write_text", write_text)


def assert_one_line(err: str, prog: str, path: Path) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"{prog}: error: cannot write {path}: ") and FULL.search(lines[0]), lines[0]


def assert_whole(folder: Path) -> None:
    """No temporary file left, and every PNG and JSON file there decodes."""
    assert not list(folder.rglob(".*.tmp"))
    for png in folder.rglob("*.png"):
        with Image.open(png) as img:
            img.load()
    for path in folder.rglob("*.json"):
        json.loads(path.read_text())


@pytest.mark.parametrize("name", [f"{SECOND}.png", f"{SECOND}_color.png", f"{SECOND}_overlay.png"])
def test_disk_full_while_writing_predictions(data, tmp_path, monkeypatch, name):
    paths, snapshots = data
    fill_disk_at(monkeypatch, name)
    save = tmp_path / "pred"
    rc, out, err = run(ev.main, ev.get_args_parser, eval_argv(paths, snapshots / "GTA5_2.pth", save, "--save-overlay",
                                                              "--gt-dir", paths.gt_dir))
    assert rc == 1
    assert_one_line(err, "evaluate_cityscapes.py", save / name)
    assert "===> mIoU" not in out  # no table from an incomplete run
    assert_whole(save)
    assert not (save / name).exists()


def test_disk_full_while_writing_the_iou_json(data, tmp_path, monkeypatch):
    paths, snapshots = data
    fill_disk_at(monkeypatch, "iou.json")
    argv = eval_argv(paths, snapshots / "GTA5_2.pth", tmp_path / "pred", "--gt-dir", paths.gt_dir, "--json",
                     tmp_path / "iou.json")
    rc, out, err = run(ev.main, ev.get_args_parser, argv)
    assert rc == 1 and "===> mIoU" not in out
    assert_one_line(err, "evaluate_cityscapes.py", tmp_path / "iou.json")
    assert_whole(tmp_path)
    assert len(list((tmp_path / "pred").glob("*_color.png"))) == 3 and not (tmp_path / "iou.json").exists()


@pytest.mark.parametrize("name", ["snapshots.json", "snapshots.csv"])
def test_disk_full_while_writing_the_results_of_a_run(data, tmp_path, monkeypatch, name):
    paths, snapshots = data
    save = tmp_path / "run"
    fill_disk_at(monkeypatch, name)
    rc, out, err = run(ev.main, ev.get_args_parser, eval_argv(paths, snapshots, save, "--gt-dir", paths.gt_dir))
    assert rc == 1
    assert_one_line(err, "evaluate_cityscapes.py", save / name)
    assert_whole(save)
    if name == "snapshots.csv":  # the JSON was written first, whole
        assert [r["file"] for r in json.loads((save / "snapshots.json").read_text())["snapshots"]] == ["GTA5_2.pth"]


def test_disk_full_while_writing_compute_ious_json(data, tmp_path, monkeypatch):
    paths, snapshots = data
    assert run(ev.main, ev.get_args_parser, eval_argv(paths, snapshots / "GTA5_2.pth", tmp_path / "pred"))[0] == 0
    fill_disk_at(monkeypatch, "iou.json")
    rc, out, err = run(compute_iou.main, compute_iou.get_args_parser,
                       [paths.gt_dir, tmp_path / "pred", "--devkit-dir", paths.devkit_dir, "--json",
                        tmp_path / "out" / "iou.json", "--num-workers", "1"])
    assert (rc, out) == (1, "")  # no number printed when the result could not be saved
    assert_one_line(err, "compute_iou.py", tmp_path / "out" / "iou.json")
    assert_whole(tmp_path)


def test_disk_full_while_generating_data(tmp_path, monkeypatch):
    fill_disk_at(monkeypatch, "00002.png")  # the second GTA5 image, after the first image/label pair
    rc, out, err = run(make_synthetic_data.main, make_synthetic_data.get_args_parser,
                       ["--out", tmp_path, "--num-source", "3", "--num-target-train", "1", "--num-val", "1"])
    assert (rc, out) == (1, "")
    assert_one_line(err, "make_synthetic_data.py", tmp_path / "GTA5" / "images" / "00002.png")
    assert_whole(tmp_path)
    assert sorted(p.name for p in (tmp_path / "GTA5").rglob("*.png")) == ["00001.png", "00001.png"]


def test_disk_full_while_writing_the_tools_outputs(data, tmp_path, monkeypatch):
    paths, _ = data
    iou = tmp_path / "iou.json"
    iou.write_text(json.dumps({"per_class_iou": {"road": 0.5, "sky": None}, "mIoU": 0.5}))
    fill_disk_at(monkeypatch, "chart.png")
    rc, _, err = run(visualize.main, visualize.get_args_parser, ["chart", iou, "--out", tmp_path / "chart.png"])
    assert rc == 1
    assert_one_line(err, "visualize.py chart", tmp_path / "chart.png")
    fill_disk_at(monkeypatch, "cityscapes_train.txt")
    rc, _, err = run(check_data.main, check_data.get_args_parser,
                     ["--skip-source", "--data-dir-target", paths.cityscapes_root, "--data-list-target",
                      paths.cityscapes_train_list, "--data-list-val", paths.cityscapes_val_list, "--num-workers", "1",
                      "--write-clean-lists", tmp_path / "lists"])
    assert rc == 1
    assert_one_line(err, "check_data.py", tmp_path / "lists" / "cityscapes_train.txt")
    assert_whole(tmp_path)


def test_space_warning_before_the_run(data, tmp_path, monkeypatch, caplog):
    paths, snapshots = data
    argv = eval_argv(paths, snapshots / "GTA5_2.pth", tmp_path / "pred")
    for free, overlay, warned in ((10**9, False, False), (2000, False, False), (2000, True, True)):
        # 3 images of 48x32 pixels: about 460 B of label maps (well within 2000 B), 9.2 kB more with overlays
        monkeypatch.setattr(utils.files, "free_bytes", lambda path, free=free: free)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="evaluate_cityscapes"):
            rc, _, err = run(ev.main, ev.get_args_parser, argv + (["--save-overlay"] if overlay else []))
        assert rc == 0, err  # a warning, not an error
        said = [r.getMessage() for r in caplog.records if "free" in r.getMessage()]
        assert bool(said) == warned, said
        if warned:
            assert said[0].startswith(f"--save {tmp_path / 'pred'}: 2.0 kB free, but the predictions may need about")
            assert "(3 images at 48x32)" in said[0]


def test_outputs_follow_the_umask(data, tmp_path):
    """In fresh processes (the umask is read at start): evaluate's label maps, IoU JSON and snapshots.json/csv, and
    compute_iou.py's JSON, under umask 022 (0644) and compute_iou's JSON under 027 (0640)."""
    paths, snapshots = data
    env = dict(os.environ, OMP_NUM_THREADS="1")
    save = tmp_path / "run"
    subprocess.run([sys.executable, str(REPO / "evaluate_cityscapes.py"),
                    *eval_argv(paths, snapshots, save, "--gt-dir", paths.gt_dir, "--json", tmp_path / "best.json")],
                   cwd=REPO, env=env, check=True, capture_output=True, preexec_fn=lambda: os.umask(0o022))
    written = sorted(save.glob("*.png")) + [save / "snapshots.json", save / "snapshots.csv", tmp_path / "best.json"]
    assert len(written) == 9
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: "0o644" for p in written}
    for mask, mode in ((0o022, 0o644), (0o027, 0o640)):
        out = tmp_path / f"iou_{mask:o}.json"
        subprocess.run([sys.executable, str(REPO / "compute_iou.py"), str(paths.gt_dir), str(save), "--devkit-dir",
                        str(paths.devkit_dir), "--json", str(out)], cwd=REPO, env=env, check=True,
                       capture_output=True, preexec_fn=lambda m=mask: os.umask(m))
        assert out.stat().st_mode & 0o777 == mode
