"""A data file that breaks only when it is read (after the start-up checks) ends training with one clear line."""
from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch
from PIL import Image

import train_gta2cityscapes_multi as train
from dataset.checks import DatasetError
from dataset.gta5_dataset import GTA5DataSet
from tools.make_synthetic_data import make_synthetic_datasets


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_datasets(tmp_path_factory.mktemp("synth"), num_source=40, num_target_train=2, num_val=1,
                                   source_size=(48, 32), target_size=(48, 32), seed=4)


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


@pytest.mark.parametrize("workers", ["0", "1"])
def test_truncated_file_found_mid_run_is_one_clear_error(data, tmp_path, workers, capsys):
    source = tmp_path / "GTA5"
    (source / "images").mkdir(parents=True)
    (source / "labels").mkdir()
    for sub in ("images", "labels"):
        for f in (Path(data.gta5_root) / sub).iterdir():
            (source / sub / f.name).write_bytes(f.read_bytes())
    names = Path(data.gta5_list).read_text().split()
    _truncate(source / "images" / names[0])  # the header survives: only reading the pixels fails
    argv = ["--data-dir", str(source), "--data-list", str(data.gta5_list),
            "--data-dir-target", str(data.cityscapes_root), "--data-list-target", str(data.cityscapes_train_list),
            "--input-size", "32,32", "--input-size-target", "32,32", "--restore-from", "none",
            "--resnet-layers", "1,1,1,1", "--num-workers", workers, "--cpu", "--num-steps", "80",
            "--num-steps-stop", "80", "--save-pred-every", "1000", "--snapshot-dir", str(tmp_path / "snap")]
    torch.set_num_threads(1)
    rc = train.main(train.get_args_parser().parse_args(argv))
    err = capsys.readouterr().err
    assert rc == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("train_gta2cityscapes_multi.py: error: ")]
    assert len(lines) == 1, err
    assert str(source / "images" / names[0]) in lines[0]
    assert "truncated" in lines[0] and "--resume auto" in lines[0]
    assert "Traceback" not in err
    # The loader workers (which ignore SIGTERM) are gone: left alive, they would hang the interpreter's exit.
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]


def test_rgb_labels_refused_at_construction(data, tmp_path):
    """A label folder converted to RGB is found from a sample of headers when the dataset is built."""
    source = tmp_path / "GTA5"
    (source / "images").mkdir(parents=True)
    (source / "labels").mkdir()
    names = Path(data.gta5_list).read_text().split()
    for name in names:
        (source / "images" / name).write_bytes((Path(data.gta5_root) / "images" / name).read_bytes())
        Image.open(Path(data.gta5_root) / "labels" / name).convert("RGB").save(source / "labels" / name)
    with pytest.raises(DatasetError, match=r"mode 'RGB', expected 'P' or 'L'") as info:
        GTA5DataSet(source, data.gta5_list, crop_size=(32, 32))
    assert str(source / "labels") in str(info.value)
