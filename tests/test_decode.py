"""dataset/decode.py: 8-bit RGB PNGs decoded by libspng give Pillow's pixels; everything else, and every broken
file, goes through Pillow (same pixels, same errors)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import dataset.decode as decode
from dataset.checks import DatasetError

pytest.importorskip("pyspng")


def pillow_rgb(path) -> np.ndarray:
    """The original loaders' decoding."""
    return np.asarray(Image.open(path).convert("RGB"))


def save(path, image: Image.Image, **kw) -> bytes:
    image.save(path, format="PNG", **kw)
    return path.read_bytes()


@pytest.fixture
def decoded_by(monkeypatch):
    """Records which decoder read_rgb used: 'spng' or 'pillow'."""
    used = []
    spng = decode.png_decoder()
    assert spng is not None  # pyspng is installed and passed the probe
    monkeypatch.setattr(decode, "png_decoder", lambda: lambda data: used.append("spng") or spng(data))
    real_open = decode.open_rgb
    monkeypatch.setattr(decode, "open_rgb", lambda path: used.append("pillow") or real_open(path))
    return used


@pytest.mark.parametrize("shape,level", [((37, 53), 6), ((64, 96), 1), ((5, 7), 9), ((300, 411), 0)])
def test_rgb8_pngs_decode_to_pillows_pixels(tmp_path, decoded_by, shape, level):
    rng = np.random.default_rng(shape[0])
    noise = rng.integers(0, 256, size=shape + (3,), dtype=np.uint8)
    smooth = np.cumsum(rng.integers(0, 3, size=shape + (3,)), axis=1).astype(np.uint8)  # other filter choices
    for k, pixels in enumerate((noise, smooth)):
        path = tmp_path / f"{k}.png"
        save(path, Image.fromarray(pixels), compress_level=level)
        got = decode.read_rgb(path)
        assert got.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(got), pillow_rgb(path))
        np.testing.assert_array_equal(np.asarray(got), pixels)
    assert decoded_by == ["spng", "spng"]


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA", "I;16", "RGB16"])
def test_other_pngs_go_through_pillow(tmp_path, decoded_by, mode):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, size=(9, 13, 3), dtype=np.uint8)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, size=(9, 13), dtype=np.uint16))
        img.save(tmp_path / "x.png")
    elif mode == "RGB16":  # 16-bit RGB (written by OpenCV, which keeps 16 bits)
        cv2 = pytest.importorskip("cv2")
        cv2.imwrite(str(tmp_path / "x.png"), rng.integers(0, 65536, size=(9, 13, 3), dtype=np.uint16))
    else:
        Image.fromarray(rgb).convert(mode).save(tmp_path / "x.png")
    np.testing.assert_array_equal(np.asarray(decode.read_rgb(tmp_path / "x.png")), pillow_rgb(tmp_path / "x.png"))
    assert decoded_by == ["pillow"]


def test_rgb_with_transparency_chunk_keeps_the_pixels(tmp_path, decoded_by):
    pixels = np.random.default_rng(4).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    pixels[0, 0] = 0
    save(tmp_path / "t.png", Image.fromarray(pixels), transparency=(0, 0, 0))
    np.testing.assert_array_equal(np.asarray(decode.read_rgb(tmp_path / "t.png")), pixels)


def test_corrupt_and_truncated_files_are_errors_as_with_pillow(tmp_path, decoded_by):
    pixels = np.random.default_rng(5).integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    data = save(tmp_path / "good.png", Image.fromarray(pixels))
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # inside the image data: libspng alone would decode other pixels
    (tmp_path / "flipped.png").write_bytes(bytes(flipped))
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    for name in ("flipped.png", "cut.png"):
        with pytest.raises(DatasetError, match=rf"cannot read image .*{name}.*re-download"):
            decode.read_rgb(tmp_path / name)
    with pytest.raises(DatasetError, match="does not exist"):
        decode.read_rgb(tmp_path / "missing.png")
    assert "spng" not in decoded_by  # the CRC check handed them to Pillow


def test_without_pyspng_everything_goes_through_pillow(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "png_decoder", lambda: None)
    pixels = np.random.default_rng(6).integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    save(tmp_path / "x.png", Image.fromarray(pixels))
    np.testing.assert_array_equal(np.asarray(decode.read_rgb(tmp_path / "x.png")), pixels)


def test_header_and_crc_helpers():
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buffer, format="PNG")
    data = buffer.getvalue()
    assert decode.is_rgb8_png(data) and decode.png_crcs_ok(data)
    assert not decode.png_crcs_ok(data[:-4])  # IEND's CRC cut off
    assert not decode.png_crcs_ok(data.replace(b"IEND", b"IENE"))
    grey = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(grey, format="PNG")
    assert not decode.is_rgb8_png(grey.getvalue()) and not decode.is_rgb8_png(b"GIF89a" + bytes(30))
