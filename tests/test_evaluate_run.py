"""evaluate_cityscapes.py --restore-from SNAPSHOT_DIR: a whole training run in one call, against separate single-file
runs of the same snapshots (label maps, per-class IoU, mIoU, the best), the image cache against the dataset (bitwise),
reruns (only new or changed snapshots), --watch following snapshots written by another thread (with a half-written
temporary file in between) and by the training script itself, and bad input (truncated snapshot, another model,
empty folder, missing --gt-dir)."""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate_cityscapes as ev
from dataset.cityscapes_dataset import cityscapesDataSet
from dataset.labels import IMG_MEAN
from model.deeplab import Res_Deeplab
from test_evaluate import INPUT_WH, LAYERS, TARGET_WH, base_argv, run_eval, tiny_model
from tiny_training import make_tiny_data, one_thread, train_argv  # noqa: F401 (one_thread: a fixture)
from tools.make_synthetic_data import make_synthetic_datasets
from utils.checkpoint import save_snapshot
from utils.runs import ResizedImages, RunPlan, read_run_plan

NUM_VAL = 4
#: iteration -> seed of the tiny model saved as GTA5_<iteration>.pth (seed 0 predicts best: the middle snapshot)
SEEDS = {2: 1, 4: 0, 6: 2}
EVALUATED = re.compile(r"^(GTA5_\d+\.pth): mIoU ", re.M)


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):  # noqa: F811
    """Generated data, a snapshot folder as the training leaves it (plus files that are not snapshots), and one
    separate single-file run per snapshot (with --json): the reference."""
    root = tmp_path_factory.mktemp("run")
    paths = make_synthetic_datasets(root / "data", num_source=1, num_target_train=1, num_val=NUM_VAL,
                                    target_size=TARGET_WH, seed=3)
    snap = root / "snapshots"
    snap.mkdir()
    for it, seed in SEEDS.items():
        torch.save(tiny_model(seed).state_dict(), snap / f"GTA5_{it}.pth")
    disc = {"conv1.weight": torch.zeros(64, 19, 4, 4)}
    for extra in ("GTA5_2_D1.pth", "GTA5_2_D2.pth", "resume.pth"):
        torch.save(disc, snap / extra)
    torch.save(tiny_model(5).state_dict(), snap / "GTA5_best.pth")
    (snap / ".GTA5_8.pth.x1y2.tmp").write_bytes(b"half a file")
    (snap / "args.json").write_text(json.dumps({"num_steps": 10, "num_steps_stop": 6, "save_pred_every": 2}))
    single = {}
    for it in SEEDS:
        save = root / f"single_{it}"
        rc, _, err = run_eval(base_argv(paths, snap / f"GTA5_{it}.pth", save)
                              + ["--gt-dir", str(paths.gt_dir), "--json", str(save / "r.json")])
        assert rc == 0, err
        single[it] = (save, json.loads((save / "r.json").read_text()))
    return paths, snap, single, root


def run_argv(paths, snap, save, *extra: str) -> list[str]:
    return base_argv(paths, snap, save) + ["--gt-dir", str(paths.gt_dir), *extra]


