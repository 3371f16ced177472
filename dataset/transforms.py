"""The preprocessing every loader shares (:class:`dataset.base.BaseDataSet` calls it): crop size, list
repetition, per-item random generator, label tables, the two paths from a resized image to an item's arrays, and
the device-side conversion of uint8 batches into the network's input.

Two item formats (``BaseDataSet(uint8=...)``):

* float32 (the original's, the default of the dataset classes): :func:`preprocess` builds the network input on the
  CPU, ``[3, H, W]`` BGR minus the mean, in the loader process.
* uint8 (what the training and evaluation scripts use): :func:`preprocess_uint8` hands out the resized image as it
  is, ``[H, W, 3]`` RGB (a quarter of the bytes through the worker queues, pinned memory and the copy to the
  GPU), and :func:`to_network_input` builds the same float32 tensor on the training device, after the copy, for
  the whole batch: bitwise the tensor the float32 path builds (a conversion from 8-bit integers is exact, and
  float32 subtraction is correctly rounded on every device; ``tests/test_uint8_items.py``).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from dataset.labels import IGNORE_LABEL, IMG_MEAN, LABEL2TRAIN

#: Range of the random rescale factor applied when ``scale=True`` (uniform).
SCALE_RANGE = (0.5, 1.5)

#: Random streams of the two domains, so that the same seed and index do not give a source and a
#: target item the same flip. Every source set draws from the GTA5 stream, every target set from the
#: Cityscapes one.
GTA5_STREAM, CITYSCAPES_STREAM = 0, 1


def parse_crop_size(crop_size: Sequence[int]) -> tuple[int, int]:
    """Validate a ``(W, H)`` crop size (PIL's order, as the original's ``input_size``)."""
    try:
        w, h = (int(v) for v in crop_size)
    except (TypeError, ValueError):
        raise ValueError(f"crop_size must be two integers (W, H), got {crop_size!r}") from None
    if w < 1 or h < 1:
        raise ValueError(f"crop_size must be positive (W, H), got {crop_size!r}")
    return w, h


def repeat_names(names: list, max_iters: int | None) -> list:
    """The original's epoch stretching: repeat the whole list ``ceil(max_iters / len)`` times.

    Not truncated to ``max_iters`` (faithful), so ``len(result) >= max_iters`` and every
    name appears equally often.
    """
    if max_iters is None:
        return list(names)
    if int(max_iters) < 1:
        raise ValueError(f"max_iters must be a positive integer or None, got {max_iters!r}")
    return list(names) * int(math.ceil(float(max_iters) / len(names)))


def item_rng(seed: int, index: int, stream: int = GTA5_STREAM) -> np.random.Generator:
    """The random generator for item ``index``: a function of ``(seed, index, stream)`` only.

    Independent of which ``DataLoader`` worker (or which DDP rank) loads the item and
    of the order items are loaded in, so an augmented run is reproducible. The same
    image repeated by ``max_iters`` sits at different indices and so gets different
    augmentations.
    """
    return np.random.default_rng([int(seed) % 2**64, int(index), int(stream)])


def train_id_table(ignore_label: int | float = IGNORE_LABEL, dtype=np.float32) -> np.ndarray:
    """``LABEL2TRAIN`` as a 256-entry table of ``dtype`` with the ignore value set to ``ignore_label``."""
    table = LABEL2TRAIN.astype(dtype)
    table[LABEL2TRAIN == IGNORE_LABEL] = ignore_label
    return table


def map_labels(label: Image.Image, table: np.ndarray) -> np.ndarray:
    """Map a 'P'/'L' label image's **indices** (labelIds) through ``table`` (labelId -> trainId): ``[H, W]``.

    ``np.asarray`` of a palette image gives its indices, which is what GTA5 stores
    the labelIds in; converting the image first (to 'RGB' or 'L') would give colours
    or luminances instead.
    """
    return table[np.asarray(label, dtype=np.uint8)]


def _fit(arr: np.ndarray, crop_h: int, crop_w: int, fill: float, oy: int, ox: int) -> np.ndarray:
    """Crop and/or pad (with ``fill``) the first two axes of ``arr`` to ``(crop_h, crop_w)``.

    ``oy``/``ox`` is where the window starts in ``arr`` along an axis longer than the crop, or
    where ``arr`` starts inside the crop along a shorter one.
    """
    h, w = arr.shape[:2]
    out = np.full((crop_h, crop_w) + arr.shape[2:], fill, dtype=arr.dtype)
    sy, dy = (oy, 0) if h >= crop_h else (0, oy)
    sx, dx = (ox, 0) if w >= crop_w else (0, ox)
    ch, cw = min(h, crop_h), min(w, crop_w)
    out[dy : dy + ch, dx : dx + cw] = arr[sy : sy + ch, sx : sx + cw]
    return out


def preprocess(
    image: Image.Image,
    label: Image.Image | None,
    rng: np.random.Generator,
    scale: bool,
    mirror: bool,
    mean: np.ndarray,
    table: np.ndarray | None,
    ignore_label: float,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Crop-sized RGB image (and 8-bit label) -> ``(image, label, size)`` of an item.

    ``image``: float32 ``[3, H, W]``, the original's Caffe convention: pixel values 0..255,
    channels reversed to **BGR**, ``mean`` (BGR order) subtracted, no division by a std.
    ``label`` (``None`` without one): ``table`` applied to the label's indices, ``[H, W]``.
    ``size``: ``np.array([H, W, 3])``, the image's shape before the transpose.

    Opt-in augmentation the original accepted but ignored (the paper used neither):

    * ``scale``: rescale by a factor drawn uniformly from :data:`SCALE_RANGE` (image
      bicubic, label nearest), then back to the crop size: a larger result is randomly
      cropped, a smaller one is placed at a random position and padded with the mean
      (zero after the subtraction) and the label with ``ignore_label``.
    * ``mirror``: horizontal flip of image and label with probability 0.5.

    The draws come from ``rng`` in a fixed order (factor, offsets, flip).
    """
    crop_w, crop_h = image.size
    if scale:
        factor = float(rng.uniform(*SCALE_RANGE))
        size = (max(1, round(crop_w * factor)), max(1, round(crop_h * factor)))
        image = image.resize(size, Image.Resampling.BICUBIC)
        if label is not None:
            label = label.resize(size, Image.Resampling.NEAREST)
    arr = np.asarray(image, dtype=np.float32)[:, :, ::-1] - mean
    lab = map_labels(label, table) if label is not None else None
    if scale:
        h, w = arr.shape[:2]
        oy, ox = int(rng.integers(0, abs(h - crop_h) + 1)), int(rng.integers(0, abs(w - crop_w) + 1))
        arr = _fit(arr, crop_h, crop_w, 0.0, oy, ox)
        if lab is not None:
            lab = _fit(lab, crop_h, crop_w, ignore_label, oy, ox)
    if mirror and rng.random() < 0.5:
        arr = arr[:, ::-1]
        if lab is not None:
            lab = lab[:, ::-1]
    size = np.array(arr.shape)
    arr = np.ascontiguousarray(arr.transpose((2, 0, 1)), dtype=np.float32)
    return arr, (np.ascontiguousarray(lab) if lab is not None else None), size


