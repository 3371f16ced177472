"""Check the training data of any ``--source`` / ``--target`` setting before a multi-day run.

The settings are the training script's (``dataset/settings.py``): source GTA5 (default), SYNTHIA-RAND-CITYSCAPES,
Synscapes or Cityscapes; target Cityscapes (default) or one city of NTHU Cross-City (``--target crosscity
--city Rome``). ``--data-dir``, ``--data-list``, ``--data-dir-target`` and ``--data-list-target`` default to the
setting's row of that table, as in training; a source without a list file (SYNTHIA, Synscapes) or Cross-City
without one means every image of the image folder, as the loaders read it. Paths and label decoding are the
loaders' own (``gta5_paths``, the source datasets' ``image_path`` / ``label_path`` / ``load_label``,
``CrossCityDataSet``), so the checker sees the files exactly as training will.

Decodes every file (in a thread pool) and reports, per section (the source; the target's adaptation images;
its labelled evaluation split, Cityscapes val or Cross-City test, when present):

* list entries (or, without a list, images) whose image or label file is missing: every entry is checked;
* unreadable or truncated PNGs;
* labels in the wrong format: modes other than 'P'/'L' for the 8-bit label sets (e.g. labels converted to RGB,
  whose colours would silently become "ignore" everywhere); for SYNTHIA, a ``GT/LABELS`` file that is not a
  16-bit PNG with 3 or 4 channels (e.g. re-saved by an 8-bit tool, whose class ids are lost);
* label values outside the Cityscapes labelIds 0..33 (other than 255), for the labelId sets (GTA5, Synscapes,
  Cityscapes, Cross-City);
* image/label size mismatches: a few pixels (as some real GTA5 frames) is a warning for a source, since
  resizing to the crop size absorbs it; more is an error, as is any mismatch in an evaluation split (Cityscapes
  val, Cross-City test: evaluation compares label and prediction pixel by pixel);
* per labelled section, "N of 19 classes present, x% of pixels ignored", on the trainIds each loader's label
  table gives.

Prints a summary and exits 1 when something is wrong (0 otherwise; warnings alone do not fail unless
``--strict``), 2 for unusable flags (e.g. ``--target crosscity`` without ``--city``); errors of the tool itself
(a clean list that cannot be written) are one ``check_data.py: error: ...`` line. Typical use::

    python tools/check_data.py --data-dir ./data/GTA5 --data-dir-target ./data/Cityscapes/data
    python tools/check_data.py --source synthia --data-dir ./data/SYNTHIA
    python tools/check_data.py --target crosscity --city Rome --data-dir-target ./data/NTHU_Datasets

From Python: :func:`check_datasets` returns a :class:`Report`.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image

from dataset.checks import (
    CITYSCAPES_LABEL_HINT,
    GTA5_LABEL_HINT,
    DatasetError,
    LabelFormatError,
    check_label_mode,
    check_root,
    find_missing,
    open_image,
    read_list,
)
from dataset.cityscapes_dataset import IMAGE_SUFFIX, cityscapes_image_path, cityscapes_label_path
from dataset.crosscity_dataset import (
    CROSSCITY_LABEL_HINT,
    CrossCityDataSet,
    crosscity_image_dir,
    crosscity_label_path,
)
from dataset.gta5_dataset import gta5_paths
from dataset.labels import LABEL2TRAIN, NUM_CLASSES
from dataset.settings import CITIES, SOURCES, TARGETS, resolve_setting
from dataset.synscapes_dataset import SYNSCAPES_LABEL_HINT
from dataset.synthia_dataset import SYNTHIA_LABEL_HINT
from utils.cli import ArgumentParser, fail, repo_path, usable_cpus
from utils.files import WriteError, atomic_write

PROG = "check_data.py"

#: category -> (level, what the summary calls it)
CATEGORIES: dict[str, tuple[str, str]] = {
    "setup": ("error", "setup problems"),
    "missing": ("error", "missing files"),
    "unreadable": ("error", "unreadable or truncated files"),
    "label_mode": ("error", "labels whose mode is not 'P' or 'L'"),
    "label_format": ("error", "labels not in the dataset's label format"),
    "label_values": ("error", "labels with many ids outside 0..33 (not 255)"),
    "label_values_few": ("warning", "labels with a few ids outside 0..33 (not 255)"),
    "size_mismatch": ("error", "image/label size mismatches"),
    "size_mismatch_few_px": (
        "warning",
        "image/label size mismatches of a few pixels (resizing to the crop size absorbs them)",
    ),
    "dataset": ("warning", "dataset-wide warnings"),
}
#: The categories after which the section's label hint is printed.
LABEL_FORMAT_CATEGORIES = ("label_mode", "label_format")

GTA5_DOWNLOAD = (
    "download the GTA5 images and labels from https://download.visinf.tu-darmstadt.de/data/from_games/ "
    "and extract them so that it holds images/ and labels/, or pass --data-dir"
)
CITYSCAPES_DOWNLOAD = (
    "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com/ "
    "and extract them so that it holds leftImg8bit/ and gtFine/, or pass --data-dir-target"
)
SYNTHIA_DOWNLOAD = (
    "download SYNTHIA-RAND-CITYSCAPES (CVPR16) from http://synthia-dataset.net and extract it so that it holds "
    "RGB/ and GT/LABELS/, or pass --data-dir"
)
SYNSCAPES_DOWNLOAD = (
    "download Synscapes from https://synscapes.on.liu.se/ and extract it so that it holds img/rgb/ and "
    "img/class/, or pass --data-dir"
)
CITYSCAPES_SOURCE_DOWNLOAD = CITYSCAPES_DOWNLOAD.replace("--data-dir-target", "--data-dir")
CROSSCITY_DOWNLOAD = (
    "download the NTHU Cross-City dataset (Rome, Rio, Tokyo, Taipei) from "
    "https://yihsinchen.github.io/segmentation_adaptation_dataset/ and extract it so that it holds "
    "<City>/Images/Train/, <City>/Images/Test/ and <City>/Labels/Test/, or pass --data-dir-target"
)


@dataclass(frozen=True)
class SourceCheck:
    """What the checker says about a labelled source beyond the GTA5 one (paths and decoding are the loader's)."""

    #: the dataset module's advice for a label in the wrong format (printed once per section)
    hint: str
    download: str
    #: "label_mode" (8-bit 'P'/'L' labels, checked from the header even with --no-decode) or "label_format"
    category: str


SOURCE_CHECKS: dict[str, SourceCheck] = {
    "synthia": SourceCheck(SYNTHIA_LABEL_HINT, SYNTHIA_DOWNLOAD, "label_format"),
    "synscapes": SourceCheck(SYNSCAPES_LABEL_HINT, SYNSCAPES_DOWNLOAD, "label_mode"),
    "cityscapes": SourceCheck(CITYSCAPES_LABEL_HINT, CITYSCAPES_SOURCE_DOWNLOAD, "label_mode"),
}


class _SettingDefault:
    """Type of :data:`SETTING`."""

    def __repr__(self) -> str:
        return "SETTING"


#: Default of :func:`check_datasets`' paths: the value of the ``source`` / ``target`` row of
#: ``dataset/settings.py`` (for GTA5 -> Cityscapes the training script's original defaults).
SETTING = _SettingDefault()


#: Share of a label's pixels with ids outside 0..33 (not 255) above which the file is an error.
MAX_ODD_FRACTION = 0.01
#: A size difference of at most this share of each side counts as "a few pixels".
FEW_PIXELS_FRACTION = 0.10
#: How many example paths the printed summary lists per category.
SHOWN = 5


@dataclass(frozen=True)
class LabelSpec:
    """How a section's label files are read and what their values are.

    ``reader=None``: Pillow, mode 'P'/'L' checked with ``hint`` (GTA5, Cityscapes, Cross-City, as their loaders).
    Otherwise the dataset's own ``load_label`` (path -> 8-bit image; raises :class:`LabelFormatError` when the file
    was read but is in the wrong format, :class:`DatasetError` when it is unreadable). ``table`` maps the decoded values to
    trainIds (255 ignored); ``labelids``: the values are Cityscapes labelIds (the 0..33 checks apply).
    """

    hint: str
    reader: Callable[[Path], Image.Image] | None = None
    table: np.ndarray = field(default_factory=lambda: LABEL2TRAIN)
    labelids: bool = True
    category: str = "label_mode"

    @property
    def values(self) -> str:
        """What the decoded values are called in the summary."""
        return "labelIds" if self.labelids else "class ids"


@dataclass
class SectionReport:
    """The findings for one dataset split (e.g. "GTA5 train")."""

    title: str
    root: Path
    list_path: Path | None
    entries: int = 0
    usable: int = 0
    skipped: str | None = None
    problems: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in CATEGORIES})
    image_sizes: Counter = field(default_factory=Counter)
    label_histogram: np.ndarray | None = None
    bad_names: set[str] = field(default_factory=set)
    names: list[str] = field(default_factory=list)
    label_hint: str | None = None
    notes: list[str] = field(default_factory=list)
    #: without a list file: the folder whose images were taken
    listing: Path | None = None
    #: decoded label value -> trainId, and what the values are called (for the summary line)
    label_table: np.ndarray = field(default_factory=lambda: LABEL2TRAIN)
    label_values: str = "labelIds"

    def add(self, category: str, message: str, name: str | None = None) -> None:
        self.problems[category].append(message)
        if name is not None and CATEGORIES[category][0] == "error":
            self.bad_names.add(name)

    def count(self, category: str) -> int:
        return len(self.problems[category])

    def _total(self, level: str) -> int:
        return sum(len(v) for k, v in self.problems.items() if CATEGORIES[k][0] == level)

    @property
    def errors(self) -> int:
        return self._total("error")

    @property
    def warnings(self) -> int:
        return self._total("warning")