def pngs(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.array(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def test_a_run_equals_separate_runs_of_each_snapshot(run, tmp_path):
    paths, snap, single, _ = run
    rc, out, err = run_eval(run_argv(paths, snap, tmp_path, "--save-all"))
    assert rc == 0, err
    assert EVALUATED.findall(out) == ["GTA5_2.pth", "GTA5_4.pth", "GTA5_6.pth"]  # in order; no D1/D2/best/resume
    data = json.loads((tmp_path / "snapshots.json").read_text())
    assert [r["file"] for r in data["snapshots"]] == ["GTA5_2.pth", "GTA5_4.pth", "GTA5_6.pth"]
    for record in data["snapshots"]:
        save, want = single[record["iteration"]]
        assert record["mIoU"] == want["mIoU"] and record["per_class_iou"] == want["per_class_iou"]
        assert record["confusion_matrix"] == want["confusion_matrix"] and record["num_images"] == NUM_VAL
        got = pngs(tmp_path / f"GTA5_{record['iteration']}")
        assert len(got) == 2 * NUM_VAL and got.keys() == pngs(save).keys()
        for name, label in pngs(save).items():
            np.testing.assert_array_equal(got[name], label, err_msg=name)
    best_it = max(single, key=lambda it: single[it][1]["mIoU"])
    assert best_it == 4 and data["best"] == {"file": "GTA5_4.pth", "iteration": 4,
                                             "mIoU": single[4][1]["mIoU"]}
    assert not list(tmp_path.glob("*.png"))  # --save-all: into the sub-folders only
    rows = list(csv.DictReader((tmp_path / "snapshots.csv").open()))
    assert [(r["iteration"], r["file"], r["best"]) for r in rows] == \
        [("2", "GTA5_2.pth", "0"), ("4", "GTA5_4.pth", "1"), ("6", "GTA5_6.pth", "0")]
    for row in rows:
        want = single[int(row["iteration"])][1]
        assert row["mIoU"] == f"{100 * want['mIoU']:.2f}"
        assert row["road"] == ("" if want["per_class_iou"]["road"] is None
                               else f"{100 * want['per_class_iou']['road']:.2f}")
    lines = out.splitlines()
    assert lines[-1] == f"best: GTA5_4.pth (iteration 4), mIoU {100 * single[4][1]['mIoU']:.2f}"
    assert any(re.fullmatch(r"\s+4\s+GTA5_4\.pth\s+[\d.]+\s+<- best", line) for line in lines)
    assert "===> mIoU: " in out  # the best's per-class table, as compute_iou.py prints it


def test_label_maps_of_the_best_snapshot_only_by_default(run, tmp_path, caplog):
    paths, snap, single, _ = run
    want = pngs(single[4][0])

    def check_label_maps(save: Path) -> None:
        got = pngs(save)
        assert got.keys() == want.keys() and len(got) == 2 * NUM_VAL
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        assert not [p for p in save.iterdir() if p.is_dir()]  # no sub-folder, no staging folder left
        assert json.loads((save / "snapshots.json").read_text())["label_maps"]["file"] == "GTA5_4.pth"

    with caplog.at_level(logging.INFO, logger="evaluate_cityscapes"):
        rc, out, err = run_eval(run_argv(paths, snap, tmp_path / "a", "--json", str(tmp_path / "best.json")))
    assert rc == 0, err
    check_label_maps(tmp_path / "a")
    assert not [r for r in caplog.records if "label maps of the best" in r.getMessage()]  # no extra pass
    best = json.loads((tmp_path / "best.json").read_text())  # --json: the best snapshot, as a single-file run
    assert best["mIoU"] == single[4][1]["mIoU"] and best["restore_from"] == str(snap / "GTA5_4.pth")
    # results cached by a --save-all call: without it, one more pass puts the best's label maps into SAVE/
    save = tmp_path / "b"
    assert run_eval(run_argv(paths, snap, save, "--save-all"))[0] == 0 and not list(save.glob("*.png"))
    shutil.rmtree(save / "GTA5_2")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="evaluate_cityscapes"):
        rc, out, err = run_eval(run_argv(paths, snap, save))
    assert rc == 0, err
    assert EVALUATED.findall(out) == [] and "label maps of the best snapshot GTA5_4.pth" in caplog.text
    shutil.rmtree(save / "GTA5_4")
    shutil.rmtree(save / "GTA5_6")
    check_label_maps(save)


def test_cached_images_are_bitwise_the_datasets(run):
    paths, _, _, _ = run
    dataset = cityscapesDataSet(paths.cityscapes_root, paths.cityscapes_val_list, crop_size=INPUT_WH,
                                mean=IMG_MEAN, set="val", uint8=True)
    images = ResizedImages(dataset, budget_bytes=2 * INPUT_WH[0] * INPUT_WH[1] * 3 + 5)
    assert images.capacity == 2
    images.fill(threads=2)
    assert sorted(images.cache) == [0, 1] and images.cache[0][0].dtype == np.uint8
    for i in range(NUM_VAL):  # two from the cache, two read by the dataset
        (a, size_a, name_a), (b, size_b, name_b) = images[i], dataset[i]
        assert a.dtype == np.uint8 and a.shape == (INPUT_WH[1], INPUT_WH[0], 3)
        assert np.array_equal(a, b) and np.array_equal(size_a, size_b) and name_a == name_b


def test_a_rerun_evaluates_only_new_and_changed_snapshots(run, tmp_path, caplog):
    paths, snap, _, _ = run
    folder = tmp_path / "snapshots"
    folder.mkdir()
    for it in SEEDS:
        os.link(snap / f"GTA5_{it}.pth", folder / f"GTA5_{it}.pth")  # no copy of 40 MB files
    save = tmp_path / "out"
    argv = run_argv(paths, folder, save)
    rc, out, err = run_eval(argv)
    assert rc == 0, err
    assert len(EVALUATED.findall(out)) == 3
    before = json.loads((save / "snapshots.json").read_text())
    rc, out, err = run_eval(argv)
    assert rc == 0, err
    assert EVALUATED.findall(out) == [] and out.splitlines()[-1].startswith("best: GTA5_4.pth")
    assert json.loads((save / "snapshots.json").read_text()) == before
    # a changed snapshot (the training resumed and wrote it again) and a new one
    ev.atomic_write(folder / "GTA5_2.pth", lambda tmp: torch.save(tiny_model(7).state_dict(), tmp))
    os.link(snap / "GTA5_4.pth", folder / "GTA5_8.pth")
    rc, out, err = run_eval(argv)
    assert rc == 0, err
    assert EVALUATED.findall(out) == ["GTA5_2.pth", "GTA5_8.pth"]
    after = {r["file"]: r for r in json.loads((save / "snapshots.json").read_text())["snapshots"]}
    assert after["GTA5_2.pth"]["size"] == (folder / "GTA5_2.pth").stat().st_size
    assert after["GTA5_8.pth"]["mIoU"] == after["GTA5_4.pth"]["mIoU"]  # the same weights
    assert after["GTA5_4.pth"] == {r["file"]: r for r in before["snapshots"]}["GTA5_4.pth"]
    # other settings: the cache is not used, said in one log line
    with caplog.at_level(logging.WARNING, logger="evaluate_cityscapes"):
        rc, out, err = run_eval(argv + ["--flip"])
    assert rc == 0, err
    assert len(EVALUATED.findall(out)) == 4
    said = [r.getMessage() for r in caplog.records if "other settings" in r.getMessage()]
    assert len(said) == 1 and "flip False -> True" in said[0]


def test_bad_snapshots_are_reported_and_skipped(run, tmp_path):
    paths, snap, single, _ = run
    folder = tmp_path / "snapshots"
    folder.mkdir()
    os.link(snap / "GTA5_2.pth", folder / "GTA5_2.pth")
    (folder / "GTA5_4.pth").write_bytes((snap / "GTA5_4.pth").read_bytes()[:100_000])  # truncated
    torch.save(Res_Deeplab(num_classes=19, layers=LAYERS).state_dict(), folder / "GTA5_6.pth")  # another model
    os.link(snap / "GTA5_6.pth", folder / "GTA5_8.pth")
    save = tmp_path / "out"
    rc, out, err = run_eval(run_argv(paths, folder, save))
    assert rc == 1
    assert EVALUATED.findall(out) == ["GTA5_2.pth", "GTA5_8.pth"]  # the others still evaluated
    assert "error: skipped GTA5_4.pth:" in err and "truncated" in err and str(folder / "GTA5_4.pth") in err
    assert "error: skipped GTA5_6.pth:" in err and "does not fit --model DeeplabMulti" in err
    assert str(folder / "GTA5_6.pth") in err and "Oracle" in err  # the hint names the model these weights fit
    assert "2 snapshot(s) skipped: GTA5_4.pth, GTA5_6.pth" in err
    table = out[out.index("iteration  snapshot"):]
    assert re.search(r"4\s+GTA5_4\.pth\s+-\s+skipped", table) and re.search(r"6\s+GTA5_6\.pth\s+-\s+skipped", table)
    data = json.loads((save / "snapshots.json").read_text())
    assert [r["file"] for r in data["snapshots"]] == ["GTA5_2.pth", "GTA5_8.pth"]
    assert data["snapshots"][0]["mIoU"] == single[2][1]["mIoU"]
    assert len(list(save.glob("*_color.png"))) == NUM_VAL  # the best's label maps all the same


def test_usage_errors_and_a_folder_without_snapshots(run, tmp_path):
    paths, snap, _, _ = run
    rc, out, err = run_eval(base_argv(paths, snap, tmp_path / "a"))
    assert rc == 2 and "is a snapshot directory: comparing its snapshots needs --gt-dir" in err
    for flag in ("--watch", "--save-all"):
        rc, _, err = run_eval(run_argv(paths, snap / "GTA5_2.pth", tmp_path / "b", flag))
        assert rc == 2 and f"{flag} needs --restore-from SNAPSHOT_DIR" in err
    rc, _, err = run_eval(run_argv(paths, snap, tmp_path / "c", "--watch-interval", "0"))
    assert rc == 2 and "--watch-interval must be a number > 0" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in ("GTA5_2_D1.pth", "resume.pth"):
        shutil.copy(snap / name, empty / name)
    rc, out, err = run_eval(run_argv(paths, empty, tmp_path / "d"))
    assert rc == 1 and out == ""
    assert err.startswith(f"evaluate_cityscapes.py: error: --restore-from {empty}: no snapshot "
                          "<prefix>_<iteration>.pth in it")


def test_the_run_plan_from_args_json(tmp_path):
    def plan(**run) -> RunPlan:
        (tmp_path / "args.json").write_text(json.dumps(run))
        return read_run_plan(tmp_path)

    assert read_run_plan(tmp_path / "none") == RunPlan()
    assert plan(num_steps=250000, num_steps_stop=150000, save_pred_every=5000) == RunPlan("GTA5", 150000)
    assert plan(num_steps=100, num_steps_stop=100, save_pred_every=30, source="synthia") == RunPlan("SYNTHIA", 100)
    assert plan(num_steps=90, num_steps_stop=150, save_pred_every=20, source="synscapes") == \
        RunPlan("Synscapes", 90)
    assert plan(num_steps=9, num_steps_stop=8, source="cityscapes").prefix == "Cityscapes"
    bad = plan(num_steps=9)
    assert bad.last_iteration is None and "num_steps_stop" in bad.problem


def test_watch_follows_a_training_run_and_stops_after_its_last_snapshot(run, tmp_path):
    """Another thread plays the training: args.json, then snapshots written atomically, one of them first sitting
    as a half-written temporary file for many polls. The watch starts before the folder exists."""
    paths, snap, _, _ = run
    folder = tmp_path / "snapshots"
    disc = torch.nn.Conv2d(19, 1, 1)
    errors = []

    def training() -> None:
        try:
            time.sleep(0.3)
            folder.mkdir()
            (folder / "args.json").write_text(json.dumps({"num_steps": 6, "num_steps_stop": 150000,
                                                          "save_pred_every": 2, "source": "gta5"}))
            save_snapshot(folder, 2, {"model": tiny_model(1), "model_D1": disc, "model_D2": disc})
            time.sleep(0.4)
            data = (snap / "GTA5_4.pth").read_bytes()
            tmp = folder / ".GTA5_4.pth.k3j2.tmp"
            tmp.write_bytes(data[: len(data) // 2])
            time.sleep(0.6)
            tmp.write_bytes(data)
            os.replace(tmp, folder / "GTA5_4.pth")
            time.sleep(0.4)
            save_snapshot(folder, 6, {"model": tiny_model(2), "model_D1": disc, "model_D2": disc})  # num_steps < num_steps_stop: the last is 6
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    writer = threading.Thread(target=training)
    start = time.monotonic()
    writer.start()
    save = tmp_path / "out"
    rc, out, err = run_eval(run_argv(paths, folder, save, "--watch", "--watch-interval", "0.05",
                                     "--watch-timeout", "60"))
    elapsed = time.monotonic() - start
    writer.join()
    assert not errors and rc == 0, err
    assert "skipped" not in err and elapsed < 30  # ended by the last snapshot, not the timeout
    assert EVALUATED.findall(out) == ["GTA5_2.pth", "GTA5_4.pth", "GTA5_6.pth"]
    data = json.loads((save / "snapshots.json").read_text())
    assert [r["iteration"] for r in data["snapshots"]] == [2, 4, 6] and data["best"]["file"] == "GTA5_4.pth"


def test_watch_gives_up_after_the_timeout(run, tmp_path, caplog):
    paths, snap, _, _ = run
    folder = tmp_path / "snapshots"
    folder.mkdir()
    os.link(snap / "GTA5_2.pth", folder / "GTA5_2.pth")
    (folder / "args.json").write_text(json.dumps({"num_steps": 100, "num_steps_stop": 10, "save_pred_every": 2}))
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="evaluate_cityscapes"):
        rc, out, err = run_eval(run_argv(paths, folder, tmp_path / "out", "--watch", "--watch-interval", "0.05",
                                         "--watch-timeout", "0.5"))
    assert rc == 0, err
    assert 0.5 <= time.monotonic() - start < 20
    assert EVALUATED.findall(out) == ["GTA5_2.pth"]
    assert any("no new snapshot" in r.getMessage() and "GTA5_10.pth" in r.getMessage() for r in caplog.records)


def test_watch_a_real_training_run(tmp_path, one_thread):  # noqa: F811
    """The training script in another process (4 iterations, snapshots at 2 and 4, its own args.json) and the watch
    started before its folder exists: both end, the watch by the run's last snapshot (not the 120 s timeout)."""
    data = make_tiny_data(tmp_path / "data")
    snap = tmp_path / "snapshots"
    repo = Path(__file__).resolve().parents[1]
    training = subprocess.Popen([sys.executable, str(repo / "train_gta2cityscapes_multi.py"), *train_argv(data, snap)],
                                cwd=repo, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    start = time.monotonic()
    try:
        rc, out, err = run_eval(["--restore-from", str(snap), "--data-dir", str(data.cityscapes_root),
                                 "--data-list", str(data.cityscapes_val_list), "--gt-dir", str(data.gt_dir),
                                 "--save", str(tmp_path / "out"), "--cpu", "--input-size", "32,32",
                                 "--output-size", "48,32", "--resnet-layers", "1,1,1,1", "--watch",
                                 "--watch-interval", "0.1", "--watch-timeout", "120"])
    finally:
        _, train_err = training.communicate(timeout=120)
    assert training.returncode == 0, train_err[-2000:]
    assert rc == 0, err
    assert time.monotonic() - start < 100
    assert EVALUATED.findall(out) == ["GTA5_2.pth", "GTA5_4.pth"]  # not the _D1/_D2 files nor resume.pth
