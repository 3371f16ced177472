"""Check GTA5 and Cityscapes against the list files before a multi-day run.

Decodes every listed file (in a thread pool) and reports, per dataset:

* list entries whose files are missing;
* unreadable or truncated PNGs;
* labels whose mode is not 'P' (GTA5 palette) or 'L' (8-bit labelIds): e.g. labels
  converted to RGB, whose colours would silently become "ignore" everywhere;
* label values outside the Cityscapes labelIds 0..33 (other than 255);
* image/label size mismatches: a few pixels (as some real GTA5 frames) is a warning,
  since resizing to the crop size absorbs it; more is an error, as is any mismatch
  in Cityscapes val (evaluation compares label and prediction pixel by pixel).

Prints a summary and exits 1 when something is wrong (0 otherwise; warnings alone do
not fail unless ``--strict``). Typical use, from the repository root::

    python tools/check_data.py --data-dir ./data/GTA5 --data-dir-target ./data/Cityscapes/data

From Python: :func:`check_datasets` returns a :class:`Report`.
"""
from __future__ import annotations

import argparse
import os
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
    check_label_mode,
    check_root,
    find_missing,
    open_image,
    read_list,
)
from dataset.cityscapes_dataset import IMAGE_SUFFIX, cityscapes_image_path, cityscapes_label_path
from dataset.gta5_dataset import gta5_paths
from dataset.labels import LABEL2TRAIN, NUM_CLASSES

#: category -> (level, what the summary calls it)
CATEGORIES: dict[str, tuple[str, str]] = {
    "setup": ("error", "setup problems"),
    "missing": ("error", "missing files"),
    "unreadable": ("error", "unreadable or truncated files"),
    "label_mode": ("error", "labels whose mode is not 'P' or 'L'"),
    "label_values": ("error", "labels with many ids outside 0..33 (not 255)"),
    "label_values_few": ("warning", "labels with a few ids outside 0..33 (not 255)"),
    "size_mismatch": ("error", "image/label size mismatches"),
    "size_mismatch_few_px": (
        "warning",
        "image/label size mismatches of a few pixels (resizing to the crop size absorbs them)",
    ),
    "dataset": ("warning", "dataset-wide warnings"),
}

GTA5_DOWNLOAD = (
    "download the GTA5 images and labels from https://download.visinf.tu-darmstadt.de/data/from_games/ "
    "and extract them so that it holds images/ and labels/, or pass --data-dir"
)
CITYSCAPES_DOWNLOAD = (
    "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com/ "
    "and extract them so that it holds leftImg8bit/ and gtFine/, or pass --data-dir-target"
)

#: Share of a label's pixels with ids outside 0..33 (not 255) above which the file is an error.
MAX_ODD_FRACTION = 0.01
#: A size difference of at most this share of each side counts as "a few pixels".
FEW_PIXELS_FRACTION = 0.10
#: How many example paths the printed summary lists per category.
SHOWN = 5


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
            lines.append(f"== {s.title} ({where})")
            if s.skipped:
                lines.append(f"   skipped: {s.skipped}")
                continue
            if s.entries or not s.count("setup"):
                lines.append(f"   {s.entries} list entries, {s.usable} usable")
            if s.image_sizes:
                common = ", ".join(f"{w}x{h} ({n})" for (w, h), n in s.image_sizes.most_common(3))
                more = f", {len(s.image_sizes) - 3} more sizes" if len(s.image_sizes) > 3 else ""
                lines.append(f"   image sizes: {common}{more}")
            if s.label_histogram is not None and s.label_histogram.sum():
                lines.append("   labels: " + _label_summary(s.label_histogram))
            for category, items in s.problems.items():
                if not items:
                    continue
                level, what = CATEGORIES[category]
                lines.append(f"   {level.upper():7s} {len(items)} {what}:")
                lines.extend(f"             {m}" for m in items[:shown])
                if len(items) > shown:
                    lines.append(f"             ... and {len(items) - shown} more")
                if category == "label_mode" and s.label_hint:
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