@dataclass
class Report:
    """All sections; ``ok`` when no section has an error."""

    sections: list[SectionReport] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.sections)

    @property
    def warnings(self) -> int:
        return sum(s.warnings for s in self.sections)

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def section(self, title_start: str) -> SectionReport:
        """The first section whose title starts with ``title_start`` (e.g. "GTA5")."""
        for s in self.sections:
            if s.title.startswith(title_start):
                return s
        raise KeyError(title_start)

    def format(self, shown: int = SHOWN) -> str:
        lines = []
        for s in self.sections:
            where = f"root {s.root}" + (f", list {s.list_path}" if s.list_path else "")
            if s.listing is not None:
                where += f", every image of {s.listing}"
            lines.append(f"== {s.title} ({where})")
            if s.skipped:
                lines.append(f"   skipped: {s.skipped}")
                continue
            if s.entries or not s.count("setup"):
                counted = "images found" if s.listing is not None else "list entries"
                lines.append(f"   {s.entries} {counted}, {s.usable} usable")
            if s.image_sizes:
                common = ", ".join(f"{w}x{h} ({n})" for (w, h), n in s.image_sizes.most_common(3))
                more = f", {len(s.image_sizes) - 3} more sizes" if len(s.image_sizes) > 3 else ""
                lines.append(f"   image sizes: {common}{more}")
            if s.label_histogram is not None and s.label_histogram.sum():
                lines.append("   labels: " + _label_summary(s.label_histogram, s.label_table, s.label_values))
            for category, items in s.problems.items():
                if not items:
                    continue
                level, what = CATEGORIES[category]
                lines.append(f"   {level.upper():7s} {len(items)} {what}:")
                lines.extend(f"             {m}" for m in items[:shown])
                if len(items) > shown:
                    lines.append(f"             ... and {len(items) - shown} more")
                if category in LABEL_FORMAT_CATEGORIES and s.label_hint:
                    lines.append(f"             {s.label_hint}")
            lines.extend(f"   note: {n}" for n in s.notes)
            if not s.errors and not s.warnings:
                lines.append("   OK")
        if any((s.count("missing") or s.count("unreadable")) and s.usable for s in self.sections):
            lines.append(
                "Tip: re-download/re-extract the files above, or pass --write-clean-lists DIR to write "
                "the lists without the failing entries and train on those."
            )
        verdict = "OK" if self.ok else "FAILED: fix the errors above before training"
        lines.append(f"Summary: {self.errors} error(s), {self.warnings} warning(s). {verdict}")
        return "\n".join(lines)


