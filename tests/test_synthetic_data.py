"""tools/make_synthetic_data.py: the real layouts, label encodings, learnable content, domain shift."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset.cityscapes_dataset import cityscapesDataSet
from dataset.gta5_dataset import GTA5DataSet
from tools.make_synthetic_data import SyntheticPaths, get_args_parser, main, make_synthetic_datasets

REPO = Path(__file__).resolve().parents[1]
ID2TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
            23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return make_synthetic_datasets(out, num_source=6, num_target_train=5, num_val=4, seed=0)


def read_lines(path):
    return path.read_text().splitlines()


def test_paths_and_layout(synth):
    assert isinstance(synth, SyntheticPaths)
    out = synth.gta5_root.parent
    assert synth.gta5_root == out / "GTA5"
    assert synth.cityscapes_root == out / "Cityscapes" / "data"
    assert synth.gta5_list == out / "lists" / "gta5_list" / "train.txt"
    assert synth.devkit_dir == out / "lists" / "cityscapes_list"
    assert synth.cityscapes_train_list == synth.devkit_dir / "train.txt"
    assert synth.cityscapes_val_list == synth.devkit_dir / "val.txt"
    assert synth.gt_dir == synth.cityscapes_root / "gtFine" / "val"
    for name in ("info.json", "val.txt", "label.txt", "train.txt"):
        assert (synth.devkit_dir / name).is_file()
    assert (synth.devkit_dir / "info.json").read_bytes() == (REPO / "dataset/cityscapes_list/info.json").read_bytes()


def test_gta5_files_and_list(synth):
    names = read_lines(synth.gta5_list)
    assert names == [f"{i:05d}.png" for i in range(1, 7)]
    for n in names:
        with Image.open(synth.gta5_root / "images" / n) as img:
            assert img.mode == "RGB" and img.size == (64, 36)
        with Image.open(synth.gta5_root / "labels" / n) as lab:
            assert lab.mode == "P" and lab.size == (64, 36)
            pal = lab.getpalette()
            assert pal[7 * 3 : 7 * 3 + 3] == [128, 64, 128]  # labelId 7 (road) shows the road colour
            assert pal[26 * 3 : 26 * 3 + 3] == [0, 0, 142]  # labelId 26 (car)
            assert pal[0:3] == [0, 0, 0]  # unlabeled
            ids = np.asarray(lab)
            assert ids.max() <= 33
            # the trap: the colours are not the indices
            assert not np.array_equal(np.asarray(lab.convert("L")), ids)


def test_cityscapes_files_and_lists(synth):
    train = read_lines(synth.cityscapes_train_list)
    val = read_lines(synth.cityscapes_val_list)
    labels = read_lines(synth.devkit_dir / "label.txt")
    pattern = re.compile(r"^([a-z]+)/\1_\d{6}_\d{6}_leftImg8bit\.png$")
    assert len(train) == 5 and len(val) == 4 and len(labels) == 4
    assert all(pattern.match(n) for n in train + val)
    assert {n.split("/")[0] for n in train} <= {"aachen", "bochum", "bremen", "cologne"}
    assert {n.split("/")[0] for n in val} == {"frankfurt", "lindau", "munster"}
    assert labels == [n.replace("_leftImg8bit.png", "_gtFine_labelIds.png") for n in val]
    for n in train:
        with Image.open(synth.cityscapes_root / "leftImg8bit" / "train" / n) as img:
            assert img.mode == "RGB" and img.size == (64, 32)
    for n, ln in zip(val, labels):
        with Image.open(synth.cityscapes_root / "leftImg8bit" / "val" / n) as img:
            assert img.mode == "RGB" and img.size == (64, 32)
        with Image.open(synth.gt_dir / ln) as lab:
            assert lab.mode == "L" and lab.size == (64, 32)
            assert np.asarray(lab).max() <= 33
    assert not (synth.cityscapes_root / "gtFine" / "train").exists()


def _gta5_arrays(synth):
    imgs, labs = [], []
    for n in read_lines(synth.gta5_list):
        imgs.append(np.asarray(Image.open(synth.gta5_root / "images" / n), dtype=np.float64))
        labs.append(np.asarray(Image.open(synth.gta5_root / "labels" / n)))
    return np.stack(imgs), np.stack(labs)


def _val_arrays(synth):
    imgs, labs = [], []
    for n, ln in zip(read_lines(synth.cityscapes_val_list), read_lines(synth.devkit_dir / "label.txt")):
        imgs.append(np.asarray(Image.open(synth.cityscapes_root / "leftImg8bit" / "val" / n), dtype=np.float64))
        labs.append(np.asarray(Image.open(synth.gt_dir / ln)))
    return np.stack(imgs), np.stack(labs)


def test_labels_have_scene_classes_and_ignored_ids(synth):
    _, labs = _gta5_arrays(synth)
    present = set(np.unique(labs).tolist())
    assert {7, 8, 11, 23, 26, 17} <= present  # road, sidewalk, building, sky, car, pole
    assert {0, 4} <= present and present & {1}  # unlabeled, static, ego vehicle: map to 255
    # sky on top, road at the bottom
    assert np.mean(labs[:, 0, :] == 23) > 0.5
    assert np.mean(np.isin(labs[:, -6, :], [7, 8, 26, 27, 28, 1])) > 0.5


def _nearest_mean_accuracy(train_img, train_lab, test_img, test_lab):
    classes = [k for k in ID2TRAIN if (train_lab == k).sum() > 20 and (test_lab == k).sum() > 0]
    means = np.stack([train_img[train_lab == k].mean(axis=0) for k in classes])
    sel = np.isin(test_lab, classes)
    px, truth = test_img[sel], test_lab[sel]
    pred = np.array(classes)[np.argmin(((px[:, None, :] - means[None]) ** 2).sum(-1), axis=1)]
    return float(np.mean(pred == truth))


def test_pixels_predict_labels_and_domains_differ(synth):
    s_img, s_lab = _gta5_arrays(synth)
    t_img, t_lab = _val_arrays(synth)
    # within a domain, a pixel's colour predicts its class (a tiny model can learn something)
    assert _nearest_mean_accuracy(s_img[:3], s_lab[:3], s_img[3:], s_lab[3:]) > 0.8
    assert _nearest_mean_accuracy(t_img[:2], t_lab[:2], t_img[2:], t_lab[2:]) > 0.6
    # the domain shift: the same class looks different (road: colour and texture)
    road_s, road_t = s_img[s_lab == 7], t_img[t_lab == 7]
    assert np.abs(road_s.mean(0) - road_t.mean(0)).max() > 20
    sat = lambda px: (px.max(-1) - px.min(-1)).mean()  # noqa: E731
    assert sat(s_img.reshape(-1, 3)) > sat(t_img.reshape(-1, 3)) + 10
    # a source-trained colour classifier does worse on the target than on the source
    cross = _nearest_mean_accuracy(s_img, s_lab, t_img, t_lab)
    same = _nearest_mean_accuracy(s_img[:3], s_lab[:3], s_img[3:], s_lab[3:])
    assert cross < same - 0.1


def test_seeded(tmp_path, synth):
    again = make_synthetic_datasets(tmp_path / "a", num_source=2, num_target_train=1, num_val=1, seed=0)
    other = make_synthetic_datasets(tmp_path / "b", num_source=2, num_target_train=1, num_val=1, seed=1)
    for n in ("00001.png", "00002.png"):
        a = np.asarray(Image.open(again.gta5_root / "images" / n))
        assert np.array_equal(a, np.asarray(Image.open(synth.gta5_root / "images" / n)))  # same seed, more images
        assert not np.array_equal(a, np.asarray(Image.open(other.gta5_root / "images" / n)))


def test_sizes_and_validation(tmp_path):
    p = make_synthetic_datasets(tmp_path, num_source=1, num_target_train=1, num_val=1,
                                source_size=(40, 22), target_size=(48, 24))
    with Image.open(p.gta5_root / "images" / "00001.png") as img:
        assert img.size == (40, 22)
    with Image.open(p.gt_dir / read_lines(p.devkit_dir / "label.txt")[0]) as lab:
        assert lab.size == (48, 24)
    with pytest.raises(ValueError, match="num_source"):
        make_synthetic_datasets(tmp_path, num_source=0)
    with pytest.raises(ValueError, match="source_size"):
        make_synthetic_datasets(tmp_path, source_size=(4, 4))


def test_loaders_read_generated_data(synth):
    ds = GTA5DataSet(synth.gta5_root, synth.gta5_list, crop_size=(32, 16))
    image, label, size, name = ds[0]
    assert image.shape == (3, 16, 32) and name == "00001.png"
    assert set(np.unique(label)) - set(range(19)) <= {255}
    cs = cityscapesDataSet(synth.cityscapes_root, synth.cityscapes_val_list, crop_size=(32, 16), return_label=True)
    assert cs[0][1].shape == (32, 64)


def test_cli(tmp_path, capsys):
    args = get_args_parser().parse_args(
        ["--out", str(tmp_path / "cli"), "--num-source", "2", "--num-target-train", "1", "--num-val", "1",
         "--source-size", "32,18", "--seed", "3"]
    )
    assert main(args) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "cli" / "GTA5") in out and "check_data.py" in out
    assert read_lines(tmp_path / "cli" / "lists" / "gta5_list" / "train.txt") == ["00001.png", "00002.png"]
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--out", "x", "--source-size", "32x18"])


def test_runs_as_a_script(tmp_path):
    res = subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_synthetic_data.py"), "--out", str(tmp_path / "s"),
         "--num-source", "1", "--num-target-train", "1", "--num-val", "1"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "s" / "GTA5" / "labels" / "00001.png").is_file()
