"""uint8 items (``uint8=True``, what the training and evaluation scripts read): converted on the device by
``to_network_input``, they are bitwise the float32 items (the original's, ``uint8=False``) for every loader, with
and without mirroring; also against a port of the original loaders and a conversion written out here; labels;
channels-last; ``--random-scale`` keeping float32 items; the TensorBoard display; ``open_rgb`` without the copy."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

import train_gta2cityscapes_multi as train
from dataset.checks import open_rgb
from dataset.labels import IMG_MEAN
from dataset.transforms import display_rgb, to_network_input
from loader_sets import LOADERS, make_all_data
from original_loaders import CityscapesDataSetPort, GTA5DataSetPort

CROP = (40, 24)
#: the paper's Caffe mean, BGR, typed here
BGR_MEAN = np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_all_data(tmp_path_factory.mktemp("all"))


def by_hand(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> float32 [3, H, W] BGR minus the mean, written out: the original's conversion."""
    bgr = rgb.astype(np.float32)[:, :, ::-1]
    return np.ascontiguousarray((bgr - BGR_MEAN).transpose(2, 0, 1))


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("name", list(LOADERS))
def test_device_conversion_is_bitwise_the_float32_item(data, name, mirror):
    make, source = LOADERS[name]
    kw = dict(crop_size=CROP, max_iters=8, mirror=mirror, seed=11)
    floats, uint8s = make(data, **kw), make(data, uint8=True, **kw)
    flipped = 0
    for i in range(len(floats)):
        old, new = floats[i], uint8s[i]
        image = new[0]
        assert image.dtype == np.uint8 and image.shape == (CROP[1], CROP[0], 3) and image.flags.writeable
        net = to_network_input(default_collate([new])[0], "cpu")
        assert net.dtype == torch.float32 and net.is_contiguous()
        assert torch.equal(net, torch.from_numpy(old[0])[None]), f"{name} item {i}"
        # and the conversion written out by hand, applied to the uint8 pixels
        np.testing.assert_array_equal(by_hand(image), old[0])
        np.testing.assert_array_equal(new[-2], old[-2])  # size [H, W, 3]
        assert new[-1] == old[-1]
        if source:
            assert new[1].dtype == np.uint8 and old[1].dtype == np.float32
            np.testing.assert_array_equal(new[1].astype(np.float32), old[1])
            assert torch.equal(torch.from_numpy(new[1]).long(), torch.from_numpy(old[1]).long())  # what training uses
        plain = make(data, uint8=True, crop_size=CROP, max_iters=8, seed=11)[i][0]
        flipped += not np.array_equal(plain, image)
    if mirror:
        assert 0 < flipped < len(floats)  # some items mirrored, not all: the draw is the float32 path's


def test_a_batch_of_several_items(data):
    make, _ = LOADERS["gta5"]
    floats, uint8s = make(data, crop_size=CROP, max_iters=4), make(data, crop_size=CROP, max_iters=4, uint8=True)
    batch = default_collate([uint8s[i] for i in range(3)])
    assert batch[0].shape == (3, CROP[1], CROP[0], 3) and batch[0].dtype == torch.uint8
    expected = torch.stack([torch.from_numpy(floats[i][0]) for i in range(3)])
    assert torch.equal(to_network_input(batch[0], "cpu"), expected)


def test_labels_stay_float32_when_ignore_label_does_not_fit_uint8(data):
    make, _ = LOADERS["gta5"]
    kw = dict(crop_size=CROP, ignore_label=-1)
    old, new = make(data, **kw)[0], make(data, uint8=True, **kw)[0]
    assert new[0].dtype == np.uint8
    assert new[1].dtype == np.float32 and (new[1] == -1).any()
    np.testing.assert_array_equal(new[1], old[1])
    fits = make(data, crop_size=CROP, ignore_label=250, uint8=True)[0][1]
    assert fits.dtype == np.uint8 and (fits == 250).any() and not (fits == 255).any()


def test_evaluation_items_keep_their_native_labels(data):
    """Targets with return_label (in-process evaluation): uint8 image, the label unchanged (uint8, native size)."""
    from dataset.cityscapes_dataset import cityscapesDataSet

    kw = dict(crop_size=CROP, set="val", return_label=True)
    old = cityscapesDataSet(data.main.cityscapes_root, data.main.cityscapes_val_list, **kw)[0]
    new = cityscapesDataSet(data.main.cityscapes_root, data.main.cityscapes_val_list, uint8=True, **kw)[0]
    assert torch.equal(to_network_input(torch.from_numpy(new[0])[None], "cpu"), torch.from_numpy(old[0])[None])
    assert new[1].dtype == np.uint8 and new[1].shape == (32, 64)
    np.testing.assert_array_equal(new[1], old[1])


