"""The command lines of the evaluation side (issue 12, items 2, 4, 6-11, 13): evaluate_cityscapes.py, compute_iou.py
and the tools. Help texts with every default, short usage errors, one error style with exit status 1 / 2, the old
flag spellings as aliases, --gpu without CUDA, nothing created for a refused evaluation, the model flags from the
training run's args.json, default lists found from any folder, compute_iou's count and hints, and the two
protocols for class subsets against a confusion matrix worked out by hand."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import compute_iou
import evaluate_cityscapes as ev
from dataset.labels import CITYSCAPES_LIST_DIR
from model.deeplab import Res_Deeplab
from model.deeplab_multi import DeeplabMulti
from tools import check_data, demo, make_synthetic_data, visualize
from tools.make_synthetic_data import make_synthetic_datasets

REPO = Path(__file__).resolve().parents[1]
WH = (48, 32)  # generated images, ground truth and predictions
PARSERS = {"evaluate_cityscapes.py": ev.get_args_parser, "compute_iou.py": compute_iou.get_args_parser,
           "check_data.py": check_data.get_args_parser, "make_synthetic_data.py": make_synthetic_data.get_args_parser,
           "visualize.py": visualize.get_args_parser, "demo.py": demo.get_args_parser}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three val images, a tiny DeeplabMulti snapshot with the args.json the training writes beside it, and an
    Oracle (single-level) snapshot in a run folder of its own."""
    root = tmp_path_factory.mktemp("evalcli")
    paths = make_synthetic_datasets(root / "data", num_source=1, num_target_train=1, num_val=3, target_size=WH,
                                    seed=5)
    run = root / "run"
    run.mkdir()
    torch.manual_seed(0)
    torch.save(DeeplabMulti(num_classes=19, layers=(1, 1, 1, 1)).state_dict(), run / "GTA5_2.pth")
    (run / "args.json").write_text(json.dumps({"model": "DeepLab", "resnet_layers": [1, 1, 1, 1], "num_classes": 19,
                                               "num_steps": 10, "num_steps_stop": 2, "source": "gta5"}))
    oracle = root / "oracle"
    oracle.mkdir()
    torch.save(Res_Deeplab(num_classes=19, layers=(1, 2, 1, 1)).state_dict(), oracle / "Cityscapes_2.pth")
    (oracle / "args.json").write_text(json.dumps({"model": "Oracle", "resnet_layers": [1, 2, 1, 1],
                                                  "num_classes": 19, "source": "cityscapes"}))
    return paths, run / "GTA5_2.pth", oracle / "Cityscapes_2.pth", root


def data_argv(paths, save) -> list[str]:
    return ["--data-dir", str(paths.cityscapes_root), "--data-list", str(paths.cityscapes_val_list), "--save",
            str(save), "--cpu", "--input-size", "32,32", "--output-size", f"{WH[0]},{WH[1]}", "--num-workers", "0"]


def run(main, parser, argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(parser().parse_args([str(a) for a in argv]))
    return rc, out.getvalue(), err.getvalue()


def all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from all_parsers(sub)


# ---- help, usage errors, error style (items 8, 9, 10) --------------------------------------------------------------


@pytest.mark.parametrize("name", PARSERS)
def test_help_shows_every_default_as_typed(name):
    for parser in all_parsers(PARSERS[name]()):
        text = parser.format_help()
        assert "(default: None)" not in text and not re.search(r"\(\d+, \d+\)", text), text
        for action in parser._actions:
            if (action.option_strings and action.default not in (None, argparse.SUPPRESS)
                    and action.default is not False and not isinstance(action, argparse._HelpAction)):
                shown = " ".join(parser._get_formatter()._expand_help(action).split())
                assert "default" in shown, f"{name} {action.option_strings[0]}: {shown}"
    helps = {a.dest: a.help for a in ev.get_args_parser()._actions}
    assert "training" not in helps["ignore_label"]  # the original's "during the training" was wrong here
    helps = {a.dest: a.help for a in compute_iou.get_args_parser()._actions}
    assert "label.txt" in helps["gt_dir"] and "val.txt" in helps["pred_dir"]


@pytest.mark.parametrize("name", PARSERS)
def test_a_usage_error_is_one_short_usage_line_and_the_error(name, capsys):
    argv = ["sheet", "--bogus"] if name == "visualize.py" else ["--bogus"]
    with pytest.raises(SystemExit) as exc:
        PARSERS[name]().parse_args(argv)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"usage: {name}") and lines[1].startswith(f"{name}")
    assert ": error: " in lines[1]