def _label_summary(hist: np.ndarray) -> str:
    total = int(hist.sum())
    train = np.zeros(NUM_CLASSES, dtype=np.int64)
    mapped = LABEL2TRAIN != 255
    np.add.at(train, LABEL2TRAIN[mapped], hist[mapped])
    ignored = total - int(train.sum())
    return (
        f"{int((train > 0).sum())} of {NUM_CLASSES} classes present, "
        f"{100.0 * ignored / total:.1f}% of pixels ignored (labelIds outside the 19 classes)"
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
    hint: str,
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
    if label_path is not None:
        if label_path in missing:
            entry.problems.append(("missing", str(label_path)))
        else:
            try:
                label = _inspect(label_path, decode, "label")
            except DatasetError as exc:
                entry.problems.append(("unreadable", str(exc)))
            else:
                try:
                    check_label_mode(label, label_path, hint)
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
    hint: str,
    strict_size: bool,
    workers: int | None,
    max_entries: int | None,
    progress: bool,
) -> None:
    section.entries = len(names)
    section.names = names
    section.label_hint = hint
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
    jobs = ((n, i, lab, missing, decode, hint, strict_size) for n, (i, lab) in todo)
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
    if hint is not None and decode and hist.sum():
        section.label_histogram = hist
        if hist[19:34].sum() == 0:
            section.add(
                "dataset",
                "no pixel has a labelId in 19..33 (traffic light ... bicycle, sky, person, car): "
                "are these trainId files (e.g. *_labelTrainIds.png) instead of labelIds?",
            )


def check_datasets(
    data_dir: str | Path | None = "./data/GTA5",
    data_dir_target: str | Path | None = "./data/Cityscapes/data",
    data_list: str | Path = "./dataset/gta5_list/train.txt",
    data_list_target: str | Path = "./dataset/cityscapes_list/train.txt",
    data_list_val: str | Path | None = "./dataset/cityscapes_list/val.txt",
    set: str = "train",
    val_set: str = "val",
    decode: bool = True,
    workers: int | None = None,
    max_entries: int | None = None,
    progress: bool = False,
) -> Report:
    """Check the data directories against the lists; never raises for bad data, reports it.

    Sections: GTA5 (``data_dir``, skipped when None), Cityscapes ``set`` images
    (``data_dir_target``, skipped when None) and, when ``data_dir_target/leftImg8bit/val_set``
    exists, Cityscapes ``val_set`` images with their ``gtFine`` labels (when
    ``gtFine/val_set`` exists). ``decode=False`` reads only headers (no truncation or
    value checks); ``max_entries`` limits decoding (not the existence check) to the
    first entries of each list.
    """
    report = Report()

    def section(title: str, root, list_path, what: str, download_hint: str):
        s = SectionReport(title, Path(root), Path(list_path) if list_path else None)
        report.sections.append(s)
        try:
            check_root(root, what)
        except DatasetError as exc:
            s.add("setup", f"{exc}: {download_hint}")
            return s, None
        try:
            names = read_list(list_path, f"{title} list file")
        except DatasetError as exc:
            s.add("setup", str(exc))
            return s, None
        return s, names

    common = dict(decode=decode, workers=workers, max_entries=max_entries, progress=progress)
    if data_dir is not None:
        s, names = section("GTA5", data_dir, data_list, "GTA5 data directory (--data-dir)", GTA5_DOWNLOAD)
        if names is not None:
            _run_section(s, names, lambda n: gta5_paths(data_dir, n), hint=GTA5_LABEL_HINT, strict_size=False, **common)
    if data_dir_target is not None:
        s, names = section(
            f"Cityscapes {set}", data_dir_target, data_list_target,
            "Cityscapes data directory (--data-dir-target)", CITYSCAPES_DOWNLOAD,
        )
        if names is not None:
            _run_section(
                s, names, lambda n: (cityscapes_image_path(data_dir_target, set, n), None),
                hint=None, strict_size=False, **common,
            )
        if data_list_val is not None and Path(data_dir_target).is_dir():
            val_dir = Path(data_dir_target) / "leftImg8bit" / val_set
            title = f"Cityscapes {val_set}"
            if not val_dir.is_dir():
                skipped = SectionReport(title, Path(data_dir_target), Path(data_list_val))
                skipped.skipped = f"{val_dir} does not exist (needed only for evaluation)"
                report.sections.append(skipped)
            else:
                with_labels = (Path(data_dir_target) / "gtFine" / val_set).is_dir()
                s, names = section(
                    title, data_dir_target, data_list_val,
                    "Cityscapes data directory (--data-dir-target)", CITYSCAPES_DOWNLOAD,
                )
                if names is not None:
                    bad = [n for n in names if with_labels and not n.endswith(IMAGE_SUFFIX)]
                    for n in bad:
                        s.add("setup", f"list entry {n!r} does not end with {IMAGE_SUFFIX!r}", n)
                    good = [n for n in names if n not in s.bad_names]

                    def val_paths(n: str):
                        image = cityscapes_image_path(data_dir_target, val_set, n)
                        label = cityscapes_label_path(data_dir_target, val_set, n) if with_labels else None
                        return image, label

                    _run_section(s, good, val_paths, hint=CITYSCAPES_LABEL_HINT, strict_size=True, **common)
                    s.entries = len(names)
                    if not with_labels:
                        gt_dir = Path(data_dir_target) / "gtFine" / val_set
                        s.add("dataset", f"{gt_dir} does not exist: labels not checked")
    return report


