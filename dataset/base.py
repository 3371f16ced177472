"""The one base class of every loader, source (GTA5, SYNTHIA, Synscapes, Cityscapes) and target (Cityscapes,
Cross-City).

Every loader reads an item as the original AdaptSegNet loaders did: the image resized to ``crop_size``
(bicubic), a source's label resized to it too (nearest), optional augmentation, BGR minus the mean
(:func:`dataset.transforms.preprocess`). A subclass only says where a name's files are, how a label file
becomes an 8-bit image, and what its messages call things.

Beyond the original (same results, opt-in here; the training and evaluation scripts use them): uint8 items, whose
float conversion happens on the training device (``uint8=True``, :func:`dataset.transforms.to_network_input`), and
an exact cache of the resized frames (``data_cache``, :mod:`dataset.cache`).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from torch.utils import data

from dataset.cache import DataCache
from dataset.checks import (
    DatasetError,
    check_files_exist,
    check_label_modes_sample,
    check_root,
    open_label,
    read_list,
)
from dataset.decode import read_rgb
from dataset.labels import IGNORE_LABEL, IMG_MEAN
from dataset.transforms import (
    CITYSCAPES_STREAM,
    GTA5_STREAM,
    item_rng,
    label_fits_uint8,
    map_labels,
    parse_crop_size,
    preprocess,
    preprocess_uint8,
    repeat_names,
    train_id_table,
)


class BaseDataSet(data.Dataset):
    """A source set (items ``(image, label, size, name)``) or a target set (items ``(image, size, name)``,
    or ``(image, label, size, name)`` with ``return_label``).

    Args:
        root: the dataset directory (``--data-dir`` / ``--data-dir-target``).
        list_path: text file of names, one per line; ``None`` (where the loader supports it): every image
            of the image directory (:meth:`list_directory`), sorted by name, so that the order is the
            same on every machine.
        max_iters: when given, the list is repeated so that one pass covers the whole run
            (:func:`dataset.transforms.repeat_names`).
        crop_size: ``(W, H)``: every image is resized (bicubic) and every source label (nearest) to
            exactly this size; no cropping by default, as the original.
        mean: BGR mean subtracted from the image.
        scale, mirror: opt-in augmentation, off by default (:func:`dataset.transforms.preprocess`).
        ignore_label: trainId written for labels outside the 19 classes (and for padding).
            The original always wrote 255; the default keeps that.
        seed: with ``(seed, index)`` it determines the augmentation of each item.
        check_files: check at construction that the root, the list and every listed image (and label)
            exist; a problem raises one :class:`~dataset.checks.DatasetError`.
        uint8: hand out uint8 items (below), converted to the network's float32 input on the training device by
            :func:`dataset.transforms.to_network_input`, bitwise the float32 item. Not with ``scale``, whose
            padding holds the mean (float32 items then, whatever ``uint8`` says).
        data_cache: a cache directory written by ``tools/prepare_cache.py`` (:mod:`dataset.cache`): read the
            resized frames from there instead of decoding and resizing the files; the items are bitwise the same.
            Checked at construction (:class:`dataset.cache.CacheError` naming the file and the command that
            rebuilds it). Not with ``scale``, which needs the full-resolution frames (``ValueError``).

    A subclass with more arguments (``set``, ``return_label``, Cross-City's ``city``) stores them before
    calling this ``__init__``. With ``return_label``, a target also returns its label mapped to trainIds at
    the file's **native** resolution (evaluation upsamples predictions to it), so it cannot be combined with
    ``scale``/``mirror``.

    Item (float32, the original's; the default):
        image: float32 ndarray ``[3, H, W]``: BGR, minus ``mean``.
        label (source): float32 ndarray ``[H, W]``: trainIds 0..18, ``ignore_label`` elsewhere.
        label (target, only with ``return_label``): uint8 ndarray ``[h, w]`` of trainIds, native size.
        size: int ndarray ``[H, W, 3]``: the shape of the resized image.
        name: the list entry.

    Item with ``uint8=True`` (and no ``scale``): the same, but
        image: uint8 ndarray ``[H, W, 3]``: the resized image's **RGB** pixels as Pillow gives them (no transpose:
            a copy less on the CPU, and ``[N, H, W, 3]`` is a channels-last batch on the device).
        label (source): uint8 ndarray ``[H, W]`` when ``ignore_label`` is in 0..255 (the training script's
            ``.long()`` gives the same values), else float32 as above.
    """

    #: Source (label resized with the image, GTA5 random stream) or target (Cityscapes stream).
    source = True
    #: Target sets only: also return the label, at its native resolution.
    return_label = False
    #: What the user calls the dataset (in messages).
    dataset_name = ""
    #: What the root directory should hold (in messages).
    root_holds = ""
    #: The log line's name of the set when it is not :attr:`dataset_name`.
    title = ""
    #: Target sets: what the messages call the images and the labels.
    image_files = label_files = ""
    #: Pattern of the images below :meth:`image_dir` when there is no list file.
    listing_glob = "*.png"
    #: What :func:`~dataset.checks.open_label` tells a user whose label has the wrong mode.
    label_hint: str
    #: Check the modes of a sample of the labels at construction (GTA5's palette labels, which users convert).
    sample_label_modes = False

    def __init__(
        self,
        root: str | Path,
        list_path: str | Path | None = None,
        max_iters: int | None = None,
        crop_size: Sequence[int] = (321, 321),
        mean: Sequence[float] | np.ndarray = IMG_MEAN,
        scale: bool = False,
        mirror: bool = False,
        ignore_label: int = IGNORE_LABEL,
        seed: int = 0,
        check_files: bool = True,
        uint8: bool = False,
        data_cache: str | Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.list_path = Path(list_path) if list_path is not None else None
        self.crop_size = parse_crop_size(crop_size)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3)
        self.scale = bool(scale)
        self.is_mirror = bool(mirror)
        self.ignore_label = ignore_label
        self.seed = int(seed)
        self.uint8 = bool(uint8) and not self.scale
        self.cache: DataCache | None = None
        if data_cache is not None and self.scale:
            raise ValueError(f"{type(self).__name__}: scale (--random-scale) rescales the full-resolution frames, "
                             "which a data cache does not hold (it holds them resized to the input size): drop the "
                             f"cache (--data-cache {data_cache}) or the scale augmentation")
        self.check_ready()
        if self.return_label and (self.scale or self.is_mirror):
            raise ValueError(f"{type(self).__name__}: return_label=True returns the label at its native resolution "
                             "for evaluation and cannot be combined with scale/mirror augmentation")
        if self.return_label and not 0 <= int(ignore_label) <= 255:
            raise ValueError(f"{type(self).__name__}: ignore_label must be in 0..255 with return_label, "
                             f"got {ignore_label}")
        if check_files or self.list_path is None:
            check_root(self.root, f"{self.dataset_name} data directory", self.root_holds)
        if self.list_path is None:
            names, where = self.list_directory(), str(self.image_dir())
        else:
            names, where = self.read_names(), str(self.list_path)
        labelled = self.source or self.return_label
        pairs = [(self.image_path(n), self.label_path(n) if labelled else None) for n in names]
        if check_files and self.source:
            check_files_exist([p for pair in pairs for p in pair], f"{self.dataset_name} images/labels", where)
            if self.sample_label_modes:
                check_label_modes_sample([lab for _, lab in pairs], self.label_hint)
        elif check_files:
            check_files_exist([img for img, _ in pairs], self.image_files, where)
            if self.return_label:
                check_files_exist([lab for _, lab in pairs], self.label_files, where)
        self.img_ids = repeat_names(names, max_iters)
        # One dict per distinct name, repeated like the names: the default schedule
        # repeats the list to 250,000 items, and building a Path pair for each cost seconds.
        self.files = repeat_names([{"img": img, "label": lab, "name": n} for n, (img, lab) in zip(names, pairs)],
                                  max_iters)
        self.label_table = self.make_label_table(ignore_label) if labelled else None
        if self.uint8 and self.source and label_fits_uint8(ignore_label):
            self.label_table = self.label_table.astype(np.uint8)  # trainIds and ignore_label: exact in uint8
        if data_cache is not None:
            self.cache = DataCache.open(data_cache, self)
        # logged under the loader's module, as each loader logged before they shared this class
        logging.getLogger(type(self).__module__).info(
            "%s: %d names from %s (%d items)", self.title or self.dataset_name, len(names), where, len(self.files))

    # -- what a subclass provides ----------------------------------------------------------------------------------

    def check_ready(self) -> None:
        """Hook run before any file is touched (e.g. an optional reader library is importable)."""

    def image_dir(self) -> Path:
        """The folder of the images (loaders that can list it, or that name images relative to it)."""
        raise NotImplementedError

    def image_path(self, name: str) -> Path:
        return self.image_dir() / name

    def label_path(self, name: str) -> Path:
        raise NotImplementedError

    def load_label(self, path: Path) -> Image.Image:
        """The label file as an 8-bit ('L'/'P') image whose values :attr:`label_table` maps to trainIds."""
        return open_label(path, self.label_hint)

    def make_label_table(self, ignore_label: int | float) -> np.ndarray:
        """Default: the label values are Cityscapes labelIds (:data:`dataset.labels.LABEL2TRAIN`); float32 for
        a source's resized label, uint8 for a target's native one."""
        return train_id_table(ignore_label, np.float32 if self.source else np.uint8)

    def cache_slug(self) -> str:
        """The dataset (and split) part of :meth:`cache_name`, e.g. ``gta5``, ``cityscapes-train``."""
        raise NotImplementedError

    def cache_name(self) -> str:
        """The folder of this dataset's cache under a cache directory: dataset, split and input size, e.g.
        ``gta5-1280x720`` (:mod:`dataset.cache`)."""
        w, h = self.crop_size
        return f"{self.cache_slug().replace(os.sep, '_')}-{w}x{h}"

    def read_names(self) -> list[str]:
        """The names of the list file."""
        return read_list(self.list_path, f"{self.dataset_name} list file")

    def list_directory(self) -> list[str]:
        """Every image below :meth:`image_dir` matching :attr:`listing_glob`, as relative POSIX names, sorted."""
        image_dir = self.image_dir()
        if not image_dir.is_dir():
            raise DatasetError(f"{self.dataset_name} image directory {image_dir} does not exist (expected "
                               f"{self.root_holds or 'the images'} under {self.root})")
        names = sorted(p.relative_to(image_dir).as_posix() for p in image_dir.glob(self.listing_glob) if p.is_file())
        if not names:
            raise DatasetError(f"{self.dataset_name} image directory {image_dir} holds no {self.listing_glob} files")
        return names

    # -- items -----------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.files)

    def read_resized(self, datafiles: dict) -> tuple[Image.Image, Image.Image | None]:
        """The entry ``datafiles`` (an element of :attr:`files`) decoded and resized to ``crop_size``, before any
        augmentation: the RGB image (bicubic) and, for a source, the 8-bit label image :meth:`load_label` gives
        (nearest; ``None`` for a target). What the cache stores (:func:`dataset.cache.write_entry`)."""
        image = read_rgb(datafiles["img"]).resize(self.crop_size, Image.Resampling.BICUBIC)
        label = None
        if self.source:
            # The label goes to the crop size with the image, as the original's did; this also absorbs
            # the few-pixel image/label size mismatches of some real GTA5 frames.
            label = self.load_label(datafiles["label"]).resize(self.crop_size, Image.Resampling.NEAREST)
        return image, label

    def __getitem__(self, index: int) -> tuple:
        datafiles = self.files[index]
        if self.cache is not None:
            image, label = self.cache.read(datafiles["name"])  # uint8 arrays, as read_resized's pixels
        else:
            image, label = self.read_resized(datafiles)
        rng = item_rng(self.seed, index, GTA5_STREAM if self.source else CITYSCAPES_STREAM)
        if self.uint8:
            image, label, size = preprocess_uint8(np.asarray(image), None if label is None else np.asarray(label),
                                                  rng, self.is_mirror, self.label_table)
        else:
            if isinstance(image, np.ndarray):  # a cache entry: the float32 path takes PIL images
                image = Image.fromarray(image)
                label = None if label is None else Image.fromarray(label)
            image, label, size = preprocess(image, label, rng, self.scale, self.is_mirror, self.mean,
                                            self.label_table, self.ignore_label)
        if self.source:
            return image, label, size, datafiles["name"]
        if not self.return_label:
            return image, size, datafiles["name"]
        return image, map_labels(self.load_label(datafiles["label"]), self.label_table), size, datafiles["name"]