def _train_histogram(hist: np.ndarray, table: np.ndarray = LABEL2TRAIN) -> np.ndarray:
    """Pixels per trainId (``NUM_CLASSES`` bins) of a 256-bin histogram of decoded label values."""
    train = np.zeros(NUM_CLASSES, dtype=np.int64)
    table = np.asarray(table)
    mapped = table < NUM_CLASSES
    np.add.at(train, table[mapped].astype(np.int64), hist[mapped])
    return train


def _label_summary(hist: np.ndarray, table: np.ndarray = LABEL2TRAIN, values: str = "labelIds") -> str:
    total = int(hist.sum())
    train = _train_histogram(hist, table)
    ignored = total - int(train.sum())
    return (
        f"{int((train > 0).sum())} of {NUM_CLASSES} classes present, "
        f"{100.0 * ignored / total:.1f}% of pixels ignored ({values} outside the 19 classes)"
    )


def _fmt_size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _few_pixels(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return all(abs(x - y) <= max(1.0, FEW_PIXELS_FRACTION * max(x, y)) for x, y in zip(a, b))


def _inspect(path: Path, decode: bool, what: str) -> Image.Image:
    """Decode (or, without ``decode``, just read the header of) ``path``. DatasetError when unreadable."""
    if decode:
        return open_image(path, what)
    try:
        with Image.open(path) as img:
            return img
    except Exception as exc:
        raise DatasetError(f"cannot read {what} {path}: {exc}") from None


@dataclass
class _Entry:
    name: str
    problems: list[tuple[str, str]] = field(default_factory=list)
    image_size: tuple[int, int] | None = None
    histogram: np.ndarray | None = None


def _check_entry(
    name: str,
    image_path: Path | None,
    label_path: Path | None,
    missing: set[Path],
    decode: bool,
    labels: LabelSpec | None,
    strict_size: bool,
) -> _Entry:
    """Check one list entry: its image and (if any) its label."""
    entry = _Entry(name)
    image_size = label_size = None
    if image_path is not None:
        if image_path in missing:
            entry.problems.append(("missing", str(image_path)))
        else:
            try:
                image_size = _inspect(image_path, decode, "image").size
                entry.image_size = image_size
            except DatasetError as exc:
                entry.problems.append(("unreadable", str(exc)))
    if label_path is not None and labels is not None:
        if label_path in missing:
            entry.problems.append(("missing", str(label_path)))
        elif labels.reader is not None:
            label_size = _read_label(entry, label_path, decode, labels)
        else:
            try:
                label = _inspect(label_path, decode, "label")
            except DatasetError as exc:
                entry.problems.append(("unreadable", str(exc)))
            else:
                try:
                    check_label_mode(label, label_path, labels.hint)
                except DatasetError:
                    entry.problems.append(("label_mode", f"{label_path}: mode {label.mode!r}"))
                else:
                    label_size = label.size
                    if decode:
                        entry.histogram = np.bincount(np.asarray(label, dtype=np.uint8).ravel(), minlength=256)
                        entry.problems.extend(_value_problems(label_path, entry.histogram))
    if image_size is not None and label_size is not None and image_size != label_size:
        msg = f"{label_path}: image {_fmt_size(image_size)}, label {_fmt_size(label_size)}"
        few = _few_pixels(image_size, label_size) and not strict_size
        entry.problems.append(("size_mismatch_few_px" if few else "size_mismatch", msg))
    return entry


def _read_label(entry: _Entry, path: Path, decode: bool, labels: LabelSpec) -> tuple[int, int] | None:
    """Read ``path`` with the dataset's own reader (``labels.reader``); record problems and the histogram of the
    decoded values in ``entry``; return the label's (W, H), or None when it cannot be used.

    Without ``decode`` only the header is read: its size, and its mode where the labels are 8-bit 'P'/'L' PNGs
    (a 16-bit SYNTHIA label's format shows only when it is decoded).
    """
    if not decode:
        try:
            header = _inspect(path, False, "label")
        except DatasetError as exc:
            entry.problems.append(("unreadable", str(exc)))
            return None
        if labels.category == "label_mode":
            try:
                check_label_mode(header, path, labels.hint)
            except DatasetError:
                entry.problems.append(("label_mode", f"{path}: mode {header.mode!r}"))
                return None
        return header.size
    try:
        label = labels.reader(path)
    except LabelFormatError as exc:  # read, but not in the dataset's format: the hint is printed once per section
        entry.problems.append((labels.category, str(exc).replace(labels.hint, "").strip()))
        return None
    except DatasetError as exc:
        entry.problems.append(("unreadable", str(exc)))
        return None
    entry.histogram = np.bincount(np.asarray(label, dtype=np.uint8).ravel(), minlength=256)
    if labels.labelids:
        entry.problems.extend(_value_problems(path, entry.histogram))
    return label.size


def _value_problems(path: Path, hist: np.ndarray) -> list[tuple[str, str]]:
    odd = hist.copy()
    odd[:34] = 0
    odd[255] = 0
    n_odd = int(odd.sum())
    if not n_odd:
        return []
    fraction = n_odd / int(hist.sum())
    ids = np.nonzero(odd)[0]
    shown = ", ".join(str(i) for i in ids[:8]) + (", ..." if len(ids) > 8 else "")
    msg = f"{path}: ids {shown} on {100.0 * fraction:.2f}% of the pixels"
    return [("label_values" if fraction > MAX_ODD_FRACTION else "label_values_few", msg)]


def _run_section(
    section: SectionReport,
    names: list[str],
    paths: Callable[[str], tuple[Path | None, Path | None]],
    decode: bool,
    labels: LabelSpec | None,
    strict_size: bool,
    workers: int | None,
    max_entries: int | None,
    progress: bool,
) -> None:
    section.entries = len(names)
    section.names = names
    if labels is not None:
        section.label_hint = labels.hint
        section.label_table = labels.table
        section.label_values = labels.values
    pairs = [paths(n) for n in names]
    all_files = [p for pair in pairs for p in pair if p is not None]
    missing = set(find_missing(all_files))
    if all_files and len(missing) == len(all_files):
        section.notes.append(
            f"none of the listed files exist under {section.root}: is it the right directory "
            f"(expected e.g. {all_files[0]})?"
        )
    todo = list(zip(names, pairs))
    if max_entries is not None:
        # existence is checked for every entry (cheap); decoding only for the first max_entries
        for name, pair in todo[max_entries:]:
            for p in pair:
                if p is not None and p in missing:
                    section.add("missing", str(p), name)
        todo = todo[:max_entries]
    jobs = ((n, i, lab, missing, decode, labels, strict_size) for n, (i, lab) in todo)
    hist = np.zeros(256, dtype=np.int64)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results: Iterable[_Entry] = pool.map(lambda a: _check_entry(*a), jobs)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(todo), desc=section.title, file=sys.stderr)
        for entry in results:
            if not any(CATEGORIES[c][0] == "error" for c, _ in entry.problems):
                section.usable += 1
            for category, msg in entry.problems:
                section.add(category, msg, entry.name)
            if entry.image_size is not None:
                section.image_sizes[entry.image_size] += 1
            if entry.histogram is not None:
                hist += entry.histogram
    if labels is not None and decode and hist.sum():
        section.label_histogram = hist
        if labels.labelids and hist[19:34].sum() == 0:
            section.add(
                "dataset",
                "no pixel has a labelId in 19..33 (traffic light ... bicycle, sky, person, car): "
                "are these trainId files (e.g. *_labelTrainIds.png) instead of labelIds?",
            )
        elif not labels.labelids and not _train_histogram(hist, labels.table).any():
            section.add(
                "dataset",
                "every decoded label pixel is ignored (no class id maps to one of the 19 classes): "
                "are these the dataset's original label files?",
            )


