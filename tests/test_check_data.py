"""tools/check_data.py on generated data of every training setting, clean and with the defects real downloads
have."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset.synscapes_dataset import SYNSCAPES_LABEL_HINT
from dataset.synthia_dataset import SYNTHIA_LABEL_HINT
from tools.check_data import check_datasets, get_args_parser, main, write_clean_lists
from tools.make_synthetic_data import make_synthetic_datasets, make_synthetic_other_settings

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


# ---- the other settings: SYNTHIA, Synscapes, Cityscapes as the source, Cross-City as the target ---------------------

# Hand-written, not taken from dataset/labels.py: SYNTHIA's README class ids and the official cityscapesScripts
# labelIds, each -> Cityscapes trainId.
SYNTHIA_TO_TRAIN = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12, 8: 13,
                    18: 14, 19: 15, 20: 16, 12: 17, 11: 18}
LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                  26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


@pytest.fixture
def other(tmp_path):
    """GTA5/Cityscapes (with gtFine/train, for Cityscapes as the source) and SYNTHIA, Synscapes, Cross-City Rome."""
    base = make_synthetic_datasets(tmp_path / "d", num_source=1, num_target_train=3, num_val=1, seed=4,
                                   cityscapes_train_labels=True)
    more = make_synthetic_other_settings(tmp_path / "d", num_source=5, num_target_train=3, num_test=3,
                                         synthia_size=(40, 24), synscapes_size=(48, 24), crosscity_size=(40, 20),
                                         city="Rome", seed=4)
    return base, more


def setting_cli(base, more, setting, *extra):
    """The command line of one setting on the generated data."""
    flags = {
        "synthia": ["--source", "synthia", "--data-dir", str(more.synthia_root), "--skip-target"],
        "synscapes": ["--source", "synscapes", "--data-dir", str(more.synscapes_root), "--skip-target"],
        "crosscity": ["--target", "crosscity", "--city", "Rome", "--data-dir", str(base.cityscapes_root),
                      "--data-list", str(base.cityscapes_train_list), "--data-dir-target", str(more.crosscity_root)],
    }[setting]
    return [*flags, "--workers", "2", *extra]


def run_setting(base, more, setting, *extra):
    return main(get_args_parser().parse_args(setting_cli(base, more, setting, *extra)))


def expected_summary(train_ids: list[np.ndarray]) -> str:
    """"N of 19 classes present, x% of pixels ignored" from trainId arrays (255: ignored)."""
    values = np.concatenate([t.ravel() for t in train_ids])
    present = len({int(v) for v in values if v != 255})
    return f"{present} of 19 classes present, {100.0 * np.mean(values == 255):.1f}% of pixels ignored"


def synthia_train_ids(path):
    import cv2

    class_ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[:, :, 2]  # OpenCV: B, G, R = the PNG's 3rd, 2nd, 1st
    return np.vectorize(lambda v: SYNTHIA_TO_TRAIN.get(int(v), 255))(class_ids)


def labelid_train_ids(path):
    return np.vectorize(lambda v: LABEL_TO_TRAIN.get(int(v), 255))(np.asarray(Image.open(path)))


def test_other_settings_clean_data_pass(other, capsys):
    base, more = other
    labels = sorted((more.synthia_root / "GT" / "LABELS").iterdir())
    assert run_setting(base, more, "synthia") == 0
    out = capsys.readouterr().out
    assert f"every image of {more.synthia_root / 'RGB'}" in out and "5 images found, 5 usable" in out
    assert expected_summary([synthia_train_ids(p) for p in labels]) in out
    assert "Summary: 0 error(s), 0 warning(s). OK" in out

    assert run_setting(base, more, "synscapes") == 0
    out = capsys.readouterr().out
    classes = sorted((more.synscapes_root / "img" / "class").iterdir())
    assert "== Synscapes" in out and "5 images found, 5 usable" in out and "48x24 (5)" in out
    assert expected_summary([labelid_train_ids(p) for p in classes]) in out

    assert run_setting(base, more, "crosscity") == 0
    out = capsys.readouterr().out
    assert "== Cityscapes (source)" in out and "== Cross-City Rome train" in out and "== Cross-City Rome test" in out
    gt = sorted(more.crosscity_gt_dir.iterdir())
    assert len(gt) == 3 and expected_summary([labelid_train_ids(p) for p in gt]) in out
    report = check_datasets(base.cityscapes_root, more.crosscity_root, base.cityscapes_train_list,
                            target="crosscity", city="Rome", workers=2)
    assert report.ok and [(s.title, s.entries, s.usable) for s in report.sections] == [
        ("Cityscapes (source)", 3, 3), ("Cross-City Rome train", 3, 3), ("Cross-City Rome test", 3, 3)]


def test_synthia_defects(other, capsys):
    import cv2

    base, more = other
    rgb, gt = more.synthia_root / "RGB", more.synthia_root / "GT" / "LABELS"
    (gt / "0000000.png").unlink()  # missing label
    Image.open(gt / "0000001.png").save(gt / "0000001.png")  # re-saved by an 8-bit tool: 8-bit RGB
    cv2.imwrite(str(gt / "0000002.png"), cv2.imread(str(gt / "0000002.png"), cv2.IMREAD_UNCHANGED)[:, :, 2]
                .astype(np.uint8))  # the class ids kept, as an 8-bit grey PNG
    truncate(gt / "0000003.png")
    truncate(rgb / "0000004.png")

    report = check_datasets(more.synthia_root, None, None, source="synthia", workers=2)
    s = report.section("SYNTHIA")
    assert s.problems["missing"] == [str(gt / "0000000.png")]
    assert s.count("label_format") == 2 and s.count("label_mode") == 0
    rgb8, grey8 = sorted(s.problems["label_format"])
    assert str(gt / "0000001.png") in rgb8 and "8-bit" in rgb8 and "3 channel" in rgb8
    assert str(gt / "0000002.png") in grey8 and "8-bit" in grey8 and "1 channel" in grey8
    unreadable = s.problems["unreadable"]
    assert len(unreadable) == 2
    assert all(any(str(p) in m for m in unreadable) for p in (gt / "0000003.png", rgb / "0000004.png"))
    assert s.errors == 5 and s.usable == 0 and not report.ok

    assert run_setting(base, more, "synthia") == 1
    out = capsys.readouterr().out
    assert "2 labels not in the dataset's label format" in out
    assert out.count(SYNTHIA_LABEL_HINT) == 1  # the advice, once under the category
    assert "Summary: 5 error(s), 0 warning(s). FAILED" in out
    # headers only: no decoding, so no format or truncation check, but every label's existence
    fast = check_datasets(more.synthia_root, None, None, source="synthia", workers=2, decode=False).section("SYNTHIA")
    assert fast.count("missing") == 1 and fast.count("label_format") == 0


def test_synthia_clean_list_trains_the_rest(other, tmp_path):
    base, more = other
    (more.synthia_root / "GT" / "LABELS" / "0000002.png").unlink()
    written = write_clean_lists(check_datasets(more.synthia_root, None, None, source="synthia", workers=2),
                                tmp_path / "clean")
    assert written == [tmp_path / "clean" / "synthia_rand_cityscapes.txt"]
    assert written[0].read_text().split() == ["0000000.png", "0000001.png", "0000003.png", "0000004.png"]
    assert run_setting(base, more, "synthia", "--data-list", str(written[0])) == 0


def test_synscapes_defects(other):
    base, more = other
    rgb, cls = more.synscapes_root / "img" / "rgb", more.synscapes_root / "img" / "class"
    truncate(rgb / "2.png")
    Image.open(cls / "3.png").convert("RGB").save(cls / "3.png")
    ids = np.asarray(Image.open(cls / "4.png")).copy()
    ids[:6, :] = 90  # a quarter of the pixels: not labelIds
    Image.fromarray(ids, mode="L").save(cls / "4.png")
    s = check_datasets(more.synscapes_root, None, None, source="synscapes", workers=2).section("Synscapes")
    assert s.count("unreadable") == 1 and str(rgb / "2.png") in s.problems["unreadable"][0]
    assert s.count("label_mode") == 1 and str(cls / "3.png") in s.problems["label_mode"][0]
    assert "'RGB'" in s.problems["label_mode"][0] and s.label_hint == SYNSCAPES_LABEL_HINT
    assert s.count("label_values") == 1 and str(cls / "4.png") in s.problems["label_values"][0]
    assert s.errors == 3 and s.usable == 2


def test_crosscity_defects(other, capsys):
    base, more = other
    city = more.crosscity_root / "Rome"
    test_names = more.crosscity_test_list.read_text().split()
    label = more.crosscity_gt_dir / test_names[1].replace(".png", "_eval.png")
    label.unlink()
    truncate(city / "Images" / "Train" / "pano_00001_0_0.png")
    assert run_setting(base, more, "crosscity") == 1
    out = capsys.readouterr().out
    assert "Summary: 2 error(s), 0 warning(s). FAILED" in out
    report = check_datasets(base.cityscapes_root, more.crosscity_root, base.cityscapes_train_list,
                            target="crosscity", city="Rome", workers=2)
    test = report.section("Cross-City Rome test")
    assert test.problems["missing"] == [str(label)] and test.errors == 1 and test.usable == 2
    train = report.section("Cross-City Rome train")
    assert train.count("unreadable") == 1 and "pano_00001_0_0.png" in train.problems["unreadable"][0]
    assert report.section("Cityscapes (source)").errors == 0

    # a bare-id list (as published with other code) resolves to the files on disk; a missing image is named
    listed = more.crosscity_train_list.parent / "ids.txt"
    listed.write_text("pano_00000_0_0\npano_00002_0_0\npano_00009_0_0\n")
    train = check_datasets(None, more.crosscity_root, data_list_target=listed, data_list_val=None,
                           target="crosscity", city="Rome", workers=2).section("Cross-City Rome train")
    assert train.entries == 3 and train.problems["missing"] == [str(city / "Images" / "Train" / "pano_00009_0_0.png")]


def test_crosscity_layout_problems(other, tmp_path):
    import shutil

    base, more = other
    report = check_datasets(None, more.crosscity_root, target="crosscity", city="Tokyo")
    setup = report.section("Cross-City Tokyo train").problems["setup"]
    assert len(setup) == 1 and "Tokyo/Images/Train does not exist" in setup[0] and "NTHU Cross-City" in setup[0]
    report = check_datasets(None, tmp_path / "nowhere", target="crosscity", city="Rome")
    assert "does not exist" in report.section("Cross-City").problems["setup"][0]
    assert "NTHU Cross-City" in report.section("Cross-City").problems["setup"][0]

    shutil.rmtree(more.crosscity_gt_dir)  # test images without labels: checked, labels not (a warning)
    report = check_datasets(None, more.crosscity_root, target="crosscity", city="Rome", workers=2)
    test = report.section("Cross-City Rome test")
    assert report.ok and test.usable == 3 and test.count("dataset") == 1
    assert "labels not checked" in test.problems["dataset"][0]
    shutil.rmtree(more.crosscity_root / "Rome" / "Images" / "Test")  # only needed for evaluation
    report = check_datasets(None, more.crosscity_root, target="crosscity", city="Rome", workers=2)
    assert report.ok and "needed only for evaluation" in report.section("Cross-City Rome test").skipped


def test_cityscapes_source_missing_label(other):
    base, more = other
    names = base.cityscapes_train_list.read_text().split()
    gt = base.cityscapes_root / "gtFine" / "train" / names[2].replace("_leftImg8bit.png", "_gtFine_labelIds.png")
    gt.unlink()
    report = check_datasets(base.cityscapes_root, None, base.cityscapes_train_list, source="cityscapes", workers=2)
    s = report.section("Cityscapes (source)")
    assert s.problems["missing"] == [str(gt)] and s.usable == 2


def test_setting_defaults_and_bad_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no data here: every section reports its default root (or list) as missing

    def headers(*argv):
        assert main(get_args_parser().parse_args([*argv, "--workers", "1"])) == 1
        return [line for line in capsys.readouterr().out.splitlines() if line.startswith("==")]

    # the default lists are not here: the repository's, as the training script finds them from any folder
    gta5, cityscapes = REPO / "dataset/gta5_list/train.txt", REPO / "dataset/cityscapes_list/train.txt"
    assert headers() == [f"== GTA5 (root data/GTA5, list {gta5})",
                         f"== Cityscapes train (root data/Cityscapes/data, list {cityscapes})"]
    assert headers("--source", "synthia") == ["== SYNTHIA-RAND-CITYSCAPES (root data/SYNTHIA)",
                                              f"== Cityscapes train (root data/Cityscapes/data, list {cityscapes})"]
    assert headers("--source", "synscapes", "--skip-cityscapes") == ["== Synscapes (root data/Synscapes)"]
    assert headers("--target", "crosscity", "--city", "Rome") == [
        f"== Cityscapes (source) (root data/Cityscapes/data, list {cityscapes})",
        "== Cross-City Rome train (root data/NTHU_Datasets)"]
    assert headers("--target", "crosscity", "--city", "Rio", "--skip-source", "--data-dir-target", "x",
                   "--data-list-target", "l.txt") == ["== Cross-City Rio train (root x, list l.txt)"]
    assert headers("--skip-gta5", "--data-dir-target", "cs") == [f"== Cityscapes train (root cs, list {cityscapes})"]

    for argv, message in ((["--target", "crosscity"], "--target crosscity needs --city"),
                          (["--city", "Rome"], "--city Rome applies to --target crosscity only")):
        assert main(get_args_parser().parse_args(argv)) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        get_args_parser().parse_args(["--target", "crosscity", "--city", "Paris"])
    assert exc.value.code == 2
    with pytest.raises(ValueError, match="needs --city"):
        check_datasets(target="crosscity")
