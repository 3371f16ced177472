"""Every loader of the project on tiny generated data, for the uint8-item and cache tests: one constructor per
loader, all taking the same keyword arguments (``crop_size``, ``max_iters``, ``mirror``, ``seed``, ``uint8``,
``data_cache``, ...)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dataset.cityscapes_dataset import CityscapesSourceDataSet, cityscapesDataSet
from dataset.crosscity_dataset import CrossCityDataSet
from dataset.gta5_dataset import GTA5DataSet
from dataset.synscapes_dataset import SynscapesDataSet
from dataset.synthia_dataset import SYNTHIADataSet
from tools.make_synthetic_data import make_synthetic_datasets, make_synthetic_other_settings


@dataclass(frozen=True)
class AllData:
    main: object  # SyntheticPaths
    other: object  # OtherSyntheticPaths


def make_all_data(root: Path) -> AllData:
    """GTA5, Cityscapes (train with labels, val), SYNTHIA, Synscapes and Cross-City Rome, 3 images each (sizes
    that differ from every crop size used, so that the resize is never the identity)."""
    main = make_synthetic_datasets(root, num_source=3, num_target_train=3, num_val=2, source_size=(57, 33),
                                   target_size=(64, 32), seed=1, cityscapes_train_labels=True)
    other = make_synthetic_other_settings(root, num_source=3, num_target_train=3, num_test=2, seed=1)
    return AllData(main, other)


#: loader name -> (constructor(data, **kw), is a source)
LOADERS: dict[str, tuple[Callable, bool]] = {
    "gta5": (lambda d, **kw: GTA5DataSet(d.main.gta5_root, d.main.gta5_list, **kw), True),
    "synthia": (lambda d, **kw: SYNTHIADataSet(d.other.synthia_root, None, **kw), True),
    "synscapes": (lambda d, **kw: SynscapesDataSet(d.other.synscapes_root, None, **kw), True),
    "cityscapes_source": (lambda d, **kw: CityscapesSourceDataSet(d.main.cityscapes_root,
                                                                  d.main.cityscapes_train_list, **kw), True),
    "cityscapes": (lambda d, **kw: cityscapesDataSet(d.main.cityscapes_root, d.main.cityscapes_train_list,
                                                     set="train", **kw), False),
    "crosscity": (lambda d, **kw: CrossCityDataSet(d.other.crosscity_root, d.other.city, None, set="train", **kw),
                  False),
}