def check_datasets(
    data_dir: str | Path | None = SETTING,
    data_dir_target: str | Path | None = SETTING,
    data_list: str | Path | None = SETTING,
    data_list_target: str | Path | None = SETTING,
    data_list_val: str | Path | None = SETTING,
    set: str = "train",
    val_set: str = SETTING,
    decode: bool = True,
    workers: int | None = None,
    max_entries: int | None = None,
    progress: bool = False,
    source: str | None = None,
    target: str = "cityscapes",
    city: str | None = None,
) -> Report:
    """Check the data directories of a ``source`` -> ``target`` setting; never raises for bad data, reports it.

    ``source`` / ``target`` / ``city`` are the training script's (``source=None``: the target's paper setting);
    a bad combination raises ``ValueError``. Paths left at :data:`SETTING` take the setting's row of
    ``dataset/settings.py`` (for GTA5 -> Cityscapes ``./data/GTA5``, ``./dataset/gta5_list/train.txt``,
    ``./data/Cityscapes/data``, ``./dataset/cityscapes_list/train.txt``); a list of ``None`` means every image
    of the image folder where the loader allows it (SYNTHIA, Synscapes, Cityscapes as the source, Cross-City).

    Sections: the source (``data_dir``, skipped when None), the target's ``set`` images (``data_dir_target``,
    skipped when None) and, unless ``data_list_val`` is None, the target's labelled evaluation split
    ``val_set`` (:data:`SETTING`: Cityscapes ``val`` with ``./dataset/cityscapes_list/val.txt``, Cross-City
    ``test`` with every image) when its image folder exists, with its labels when their folder exists.
    ``decode=False`` reads only headers (no truncation or value checks, no SYNTHIA label format);
    ``max_entries`` limits decoding (not the existence check) to the first entries of each list.
    """
    source = resolve_setting(source, target, city)
    src, tgt = SOURCES[source], TARGETS[target]
    data_dir = src.data_dir if data_dir is SETTING else data_dir
    data_list = repo_path(src.data_list, "--data-list") if data_list is SETTING else data_list
    data_dir_target = tgt.data_dir if data_dir_target is SETTING else data_dir_target
    if data_list_target is SETTING:
        data_list_target = repo_path(tgt.data_list, "--data-list-target")
    val_set = tgt.eval_set if val_set is SETTING else val_set
    check_eval = data_list_val is not None
    data_list_val = repo_path(tgt.eval_list, "--data-list-val") if data_list_val is SETTING else data_list_val

    report = Report()
    common = dict(decode=decode, workers=workers, max_entries=max_entries, progress=progress)
    if data_dir is not None:
        if source == "gta5":
            _check_gta5(report, data_dir, data_list, common)
        else:
            _check_labelled_source(report, source, data_dir, data_list, common)
    if data_dir_target is not None:
        if target == "cityscapes":
            _check_cityscapes_target(report, data_dir_target, data_list_target,
                                     data_list_val if check_eval else None, set, val_set, common)
        else:
            _check_crosscity(report, data_dir_target, city, data_list_target, check_eval, data_list_val, set,
                             val_set, common)
    return report


