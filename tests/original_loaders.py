"""A straightforward port of the original AdaptSegNet loaders (``dataset/gta5_dataset.py`` and
``dataset/cityscapes_dataset.py`` of wasidennis/AdaptSegNet), written independently of the project's loaders: the
baseline of ``bench/bench_loader.py`` and a reference of ``tests/test_uint8_items.py``.

As the original ran them: ``Image.open(...).convert('RGB')``, the label ``Image.open``, the image resized bicubic
and the label nearest to the crop size, ``np.asarray(image, np.float32)``, the labelIds mapped to trainIds by one
masked assignment per pair of the devkit's 19 labelId -> trainId pairs, channels reversed to BGR, the mean
subtracted in place, the transpose to ``[3, H, W]`` and ``.copy()``. Only the devkit table (``info.json``) is shared
with the project.
"""
from __future__ import annotations

import os.path as osp

import numpy as np
from PIL import Image
from torch.utils import data

from dataset.labels import load_info

#: The original's ``id_to_trainid``: the devkit's 19 (labelId, trainId) pairs.
ID_TO_TRAINID = {int(k): int(v) for k, v in load_info()["label2train"] if 0 <= int(k) < 256 and int(v) != 255}


class GTA5DataSetPort(data.Dataset):
    """The original ``GTA5DataSet`` (items ``(image float32 [3, H, W] BGR - mean, label float32 [H, W], size,
    name)``), without its (unused) scale/mirror flags."""

    def __init__(self, root, list_path, max_iters=None, crop_size=(321, 321), mean=(128, 128, 128), ignore_label=255):
        self.root = root
        self.crop_size = tuple(crop_size)
        self.ignore_label = ignore_label
        self.mean = mean
        self.img_ids = [i_id.strip() for i_id in open(list_path)]
        if max_iters is not None:
            self.img_ids = self.img_ids * int(np.ceil(float(max_iters) / len(self.img_ids)))
        self.files = []
        self.id_to_trainid = ID_TO_TRAINID
        for name in self.img_ids:
            img_file = osp.join(self.root, "images/%s" % name)
            label_file = osp.join(self.root, "labels/%s" % name)
            self.files.append({"img": img_file, "label": label_file, "name": name})

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        datafiles = self.files[index]
        image = Image.open(datafiles["img"]).convert("RGB")
        label = Image.open(datafiles["label"])
        name = datafiles["name"]
        # resize
        image = image.resize(self.crop_size, Image.BICUBIC)
        label = label.resize(self.crop_size, Image.NEAREST)
        image = np.asarray(image, np.float32)
        label = np.asarray(label, np.float32)
        # re-assign labels to match the format of Cityscapes
        label_copy = 255 * np.ones(label.shape, dtype=np.float32)
        for k, v in self.id_to_trainid.items():
            label_copy[label == k] = v
        size = image.shape
        image = image[:, :, ::-1]  # change to BGR
        image -= self.mean
        image = image.transpose((2, 0, 1))
        return image.copy(), label_copy.copy(), np.array(size), name


class CityscapesDataSetPort(data.Dataset):
    """The original ``cityscapesDataSet`` (items ``(image float32 [3, H, W] BGR - mean, size, name)``)."""

    def __init__(self, root, list_path, max_iters=None, crop_size=(321, 321), mean=(128, 128, 128), set="val"):
        self.root = root
        self.crop_size = tuple(crop_size)
        self.mean = mean
        self.img_ids = [i_id.strip() for i_id in open(list_path)]
        if max_iters is not None:
            self.img_ids = self.img_ids * int(np.ceil(float(max_iters) / len(self.img_ids)))
        self.files = []
        self.set = set
        for name in self.img_ids:
            img_file = osp.join(self.root, "leftImg8bit/%s/%s" % (self.set, name))
            self.files.append({"img": img_file, "name": name})

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        datafiles = self.files[index]
        image = Image.open(datafiles["img"]).convert("RGB")
        name = datafiles["name"]
        # resize
        image = image.resize(self.crop_size, Image.BICUBIC)
        image = np.asarray(image, np.float32)
        size = image.shape
        image = image[:, :, ::-1]  # change to BGR
        image -= self.mean
        image = image.transpose((2, 0, 1))
        return image.copy(), np.array(size), name
