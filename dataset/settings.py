"""The paper's adaptation settings in one table: per source and per target, the loader, the default input
size, data directory and list, the class count, the snapshot name prefix and the evaluation class subset.

The training script takes ``--source`` / ``--target`` and fills every flag the user did not give from
here, so ``--source gta5 --target cityscapes`` (the defaults) is exactly the original's run.

Input sizes, as ``(W, H)``:

* GTA5 1280x720 and Cityscapes 1024x512: the original AdaptSegNet defaults.
* SYNTHIA-RAND-CITYSCAPES 1280x760: its native size, not resized (the size later AdaptSegNet-based code,
  e.g. MaxSquareLoss, BDL, ADVENT, trains SYNTHIA -> Cityscapes at).
* Synscapes 1440x720: its native size.
* Cityscapes as the source and Cross-City as the target 1024x512: both are 2048x1024 and are resized as
  Cityscapes is in GTA5 -> Cityscapes (also MaxSquareLoss's Cityscapes -> NTHU setting).

Class count: every model outputs the **19** Cityscapes classes, whatever the source (the original's
classifier and discriminators, its initialisation rule and its evaluation unchanged). A SYNTHIA-trained
model never sees terrain, truck or train; the paper reports SYNTHIA -> Cityscapes over 13 classes and
Cross-City over its 13 annotated classes, so those settings evaluate the subset 13 of the 19-class
confusion matrix (``utils.metrics.CLASS_SUBSETS``). The original code for these settings was never released;
this choice follows the released GTA5 code (and AdaptSegNet-derived code such as BDL, whose SYNTHIA loader
keeps 19 outputs), not a 16-class head as in ADVENT/CBST.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from dataset.cityscapes_dataset import CityscapesSourceDataSet, cityscapesDataSet
from dataset.crosscity_dataset import CITIES, CrossCityDataSet
from dataset.gta5_dataset import GTA5DataSet
from dataset.labels import NUM_CLASSES
from dataset.synscapes_dataset import SynscapesDataSet
from dataset.synthia_dataset import SYNTHIADataSet


@dataclass(frozen=True)
class SourceSetting:
    """A labelled source domain."""

    title: str
    dataset: type
    input_size: tuple[int, int]  # (W, H)
    data_dir: str
    #: ``None``: every image of the dataset's image folder (the dataset ships no list)
    data_list: Optional[str]
    #: snapshots are ``<prefix>_<iter>.pth`` (``GTA5_<iter>.pth`` as the original for GTA5)
    snapshot_prefix: str
    num_classes: int
    #: size of the class subset the paper reports for this source (19, 16 or 13)
    eval_classes: int


@dataclass(frozen=True)
class TargetSetting:
    """An unlabelled target domain (and its labelled evaluation split)."""

    title: str
    dataset: type
    input_size: tuple[int, int]  # (W, H)
    data_dir: str
    data_list: Optional[str]
    eval_classes: int
    #: the source of the paper's setting for this target, used when ``--source`` is not given
    default_source: str
    #: the labelled split that evaluation reads, and its list file (``None``: every image of the split)
    eval_set: str
    eval_list: Optional[str]


SOURCES: dict[str, SourceSetting] = {
    "gta5": SourceSetting("GTA5", GTA5DataSet, (1280, 720), "./data/GTA5", "./dataset/gta5_list/train.txt",
                          "GTA5", NUM_CLASSES, 19),
    "synthia": SourceSetting("SYNTHIA-RAND-CITYSCAPES", SYNTHIADataSet, (1280, 760), "./data/SYNTHIA", None,
                             "SYNTHIA", NUM_CLASSES, 13),
    "synscapes": SourceSetting("Synscapes", SynscapesDataSet, (1440, 720), "./data/Synscapes", None,
                               "Synscapes", NUM_CLASSES, 19),
    "cityscapes": SourceSetting("Cityscapes", CityscapesSourceDataSet, (1024, 512), "./data/Cityscapes/data",
                                "./dataset/cityscapes_list/train.txt", "Cityscapes", NUM_CLASSES, 19),
}

TARGETS: dict[str, TargetSetting] = {
    "cityscapes": TargetSetting("Cityscapes", cityscapesDataSet, (1024, 512), "./data/Cityscapes/data",
                                "./dataset/cityscapes_list/train.txt", 19, "gta5", "val",
                                "./dataset/cityscapes_list/val.txt"),
    "crosscity": TargetSetting("Cross-City (NTHU)", CrossCityDataSet, (1024, 512), "./data/NTHU_Datasets", None,
                               13, "cityscapes", "test", None),
}


def resolve_setting(source: str | None, target: str, city: str | None) -> str:
    """The source of a ``--source`` / ``--target`` / ``--city`` combination, checked.

    ``source=None``: the target's paper setting (gta5 for cityscapes, cityscapes for crosscity). Raises
    ``ValueError`` naming the flag for an unknown name, ``--target crosscity`` without ``--city``, or ``--city``
    with another target. The training script and ``tools/check_data.py`` both go through here.
    """
    if target not in TARGETS:
        raise ValueError(f"--target {target!r}: unknown target; expected one of {', '.join(TARGETS)}")
    if source is None:
        source = TARGETS[target].default_source
    if source not in SOURCES:
        raise ValueError(f"--source {source!r}: unknown source; expected one of {', '.join(SOURCES)}")
    if target == "crosscity" and city is None:
        raise ValueError(f"--target crosscity needs --city ({', '.join(CITIES)})")
    if target != "crosscity" and city is not None:
        raise ValueError(f"--city {city} applies to --target crosscity only (--target is {target})")
    if city is not None and city not in CITIES:
        raise ValueError(f"--city {city!r}: unknown Cross-City city; expected one of {', '.join(CITIES)}")
    return source


def eval_classes(source: str, target: str) -> int:
    """The class subset to report for a (source, target) pair: the smaller of the two (the subsets nest)."""
    return min(SOURCES[source].eval_classes, TARGETS[target].eval_classes)


def training_sets(source: str, target: str | None, *, data_dir: str, data_list: str | None, input_size: tuple,
                  data_dir_target: str | None = None, data_list_target: str | None = None,
                  input_size_target: tuple | None = None, city: str | None = None, set: str = "train",
                  max_iters: int | None = None, mirror: bool = False, scale: bool = False, ignore_label: int = 255,
                  mean=None, seed: int = 0, **options):
    """The source and target training sets of a setting, built as the original built GTA5 and Cityscapes (their
    checks raise ``DatasetError``): source items ``(image, label, size, name)``, target items ``(image, size,
    name)`` (``target=None``: no target set), each list repeated to ``max_iters`` items. ``scale`` (the random
    rescale) applies to the source only, ``mirror`` to both; ``options`` (``uint8``, ``data_cache``) to both."""
    common = dict(max_iters=max_iters, mirror=mirror, seed=seed, **({} if mean is None else {"mean": mean}), **options)
    source_set = SOURCES[source].dataset(data_dir, data_list, crop_size=input_size, scale=scale,
                                         ignore_label=ignore_label, **common)
    if target is None:
        return source_set, None
    city_arg = (city,) if target == "crosscity" else ()
    return source_set, TARGETS[target].dataset(data_dir_target, *city_arg, data_list_target,
                                               crop_size=input_size_target, scale=False, set=set, **common)


def validation_set(target: str, data_dir: str, data_list: str | None, input_size: tuple, city: str | None = None,
                   **options):
    """The labelled evaluation split of ``target`` (``TargetSetting.eval_set``): items ``(image, label, size,
    name)`` with the label in trainIds at its native resolution (predictions are upsampled to it); ``options``
    (``uint8``, ``data_cache``) go to the dataset."""
    setting = TARGETS[target]
    city_arg = (city,) if target == "crosscity" else ()
    return setting.dataset(data_dir, *city_arg, data_list, crop_size=input_size, set=setting.eval_set,
                           return_label=True, **options)


__all__ = ["SourceSetting", "TargetSetting", "SOURCES", "TARGETS", "CITIES", "eval_classes", "resolve_setting",
           "training_sets", "validation_set"]