def _new_section(report: Report, title: str, root, list_path, what: str, download_hint: str):
    """Append a section for ``root``: ``(section, True)``, or ``(section, False)`` with a setup error (naming
    ``what`` and how to get the data) when ``root`` is not a directory."""
    s = SectionReport(title, Path(root), Path(list_path) if list_path is not None else None)
    report.sections.append(s)
    try:
        check_root(root, what)
    except DatasetError as exc:
        s.add("setup", f"{exc}: {download_hint}")
        return s, False
    return s, True


def _listed_section(report: Report, title: str, root, list_path, what: str, download_hint: str):
    """A section for a dataset read through a list file: ``(section, names)``, names None after a setup error."""
    s, ok = _new_section(report, title, root, list_path, what, download_hint)
    if not ok:
        return s, None
    if list_path is None:
        s.add("setup", f"{title} needs a list file (none given)")
        return s, None
    try:
        names = read_list(list_path, f"{title} list file")
    except DatasetError as exc:
        s.add("setup", str(exc))
        return s, None
    return s, names


def _check_gta5(report: Report, data_dir, data_list, common: dict) -> None:
    s, names = _listed_section(report, "GTA5", data_dir, data_list, "GTA5 data directory (--data-dir)", GTA5_DOWNLOAD)
    if names is not None:
        _run_section(s, names, lambda n: gta5_paths(data_dir, n), labels=LabelSpec(GTA5_LABEL_HINT),
                     strict_size=False, **common)


