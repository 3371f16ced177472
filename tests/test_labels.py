"""dataset/labels.py against the official Cityscapes tables, written out here by hand."""
import json

import numpy as np
import pytest
from PIL import Image

from dataset import labels

# Official cityscapesScripts labels table: labelId -> trainId for the 19 evaluated classes.
EXPECTED_LABEL2TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}


def test_label2train_matches_official_table():
    lut = labels.LABEL2TRAIN
    assert lut.shape == (256,) and lut.dtype == np.uint8
    for label_id in range(256):
        assert lut[label_id] == EXPECTED_LABEL2TRAIN.get(label_id, 255), label_id


def test_label2train_is_read_only():
    with pytest.raises(ValueError):
        labels.LABEL2TRAIN[0] = 3


def test_class_names_palette_mean():
    assert labels.NUM_CLASSES == 19
    assert len(labels.CLASS_NAMES) == 19
    assert labels.CLASS_NAMES[0] == "road" and labels.CLASS_NAMES[10] == "sky" and labels.CLASS_NAMES[18] == "bicycle"
    assert labels.PALETTE.shape == (19, 3) and labels.PALETTE.dtype == np.uint8
    assert tuple(labels.PALETTE[0]) == (128, 64, 128)  # road
    assert tuple(labels.PALETTE[10]) == (70, 130, 180)  # sky
    assert tuple(labels.PALETTE[13]) == (0, 0, 142)  # car
    assert labels.IMG_MEAN.dtype == np.float32
    np.testing.assert_array_equal(
        labels.IMG_MEAN, np.array([104.00698793, 116.66876762, 122.67891434], dtype=np.float32)
    )
    assert labels.IGNORE_LABEL == 255


def test_flat_palette_and_colorize():
    flat = labels.flat_palette()
    assert len(flat) == 768 and flat[:3] == [128, 64, 128] and flat[19 * 3 :] == [0] * (768 - 57)
    mask = np.array([[0, 10], [13, 255]], dtype=np.uint8)
    img = labels.colorize_mask(mask)
    assert img.mode == "P"
    np.testing.assert_array_equal(np.asarray(img), mask)  # indices kept
    rgb = np.asarray(img.convert("RGB"))
    assert tuple(rgb[0, 1]) == (70, 130, 180) and tuple(rgb[1, 1]) == (0, 0, 0)
    rgb2 = labels.colorize_rgb(mask)
    np.testing.assert_array_equal(rgb2, rgb)


def test_label2train_lut_custom_info_skips_negative_ids():
    info = {"label2train": [[3, 1], [-1, 255], [200, 7]]}
    lut = labels.label2train_lut(info)
    assert lut[3] == 1 and lut[200] == 7 and lut[4] == 255 and lut[255] == 255


def test_load_info_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        labels.load_info(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        labels.load_info(bad)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"classes": 19, "label": [], "palette": []}))
    with pytest.raises(ValueError, match="label2train"):
        labels.load_info(partial)


def test_palette_mode_trap_is_real():
    """Why labels must never be converted: a 'P' image's colours are not its indices."""
    idx = np.array([[7, 26]], dtype=np.uint8)
    img = Image.fromarray(idx, mode="L").convert("P")
    img.putpalette(labels.flat_palette())  # trainId palette: index 7 -> sign colour, 26 -> black
    np.testing.assert_array_equal(np.asarray(img), idx)
    assert not np.array_equal(np.asarray(img.convert("L")), idx)
