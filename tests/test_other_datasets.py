"""The other settings' data: generated SYNTHIA, Synscapes, Cross-City and Cityscapes-as-source in the real layouts,
and each loader's output against an independent computation written here (a hand-written PNG decoder for the
16-bit SYNTHIA labels, hand-written class tables)."""
from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset.checks import DatasetError, LabelFormatError
from dataset.cityscapes_dataset import CityscapesSourceDataSet
from dataset.crosscity_dataset import CrossCityDataSet
from dataset.synscapes_dataset import SynscapesDataSet
from dataset.synthia_dataset import SYNTHIADataSet, read_synthia_label
from tools.make_synthetic_data import make_synthetic_datasets, make_synthetic_other_settings

BGR_MEAN = np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float32)
SYNTHIA_WH, SYNSCAPES_WH, CROSSCITY_WH, CITYSCAPES_WH = (40, 24), (48, 24), (40, 20), (40, 20)

# SYNTHIA's README class ids by name, and the Cityscapes trainIds by name: the map is their join (written out
# here by hand, not taken from dataset/labels.py).
SYNTHIA_IDS = {"sky": 1, "building": 2, "road": 3, "sidewalk": 4, "fence": 5, "vegetation": 6, "pole": 7, "car": 8,
               "traffic sign": 9, "pedestrian": 10, "bicycle": 11, "motorcycle": 12, "traffic light": 15,
               "terrain": 16, "rider": 17, "truck": 18, "bus": 19, "train": 20, "wall": 21}
TRAIN_IDS = {"road": 0, "sidewalk": 1, "building": 2, "wall": 3, "fence": 4, "pole": 5, "traffic light": 6,
             "traffic sign": 7, "vegetation": 8, "terrain": 9, "sky": 10, "pedestrian": 11, "rider": 12, "car": 13,
             "truck": 14, "bus": 15, "train": 16, "motorcycle": 17, "bicycle": 18}
SYNTHIA_TO_TRAIN = {SYNTHIA_IDS[name]: TRAIN_IDS[name] for name in SYNTHIA_IDS}
# Official cityscapesScripts labelId -> trainId.
LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                  26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def map_ids(ids: np.ndarray, table: dict[int, int]) -> np.ndarray:
    """Element by element, as the simplest possible implementation."""
    return np.array([[table.get(int(v), 255) for v in row] for row in ids], dtype=np.float32)