def _check_labelled_source(report: Report, source: str, data_dir, data_list, common: dict) -> None:
    """SYNTHIA, Synscapes or Cityscapes as the source, through the dataset class itself (``check_files=False``):
    its names (the list, or every image of its image folder), ``image_path`` / ``label_path``, ``load_label``
    (which also checks the label format) and ``label_table`` (decoded value -> trainId)."""
    setting, check = SOURCES[source], SOURCE_CHECKS[source]
    title = setting.title + (" (source)" if source in TARGETS else "")
    s, ok = _new_section(report, title, data_dir, data_list, f"{setting.title} data directory (--data-dir)",
                         check.download)
    if not ok:
        return
    try:
        dataset = setting.dataset(data_dir, data_list, check_files=False)
    except DatasetError as exc:  # no list and no image folder, unreadable list, OpenCV missing for SYNTHIA, ...
        s.add("setup", f"{exc}" + (f": {check.download}" if data_list is None else ""))
        return
    if data_list is None:
        s.listing = dataset.image_dir()
    table = np.asarray(dataset.label_table).astype(np.uint8)  # float32 table, ignore_label 255
    labels = LabelSpec(check.hint, reader=dataset.load_label, table=table,
                       labelids=bool(np.array_equal(table, LABEL2TRAIN)), category=check.category)
    _run_section(s, list(dataset.img_ids), lambda n: (dataset.image_path(n), dataset.label_path(n)),
                 labels=labels, strict_size=False, **common)


def _check_cityscapes_target(report: Report, data_dir_target, data_list_target, data_list_val, set: str,
                             val_set: str, common: dict) -> None:
    s, names = _listed_section(
        report, f"Cityscapes {set}", data_dir_target, data_list_target,
        "Cityscapes data directory (--data-dir-target)", CITYSCAPES_DOWNLOAD,
    )
    if names is not None:
        _run_section(
            s, names, lambda n: (cityscapes_image_path(data_dir_target, set, n), None),
            labels=None, strict_size=False, **common,
        )
    if data_list_val is None or not Path(data_dir_target).is_dir():
        return
    val_dir = Path(data_dir_target) / "leftImg8bit" / val_set
    title = f"Cityscapes {val_set}"
    if not val_dir.is_dir():
        skipped = SectionReport(title, Path(data_dir_target), Path(data_list_val))
        skipped.skipped = f"{val_dir} does not exist (needed only for evaluation)"
        report.sections.append(skipped)
        return
    with_labels = (Path(data_dir_target) / "gtFine" / val_set).is_dir()
    s, names = _listed_section(
        report, title, data_dir_target, data_list_val,
        "Cityscapes data directory (--data-dir-target)", CITYSCAPES_DOWNLOAD,
    )
    if names is None:
        return
    bad = [n for n in names if with_labels and not n.endswith(IMAGE_SUFFIX)]
    for n in bad:
        s.add("setup", f"list entry {n!r} does not end with {IMAGE_SUFFIX!r}", n)
    good = [n for n in names if n not in s.bad_names]

    def val_paths(n: str):
        image = cityscapes_image_path(data_dir_target, val_set, n)
        label = cityscapes_label_path(data_dir_target, val_set, n) if with_labels else None
        return image, label

    _run_section(s, good, val_paths, labels=LabelSpec(CITYSCAPES_LABEL_HINT), strict_size=True, **common)
    s.entries = len(names)
    if not with_labels:
        gt_dir = Path(data_dir_target) / "gtFine" / val_set
        s.add("dataset", f"{gt_dir} does not exist: labels not checked")