def label_fits_uint8(ignore_label: float) -> bool:
    """Whether a label map of trainIds (0..18) and ``ignore_label`` can be held in uint8 exactly."""
    return float(ignore_label).is_integer() and 0 <= ignore_label <= 255


def _writable(arr: np.ndarray) -> np.ndarray:
    """``arr`` C-contiguous and writable (``np.asarray`` of a PIL image is read-only, and ``torch.as_tensor`` in
    the DataLoader's collate warns about read-only arrays): a copy only when needed."""
    return arr if arr.flags.c_contiguous and arr.flags.writeable else np.array(arr, order="C")


def preprocess_uint8(
    image: np.ndarray,
    label: np.ndarray | None,
    rng: np.random.Generator,
    mirror: bool,
    table: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Crop-sized uint8 image (and 8-bit label) -> ``(image, label, size)`` of a uint8 item.

    ``image``: uint8 ``[H, W, 3]`` RGB, the resized image's pixels (``np.asarray`` of the PIL image, or a cache
    entry); returned as it is, mirrored when drawn: no float conversion, channel flip, mean or transpose on the CPU
    (:func:`to_network_input` does them on the device). ``label`` (``None`` without one): the label's 8-bit values
    ``[H, W]``, mapped through ``table`` (uint8 where ``ignore_label`` fits, else float32). ``size``:
    ``np.array([H, W, 3])``, as :func:`preprocess` gives it.

    ``mirror``: horizontal flip of image and label with probability 0.5, the same draw from ``rng`` as
    :func:`preprocess` makes without ``scale`` (so a uint8 item and a float32 item of the same ``(seed, index)``
    are flipped alike). ``scale`` is not supported here: its padding holds the mean, which uint8 cannot.
    """
    if mirror and rng.random() < 0.5:
        image = image[:, ::-1]
        if label is not None:
            label = label[:, ::-1]
    image = _writable(image)
    lab = table[label] if label is not None else None  # a gather: a new contiguous array
    return image, lab, np.array(image.shape)


_DEVICE_MEANS: dict[tuple[str, bytes], torch.Tensor] = {}


def _device_mean(mean: Sequence[float] | np.ndarray, device: torch.device) -> torch.Tensor:
    """``mean`` (BGR) as a float32 ``[1, 3, 1, 1]`` tensor on ``device``, copied there once per process."""
    values = np.asarray(mean, dtype=np.float32).reshape(3)
    key = (str(device), values.tobytes())
    if key not in _DEVICE_MEANS:
        _DEVICE_MEANS[key] = torch.from_numpy(values.copy()).reshape(1, 3, 1, 1).to(device)
    return _DEVICE_MEANS[key]


def to_network_input(
    images: torch.Tensor,
    device: torch.device | str,
    memory_format: torch.memory_format = torch.preserve_format,
    mean: Sequence[float] | np.ndarray = IMG_MEAN,
) -> torch.Tensor:
    """A collated image batch on ``device`` as the network's input: float32 ``[N, 3, H, W]``, BGR minus ``mean``.

    * uint8 ``[N, H, W, 3]`` RGB (uint8 items): copied to the device as uint8 (``non_blocking``: asynchronous from
      pinned memory), then converted there: channels reversed to BGR, float32, ``mean`` (BGR order) subtracted.
      Every step is exact but the subtraction, which is one correctly rounded float32 operation per element, as
      the float32 path's NumPy subtraction: the result is bitwise the float32 item's.
    * float32 ``[N, 3, H, W]`` (float32 items: ``scale`` augmentation, or ``uint8=False``): only moved, as before.

    ``memory_format``: ``torch.channels_last`` (``--channels-last``) or ``torch.preserve_format``, which gives a
    contiguous (NCHW) tensor for uint8 input, the layout the float32 batches have.
    """
    if images.dtype != torch.uint8:
        return images.to(device, non_blocking=True, memory_format=memory_format)
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"to_network_input: a uint8 batch must be [N, H, W, 3] (RGB), got {tuple(images.shape)}")
    device = torch.device(device)
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).flip(1)  # [N, 3, H, W] BGR, still uint8
    x = x.float().sub_(_device_mean(mean, device))
    layout = torch.contiguous_format if memory_format == torch.preserve_format else memory_format
    return x.contiguous(memory_format=layout)


def display_rgb(image: torch.Tensor | np.ndarray, mean: Sequence[float] | np.ndarray = IMG_MEAN) -> np.ndarray:
    """One image of a batch as the loaders handed it out -> uint8 ``[H, W, 3]`` RGB for display (TensorBoard).

    uint8 ``[H, W, 3]`` (uint8 items) is already that; float32 ``[3, H, W]`` BGR minus ``mean`` (float32 items, or a
    network input) gets the mean back, RGB order, clipped to 0..255.
    """
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    mean = np.asarray(mean, dtype=np.float32).reshape(3)
    return np.clip((arr.astype(np.float32).transpose(1, 2, 0) + mean)[:, :, ::-1], 0, 255).astype(np.uint8)
