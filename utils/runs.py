"""A training run's snapshot folder as the evaluation sees it: its segmentation snapshots, its ``args.json`` (which
snapshots the run will write, the flags that shape its model), the results file of evaluating it
(``snapshots.json`` / ``snapshots.csv``, docs/evaluation.md) and the images decoded once for all its snapshots.

Library code for ``evaluate_cityscapes.py --restore-from SNAPSHOT_DIR``: nothing here prints or imports torch;
problems are logged or raised (``ValueError`` naming the file).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from dataset.settings import SOURCES
from utils.files import atomic_write

logger = logging.getLogger(__name__)

#: The segmentation snapshots ``<prefix>_<iteration>.pth``: not ``_D1``/``_D2``, ``resume.pth``, ``<prefix>_best.pth``,
#: nor the training's temporary files (``.GTA5_<i>.pth.<random>.tmp``, renamed to the final name when complete).
SNAPSHOT_NAME = re.compile(r"(?P<prefix>[A-Za-z][A-Za-z0-9]*)_(?P<iteration>[0-9]+)\.pth")
RESULTS_FORMAT = "adaptsegnet-snapshot-results/1"
RESULTS_JSON = "snapshots.json"
RESULTS_CSV = "snapshots.csv"


@dataclass(frozen=True)
class Snapshot:
    """One ``<prefix>_<iteration>.pth`` file as listed (size and mtime_ns tell whether it changed since)."""

    path: Path
    prefix: str
    iteration: int
    size: int
    mtime_ns: int

    @property
    def name(self) -> str:
        return self.path.name

    def matches(self, record: dict | None) -> bool:
        """True when ``record`` (a result of snapshots.json) was computed from this very file."""
        return record is not None and (record.get("size"), record.get("mtime_ns")) == (self.size, self.mtime_ns)


def find_snapshots(directory: Path, prefix: str | None) -> list[Snapshot]:
    """The segmentation snapshots in ``directory`` (none when it does not exist yet), in iteration order.

    ``prefix`` None: any prefix, but a single one (two runs' snapshots in one folder raise ``ValueError``).
    """
    found = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = SNAPSHOT_NAME.fullmatch(entry.name)
        if not match or (prefix is not None and match["prefix"] != prefix):
            continue
        try:
            if not entry.is_file():
                continue
            st = entry.stat()
        except FileNotFoundError:  # removed since the listing
            continue
        found.append(Snapshot(Path(entry.path), match["prefix"], int(match["iteration"]), st.st_size, st.st_mtime_ns))
    prefixes = sorted({s.prefix for s in found})
    if len(prefixes) > 1:
        raise ValueError(f"--restore-from {directory}: snapshots of several runs ("
                         + ", ".join(f"{p}_<iter>.pth" for p in prefixes) + ") and no args.json naming the run's "
                         "source, move each run's snapshots into a directory of its own")
    return sorted(found, key=lambda s: s.iteration)


def read_run_args(directory: Path) -> dict:
    """The ``args.json`` the training wrote into its snapshot folder ``directory`` ({} when there is none). Raises
    ``ValueError`` naming the file when it is there but is not a readable JSON object."""
    path = Path(directory) / "args.json"
    if not path.is_file():
        return {}
    try:
        run = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(run, dict):
        raise ValueError(f"{path} is not a JSON object")
    return run


@dataclass(frozen=True)
class RunPlan:
    """What the training run's ``args.json`` says: its snapshot prefix and the iteration of its last snapshot
    (None when unknown; ``problem`` says why when args.json exists but cannot be used)."""

    prefix: str | None = None
    last_iteration: int | None = None
    problem: str | None = None


def read_run_plan(directory: Path) -> RunPlan:
    """The training saves ``<prefix>_<i>.pth`` at every ``i % save_pred_every == 0`` below ``min(num_steps,
    num_steps_stop)`` and, at the end, ``<prefix>_<num_steps_stop>.pth`` when ``num_steps_stop <= num_steps``, else
    ``<prefix>_<num_steps>.pth``; the prefix is its source's (``gta5`` -> ``GTA5``, ``synthia`` -> ``SYNTHIA``...)."""
    try:
        run = read_run_args(directory)
        if not run:
            return RunPlan()
        prefix = SOURCES[run.get("source", "gta5")].snapshot_prefix
        num_steps, stop = int(run["num_steps"]), int(run["num_steps_stop"])
    except (ValueError, KeyError, TypeError) as exc:
        return RunPlan(problem=f"{Path(directory) / 'args.json'} does not tell the run's snapshots "
                               f"({type(exc).__name__}: {exc})")
    return RunPlan(prefix, stop if stop <= num_steps else num_steps)


def run_settings(args: argparse.Namespace, snapshot_dir: Path) -> dict:
    """Everything the numbers of snapshots.json depend on besides the snapshot files themselves: the flags of
    ``evaluate_cityscapes.py`` (its parsed ``args``) that change them, paths made absolute."""
    def where(path: str | None) -> str | None:
        return None if path is None else str(Path(path).expanduser().resolve())

    settings = {"snapshot_dir": where(str(snapshot_dir)), "data_dir": where(args.data_dir),
                "data_list": where(args.data_list), "set": args.set, "gt_dir": where(args.gt_dir),
                "target": args.target, "city": args.city, "input_size": list(args.input_size),
                "output_size": list(args.output_size), "model": args.model, "resnet_layers": list(args.resnet_layers),
                "num_classes": args.num_classes, "classes": args.classes, "flip": args.flip,
                "scales": list(args.scales), "amp": args.amp}
    if args.ignore_other_classes:  # only when set: results of earlier versions stay valid
        settings["ignore_other_classes"] = True
    return settings


def pct(value: float | None) -> str:
    """A fraction as a percentage with two decimals; "" for None (no IoU)."""
    return "" if value is None else f"{100 * value:.2f}"


def _compact_json(data: dict) -> str:
    """``json.dumps(indent=1)`` with every innermost list of numbers on one line (confusion matrix rows)."""
    text = json.dumps(data, indent=1)
    return re.sub(r"\[([^\[\]{}\"]*)\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


@dataclass
class RunResults:
    """The content of ``SAVE/snapshots.json``: the settings, one record per snapshot file, and which snapshot's
    label maps SAVE/ holds (``label_maps``: file, size, mtime_ns, overlay; None before any are written)."""

    settings: dict
    records: dict[str, dict]
    label_maps: dict | None = None

    @classmethod
    def load(cls, path: Path, settings: dict) -> "RunResults":
        """An earlier call's results when made with the same ``settings``; else none (the reason logged)."""
        if not path.is_file():
            return cls(settings, {})
        try:
            data = json.loads(path.read_text())
            if data.get("format") != RESULTS_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {RESULTS_FORMAT!r}")
            records = {r["file"]: r for r in data["snapshots"]}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("%s cannot be used (%s): evaluating every snapshot again", path, exc)
            return cls(settings, {})
        old = data.get("settings") or {}
        if old != settings:
            changed = [f"{k} {old.get(k)!r} -> {settings.get(k)!r}" for k in sorted(set(old) | set(settings))
                       if old.get(k) != settings.get(k)]
            logger.warning("%s was made with other settings (%s): not used, evaluating every snapshot again", path,
                           "; ".join(changed))
            return cls(settings, {})
        return cls(settings, records, data.get("label_maps"))

    def ordered(self) -> list[dict]:
        return sorted(self.records.values(), key=lambda r: (r["iteration"], r["file"]))

    def best(self) -> dict | None:
        """The record with the highest mIoU (the earliest on ties), None when there is none."""
        scored = [r for r in self.ordered() if r.get("mIoU") is not None]
        return max(scored, key=lambda r: r["mIoU"]) if scored else None

    def save(self, save_dir: Path) -> None:
        """Write snapshots.json and snapshots.csv atomically (:class:`utils.files.WriteError` when they cannot be)."""
        ordered, best = self.ordered(), self.best()
        data = {"format": RESULTS_FORMAT, "settings": self.settings,
                "best": None if best is None else {k: best[k] for k in ("file", "iteration", "mIoU")},
                "label_maps": self.label_maps, "snapshots": ordered}
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        names = list(ordered[0]["per_class_iou"]) if ordered else []
        writer.writerow(["iteration", "file", "mIoU", *names, "best"])
        for r in ordered:
            writer.writerow([r["iteration"], r["file"], pct(r["mIoU"]),
                             *(pct(r["per_class_iou"].get(n)) for n in names), int(r is best)])
        for name, text in ((RESULTS_JSON, _compact_json(data)), (RESULTS_CSV, buf.getvalue())):
            atomic_write(Path(save_dir) / name, lambda tmp, text=text: tmp.write_text(text), needed=len(text))


def run_table(records: Sequence[dict], skipped: Sequence[Snapshot], best: dict | None) -> list[str]:
    """The lines printed at the end of a run's evaluation: iteration, file, mIoU (%), the best marked, the skipped
    files listed."""
    rows = [(r["iteration"], r["file"], pct(r["mIoU"]) or "nan", "<- best" if r is best else "") for r in records]
    rows += [(s.iteration, s.name, "-", "skipped") for s in skipped]
    rows.sort()
    width = max([len("snapshot")] + [len(r[1]) for r in rows])
    lines = [f"{'iteration':>9}  {'snapshot':<{width}}  {'mIoU':>6}"]
    lines += [f"{it:>9}  {name:<{width}}  {miou:>6}  {mark}".rstrip() for it, name, miou, mark in rows]
    if best is not None:
        lines.append(f"best: {best['file']} (iteration {best['iteration']}), mIoU {pct(best['mIoU'])}")
    return lines


class ResizedImages:
    """The evaluation images decoded and resized once, for every snapshot of a run: the wrapped dataset's items
    (uint8 ``[H, W, 3]`` RGB, ``size``, ``name``), the first that fit ``budget_bytes`` (W*H*3 each) kept in memory
    by :meth:`fill`, the others read by the dataset again for every snapshot. A map-style dataset for
    ``torch.utils.data.DataLoader`` (``__len__``, ``__getitem__``)."""

    def __init__(self, dataset: Any, budget_bytes: int) -> None:
        self.dataset = dataset
        width, height = dataset.crop_size
        self.capacity = min(len(dataset), max(0, int(budget_bytes)) // (width * height * 3))
        self.cache: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def fill(self, threads: int) -> None:
        """Read and keep the first :attr:`capacity` items (``threads`` at once; decoding releases the GIL)."""
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            self.cache = dict(enumerate(pool.map(self.dataset.__getitem__, range(self.capacity))))
        logger.info("%d images decoded and resized in %.1f s, kept in memory (%.0f MiB); %d read again for every "
                    "snapshot (--image-cache-mb)", len(self.cache), time.perf_counter() - start,
                    sum(item[0].nbytes for item in self.cache.values()) / 2**20, len(self) - len(self.cache))

    def __getitem__(self, index: int) -> tuple[Any, Any, str]:
        return self.cache[index] if index in self.cache else self.dataset[index]