def _crosscity_section(report: Report, root, city: str, set: str, list_path, return_label: bool):
    """A Cross-City section and its ``CrossCityDataSet`` (``check_files=False``: names and paths only), or
    ``(section, None)`` after a setup error."""
    s, ok = _new_section(report, f"Cross-City {city} {set}", root, list_path,
                         "Cross-City data directory (--data-dir-target)", CROSSCITY_DOWNLOAD)
    if not ok:
        return s, None
    try:
        image_dir = crosscity_image_dir(root, city, set)
        if not image_dir.is_dir():
            s.add("setup", f"Cross-City image directory {image_dir} does not exist: {CROSSCITY_DOWNLOAD}")
            return s, None
        if list_path is None:
            s.listing = image_dir
        dataset = CrossCityDataSet(root, city, list_path, set=set, check_files=False, return_label=return_label)
    except (DatasetError, ValueError) as exc:  # unknown set, unreadable or empty list, no image in the folder
        s.add("setup", str(exc))
        return s, None
    return s, dataset


def _check_crosscity(report: Report, root, city: str, data_list_target, check_eval: bool, data_list_val,
                     set: str, val_set: str, common: dict) -> None:
    """One Cross-City city: the unlabelled ``<City>/Images/<set>`` and, when present, ``<City>/Images/<val_set>``
    with ``<City>/Labels/<val_set>/<stem>_eval.png`` (8-bit Cityscapes labelIds, as ``CrossCityDataSet`` reads
    them for evaluation)."""
    s, dataset = _crosscity_section(report, root, city, set, data_list_target, return_label=False)
    if dataset is not None:
        images = {f["name"]: f["img"] for f in dataset.files}
        _run_section(s, list(dataset.img_ids), lambda n: (images[n], None), labels=None, strict_size=False,
                     **common)
    if not check_eval or not Path(root).is_dir():
        return
    try:
        test_dir = crosscity_image_dir(root, city, val_set)
        label_dir = crosscity_label_path(root, city, val_set, "x.png").parent
    except ValueError:  # unknown split: the section says so
        _crosscity_section(report, root, city, val_set, data_list_val, return_label=False)
        return
    if not test_dir.is_dir():
        skipped = SectionReport(f"Cross-City {city} {val_set}", Path(root),
                                Path(data_list_val) if data_list_val is not None else None)
        skipped.skipped = f"{test_dir} does not exist (needed only for evaluation)"
        report.sections.append(skipped)
        return
    with_labels = label_dir.is_dir()
    s, dataset = _crosscity_section(report, root, city, val_set, data_list_val, return_label=with_labels)
    if dataset is None:
        return
    pairs = {f["name"]: (f["img"], f["label"]) for f in dataset.files}
    _run_section(s, list(dataset.img_ids), lambda n: pairs[n], labels=LabelSpec(CROSSCITY_LABEL_HINT),
                 strict_size=True, **common)
    if not with_labels:
        s.add("dataset", f"{label_dir} does not exist: labels not checked")


def clean_list_name(title: str) -> str:
    """File name of a section's clean list: ``GTA5`` -> ``gta5.txt``, ``Cross-City Rome train`` ->
    ``cross_city_rome_train.txt``."""
    return re.sub(r"[^0-9a-z]+", "_", title.lower()).strip("_") + ".txt"


def write_clean_lists(report: Report, out_dir: str | Path) -> list[Path]:
    """Write, per checked section, the list entries (or found images) without errors to
    ``out_dir/<title>.txt`` (:func:`clean_list_name`); each can be passed as the section's list flag. Raises
    :class:`utils.files.WriteError` naming the file when one cannot be written."""
    written = []
    for s in report.sections:
        if s.skipped or not s.names:
            continue
        keep = [n for n in s.names if n not in s.bad_names]
        path = Path(out_dir) / clean_list_name(s.title)
        text = "".join(f"{n}\n" for n in keep)
        atomic_write(path, lambda tmp: tmp.write_text(text), needed=len(text))
        written.append(path)
    return written


