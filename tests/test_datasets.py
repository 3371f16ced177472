"""GTA5DataSet / cityscapesDataSet: preprocessing by hand, label mapping, augmentation, bad input."""
import numpy as np
import pytest
import torch
from PIL import Image

from dataset.checks import DatasetError, LabelFormatError
from dataset.cityscapes_dataset import cityscapesDataSet
from dataset.gta5_dataset import GTA5DataSet
from dataset.transforms import SCALE_RANGE
from tools.make_synthetic_data import make_synthetic_datasets

MEAN_B, MEAN_G, MEAN_R = np.float32(104.00698793), np.float32(116.66876762), np.float32(122.67891434)
# official labelId -> trainId (typed independently of dataset/labels.py)
ID2TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
            23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def to_train(ids):
    out = np.full(np.shape(ids), 255.0, dtype=np.float32)
    for k, v in ID2TRAIN.items():
        out[np.asarray(ids) == k] = v
    return out


def trap_palette():
    """Index k -> colour (255 - k, (3 * k) % 256, 40): converting would not give the indices back."""
    flat = []
    for k in range(256):
        flat += [255 - k, (3 * k) % 256, 40]
    return flat


def save_p_label(path, ids):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.asarray(ids, dtype=np.uint8), mode="L").convert("P")
    img.putpalette(trap_palette())
    img.save(path)


def save_rgb(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint8), mode="RGB").save(path)


def make_gta5(root, images, labels):
    """images/labels: dict name -> array. Returns the list path."""
    for name, arr in images.items():
        save_rgb(root / "images" / name, arr)
    for name, ids in labels.items():
        save_p_label(root / "labels" / name, ids)
    lst = root / "list.txt"
    lst.write_text("".join(f"{n}\n" for n in images))
    return lst


def rand_image(rng, h, w):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------- GTA5


def test_gta5_one_pixel_by_hand(tmp_path):
    img = np.zeros((3, 4, 3), dtype=np.uint8)
    img[1, 2] = (10, 200, 30)  # R, G, B at row 1, column 2
    ids = np.full((3, 4), 7, dtype=np.uint8)
    ids[1, 2] = 26  # car
    lst = make_gta5(tmp_path, {"00001.png": img}, {"00001.png": ids})
    ds = GTA5DataSet(tmp_path, lst, crop_size=(4, 3))  # (W, H): resize is the identity
    image, label, size, name = ds[0]
    assert image.dtype == np.float32 and image.shape == (3, 3, 4)
    assert label.dtype == np.float32 and label.shape == (3, 4)
    # channel 0 is blue minus the blue mean, channel 2 red minus the red mean
    assert image[0, 1, 2] == np.float32(30) - MEAN_B
    assert image[1, 1, 2] == np.float32(200) - MEAN_G
    assert image[2, 1, 2] == np.float32(10) - MEAN_R
    assert image[0, 0, 0] == -MEAN_B and image[2, 2, 3] == -MEAN_R
    assert label[1, 2] == 13 and label[0, 0] == 0
    np.testing.assert_array_equal(size, [3, 4, 3])
    assert name == "00001.png"


def test_gta5_label_mapping_reads_palette_indices(tmp_path):
    ids = np.array([[0, 1, 4, 7, 8, 11], [23, 26, 33, 34, 200, 255]], dtype=np.uint8)
    lst = make_gta5(tmp_path, {"a.png": np.zeros((2, 6, 3), np.uint8)}, {"a.png": ids})
    # the trap is real for this file: converting it would give other numbers
    with Image.open(tmp_path / "labels" / "a.png") as lab:
        assert lab.mode == "P"
        assert not np.array_equal(np.asarray(lab.convert("L")), ids)
    _, label, _, _ = GTA5DataSet(tmp_path, lst, crop_size=(6, 2))[0]
    expected = np.array([[255, 255, 255, 0, 1, 2], [10, 13, 18, 255, 255, 255]], dtype=np.float32)
    np.testing.assert_array_equal(label, expected)