def test_network_input_equals_the_original_loaders_port(data):
    """Independent of the project's float32 path: the port of the original GTA5DataSet / cityscapesDataSet."""
    crop = (48, 28)
    gta5 = GTA5DataSetPort(str(data.main.gta5_root), str(data.main.gta5_list), crop_size=crop, mean=IMG_MEAN)
    cs = CityscapesDataSetPort(str(data.main.cityscapes_root), str(data.main.cityscapes_train_list), crop_size=crop,
                               mean=IMG_MEAN, set="train")
    ours_gta5 = LOADERS["gta5"][0](data, crop_size=crop, uint8=True)
    ours_cs = LOADERS["cityscapes"][0](data, crop_size=crop, uint8=True)
    for i in range(len(gta5)):
        image, label, size, name = ours_gta5[i]
        p_image, p_label, p_size, p_name = gta5[i]
        assert torch.equal(to_network_input(torch.from_numpy(image)[None], "cpu")[0], torch.from_numpy(p_image))
        np.testing.assert_array_equal(label, p_label)
        np.testing.assert_array_equal(size, p_size)
        assert name == p_name
        image, size, name = ours_cs[i]
        p_image, p_size, p_name = cs[i]
        assert torch.equal(to_network_input(torch.from_numpy(image)[None], "cpu")[0], torch.from_numpy(p_image))
        assert name == p_name


def test_channels_last_float_passthrough_and_bad_shapes():
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(rng.integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8))
    expected = torch.from_numpy(np.stack([by_hand(b) for b in batch.numpy()]))
    cl = to_network_input(batch, "cpu", torch.channels_last)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, expected)
    plain = to_network_input(batch, "cpu")
    assert plain.is_contiguous() and torch.equal(plain, expected)
    other_mean = to_network_input(batch, "cpu", mean=(1.0, 2.0, 3.0))
    assert torch.equal(other_mean[:, 0], batch[..., 2].float() - 1.0)
    floats = torch.randn(2, 3, 5, 7)
    assert to_network_input(floats, "cpu") is floats  # float32 batches (--random-scale) pass unchanged
    assert to_network_input(floats, "cpu", torch.channels_last).is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        to_network_input(torch.zeros(2, 3, 5, 7, dtype=torch.uint8), "cpu")


def test_random_scale_keeps_the_float32_items(data):
    make, _ = LOADERS["gta5"]
    kw = dict(crop_size=CROP, max_iters=4, scale=True, mirror=True, seed=3)
    old, new = make(data, **kw), make(data, uint8=True, **kw)
    for i in range(len(old)):
        assert new[i][0].dtype == np.float32 and new[i][0].shape == (3, CROP[1], CROP[0])
        for a, b in zip(old[i][:3], new[i][:3]):
            np.testing.assert_array_equal(a, b)
    # a training batch with a float32 source and a uint8 target: each converted on its own terms
    assert to_network_input(torch.from_numpy(new[0][0])[None], "cpu").dtype == torch.float32


def test_display_rgb_and_log_images(data):
    make, _ = LOADERS["gta5"]
    uint8_item, float_item = make(data, crop_size=CROP, uint8=True)[0], make(data, crop_size=CROP)[0]
    rgb = np.asarray(open_rgb(data.main.gta5_root / "images" / uint8_item[-1]).resize(CROP, Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(display_rgb(torch.from_numpy(uint8_item[0])), rgb)
    # the float32 item: mean added back in float32 and truncated, as the training script always showed it
    assert np.abs(display_rgb(torch.from_numpy(float_item[0])).astype(int) - rgb).max() <= 1

    class Writer:
        def __init__(self):
            self.images = {}

        def add_image(self, tag, image, step, dataformats):
            assert dataformats == "HWC" and image.dtype == np.uint8
            self.images[tag] = image

    writer = Writer()
    visuals = {"source_image": torch.from_numpy(uint8_item[0])[None],
               "source_label": torch.from_numpy(uint8_item[1])[None],
               "source_pred": torch.zeros(1, CROP[1], CROP[0], dtype=torch.long),
               "target_image": torch.from_numpy(float_item[0])[None],
               "target_pred": torch.zeros(1, CROP[1], CROP[0], dtype=torch.long)}
    train.log_images(writer, visuals, 2, 0)
    np.testing.assert_array_equal(writer.images["source/0/image"], rgb)
    assert np.abs(writer.images["target/0/image"].astype(int) - rgb).max() <= 1
    assert set(writer.images) == {"source/0/image", "source/0/label", "source/0/prediction", "target/0/image",
                                  "target/0/prediction"}


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16"])
def test_open_rgb_gives_the_original_pixels(tmp_path, mode):
    """Without the copy convert('RGB') makes of an RGB image; other modes still converted as the original did."""
    rng = np.random.default_rng(1)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, size=(6, 9), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 256, size=(6, 9, 3), dtype=np.uint8)).convert(mode)
    img.save(tmp_path / "x.png")
    got = open_rgb(tmp_path / "x.png")
    assert got.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(got), np.asarray(Image.open(tmp_path / "x.png").convert("RGB")))


def test_training_script_converts_on_the_device(data, monkeypatch):
    """network_outputs hands the model to_network_input's tensor: the float32 BGR-minus-mean batch."""
    make, _ = LOADERS["gta5"]
    item = make(data, crop_size=CROP, uint8=True)[0]
    seen = []

    def model(x):
        seen.append(x)
        return torch.zeros(1, 19, 3, 5)

    t = SimpleNamespace(device=torch.device("cpu"), memory_format=torch.preserve_format, amp_dtype=None, model=model,
                        features=[],
                        use_aux=False)
    train.network_outputs(t, torch.from_numpy(item[0])[None], CROP)
    assert torch.equal(seen[0], torch.from_numpy(by_hand(item[0]))[None])
