"""tools/check_data.py on generated data, clean and with the defects real downloads have."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.check_data import check_datasets, get_args_parser, main, write_clean_lists
from tools.make_synthetic_data import make_synthetic_datasets

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def synth(tmp_path):
    return make_synthetic_datasets(tmp_path / "d", num_source=6, num_target_train=4, num_val=3, seed=2)


def cli_args(p, *extra):
    return [
        "--data-dir", str(p.gta5_root), "--data-list", str(p.gta5_list),
        "--data-dir-target", str(p.cityscapes_root), "--data-list-target", str(p.cityscapes_train_list),
        "--data-list-val", str(p.cityscapes_val_list), "--workers", "2", *extra,
    ]


def run_main(p, *extra):
    return main(get_args_parser().parse_args(cli_args(p, *extra)))


def check(p, **kw):
    return check_datasets(p.gta5_root, p.cityscapes_root, p.gta5_list, p.cityscapes_train_list,
                          p.cityscapes_val_list, workers=2, **kw)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_clean_data_passes(synth, capsys):
    report = check(synth)
    assert report.ok and report.errors == 0 and report.warnings == 0
    assert [s.title for s in report.sections] == ["GTA5", "Cityscapes train", "Cityscapes val"]
    assert report.section("GTA5").entries == 6 and report.section("GTA5").usable == 6
    assert report.section("Cityscapes val").usable == 3
    assert run_main(synth) == 0
    out = capsys.readouterr().out
    assert "Summary: 0 error(s), 0 warning(s). OK" in out and "64x36 (6)" in out


def test_injected_defects(synth, capsys):
    g, cs = synth.gta5_root, synth.cityscapes_root
    (g / "images" / "00002.png").unlink()  # missing
    truncate(g / "labels" / "00003.png")  # truncated
    Image.open(g / "labels" / "00004.png").convert("RGB").save(g / "labels" / "00004.png")  # RGB label
    lab = Image.open(g / "labels" / "00005.png")
    lab.resize((64, 38), Image.Resampling.NEAREST).save(g / "labels" / "00005.png")  # 2 px: warning
    lab = Image.open(g / "labels" / "00006.png")
    lab.resize((32, 18), Image.Resampling.NEAREST).save(g / "labels" / "00006.png")  # half size: error
    train_names = synth.cityscapes_train_list.read_text().split()
    truncate(cs / "leftImg8bit" / "train" / train_names[1])
    val_names = synth.cityscapes_val_list.read_text().split()
    gt = cs / "gtFine" / "val" / val_names[0].replace("_leftImg8bit.png", "_gtFine_labelIds.png")
    gt.unlink()

    report = check(synth)
    assert not report.ok
    gta = report.section("GTA5")
    assert gta.count("missing") == 1 and "00002.png" in gta.problems["missing"][0]
    assert gta.count("unreadable") == 1 and "00003.png" in gta.problems["unreadable"][0]
    assert gta.count("label_mode") == 1 and "00004.png" in gta.problems["label_mode"][0]
    assert "'RGB'" in gta.problems["label_mode"][0]
    assert gta.count("size_mismatch_few_px") == 1 and "00005.png" in gta.problems["size_mismatch_few_px"][0]
    assert gta.count("size_mismatch") == 1 and "00006.png" in gta.problems["size_mismatch"][0]
    assert gta.errors == 4 and gta.warnings == 1 and gta.usable == 2  # 00001 and 00005 usable
    train = report.section("Cityscapes train")
    assert train.count("unreadable") == 1 and train_names[1].split("/")[1] in train.problems["unreadable"][0]
    assert train.errors == 1
    val = report.section("Cityscapes val")
    assert val.count("missing") == 1 and gt.name in val.problems["missing"][0]
    assert report.errors == 6

    assert run_main(synth) == 1
    out = capsys.readouterr().out
    assert "1 missing files" in out and "1 labels whose mode is not 'P' or 'L'" in out
    assert "palette" in out  # the advice for RGB labels
    assert "WARNING 1 image/label size mismatches of a few pixels" in out
    assert "Summary: 6 error(s), 1 warning(s). FAILED" in out


def test_size_warning_alone_passes_unless_strict(synth):
    lab = Image.open(synth.gta5_root / "labels" / "00001.png")
    lab.resize((63, 36), Image.Resampling.NEAREST).save(synth.gta5_root / "labels" / "00001.png")
    report = check(synth)
    assert report.ok and report.warnings == 1
    assert run_main(synth) == 0
    assert run_main(synth, "--strict") == 1


def test_cityscapes_val_size_mismatch_is_an_error(synth):
    names = synth.cityscapes_val_list.read_text().split()
    gt = synth.gt_dir / names[1].replace("_leftImg8bit.png", "_gtFine_labelIds.png")
    Image.open(gt).resize((64, 31), Image.Resampling.NEAREST).save(gt)
    val = check(synth).section("Cityscapes val")
    assert val.count("size_mismatch") == 1 and val.count("size_mismatch_few_px") == 0


def _write_label(path, ids):
    img = Image.fromarray(ids.astype(np.uint8), mode="L").convert("P")
    img.putpalette([0] * 768)
    img.save(path)


def test_label_values_outside_labelids(synth):
    g = synth.gta5_root / "labels"
    ids = np.asarray(Image.open(g / "00001.png")).copy()
    ids[:10, :] = 120  # many pixels: error
    _write_label(g / "00001.png", ids)
    ids = np.asarray(Image.open(g / "00002.png")).copy()
    ids[0, 0] = 40  # one pixel: warning
    _write_label(g / "00002.png", ids)
    gta = check(synth).section("GTA5")
    assert gta.count("label_values") == 1 and "00001.png" in gta.problems["label_values"][0]
    assert "120" in gta.problems["label_values"][0]
    assert gta.count("label_values_few") == 1 and "00002.png" in gta.problems["label_values_few"][0]


def test_trainid_files_instead_of_labelids_warned(synth):
    for p in (synth.gta5_root / "labels").iterdir():
        ids = np.asarray(Image.open(p))
        lut = np.full(256, 255, np.uint8)
        for k, v in {7: 0, 8: 1, 11: 2, 23: 10, 26: 13, 17: 5}.items():
            lut[k] = v
        _write_label(p, lut[ids])
    gta = check(synth).section("GTA5")
    assert gta.count("dataset") == 1 and "trainId" in gta.problems["dataset"][0]


def test_missing_roots_and_lists(tmp_path, synth, capsys):
    report = check_datasets(tmp_path / "noGTA", tmp_path / "noCS", synth.gta5_list, synth.cityscapes_train_list)
    assert not report.ok
    assert "noGTA does not exist" in report.section("GTA5").problems["setup"][0]
    assert "download" in report.section("GTA5").problems["setup"][0]
    assert "noCS does not exist" in report.section("Cityscapes train").problems["setup"][0]
    report = check_datasets(synth.gta5_root, None, tmp_path / "nolist.txt")
    assert "nolist.txt does not exist" in report.section("GTA5").problems["setup"][0]
    assert [s.title for s in report.sections] == ["GTA5"]


def test_val_section_skipped_without_val_images(synth):
    import shutil

    shutil.rmtree(synth.cityscapes_root / "leftImg8bit" / "val")
    shutil.rmtree(synth.cityscapes_root / "gtFine")
    report = check(synth)
    assert report.ok
    assert "does not exist" in report.section("Cityscapes val").skipped


def test_no_decode_and_max_entries(synth):
    truncate(synth.gta5_root / "images" / "00006.png")
    (synth.gta5_root / "labels" / "00005.png").unlink()
    assert check(synth, decode=False).section("GTA5").count("unreadable") == 0  # headers only
    limited = check(synth, max_entries=2).section("GTA5")
    assert limited.count("missing") == 1 and limited.count("unreadable") == 0  # existence: all entries
    full = check(synth).section("GTA5")
    assert full.count("unreadable") == 1 and full.count("missing") == 1


def test_write_clean_lists(synth, tmp_path):
    (synth.gta5_root / "images" / "00002.png").unlink()
    truncate(synth.gta5_root / "labels" / "00004.png")
    written = write_clean_lists(check(synth), tmp_path / "clean")
    gta = (tmp_path / "clean" / "gta5.txt").read_text().split()
    assert gta == ["00001.png", "00003.png", "00005.png", "00006.png"]
    assert tmp_path / "clean" / "cityscapes_train.txt" in written
    assert len((tmp_path / "clean" / "cityscapes_train.txt").read_text().split()) == 4


def test_runs_as_a_script(synth):
    (synth.gta5_root / "labels" / "00003.png").unlink()
    res = subprocess.run([sys.executable, str(REPO / "tools" / "check_data.py"), *cli_args(synth)],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 1, res.stderr
    assert "00003.png" in res.stdout and "1 error(s)" in res.stdout
