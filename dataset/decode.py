"""Decoding an image file to the RGB image the original loaders saw, faster where that is provably the same.

The original read every image with ``Image.open(path).convert('RGB')``. For the images of every dataset here (8-bit
RGB PNGs), :func:`read_rgb` decodes with libspng (package ``pyspng``) when it is installed: PNG is lossless, so
every correct decoder returns the same pixels, and libspng's unfiltering is faster than Pillow's where the encoder
chose the Paeth filter (``bench/bench_loader.py``, one thread, with the CRC check below: a generated 2048x1024 frame, 35 ms
against Pillow's 54; a 1914x1052 GTA5-sized frame, 31 against 32; libpng through torchvision or OpenCV: 50 and 33).
Everything else (palette, grey, 16-bit or alpha PNGs, JPEGs), and any file libspng or the checks below refuse, goes
through Pillow exactly as before (:func:`dataset.checks.open_rgb`), which also words the error for a broken file.
Both paths give a PIL ``'RGB'`` image, which the loaders then resize with Pillow's bicubic filter (its output is the
contract, so the resize itself is not replaced).

Integrity: pyspng tells libspng to ignore the chunk CRCs (``SPNG_CRC_USE``), so a corrupted image stream can decode
to other pixels without an error (a flipped byte did, where Pillow reports it); every chunk's CRC-32 is therefore
verified here first (about 1 ms for a full-size frame), and a file that fails is handed to Pillow. Bit-identity is
checked once per process on an embedded image (:func:`png_decoder`) and by ``tests/test_decode.py`` and
``tests/test_uint8_items.py`` on generated frames.
"""
from __future__ import annotations

import io
import logging
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from dataset.checks import DatasetError, open_rgb

logger = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_rgb8_png(data: bytes) -> bool:
    """Whether ``data`` starts a PNG whose IHDR says 8-bit truecolour RGB (colour type 2): the only kind
    :func:`read_rgb` decodes with libspng."""
    return (len(data) >= 29 and data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and data[24] == 8
            and data[25] == 2)


def png_crcs_ok(data: bytes) -> bool:
    """Whether every chunk of the PNG ``data`` is complete and matches its CRC-32, up to and including IEND."""
    view, pos, end = memoryview(data), 8, len(data)
    while pos + 12 <= end:
        length = int.from_bytes(data[pos:pos + 4], "big")
        stop = pos + 8 + length
        if stop + 4 > end or zlib.crc32(view[pos + 4:stop]) != int.from_bytes(data[stop:stop + 4], "big"):
            return False
        if data[pos + 4:pos + 8] == b"IEND":
            return True
        pos = stop + 4
    return False


def _probe_png() -> bytes:
    """A small 8-bit RGB PNG holding every byte value in every channel (the probe of :func:`png_decoder`)."""
    rng = np.random.default_rng(0)
    pixels = rng.permutation(np.tile(np.arange(256, dtype=np.uint8), 3 * 8)).reshape(16, 128, 3)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@lru_cache(maxsize=None)
def png_decoder() -> Callable[[bytes], np.ndarray] | None:
    """``decode(png_bytes) -> uint8 ndarray [H, W, 3]`` (RGB) by libspng, or ``None`` when ``pyspng`` is not
    installed or does not give Pillow's pixels on the probe image (then Pillow decodes everything)."""
    try:
        import pyspng
    except ImportError:
        logger.debug("pyspng is not installed: images are decoded by Pillow")
        return None

    def decode(data: bytes) -> np.ndarray:
        return pyspng.load(data)

    data = _probe_png()
    try:
        same = np.array_equal(decode(data), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    except Exception as exc:  # a broken installation
        logger.warning("pyspng cannot decode PNGs here (%s): images are decoded by Pillow", exc)
        return None
    if not same:
        logger.warning("pyspng does not give Pillow's pixels here: images are decoded by Pillow")
        return None
    return decode


def read_rgb(path: str | Path) -> Image.Image:
    """The image at ``path`` as a PIL ``'RGB'`` image: pixel for pixel ``Image.open(path).convert('RGB')``.

    An 8-bit RGB PNG whose chunks all pass their CRC check is decoded by libspng (when ``pyspng`` is installed),
    anything else by Pillow (:func:`dataset.checks.open_rgb`). A missing, unreadable or truncated file raises
    :class:`~dataset.checks.DatasetError` naming it.
    """
    decode = png_decoder()
    if decode is not None:
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DatasetError(f"image {path} does not exist") from None
        except OSError:
            return open_rgb(path)  # Pillow words the error
        if is_rgb8_png(data) and png_crcs_ok(data):
            try:
                pixels = decode(data)
            except Exception:  # libspng refuses it: Pillow decides (and words the error)
                pixels = None
            if pixels is not None and pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3:
                return Image.fromarray(pixels)
    return open_rgb(path)