def test_gta5_l_mode_label_accepted(tmp_path):
    ids = np.array([[7, 24]], dtype=np.uint8)
    save_rgb(tmp_path / "images" / "a.png", np.zeros((1, 2, 3)))
    (tmp_path / "labels").mkdir()
    Image.fromarray(ids, mode="L").save(tmp_path / "labels" / "a.png")
    (tmp_path / "l.txt").write_text("a.png\n")
    _, label, _, _ = GTA5DataSet(tmp_path, tmp_path / "l.txt", crop_size=(2, 1))[0]
    np.testing.assert_array_equal(label, [[0, 11]])


def test_gta5_resize_matches_pil_bicubic_and_nearest(tmp_path):
    rng = np.random.default_rng(0)
    img = rand_image(rng, 12, 20)
    ids = rng.choice([0, 7, 8, 11, 23, 26, 33, 255], size=(12, 20)).astype(np.uint8)
    lst = make_gta5(tmp_path, {"x.png": img}, {"x.png": ids})
    image, label, size, _ = GTA5DataSet(tmp_path, lst, crop_size=(9, 5))[0]
    resized = np.asarray(Image.fromarray(img).resize((9, 5), Image.Resampling.BICUBIC), dtype=np.float32)
    exp = np.stack([resized[..., 2] - MEAN_B, resized[..., 1] - MEAN_G, resized[..., 0] - MEAN_R])
    np.testing.assert_array_equal(image, exp)
    lab_resized = np.asarray(Image.fromarray(ids).resize((9, 5), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(label, to_train(lab_resized))
    np.testing.assert_array_equal(size, [5, 9, 3])


def test_gta5_label_size_differs_from_image_by_a_few_pixels(tmp_path):
    """As some real GTA5 frames: both go to the crop size, so they come out aligned."""
    rng = np.random.default_rng(1)
    img = rand_image(rng, 20, 36)
    ids = rng.choice([7, 11, 23, 26], size=(23, 35)).astype(np.uint8)  # 35x23 label for a 36x20 image
    lst = make_gta5(tmp_path, {"m.png": img}, {"m.png": ids})
    image, label, size, _ = GTA5DataSet(tmp_path, lst, crop_size=(16, 8))[0]
    assert image.shape == (3, 8, 16) and label.shape == (8, 16)
    lab_resized = np.asarray(Image.fromarray(ids).resize((16, 8), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(label, to_train(lab_resized))


def original_gta5_item(root, name, crop_size):
    """The original loader's steps, written out one by one."""
    image = Image.open(root / "images" / name).convert("RGB")
    label = Image.open(root / "labels" / name)
    image = image.resize(crop_size, Image.Resampling.BICUBIC)
    label = label.resize(crop_size, Image.Resampling.NEAREST)
    image = np.asarray(image, np.float32)
    label = np.asarray(label, np.float32)
    label_copy = 255 * np.ones(label.shape, dtype=np.float32)
    for k, v in ID2TRAIN.items():
        label_copy[label == k] = v
    size = image.shape
    image = image[:, :, ::-1]
    image = image - np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float32)
    image = image.transpose((2, 0, 1))
    return image.copy(), label_copy.copy(), np.array(size), name


def original_cityscapes_item(root, set_, name, crop_size):
    image = Image.open(root / "leftImg8bit" / set_ / name).convert("RGB")
    image = image.resize(crop_size, Image.Resampling.BICUBIC)
    image = np.asarray(image, np.float32)
    size = image.shape
    image = image[:, :, ::-1] - np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float32)
    return image.transpose((2, 0, 1)).copy(), np.array(size), name


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_datasets(tmp_path_factory.mktemp("synth"), num_source=3, num_target_train=3, num_val=2)


def test_loaders_reproduce_the_original_on_generated_data(synth):
    ds = GTA5DataSet(synth.gta5_root, synth.gta5_list, crop_size=(48, 24))
    for i in range(len(ds)):
        got, want = ds[i], original_gta5_item(synth.gta5_root, ds.img_ids[i], (48, 24))
        for g, w in zip(got[:3], want[:3]):
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)
        assert got[3] == want[3]
    cs = cityscapesDataSet(synth.cityscapes_root, synth.cityscapes_train_list, crop_size=(40, 20), set="train")
    for i in range(len(cs)):
        got, want = cs[i], original_cityscapes_item(synth.cityscapes_root, "train", cs.img_ids[i], (40, 20))
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert got[2] == want[2]


def test_max_iters_repeats_whole_list(synth):
    names = synth.gta5_list.read_text().split()
    ds = GTA5DataSet(synth.gta5_root, synth.gta5_list, max_iters=7)
    assert len(ds) == 9  # ceil(7 / 3) * 3: not truncated
    assert ds.img_ids == names * 3
    assert len(GTA5DataSet(synth.gta5_root, synth.gta5_list)) == 3
    assert len(GTA5DataSet(synth.gta5_root, synth.gta5_list, max_iters=3)) == 3
    with pytest.raises(ValueError, match="max_iters"):
        GTA5DataSet(synth.gta5_root, synth.gta5_list, max_iters=0)


# --------------------------------------------------------------------------- augmentation


def _plain(synth, **kw):
    return GTA5DataSet(synth.gta5_root, synth.gta5_list, max_iters=24, crop_size=(32, 16), **kw)


def test_mirror_flips_image_and_label_together(synth):
    plain, mirrored = _plain(synth), _plain(synth, mirror=True, seed=5)
    flips = 0
    for i in range(len(plain)):
        a, b = plain[i], mirrored[i]
        if np.array_equal(b[0], a[0]):
            np.testing.assert_array_equal(b[1], a[1])
        else:
            flips += 1
            np.testing.assert_array_equal(b[0], a[0][:, :, ::-1])
            np.testing.assert_array_equal(b[1], a[1][:, ::-1])
        np.testing.assert_array_equal(b[2], a[2])
    assert 0 < flips < len(plain)  # probability 0.5 each, 24 draws


def test_augmentation_deterministic_per_seed_and_index(synth):
    a = _plain(synth, mirror=True, scale=True, seed=1)
    b = _plain(synth, mirror=True, scale=True, seed=1)
    c = _plain(synth, mirror=True, scale=True, seed=2)
    for i in (0, 5):
        np.testing.assert_array_equal(a[i][0], b[i][0])
        np.testing.assert_array_equal(a[i][1], b[i][1])
    assert any(not np.array_equal(a[i][0], c[i][0]) for i in range(6))
    # the same image repeated by max_iters (indices 0 and 3) is augmented differently
    assert a.img_ids[0] == a.img_ids[3] and not np.array_equal(a[0][0], a[3][0])


def test_augmentation_independent_of_dataloader_workers(synth):
    ds = _plain(synth, mirror=True, scale=True, seed=3)
    ds.files = ds.files[:6]
    serial = [ds[i][0] for i in range(6)]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    batched = torch.cat([b[0] for b in loader]).numpy()
    np.testing.assert_array_equal(batched, np.stack(serial))


def test_scale_keeps_image_and_label_aligned(tmp_path):
    """Each class has its own flat colour: after scaling/cropping/padding the pixels of a class keep it."""
    h, w = 24, 48
    ids = np.full((h, w), 23, dtype=np.uint8)  # sky
    ids[12:, :] = 7  # road
    ids[14:20, 10:22] = 26  # car
    colours = {23: (70, 130, 180), 7: (128, 64, 128), 26: (0, 0, 142)}
    img = np.zeros((h, w, 3), dtype=np.uint8)
    for k, c in colours.items():
        img[ids == k] = c
    lst = make_gta5(tmp_path, {"s.png": img}, {"s.png": ids})
    ds = GTA5DataSet(tmp_path, lst, max_iters=40, crop_size=(w, h), scale=True, mirror=True, seed=9)
    shapes_differ, padded = 0, 0
    for i in range(len(ds)):
        image, label, size, _ = ds[i]
        assert image.shape == (3, h, w) and label.shape == (h, w)
        np.testing.assert_array_equal(size, [h, w, 3])
        for k, c in colours.items():
            sel = label == ID2TRAIN[k]
            if sel.sum() < 4:
                continue
            bgr = np.array([c[2] - MEAN_B, c[1] - MEAN_G, c[0] - MEAN_R], dtype=np.float32)
            # the median pixel of the class has the class colour (edges blur under bicubic)
            med = np.median(image[:, sel], axis=1)
            np.testing.assert_allclose(med, bgr, atol=2)
        pad = np.all(image == 0, axis=0)
        if pad.any():
            padded += 1
            assert np.all(label[pad] == 255)
        if not np.array_equal(label, to_train(ids)) and not np.array_equal(label, to_train(ids)[:, ::-1]):
            shapes_differ += 1
    assert shapes_differ > len(ds) // 2  # scaling actually happened
    assert padded > 0  # some factors were < 1 (padding with the mean, label ignore)
    assert SCALE_RANGE == (0.5, 1.5)


def test_scale_off_by_default_is_the_original(synth):
    ds = GTA5DataSet(synth.gta5_root, synth.gta5_list, crop_size=(48, 24))
    assert ds.scale is False and ds.is_mirror is False


# ------------------------------------------------------------------------------- errors


def test_missing_root(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text("a.png\n")
    with pytest.raises(DatasetError, match=r"GTA5 data directory .*nowhere.* does not exist"):
        GTA5DataSet(tmp_path / "nowhere", lst)
    with pytest.raises(DatasetError, match="nowhere"):
        cityscapesDataSet(tmp_path / "nowhere", lst)


def test_missing_and_empty_list(tmp_path):
    with pytest.raises(DatasetError, match=r"list file .*missing\.txt does not exist"):
        GTA5DataSet(tmp_path, tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(DatasetError, match=r"empty\.txt is empty"):
        GTA5DataSet(tmp_path, empty)
    with pytest.raises(DatasetError, match=r"empty\.txt is empty"):
        cityscapesDataSet(tmp_path, empty)


def test_missing_files_reported_once_with_count_and_first_paths(tmp_path):
    names = [f"{i:05d}.png" for i in range(1, 11)]
    images = {n: np.zeros((2, 2, 3), np.uint8) for n in names}
    labels = {n: np.zeros((2, 2), np.uint8) for n in names}
    lst = make_gta5(tmp_path, images, labels)
    for n in names[:7]:
        (tmp_path / "labels" / n).unlink()
    with pytest.raises(DatasetError) as exc:
        GTA5DataSet(tmp_path, lst)
    msg = str(exc.value)
    assert "7 of the 20" in msg and str(lst) in msg
    assert str(tmp_path / "labels" / "00001.png") in msg
    assert "... and 2 more" in msg
    assert str(tmp_path / "labels" / "00007.png") not in msg  # only the first few
    # check_files=False defers the failure to loading, still naming the file
    ds = GTA5DataSet(tmp_path, lst, check_files=False)
    with pytest.raises(DatasetError, match="00001.png"):
        ds[0]


def test_truncated_png_names_the_file(tmp_path):
    rng = np.random.default_rng(0)
    lst = make_gta5(tmp_path, {"t.png": rand_image(rng, 30, 40)}, {"t.png": np.full((30, 40), 7, np.uint8)})
    path = tmp_path / "images" / "t.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ds = GTA5DataSet(tmp_path, lst, crop_size=(8, 8))
    with pytest.raises(DatasetError, match=r"cannot read image .*t\.png.*truncated"):
        ds[0]
    path.write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"t\.png"):
        ds[0]


def test_rgb_label_refused_with_palette_advice(tmp_path):
    save_rgb(tmp_path / "images" / "r.png", np.zeros((4, 4, 3)))
    save_rgb(tmp_path / "labels" / "r.png", np.full((4, 4, 3), (128, 64, 128)))
    (tmp_path / "l.txt").write_text("r.png\n")
    # Found from the header when the dataset is built ...
    with pytest.raises(DatasetError) as exc:
        GTA5DataSet(tmp_path, tmp_path / "l.txt", crop_size=(4, 4))
    # ... and, without the construction checks, when the label is read.
    ds = GTA5DataSet(tmp_path, tmp_path / "l.txt", crop_size=(4, 4), check_files=False)
    with pytest.raises(DatasetError) as exc_read:
        ds[0]
    for msg in (str(exc.value), str(exc_read.value)):
        assert str(tmp_path / "labels" / "r.png") in msg
        assert "'RGB'" in msg and "palette" in msg and "labelIds" in msg


def test_bad_crop_size(tmp_path, synth):
    with pytest.raises(ValueError, match="crop_size"):
        GTA5DataSet(synth.gta5_root, synth.gta5_list, crop_size=(0, 5))


# --------------------------------------------------------------------------- Cityscapes


def test_cityscapes_pixel_by_hand_and_layout(tmp_path):
    name = "aachen/aachen_000000_000019_leftImg8bit.png"
    img = np.zeros((2, 3, 3), dtype=np.uint8)
    img[1, 0] = (250, 5, 60)
    save_rgb(tmp_path / "leftImg8bit" / "train" / name, img)
    (tmp_path / "l.txt").write_text(name + "\n")
    ds = cityscapesDataSet(tmp_path, tmp_path / "l.txt", crop_size=(3, 2), set="train")
    image, size, got_name = ds[0]
    assert image.shape == (3, 2, 3) and image.dtype == np.float32
    assert image[0, 1, 0] == np.float32(60) - MEAN_B
    assert image[1, 1, 0] == np.float32(5) - MEAN_G
    assert image[2, 1, 0] == np.float32(250) - MEAN_R
    np.testing.assert_array_equal(size, [2, 3, 3])
    assert got_name == name
    with pytest.raises(DatasetError, match=r"1 of the 1 Cityscapes images .*leftImg8bit/val"):
        cityscapesDataSet(tmp_path, tmp_path / "l.txt")  # default set='val' has no such file


def test_cityscapes_return_label_native_resolution(synth):
    ds = cityscapesDataSet(synth.cityscapes_root, synth.cityscapes_val_list, crop_size=(32, 16), return_label=True)
    image, label, size, name = ds[0]
    assert image.shape == (3, 16, 32)
    gt_path = synth.gt_dir / name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
    with Image.open(gt_path) as gt:
        ids = np.asarray(gt)
    assert label.dtype == np.uint8 and label.shape == ids.shape  # native, not resized
    np.testing.assert_array_equal(label, to_train(ids).astype(np.uint8))
    plain = cityscapesDataSet(synth.cityscapes_root, synth.cityscapes_val_list, crop_size=(32, 16))
    np.testing.assert_array_equal(image, plain[0][0])  # the image is the same with or without the label


def test_cityscapes_return_label_errors(synth, tmp_path):
    with pytest.raises(ValueError, match="mirror"):
        cityscapesDataSet(synth.cityscapes_root, synth.cityscapes_val_list, return_label=True, mirror=True)
    missing = next(synth.gt_dir.rglob("*_gtFine_labelIds.png"))
    missing.rename(tmp_path / "moved.png")
    try:
        with pytest.raises(DatasetError, match=r"1 of the 2 Cityscapes labels .*gtFine"):
            cityscapesDataSet(synth.cityscapes_root, synth.cityscapes_val_list, return_label=True)
    finally:
        (tmp_path / "moved.png").rename(missing)
    odd = tmp_path / "odd.txt"
    odd.write_text("frankfurt/frankfurt_000000_000019.png\n")
    with pytest.raises(DatasetError, match="_leftImg8bit.png"):
        cityscapesDataSet(synth.cityscapes_root, odd, return_label=True, check_files=False)


def test_cityscapes_rgb_gtfine_label_refused(tmp_path):
    name = "lindau/lindau_000000_000019_leftImg8bit.png"
    save_rgb(tmp_path / "leftImg8bit" / "val" / name, np.zeros((2, 2, 3)))
    bad = tmp_path / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png"
    save_rgb(bad, np.zeros((2, 2, 3)))
    (tmp_path / "l.txt").write_text(name + "\n")
    ds = cityscapesDataSet(tmp_path, tmp_path / "l.txt", crop_size=(2, 2), return_label=True)
    with pytest.raises(LabelFormatError, match=r"lindau_000000_000019_gtFine_labelIds\.png has mode 'RGB'"):
        ds[0]


def test_cityscapes_mirror_flips_image(synth):
    plain = cityscapesDataSet(synth.cityscapes_root, synth.cityscapes_train_list, max_iters=16,
                              crop_size=(32, 16), set="train")
    mir = cityscapesDataSet(synth.cityscapes_root, synth.cityscapes_train_list, max_iters=16,
                            crop_size=(32, 16), set="train", mirror=True, seed=4)
    flipped = sum(not np.array_equal(plain[i][0], mir[i][0]) for i in range(len(plain)))
    for i in range(len(plain)):
        assert np.array_equal(mir[i][0], plain[i][0]) or np.array_equal(mir[i][0], plain[i][0][:, :, ::-1])
    assert 0 < flipped < len(plain)