def _per_setting(table: dict, attr: str, none: str) -> str:
    """``gta5: ./data/GTA5, synthia: ./data/SYNTHIA, ...`` from a settings table (``none`` for None values)."""
    return ", ".join(f"{key}: {getattr(row, attr) if getattr(row, attr) is not None else none}"
                     for key, row in table.items())


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Check the data of a training setting (default GTA5 -> Cityscapes; --source / --target / "
                    "--city as in train_gta2cityscapes_multi.py) before training.",
    )
    data = parser.add_argument_group("data (the same flags and defaults as train_gta2cityscapes_multi.py)")
    data.add_argument(
        "--source", default=None, choices=tuple(SOURCES),
        help="labelled source domain (default gta5; cityscapes with --target crosscity)",
    )
    data.add_argument("--target", default="cityscapes", choices=tuple(TARGETS),
                      help="target domain (crosscity needs --city)")
    data.add_argument("--city", default=None, choices=CITIES, help="the Cross-City city of --target crosscity")
    data.add_argument(
        "--data-dir", default=None,
        help="source directory; default per --source (dataset/settings.py): "
             + _per_setting(SOURCES, "data_dir", "-"),
    )
    data.add_argument(
        "--data-list", default=None,
        help="source list file; default per --source: " + _per_setting(SOURCES, "data_list", "every image"),
    )
    data.add_argument(
        "--data-dir-target", default=None,
        help="target directory; default per --target: " + _per_setting(TARGETS, "data_dir", "-"),
    )
    data.add_argument(
        "--data-list-target", default=None,
        help="target adaptation list file; default per --target: "
             + _per_setting(TARGETS, "data_list", "every <City>/Images/Train image"),
    )
    data.add_argument("--set", default="train", help="target split used for adaptation")
    tool = parser.add_argument_group("checker")
    tool.add_argument(
        "--data-list-val", default=None,
        help="evaluation list of the target (checked when its image folder exists); default: cityscapes: "
             f"{TARGETS['cityscapes'].eval_list} (leftImg8bit/<val-set>), crosscity: every <City>/Images/Test image",
    )
    tool.add_argument("--val-set", default=None,
                      help="target split used for evaluation; default: cityscapes: val, crosscity: test")
    tool.add_argument("--skip-source", "--skip-gta5", dest="skip_source", action="store_true",
                      help="do not check the source (--skip-gta5: the former name)")
    tool.add_argument("--skip-target", "--skip-cityscapes", dest="skip_target", action="store_true",
                      help="do not check the target (--skip-cityscapes: the former name)")
    tool.add_argument("--no-decode", action="store_true", help="read headers only (fast; no truncation/value checks)")
    tool.add_argument("--max-entries", type=int, default=None, help="decode only the first N entries of each list")
    tool.add_argument("--num-workers", "--workers", dest="workers", type=int, metavar="N",
                      default=min(32, usable_cpus() + 4), help="reader threads")
    tool.add_argument("--strict", action="store_true", help="exit non-zero on warnings too")
    tool.add_argument(
        "--write-clean-lists", metavar="DIR", default=None,
        help="write each list without its failing entries to DIR/<section>.txt",
    )
    return parser


def _or_setting(value):
    """A flag's value, or :data:`SETTING` (the setting's default) when it was not given."""
    return SETTING if value is None else value


def main(args: argparse.Namespace) -> int:
    """Check, print the report; 0 when fine, 1 when something is wrong, 2 for unusable flags."""
    if args.workers < 1:
        return fail(PROG, f"--num-workers must be at least 1, got {args.workers}", 2)
    if args.max_entries is not None and args.max_entries < 1:
        return fail(PROG, f"--max-entries must be at least 1, got {args.max_entries}", 2)
    try:
        args.source = resolve_setting(args.source, args.target, args.city)
    except ValueError as exc:
        return fail(PROG, str(exc), 2)
    report = check_datasets(
        data_dir=None if args.skip_source else _or_setting(args.data_dir),
        data_dir_target=None if args.skip_target else _or_setting(args.data_dir_target),
        data_list=_or_setting(args.data_list),
        data_list_target=_or_setting(args.data_list_target),
        data_list_val=_or_setting(args.data_list_val),
        set=args.set,
        val_set=_or_setting(args.val_set),
        decode=not args.no_decode,
        workers=args.workers,
        max_entries=args.max_entries,
        progress=sys.stderr.isatty(),
        source=args.source,
        target=args.target,
        city=args.city,
    )
    print(report.format())
    if args.write_clean_lists:
        try:
            for path in write_clean_lists(report, args.write_clean_lists):
                print(f"wrote {path}")
        except WriteError as exc:
            return fail(PROG, str(exc))
    failed = not report.ok or (args.strict and report.warnings > 0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