def test_consistent_spellings_with_the_old_ones_as_aliases():
    for parser, new, old, dest, value in (
            (compute_iou.get_args_parser, "--devkit-dir", "--devkit_dir", "devkit_dir", "d"),
            (compute_iou.get_args_parser, "--num-workers", "--workers", "workers", 3),
            (check_data.get_args_parser, "--num-workers", "--workers", "workers", 3),
            (make_synthetic_data.get_args_parser, "--random-seed", "--seed", "seed", 3),
            (demo.get_args_parser, "--random-seed", "--seed", "seed", 3)):
        required = ["g", "p"] if parser is compute_iou.get_args_parser else (
            ["--out", "o"] if parser is make_synthetic_data.get_args_parser else [])
        for flag in (new, old):
            assert getattr(parser().parse_args([*required, flag, str(value)]), dest) == value


def test_error_style_and_exit_status(data, tmp_path):
    paths, snapshot, _, _ = data
    # flags that cannot work together, or values that cannot work: exit 2
    for argv, message in ((["--json", tmp_path / "x.json"], "--json needs --gt-dir"),
                          (["--classes", "13"], "--classes needs --gt-dir"),
                          (["--batch-size", "0"], "--batch-size must be at least 1"),
                          (["--target", "crosscity"], "--target crosscity needs --city")):
        rc, out, err = run(ev.main, ev.get_args_parser, ["--restore-from", snapshot, *data_argv(paths, tmp_path / "s"),
                                                         *argv])
        assert (rc, out) == (2, "") and err.startswith(f"evaluate_cityscapes.py: error: {message}"), err
    rc, _, err = run(compute_iou.main, compute_iou.get_args_parser, [paths.gt_dir, tmp_path, "--num-workers", "0"])
    assert rc == 2 and err == "compute_iou.py: error: --num-workers must be at least 1, got 0\n"
    rc, _, err = run(make_synthetic_data.main, make_synthetic_data.get_args_parser,
                     ["--out", tmp_path / "m", "--target-size", "4,4"])
    assert rc == 2 and err == "make_synthetic_data.py: error: --target-size must be at least 8,8, got 4,4\n"
    assert not (tmp_path / "m").exists()
    rc, _, err = run(check_data.main, check_data.get_args_parser, ["--num-workers", "0"])
    assert rc == 2 and err == "check_data.py: error: --num-workers must be at least 1, got 0\n"
    # data errors: exit 1, one message
    rc, out, err = run(compute_iou.main, compute_iou.get_args_parser, [paths.gt_dir, tmp_path / "none"])
    assert (rc, out) == (1, "") and err.startswith("compute_iou.py: error: PRED_DIR ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_without_cuda_is_a_usage_error_and_the_cpu_fallback_a_warning(data, tmp_path, caplog):
    paths, snapshot, _, _ = data
    argv = ["--restore-from", snapshot, *data_argv(paths, tmp_path / "a")]
    argv.remove("--cpu")
    rc, out, err = run(ev.main, ev.get_args_parser, [*argv, "--gpu", "0"])
    assert (rc, out) == (2, "") and "--gpu 0: CUDA is not available" in err and "pass --cpu" in err
    assert not (tmp_path / "a").exists()  # nothing built or written
    with caplog.at_level(logging.WARNING):
        rc, _, err = run(ev.main, ev.get_args_parser, argv)
    assert rc == 0, err
    assert [r.levelname for r in caplog.records if "CUDA is not available" in r.getMessage()] == ["WARNING"]


# ---- nothing created before the inputs are checked (item 4) -------------------------------------------------------


def test_a_refused_checkpoint_leaves_no_folder(data, tmp_path):
    paths, snapshot, _, _ = data
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(snapshot.read_bytes()[:5000])
    other = tmp_path / "other.pth"
    torch.save(DeeplabMulti(num_classes=7, layers=(1, 1, 1, 1)).state_dict(), other)
    for checkpoint, message in ((tmp_path / "missing.pth", "missing.pth"), (truncated, "truncated.pth"),
                                (other, "pass --num-classes 7")):
        save, json_path = tmp_path / "save" / "deeper", tmp_path / "json" / "iou.json"
        rc, out, err = run(ev.main, ev.get_args_parser, ["--restore-from", checkpoint, "--resnet-layers", "1,1,1,1",
                                                         *data_argv(paths, save), "--gt-dir", paths.gt_dir,
                                                         "--json", json_path])
        assert (rc, out) == (1, "") and message in err and err.startswith("evaluate_cityscapes.py: error: ")
        assert not (tmp_path / "save").exists() and not (tmp_path / "json").exists()
    rc, _, err = run(compute_iou.main, compute_iou.get_args_parser,
                     [paths.gt_dir, tmp_path / "nothing", "--devkit-dir", paths.devkit_dir, "--json",
                      tmp_path / "j" / "iou.json"])
    assert rc == 1 and not (tmp_path / "j").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, _, err = run(ev.main, ev.get_args_parser, ["--restore-from", snapshot, *data_argv(paths, blocker / "s")])
    assert rc == 1 and f"--save {blocker / 's'}: cannot write there ({blocker} is not a folder)" in err


# ---- the model flags from the training run's args.json (item 6) ----------------------------------------------------


def test_model_flags_come_from_the_runs_args_json(data, tmp_path, caplog):
    paths, snapshot, oracle, _ = data
    with caplog.at_level(logging.INFO, logger="evaluate_cityscapes"):
        rc, _, err = run(ev.main, ev.get_args_parser, ["--restore-from", snapshot, *data_argv(paths, tmp_path / "a")])
    assert rc == 0, err  # the default ResNet-101 would not fit these weights
    said = [r.getMessage() for r in caplog.records if "args.json" in r.getMessage()]
    assert said == [f"from the training run's {snapshot.parent / 'args.json'}: --model DeepLab, --resnet-layers "
                    "1,1,1,1, --num-classes 19"]
    # an explicit flag wins over args.json
    rc, _, err = run(ev.main, ev.get_args_parser, ["--restore-from", snapshot, "--resnet-layers", "3,4,23,3",
                                                   *data_argv(paths, tmp_path / "b")])
    assert rc == 1 and "--resnet-layers 3,4,23,3" in err and "does not fit" in err
    # the training script's name for the model, and the single-level Oracle with its own block counts
    rc, _, err = run(ev.main, ev.get_args_parser, ["--restore-from", snapshot, "--model", "DeepLab",
                                                   *data_argv(paths, tmp_path / "c")])
    assert rc == 0, err
    rc, _, err = run(ev.main, ev.get_args_parser, ["--restore-from", oracle, *data_argv(paths, tmp_path / "d")])
    assert rc == 0, err
    for name in ("a", "c", "d"):
        assert len(list((tmp_path / name).glob("*_color.png"))) == 3
    # directory mode: args.json in the snapshot folder
    argv = ["--restore-from", snapshot.parent, *data_argv(paths, tmp_path / "e"), "--gt-dir", paths.gt_dir]
    rc, out, err = run(ev.main, ev.get_args_parser, argv)
    assert rc == 0 and "GTA5_2.pth: mIoU " in out, err
    settings = json.loads((tmp_path / "e" / "snapshots.json").read_text())["settings"]
    assert (settings["model"], settings["resnet_layers"]) == ("DeeplabMulti", [1, 1, 1, 1])


# ---- default lists from any folder (item 7) ------------------------------------------------------------------------


def test_default_lists_are_found_from_another_folder(data, tmp_path, monkeypatch, caplog):
    paths, snapshot, _, _ = data
    monkeypatch.chdir(tmp_path)
    argv = ["--restore-from", snapshot, *data_argv(paths, tmp_path / "a")]
    del argv[argv.index("--data-list"):argv.index("--data-list") + 2]
    with caplog.at_level(logging.INFO):
        rc, _, err = run(ev.main, ev.get_args_parser, argv)
    # the repository's val list (500 real Cityscapes names, not in the generated data) was found and read
    assert rc == 1 and f"named by {REPO / 'dataset/cityscapes_list/val.txt'} do not exist" in err, err
    assert "--data-list ./dataset/cityscapes_list/val.txt: not in the current folder; using the repository's" \
        in caplog.text
    caplog.clear()
    shutil.copytree(paths.gt_dir, tmp_path / "gt")
    with caplog.at_level(logging.INFO):
        rc, _, err = run(compute_iou.main, compute_iou.get_args_parser, [tmp_path / "gt", tmp_path])
    assert rc == 1 and re.search(r"\d+ of 500 ground-truth files are missing", err)
    assert f"it used {REPO / 'dataset/cityscapes_list/label.txt'}" in err
    assert "--devkit-dir dataset/cityscapes_list: not in the current folder; using the repository's" in caplog.text


# ---- compute_iou.py: the count, the hints, nan (item 11) ------------------------------------------------------------


def test_compute_iou_says_how_many_images_and_hints_at_swapped_folders(data, tmp_path):
    paths, snapshot, _, _ = data
    save = tmp_path / "pred"
    assert run(ev.main, ev.get_args_parser, ["--restore-from", snapshot, *data_argv(paths, save)])[0] == 0
    rc, out, err = run(compute_iou.main, compute_iou.get_args_parser,
                       [paths.gt_dir, save, "--devkit-dir", paths.devkit_dir])
    assert rc == 0 and out.startswith("Num classes 19\n") and out.splitlines()[-1].startswith("===> mIoU: ")
    assert err.splitlines()[-1] == "scored 3 images"  # on stderr: stdout stays the original's
    assert re.search(r"^===>\w+:\tnan$", out, re.M)  # a class without pixels: nan, as the original
    rc, out, err = run(compute_iou.main, compute_iou.get_args_parser,
                       [save, paths.gt_dir, "--devkit-dir", paths.devkit_dir])
    assert (rc, out) == (1, "") and "3 of 3 ground-truth files are missing" in err
    assert f"it used {paths.devkit_dir / 'label.txt'} and {paths.devkit_dir / 'val.txt'}" in err
    assert "GT_DIR and PRED_DIR are not the wrong way round" in err and "they look swapped" in err
    # a devkit of other images: the hint names its lists, and does not claim the folders are swapped
    other = tmp_path / "devkit"
    other.mkdir()
    shutil.copy(CITYSCAPES_LIST_DIR / "info.json", other)
    (other / "val.txt").write_text("ulm/ulm_000000_000019_leftImg8bit.png\n")
    (other / "label.txt").write_text("ulm/ulm_000000_000019_gtFine_labelIds.png\n")
    rc, _, err = run(compute_iou.main, compute_iou.get_args_parser, [paths.gt_dir, save, "--devkit-dir", other])
    assert rc == 1 and "check that --devkit-dir lists the images of GT_DIR" in err and "look swapped" not in err


# ---- class subsets: the two protocols (item 13) --------------------------------------------------------------------

# One 2x4 image. Ground truth: road road road wall / terrain terrain sky sky; prediction: road road wall wall /
# vegetation terrain sky road. Over the 13 classes (without wall and terrain, among others):
#   default (their pixels count): road 2 / (3 + 3 - 2) = 0.5; vegetation 0 / (0 + 1 - 0) = 0 (the terrain pixel
#     predicted as vegetation); sky 1 / (2 + 1 - 1) = 0.5  ->  mIoU 33.33
#   --ignore-other-classes (wall and terrain ground truth ignored): road 0.5, sky 0.5, vegetation no pixel (nan)
#     ->  mIoU 50.0
GT_LABELIDS = np.array([[7, 7, 7, 12], [22, 22, 23, 23]], dtype=np.uint8)
PRED_TRAINIDS = np.array([[0, 0, 3, 3], [8, 9, 10, 0]], dtype=np.uint8)


def test_ignore_other_classes_against_a_hand_computed_matrix(tmp_path):
    gt_dir, pred_dir, devkit = tmp_path / "gt", tmp_path / "pred", tmp_path / "devkit"
    for d in (gt_dir / "ulm", pred_dir, devkit):
        d.mkdir(parents=True)
    Image.fromarray(GT_LABELIDS).save(gt_dir / "ulm" / "ulm_000000_000019_gtFine_labelIds.png")
    Image.fromarray(PRED_TRAINIDS).save(pred_dir / "ulm_000000_000019_leftImg8bit.png")
    shutil.copy(CITYSCAPES_LIST_DIR / "info.json", devkit)
    (devkit / "val.txt").write_text("ulm/ulm_000000_000019_leftImg8bit.png\n")
    (devkit / "label.txt").write_text("ulm/ulm_000000_000019_gtFine_labelIds.png\n")
    argv = [gt_dir, pred_dir, "--devkit-dir", devkit, "--classes", "13", "--num-workers", "1"]
    tables = {}
    for extra in ([], ["--ignore-other-classes", "--json", tmp_path / "r.json"]):
        rc, out, err = run(compute_iou.main, compute_iou.get_args_parser, [*argv, *extra])
        assert rc == 0, err
        tables[bool(extra)] = dict(re.findall(r"^===>\s*(\S+?):\s+(\S+)$", out, re.M))
    assert tables[False]["mIoU"] == "33.33" and tables[False]["vegetation"] == "0.0"
    assert tables[True]["mIoU"] == "50.0" and tables[True]["vegetation"] == "nan"
    assert tables[True]["road"] == tables[False]["road"] == "50.0" and tables[True]["sky"] == "50.0"
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["ignore_other_classes"] is True and result["mIoU"] == pytest.approx(0.5)
    hist = np.array(result["confusion_matrix"])
    # the kept pixels, rows ground truth: road -> road, road, wall; sky -> sky, road (wall and terrain rows ignored)
    assert hist.sum() == 5 and hist[0, 0] == 2 and hist[0, 3] == 1 and hist[10, 10] == 1 and hist[10, 0] == 1
    # the flag needs a subset
    rc, _, err = run(compute_iou.main, compute_iou.get_args_parser, [gt_dir, pred_dir, "--ignore-other-classes"])
    assert rc == 2 and "--ignore-other-classes needs a class subset" in err


def test_evaluate_ignore_other_classes_equals_compute_iou(data, tmp_path):
    paths, snapshot, _, _ = data
    save = tmp_path / "pred"
    argv = ["--restore-from", snapshot, *data_argv(paths, save), "--gt-dir", paths.gt_dir, "--classes", "13"]
    rc, _, err = run(ev.main, ev.get_args_parser, [*argv, "--json", tmp_path / "default.json"])
    assert rc == 0, err
    rc, ignored, err = run(ev.main, ev.get_args_parser, [*argv, "--ignore-other-classes", "--json",
                                                         tmp_path / "ignored.json"])
    assert rc == 0, err
    rc, table, err = run(compute_iou.main, compute_iou.get_args_parser,
                         [paths.gt_dir, save, "--devkit-dir", paths.devkit_dir, "--classes", "13",
                          "--ignore-other-classes", "--num-workers", "1"])
    assert rc == 0, err
    lines = [line for line in table.splitlines() if line.startswith("===>")]
    assert [line for line in ignored.splitlines() if line.startswith("===>")] == lines
    # the matrix: the default one with the rows (ground truth) of the 6 classes outside the 13 zeroed; the
    # generated scenes have walls, fences, poles, terrain and trucks, so those rows held pixels
    default = np.array(json.loads((tmp_path / "default.json").read_text())["confusion_matrix"])
    kept = np.array(json.loads((tmp_path / "ignored.json").read_text())["confusion_matrix"])
    others = [3, 4, 5, 9, 14, 16]  # wall, fence, pole, terrain, truck, train
    assert default[others].sum() > 0
    expected = default.copy()
    expected[others] = 0
    np.testing.assert_array_equal(kept, expected)
    rc, _, err = run(ev.main, ev.get_args_parser, [*argv[:-2], "--ignore-other-classes"])
    assert rc == 2 and "--ignore-other-classes needs a class subset" in err
