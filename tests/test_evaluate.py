"""evaluate_cityscapes.py end to end on CPU: a tiny DeeplabMulti on generated Cityscapes-layout data, its PNGs
against an independent straightforward computation written here, the colour palette, --gt-dir against
compute_iou.py, TTA, overlays, and bad input (mismatched checkpoint, missing images, unwritable --save)."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import compute_iou
import evaluate_cityscapes as ev
from model.deeplab import Res_Deeplab
from model.deeplab_multi import DeeplabMulti
from tools.make_synthetic_data import make_synthetic_datasets

TARGET_WH = (96, 48)  # the generated Cityscapes resolution (and gtFine's): the saved predictions' size
INPUT_WH = (64, 32)  # network input (the original halves Cityscapes; here 2/3, so upsampling is not trivial)
LAYERS = (1, 1, 1, 1)
NUM_VAL = 5
BGR_MEAN = np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float32)  # the paper's Caffe mean


def tiny_model(seed: int = 0) -> DeeplabMulti:
    """A small DeeplabMulti whose main classifier is scaled up so its predictions vary over the image."""
    torch.manual_seed(seed)
    model = DeeplabMulti(num_classes=19, layers=LAYERS)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("layer6") and name.endswith("weight"):
                p.mul_(300)
    return model.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    paths = make_synthetic_datasets(root / "data", num_source=1, num_target_train=1, num_val=NUM_VAL,
                                    target_size=TARGET_WH, seed=3)
    ckpt = root / "tiny.pth"
    torch.save(tiny_model().state_dict(), ckpt)
    return paths, ckpt, root


def base_argv(paths, ckpt, save) -> list[str]:
    return ["--restore-from", str(ckpt), "--data-dir", str(paths.cityscapes_root),
            "--data-list", str(paths.cityscapes_val_list), "--save", str(save), "--cpu",
            "--input-size", ",".join(map(str, INPUT_WH)), "--output-size", ",".join(map(str, TARGET_WH)),
            "--resnet-layers", ",".join(map(str, LAYERS)), "--num-workers", "0"]


def run_eval(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = ev.main(ev.get_args_parser().parse_args(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def default_run(setup):
    """One run with --gt-dir and --json, batch size 2 (5 images: a partial last batch)."""
    paths, ckpt, root = setup
    save = root / "result"
    rc, out, err = run_eval(base_argv(paths, ckpt, save) + ["--batch-size", "2", "--gt-dir", str(paths.gt_dir),
                                                            "--json", str(root / "eval.json")])
    assert rc == 0, err
    return save, out, root / "eval.json"


def val_names(paths) -> list[str]:
    return [line for line in Path(paths.cityscapes_val_list).read_text().splitlines() if line.strip()]


def reference_probs(model, paths, name: str, flip: bool = False, scales=(1.0,)) -> torch.Tensor:
    """Straightforwardly: PIL bicubic resize, RGB -> BGR, minus mean, the main output, upsample, (softmax)."""
    img = Image.open(Path(paths.cityscapes_root) / "leftImg8bit" / "val" / name).convert("RGB")
    arr = np.asarray(img.resize(INPUT_WH, Image.BICUBIC), dtype=np.float32)[:, :, ::-1] - BGR_MEAN
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]
    size = (TARGET_WH[1], TARGET_WH[0])
    with torch.no_grad():
        if not flip and tuple(scales) == (1.0,):
            return F.interpolate(model(x)[1], size=size, mode="bilinear", align_corners=True)[0]
        total = 0
        views = 0
        for s in scales:
            xs = x if s == 1.0 else F.interpolate(x, size=(round(s * x.shape[2]), round(s * x.shape[3])),
                                                  mode="bilinear", align_corners=True)
            for f in ([False, True] if flip else [False]):
                out = model(torch.flip(xs, [3]) if f else xs)[1]
                out = torch.flip(out, [3]) if f else out
                total = total + torch.softmax(F.interpolate(out, size=size, mode="bilinear", align_corners=True), 1)
                views += 1
        return total[0] / views


def reference_label(model, paths, name, **kw) -> np.ndarray:
    return reference_probs(model, paths, name, **kw).argmax(0).numpy().astype(np.uint8)


def test_predictions_equal_an_independent_computation(setup, default_run):
    paths, ckpt, _ = setup
    save, out, _ = default_run
    model = DeeplabMulti(num_classes=19, layers=LAYERS)
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    names = val_names(paths)
    assert len(names) == NUM_VAL
    seen = set()
    for name in names:
        saved = Image.open(save / name.split("/")[-1])
        assert saved.mode == "L" and saved.size == TARGET_WH
        got = np.array(saved)
        want = reference_label(model, paths, name)
        assert (got == want).mean() >= 0.999, name
        seen.update(np.unique(got).tolist())
    assert len(seen) >= 3  # the test model really predicts several classes
    assert out.splitlines()[0] == "0 processd"  # the original's progress line


def test_colour_pngs_use_the_cityscapes_palette(setup, default_run):
    paths, _, _ = setup
    save, _, _ = default_run
    info = json.loads((Path(paths.devkit_dir) / "info.json").read_text())
    palette = np.array(info["palette"][:19], dtype=np.uint8)
    for name in val_names(paths):
        stem = name.split("/")[-1].split(".")[0]
        colour = Image.open(save / f"{stem}_color.png")
        assert colour.mode == "P" and colour.size == TARGET_WH
        label = np.array(Image.open(save / name.split("/")[-1]))
        np.testing.assert_array_equal(np.array(colour), label)  # palette indices are the trainIds
        np.testing.assert_array_equal(np.array(colour.convert("RGB")), palette[label])
        assert colour.getpalette()[:57] == palette.reshape(-1).tolist()


def test_gt_dir_table_equals_compute_iou(setup, default_run):
    paths, _, _ = setup
    save, out, json_path = default_run
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ious = compute_iou.compute_mIoU(str(paths.gt_dir), str(save), str(paths.devkit_dir), progress=False)
    table = buf.getvalue().splitlines()[-20:]
    assert table[-1].startswith("===> mIoU: ")
    assert out.splitlines()[-20:] == table
    result = json.loads(json_path.read_text())
    assert result["num_images"] == NUM_VAL
    assert result["mIoU"] == pytest.approx(float(np.nanmean(ious)), abs=1e-15)
    names = json.loads((Path(paths.devkit_dir) / "info.json").read_text())["label"]
    for name, v in zip(names, ious):
        assert result["per_class_iou"][name] == (None if np.isnan(v) else pytest.approx(v, abs=1e-15))


def test_batch_size_does_not_change_the_predictions(setup, default_run, tmp_path):
    paths, ckpt, _ = setup
    save, _, _ = default_run
    rc, _, err = run_eval(base_argv(paths, ckpt, tmp_path / "b3") + ["--batch-size", "3"])
    assert rc == 0, err
    for name in val_names(paths):
        base = name.split("/")[-1]
        np.testing.assert_array_equal(np.array(Image.open(tmp_path / "b3" / base)), np.array(Image.open(save / base)))


def test_flip_and_multiscale_tta(setup, tmp_path):
    paths, ckpt, _ = setup
    rc, _, err = run_eval(base_argv(paths, ckpt, tmp_path / "tta") + ["--flip", "--scales", "1.0,0.75"])
    assert rc == 0, err
    model = DeeplabMulti(num_classes=19, layers=LAYERS)
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    for name in val_names(paths):
        got = np.array(Image.open(tmp_path / "tta" / name.split("/")[-1]))
        want = reference_label(model, paths, name, flip=True, scales=(1.0, 0.75))
        assert (got == want).mean() >= 0.999


def test_amp_and_overlay(setup, default_run, tmp_path):
    paths, ckpt, _ = setup
    save, _, _ = default_run
    rc, _, err = run_eval(base_argv(paths, ckpt, tmp_path / "amp") + ["--amp", "--save-overlay"])
    assert rc == 0, err
    for name in val_names(paths):
        base = name.split("/")[-1]
        stem = base.split(".")[0]
        amp = np.array(Image.open(tmp_path / "amp" / base))
        assert (amp == np.array(Image.open(save / base))).mean() > 0.5  # bfloat16: close, not equal
        overlay = np.array(Image.open(tmp_path / "amp" / f"{stem}_overlay.png").convert("RGB")).astype(int)
        image = np.array(Image.open(Path(paths.cityscapes_root) / "leftImg8bit" / "val" / name).convert("RGB"))
        colour = np.array(Image.open(tmp_path / "amp" / f"{stem}_color.png").convert("RGB"))
        assert overlay.shape == (TARGET_WH[1], TARGET_WH[0], 3)
        assert np.abs(overlay - (image.astype(int) + colour.astype(int)) / 2).max() <= 1


def test_mismatched_checkpoint_is_a_clear_error(setup, tmp_path):
    paths, _, _ = setup
    torch.manual_seed(0)
    oracle = tmp_path / "oracle.pth"
    torch.save(Res_Deeplab(num_classes=19, layers=LAYERS).state_dict(), oracle)
    save = tmp_path / "out"
    argv = base_argv(paths, oracle, save)
    rc, out, err = run_eval(argv)
    assert rc != 0
    assert "does not fit --model DeeplabMulti" in err and str(oracle) in err
    assert "Oracle" in err  # the hint names the model these weights belong to
    assert not list(save.glob("*.png")) and "processd" not in out
    # the right --model loads them
    rc, _, err = run_eval(argv + ["--model", "Oracle"])
    assert rc == 0, err
    # a checkpoint for another number of classes
    torch.save(DeeplabMulti(num_classes=7, layers=LAYERS).state_dict(), tmp_path / "c7.pth")
    rc, _, err = run_eval(base_argv(paths, tmp_path / "c7.pth", tmp_path / "c7"))
    assert rc != 0
    assert "shape mismatches" in err and "pass --num-classes 7" in err and "--num-classes 19)" in err


def test_missing_images_are_reported_before_inference(setup, tmp_path):
    paths, ckpt, _ = setup
    names = val_names(paths)
    bad_list = tmp_path / "val.txt"
    bad_list.write_text("\n".join(names + ["lindau/lindau_999999_000019_leftImg8bit.png",
                                           "ulm/ulm_000001_000019_leftImg8bit.png"]) + "\n")
    argv = base_argv(paths, ckpt, tmp_path / "out")
    argv[argv.index("--data-list") + 1] = str(bad_list)
    rc, out, err = run_eval(argv)
    assert rc != 0 and out == ""
    assert "lindau_999999_000019_leftImg8bit.png" in err and "ulm_000001_000019_leftImg8bit.png" in err
    assert not list((tmp_path / "out").glob("*.png"))


def test_missing_ground_truth_is_reported_before_inference(setup, tmp_path):
    paths, ckpt, _ = setup
    gt = tmp_path / "gt"
    for p in Path(paths.gt_dir).rglob("*.png"):
        (gt / p.parent.name).mkdir(parents=True, exist_ok=True)
        (gt / p.parent.name / p.name).write_bytes(p.read_bytes())
    victim = sorted(gt.rglob("*.png"))[0]
    victim.unlink()
    rc, out, err = run_eval(base_argv(paths, ckpt, tmp_path / "out") + ["--gt-dir", str(gt)])
    assert rc != 0 and out == ""
    assert "1 of 5 ground-truth files are missing" in err and victim.name in err
    rc, out, err = run_eval(base_argv(paths, ckpt, tmp_path / "out") + ["--gt-dir", str(paths.gt_dir),
                                                                        "--output-size", "64,32"])
    assert rc != 0 and "do not match --output-size 64,32" in err


def test_unwritable_save_dir(setup, tmp_path):
    paths, ckpt, _ = setup
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc, out, err = run_eval(base_argv(paths, ckpt, blocker / "sub"))
    assert rc != 0 and out == ""
    assert "--save" in err and str(blocker / "sub") in err


def test_default_restore_from_is_the_released_model_of_model():
    parser = ev.get_args_parser()
    for model, url in (("DeeplabMulti", "GTA2Cityscapes_multi-ed35151c.pth"),
                       ("DeeplabVGG", "GTA2Cityscapes_vgg-ac4ac9f6.pth"),
                       ("Oracle", "cityscapes_oracle-b7b9934.pth")):
        assert ev.resolve_restore_from(parser.parse_args(["--model", model])).endswith("/" + url)
    args = parser.parse_args([])
    assert (args.data_dir, args.data_list, args.ignore_label, args.set, args.save, args.cpu) == \
        ("./data/Cityscapes/data", "./dataset/cityscapes_list/val.txt", 255, "val", "./result/cityscapes", False)
    assert (args.model, args.num_classes, args.resnet_layers, args.gpu) == (None, None, None, None)  # filled later
    ev.fill_model_flags(args)  # no --restore-from: the original's defaults
    assert (args.model, args.num_classes, tuple(args.resnet_layers)) == ("DeeplabMulti", 19, (3, 4, 23, 3))
    assert (tuple(args.input_size), tuple(args.output_size), args.batch_size, args.flip, args.amp) == \
        ((1024, 512), (2048, 1024), 1, False, False)
    with pytest.raises(ValueError, match="evaluation needs trained weights"):
        ev.resolve_restore_from(parser.parse_args(["--restore-from", "none"]))