def write_clean_lists(report: Report, out_dir: str | Path) -> list[Path]:
    """Write, per checked section, the list entries without errors to ``out_dir/<title>.txt``."""
    from utils.runtime import atomic_write

    written = []
    for s in report.sections:
        if s.skipped or not s.names:
            continue
        keep = [n for n in s.names if n not in s.bad_names]
        path = Path(out_dir) / (s.title.lower().replace(" ", "_") + ".txt")
        atomic_write(path, lambda tmp: tmp.write_text("".join(f"{n}\n" for n in keep)))
        written.append(path)
    return written


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Check GTA5 / Cityscapes data against the list files before training.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data (the same flags and defaults as train_gta2cityscapes_multi.py)")
    data.add_argument("--data-dir", default="./data/GTA5", help="GTA5 directory (images/, labels/)")
    data.add_argument("--data-list", default="./dataset/gta5_list/train.txt", help="GTA5 list file")
    data.add_argument(
        "--data-dir-target", default="./data/Cityscapes/data", help="Cityscapes directory (leftImg8bit/, gtFine/)"
    )
    data.add_argument(
        "--data-list-target", default="./dataset/cityscapes_list/train.txt", help="Cityscapes training list file"
    )
    data.add_argument("--set", default="train", help="Cityscapes split used for adaptation")
    tool = parser.add_argument_group("checker")
    tool.add_argument(
        "--data-list-val", default="./dataset/cityscapes_list/val.txt",
        help="Cityscapes evaluation list (checked when leftImg8bit/<val-set> exists)",
    )
    tool.add_argument("--val-set", default="val", help="Cityscapes split used for evaluation")
    tool.add_argument("--skip-gta5", action="store_true", help="do not check GTA5")
    tool.add_argument("--skip-cityscapes", action="store_true", help="do not check Cityscapes")
    tool.add_argument("--no-decode", action="store_true", help="read headers only (fast; no truncation/value checks)")
    tool.add_argument("--max-entries", type=int, default=None, help="decode only the first N entries of each list")
    tool.add_argument("--workers", type=int, default=min(32, (os.cpu_count() or 1) + 4), help="reader threads")
    tool.add_argument("--strict", action="store_true", help="exit non-zero on warnings too")
    tool.add_argument(
        "--write-clean-lists", metavar="DIR", default=None,
        help="write each list without its failing entries to DIR/<section>.txt",
    )
    return parser


def main(args: argparse.Namespace) -> int:
    if args.workers < 1:
        print(f"error: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return 2
    if args.max_entries is not None and args.max_entries < 1:
        print(f"error: --max-entries must be at least 1, got {args.max_entries}", file=sys.stderr)
        return 2
    report = check_datasets(
        data_dir=None if args.skip_gta5 else args.data_dir,
        data_dir_target=None if args.skip_cityscapes else args.data_dir_target,
        data_list=args.data_list,
        data_list_target=args.data_list_target,
        data_list_val=args.data_list_val,
        set=args.set,
        val_set=args.val_set,
        decode=not args.no_decode,
        workers=args.workers,
        max_entries=args.max_entries,
        progress=sys.stderr.isatty(),
    )
    print(report.format())
    if args.write_clean_lists:
        for path in write_clean_lists(report, args.write_clean_lists):
            print(f"wrote {path}")
    failed = not report.ok or (args.strict and report.warnings > 0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