def decode_png(path: Path) -> tuple[np.ndarray, int, int]:
    """A minimal PNG decoder (non-interlaced, grey/RGB/RGBA, 8 or 16 bits): (H x W x C array, bit depth, colour type)."""
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(raw):
        length, kind = struct.unpack(">I4s", raw[pos:pos + 8])
        body = raw[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert interlace == 0
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    bpp = channels * depth // 8
    stride = width * bpp
    data = zlib.decompress(idat)
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind, line = data[y * (stride + 1)], bytearray(data[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    dtype = ">u2" if depth == 16 else "u1"
    return np.frombuffer(b"".join(rows), dtype=dtype).reshape(height, width, channels).astype(np.int64), depth, colour


def expected_image(path: Path, wh: tuple[int, int]) -> np.ndarray:
    rgb = Image.open(path).convert("RGB").resize(wh, Image.Resampling.BICUBIC)
    return (np.asarray(rgb, dtype=np.float32)[:, :, ::-1] - BGR_MEAN).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("other")
    base = make_synthetic_datasets(root, num_source=1, num_target_train=3, num_val=1, target_size=CITYSCAPES_WH,
                                   seed=5, cityscapes_train_labels=True)
    other = make_synthetic_other_settings(root, num_source=3, num_target_train=3, num_test=2,
                                          synthia_size=SYNTHIA_WH, synscapes_size=SYNSCAPES_WH,
                                          crosscity_size=CROSSCITY_WH, city="Tokyo", seed=5)
    return base, other


# ---- the generated layouts ------------------------------------------------------------------------------------------


def test_generated_files_are_in_the_real_layouts(data):
    base, other = data
    root = other.synthia_root.parent
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    for expected in ("SYNTHIA/RGB/0000000.png", "SYNTHIA/GT/LABELS/0000002.png", "Synscapes/img/rgb/1.png",
                     "Synscapes/img/class/3.png", "NTHU_Datasets/Tokyo/Images/Train/pano_00000_0_0.png",
                     "NTHU_Datasets/Tokyo/Images/Test/pano_01001_0_180.png",
                     "NTHU_Datasets/Tokyo/Labels/Test/pano_01001_0_180_eval.png",
                     "Cityscapes/data/gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"):
        assert expected in files
    assert Image.open(other.synthia_root / "RGB" / "0000000.png").mode == "RGB"
    assert Image.open(other.synscapes_root / "img" / "class" / "1.png").mode == "L"
    assert (other.crosscity_devkit_dir / "label.txt").read_text().split() == [
        "pano_01000_0_180_eval.png", "pano_01001_0_180_eval.png"]


def test_synthia_labels_are_16_bit_three_channel_and_pillow_misreads_them(data):
    _, other = data
    path = other.synthia_root / "GT" / "LABELS" / "0000001.png"
    decoded, depth, colour = decode_png(path)
    assert depth == 16 and colour == 2 and decoded.shape == (SYNTHIA_WH[1], SYNTHIA_WH[0], 3)
    class_ids = decoded[:, :, 0]
    assert set(np.unique(class_ids)) <= set(range(23)) and len(np.unique(class_ids)) >= 5
    assert decoded[:, :, 1].max() > 255  # instance ids: 16 bits used
    # ours reads the first channel with all 16 bits
    np.testing.assert_array_equal(read_synthia_label(path), class_ids)
    # Pillow: 8 bits per channel (the high byte), so every class id < 256 reads as 0
    with Image.open(path) as img:
        pil = np.asarray(img)
    assert pil.dtype == np.uint8 and not np.array_equal(pil[:, :, 0].astype(np.int64), class_ids)
    assert np.count_nonzero(pil[:, :, 0]) == 0


# ---- each loader against an independent computation -----------------------------------------------------------------


def test_synthia_loader_maps_the_first_channel(data):
    _, other = data
    ds = SYNTHIADataSet(other.synthia_root, crop_size=SYNTHIA_WH)
    assert [f["name"] for f in ds.files] == ["0000000.png", "0000001.png", "0000002.png"]
    for index in range(len(ds)):
        image, label, size, name = ds[index]
        ids = decode_png(other.synthia_root / "GT" / "LABELS" / name)[0][:, :, 0]
        np.testing.assert_array_equal(label, map_ids(ids, SYNTHIA_TO_TRAIN))
        np.testing.assert_allclose(image, expected_image(other.synthia_root / "RGB" / name, SYNTHIA_WH), atol=1e-4)
        assert image.dtype == np.float32 and label.dtype == np.float32 and tuple(size) == (24, 40, 3)
    assert {0, 1, 2, 10, 13} <= set(np.unique(label).astype(int))


def test_synthia_loader_resizes_like_nearest_on_the_raw_ids(data):
    _, other = data
    ds = SYNTHIADataSet(other.synthia_root, crop_size=(25, 15), ignore_label=250, max_iters=7)
    assert len(ds) == 9  # the list repeated ceil(7 / 3) times, not truncated
    _, label, _, name = ds[0]
    ids = decode_png(other.synthia_root / "GT" / "LABELS" / name)[0][:, :, 0]
    small = np.asarray(Image.fromarray(ids.astype(np.int32), mode="I").resize((25, 15), Image.Resampling.NEAREST))
    expected = map_ids(small, SYNTHIA_TO_TRAIN)
    expected[expected == 255] = 250
    np.testing.assert_array_equal(label, expected)


def test_synscapes_and_cityscapes_source_loaders_map_labelids(data):
    base, other = data
    ds = SynscapesDataSet(other.synscapes_root, crop_size=SYNSCAPES_WH)
    assert [f["name"] for f in ds.files] == ["1.png", "2.png", "3.png"]
    image, label, _, name = ds[2]
    raw = np.asarray(Image.open(other.synscapes_root / "img" / "class" / name))
    np.testing.assert_array_equal(label, map_ids(raw, LABEL_TO_TRAIN))
    np.testing.assert_allclose(image, expected_image(other.synscapes_root / "img" / "rgb" / name, SYNSCAPES_WH),
                               atol=1e-4)

    ds = CityscapesSourceDataSet(base.cityscapes_root, base.cityscapes_train_list, crop_size=(20, 10))
    image, label, size, name = ds[1]
    assert name == "bochum/bochum_000000_000019_leftImg8bit.png" and tuple(size) == (10, 20, 3)
    raw = Image.open(base.cityscapes_root / "gtFine" / "train" / "bochum" / "bochum_000000_000019_gtFine_labelIds.png")
    np.testing.assert_array_equal(label, map_ids(np.asarray(raw.resize((20, 10), Image.Resampling.NEAREST)),
                                                 LABEL_TO_TRAIN))
    # without a list: every leftImg8bit/train image, sorted
    assert [f["name"] for f in CityscapesSourceDataSet(base.cityscapes_root).files] == \
        [f["name"] for f in ds.files]


def test_crosscity_loader_train_test_and_lists(data, tmp_path):
    _, other = data
    train = CrossCityDataSet(other.crosscity_root, "Tokyo", crop_size=(32, 16))
    assert [f["name"] for f in train.files] == ["pano_00000_0_0.png", "pano_00001_0_0.png", "pano_00002_0_0.png"]
    image, size, name = train[0]
    assert image.shape == (3, 16, 32) and tuple(size) == (16, 32, 3)
    # a list of bare ids (as published with other code) gets the extension found on disk
    bare = tmp_path / "test.txt"
    bare.write_text("pano_01001_0_180\npano_01000_0_180\n")
    test = CrossCityDataSet(other.crosscity_root, "Tokyo", bare, crop_size=(32, 16), set="test", return_label=True)
    image, label, size, name = test[0]
    assert name == "pano_01001_0_180.png" and label.dtype == np.uint8
    raw = np.asarray(Image.open(other.crosscity_gt_dir / "pano_01001_0_180_eval.png"))
    np.testing.assert_array_equal(label, map_ids(raw, LABEL_TO_TRAIN).astype(np.uint8))  # native resolution
    annotated = {0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18, 255}  # the 13 Cross-City classes
    assert set(np.unique(label)) <= annotated


def test_clear_errors(data, tmp_path, monkeypatch):
    _, other = data
    with pytest.raises(DatasetError, match=r"Cross-City image directory .*Rio.*Images.*Train.*does not exist"):
        CrossCityDataSet(other.crosscity_root, "Rio")
    with pytest.raises(ValueError, match="expected one of Rome, Rio, Tokyo, Taipei"):
        CrossCityDataSet(other.crosscity_root, "Paris")
    # a SYNTHIA label re-saved by an 8-bit tool, and a truncated one: named, with what was expected
    root = tmp_path / "SYNTHIA"
    (root / "RGB").mkdir(parents=True)
    (root / "GT" / "LABELS").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "RGB" / "0000000.png")
    Image.new("RGB", (8, 8)).save(root / "GT" / "LABELS" / "0000000.png")
    ds = SYNTHIADataSet(root, crop_size=(8, 8))
    with pytest.raises(LabelFormatError, match=r"0000000.png holds 8-bit samples in 3 channel.*expected 16 bits"):
        ds[0]
    good = (other.synthia_root / "GT" / "LABELS" / "0000000.png").read_bytes()
    (root / "GT" / "LABELS" / "0000000.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match=r"cannot read label .*0000000.png"):
        ds[0]
    (root / "RGB" / "0000001.png").write_bytes((root / "RGB" / "0000000.png").read_bytes())
    with pytest.raises(DatasetError, match=r"1 of the 4 SYNTHIA images/labels .* do not exist"):
        SYNTHIADataSet(root)
    monkeypatch.setitem(sys.modules, "cv2", None)  # OpenCV not installed
    with pytest.raises(DatasetError, match="pip install opencv-python-headless"):
        SYNTHIADataSet(other.synthia_root)
