"""Pictures of results: a side-by-side sheet of predictions, a per-class IoU bar chart, an mIoU-over-training curve.

    # image | prediction | ground truth for the first 4 images of the val list, into one PNG
    python tools/visualize.py sheet --pred-dir result/cityscapes \\
        --gt-dir ./data/Cityscapes/data/gtFine/val --out sheet.png

    # per-class IoU of any number of runs (compute_iou.py --json / evaluate_cityscapes.py --json files)
    python tools/visualize.py chart run1.json run2.json --labels source-only adapted --out chart.png

    # mIoU against iteration of whole training runs (evaluate_cityscapes.py --restore-from SNAPSHOT_DIR)
    python tools/visualize.py curve result/multi/snapshots.json result/single/snapshots.json --out curve.png

``sheet`` reads the Cityscapes images named by ``--data-list`` (as evaluate_cityscapes.py does), the trainId PNGs
that evaluate_cityscapes.py wrote to ``--pred-dir`` (``<pred-dir>/<basename of the list line>``) and, with
``--gt-dir``, the ``*_gtFine_labelIds.png`` ground truth (mapped to trainIds; ignored pixels are black). Every
tile is scaled to ``--width``; a legend names the classes that appear.

``chart`` draws one horizontal bar per class and run (and one for the mIoU), in percent, and prints the same
numbers as a table. Classes absent from both the ground truth and the prediction have no IoU (``null`` in the
JSON): they are written ``nan``, as in compute_iou.py's table, and left out of the mIoU.

``curve`` draws the mIoU (%) of every evaluated snapshot against its iteration, one line per run (the label is the
JSON file's folder name unless ``--labels`` is given), each run's best snapshot ringed and labelled, and prints
each run's best snapshot.

Drawing uses Pillow only (no plotting library). Files are written atomically; an error is one line
``visualize.py <command>: error: ...`` on stderr, exit status 1 (2 for flags that cannot work).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dataset.checks import format_paths, read_list
from dataset.cityscapes_dataset import cityscapes_image_path, gtfine_name
from dataset.labels import CLASS_NAMES, LABEL2TRAIN, NUM_CLASSES, PALETTE, colorize_rgb
from utils.cli import ArgumentParser, UsageError, fail, repo_path
from utils.files import atomic_write

PROG = "visualize.py"

#: Bar colours of the runs in a chart, in order (cycled beyond six runs). Not class colours.
RUN_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
GRID = (220, 220, 220)


class VisualizeError(ValueError):
    """Bad input to the sheet or the chart (the message names the file or flag and what was expected)."""


# ---- drawing helpers ----------------------------------------------------------------------------------------------


def _font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` pixels (scalable since Pillow 10.1; the fixed bitmap font before)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write ``image`` as PNG atomically (temporary file, then rename); creates the parent folder."""
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"), needed=image.width * image.height * 3)


# ---- the sheet ----------------------------------------------------------------------------------------------------


@dataclass
class SheetRow:
    """The files of one row of the sheet."""

    name: str
    image: Path
    prediction: Path
    ground_truth: Path | None


def sheet_rows(data_dir: str | Path, names: Sequence[str], pred_dir: str | Path, gt_dir: str | Path | None,
               set: str = "val") -> list[SheetRow]:
    """Where each row's image, prediction (``pred_dir/<basename>``) and ground truth are; all must exist."""
    rows = []
    for name in names:
        gt = None
        if gt_dir is not None:
            try:
                gt = Path(gt_dir) / gtfine_name(name)
            except ValueError as exc:
                raise VisualizeError(f"list entry: {exc}, so its gtFine file name is unknown") from None
        rows.append(SheetRow(name, cityscapes_image_path(data_dir, set, name), Path(pred_dir) / name.split("/")[-1],
                             gt))
    missing = [str(p) for r in rows for p in (r.image, r.prediction, r.ground_truth)
               if p is not None and not p.is_file()]
    if missing:
        raise VisualizeError(f"{len(missing)} files for the sheet do not exist, check --data-dir, --set, --pred-dir "
                             f"and --gt-dir:\n{format_paths(missing, 10)}")
    return rows


def _read_ids(path: Path, what: str) -> np.ndarray:
    """The pixel values of a single-channel PNG (trainIds or labelIds), never converted."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P"):
                raise VisualizeError(f"{what} {path} has mode {img.mode!r}, expected a single-channel ('L' or "
                                     "'P') PNG of ids")
            return np.asarray(img)
    except OSError as exc:
        raise VisualizeError(f"cannot read {what} {path}: {exc}") from None


def _read_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except OSError as exc:
        raise VisualizeError(f"cannot read image {path}: {exc}") from None


def make_sheet(rows: Sequence[SheetRow], width: int = 384, legend: bool = True) -> Image.Image:
    """One RGB image: a header, then per row ``image | prediction | ground truth`` (each ``width`` wide, the
    height following the image's aspect ratio; label maps scaled with nearest neighbour), the row's name under
    it, and a legend of the classes that occur in the predictions or ground truths."""
    if not rows:
        raise VisualizeError("no images for the sheet (--num-images must be >= 1)")
    if width < 16:
        raise VisualizeError(f"--width must be at least 16 pixels, got {width}")
    columns = ["image", "prediction"] + (["ground truth"] if rows[0].ground_truth is not None else [])
    font = _font(max(12, width // 24))
    pad = max(4, width // 64)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = _text_size(probe, "Ag", font)[1] + pad

    tiles: list[list[Image.Image]] = []
    present: set[int] = set()
    for row in rows:
        image = _read_rgb(row.image)
        height = max(1, round(width * image.height / image.width))
        pred = _read_ids(row.prediction, "prediction")
        present.update(int(v) for v in np.unique(pred) if v < NUM_CLASSES)
        row_tiles = [image.resize((width, height), Image.Resampling.BILINEAR),
                     Image.fromarray(colorize_rgb(pred)).resize((width, height), Image.Resampling.NEAREST)]
        if row.ground_truth is not None:
            gt = LABEL2TRAIN[_read_ids(row.ground_truth, "ground truth")]
            present.update(int(v) for v in np.unique(gt) if v < NUM_CLASSES)
            row_tiles.append(Image.fromarray(colorize_rgb(gt)).resize((width, height), Image.Resampling.NEAREST))
        tiles.append(row_tiles)

    sheet_w = len(columns) * width + (len(columns) + 1) * pad
    legend_items = sorted(present)
    swatch = line_h - pad
    item_w = swatch + pad + max([_text_size(probe, CLASS_NAMES[c], font)[0] for c in legend_items] or [0]) + 2 * pad
    per_line = max(1, (sheet_w - pad) // max(1, item_w))
    legend_lines = math.ceil(len(legend_items) / per_line) if legend and legend_items else 0
    sheet_h = line_h + pad + sum(t[0].height + line_h + pad for t in tiles) + legend_lines * line_h + pad

    sheet = Image.new("RGB", (sheet_w, sheet_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for j, title in enumerate(columns):
        x = pad + j * (width + pad)
        draw.text((x + (width - _text_size(draw, title, font)[0]) // 2, pad // 2), title, fill=TEXT, font=font)
    y = line_h + pad
    for row, row_tiles in zip(rows, tiles):
        for j, tile in enumerate(row_tiles):
            sheet.paste(tile, (pad + j * (width + pad), y))
        y += row_tiles[0].height
        draw.text((pad, y + pad // 2), row.name, fill=TEXT, font=font)
        y += line_h + pad
    if legend_lines:
        for k, c in enumerate(legend_items):
            x = pad + (k % per_line) * item_w
            yy = y + (k // per_line) * line_h
            draw.rectangle((x, yy, x + swatch, yy + swatch), fill=tuple(int(v) for v in PALETTE[c]),
                           outline=TEXT)
            draw.text((x + swatch + pad, yy), CLASS_NAMES[c], fill=TEXT, font=font)
    return sheet


# ---- the chart ----------------------------------------------------------------------------------------------------


@dataclass
class IoURun:
    """One run's result: per-class IoU in [0, 1] (NaN when the class has no pixel in gt or prediction)."""

    label: str
    names: list[str]
    ious: list[float]
    miou: float
    path: str = ""


def read_iou_json(path: str | Path, label: str | None = None) -> IoURun:
    """Read compute_iou.py's (or evaluate_cityscapes.py's) ``--json`` file.

    Expected keys: ``per_class_iou`` (class name -> fraction or null) and ``mIoU`` (fraction or null).
    The default label is the file name without ``.json``.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise VisualizeError(f"{path}: no such file (expected the --json output of compute_iou.py)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise VisualizeError(f"{path}: cannot be read as JSON ({exc})") from None
    per_class = data.get("per_class_iou") if isinstance(data, dict) else None
    if not isinstance(per_class, dict) or not per_class or "mIoU" not in data:
        raise VisualizeError(f"{path}: expected the --json output of compute_iou.py (keys 'per_class_iou' "
                             "and 'mIoU')")

    def value(v: Any, what: str) -> float:
        if v is None:
            return math.nan
        if not isinstance(v, (int, float)) or not (math.isnan(v) or 0.0 <= v <= 1.0):
            raise VisualizeError(f"{path}: {what} is {v!r}, expected a fraction in [0, 1] or null")
        return float(v)

    names = [str(k) for k in per_class]
    ious = [value(v, f"per_class_iou[{k!r}]") for k, v in per_class.items()]
    return IoURun(label if label is not None else path.stem, names, ious, value(data["mIoU"], "mIoU"), str(path))


def check_runs(runs: Sequence[IoURun]) -> None:
    """All runs must list the same classes in the same order."""
    if not runs:
        raise VisualizeError("chart: give at least one JSON file")
    for run in runs[1:]:
        if run.names != runs[0].names:
            raise VisualizeError(f"{run.path} lists the classes {run.names[:3]}... but {runs[0].path} lists "
                                 f"{runs[0].names[:3]}...: the runs must use the same classes")


def _pct(v: float) -> str:
    """A fraction in percent with one decimal; ``nan`` (compute_iou.py's spelling) for no IoU."""
    return "nan" if math.isnan(v) else f"{100 * v:.1f}"


def format_table(runs: Sequence[IoURun]) -> str:
    """A text table: one line per class and one for the mIoU, one column per run, IoU in percent."""
    check_runs(runs)
    name_w = max(len("mIoU"), *(len(n) for n in runs[0].names))
    col_w = [max(6, len(r.label)) for r in runs]
    head = "class".ljust(name_w) + "".join("  " + r.label.rjust(w) for r, w in zip(runs, col_w))
    lines = [head, "-" * len(head)]
    for i, name in enumerate(runs[0].names):
        lines.append(name.ljust(name_w) + "".join("  " + _pct(r.ious[i]).rjust(w) for r, w in zip(runs, col_w)))
    lines.append("-" * len(head))
    lines.append("mIoU".ljust(name_w) + "".join("  " + _pct(r.miou).rjust(w) for r, w in zip(runs, col_w)))
    return "\n".join(lines)


def make_chart(runs: Sequence[IoURun], title: str = "Per-class IoU (%)", bar_height: int = 14,
               plot_width: int = 480) -> Image.Image:
    """Horizontal grouped bars: for each class (then the mIoU) one bar per run, 0..100 %, value at the bar's end.

    A class with no IoU in a run is labelled "nan" with no bar.
    """
    check_runs(runs)
    font = _font(max(11, bar_height - 2))
    title_font = _font(max(13, bar_height + 2))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = 8
    rows = list(runs[0].names) + ["mIoU"]
    label_w = max(_text_size(probe, n, font)[0] for n in rows) + 2 * pad
    value_w = _text_size(probe, "100.0", font)[0] + 2 * pad
    text_h = _text_size(probe, "Ag", font)[1]
    group_h = len(runs) * bar_height + pad
    legend_h = text_h + pad
    top = pad + _text_size(probe, title, title_font)[1] + pad + legend_h + pad
    axis_h = text_h + 2 * pad
    width = label_w + plot_width + value_w + pad
    height = top + len(rows) * group_h + pad + axis_h

    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.text((pad, pad), title, fill=TEXT, font=title_font)
    # legend
    x = label_w
    y_leg = top - legend_h - pad
    for k, run in enumerate(runs):
        colour = RUN_COLOURS[k % len(RUN_COLOURS)]
        draw.rectangle((x, y_leg, x + text_h, y_leg + text_h), fill=colour)
        label = f"{run.label} (mIoU {_pct(run.miou)})"
        draw.text((x + text_h + pad // 2, y_leg), label, fill=TEXT, font=font)
        x += text_h + pad + _text_size(draw, label, font)[0] + 2 * pad
    # grid and axis
    bottom = top + len(rows) * group_h
    for tick in range(0, 101, 20):
        gx = label_w + round(plot_width * tick / 100)
        draw.line((gx, top, gx, bottom), fill=GRID)
        t = str(tick)
        draw.text((gx - _text_size(draw, t, font)[0] // 2, bottom + pad), t, fill=TEXT, font=font)
    # the mIoU group is set apart by a line
    draw.line((pad, bottom - group_h, width - pad, bottom - group_h), fill=GRID)
    for i, name in enumerate(rows):
        y0 = top + i * group_h + pad // 2
        draw.text((label_w - pad - _text_size(draw, name, font)[0], y0 + (len(runs) * bar_height - text_h) // 2),
                  name, fill=TEXT, font=font)
        for k, run in enumerate(runs):
            v = run.miou if name == "mIoU" and i == len(rows) - 1 else run.ious[i]
            yb = y0 + k * bar_height
            if math.isnan(v):
                draw.text((label_w + 2, yb), "nan", fill=TEXT, font=font)
                continue
            xe = label_w + round(plot_width * v)
            if xe > label_w:
                draw.rectangle((label_w, yb + 1, xe, yb + bar_height - 2), fill=RUN_COLOURS[k % len(RUN_COLOURS)])
            draw.text((xe + 3, yb), _pct(v), fill=TEXT, font=font)
    draw.line((label_w, top, label_w, bottom), fill=TEXT)
    return img


# ---- the curve ----------------------------------------------------------------------------------------------------


@dataclass
class Curve:
    """One run's snapshots: (iteration, mIoU in [0, 1]) in iteration order, and the best one."""

    label: str
    points: list[tuple[int, float]]
    best_file: str
    best: tuple[int, float]
    path: str = ""


def read_snapshots_json(path: str | Path, label: str | None = None) -> Curve:
    """Read evaluate_cityscapes.py's ``SAVE/snapshots.json`` (key ``snapshots``: records with ``file``,
    ``iteration`` and ``mIoU``). Snapshots without an mIoU (null) are left out. The default label is the name of
    the folder holding the file (the run's --save)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise VisualizeError(f"{path}: no such file (expected the snapshots.json that evaluate_cityscapes.py "
                             "--restore-from SNAPSHOT_DIR writes into --save)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise VisualizeError(f"{path}: cannot be read as JSON ({exc})") from None
    records = data.get("snapshots") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise VisualizeError(f"{path}: expected evaluate_cityscapes.py's snapshots.json (key 'snapshots'), not "
                             "a single result (for those, use the chart command)")
    points, files = [], {}
    for k, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("iteration"), int) or "mIoU" not in r:
            raise VisualizeError(f"{path}: snapshots[{k}] has no integer 'iteration' and 'mIoU'")
        v = r["mIoU"]
        if v is None:
            continue
        if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise VisualizeError(f"{path}: snapshots[{k}] mIoU is {v!r}, expected a fraction in [0, 1] or null")
        points.append((r["iteration"], float(v)))
        files[r["iteration"]] = str(r.get("file", r["iteration"]))
    if not points:
        raise VisualizeError(f"{path}: no evaluated snapshot with an mIoU in it")
    points.sort()
    best = max(points, key=lambda p: (p[1], -p[0]))  # the earliest of equal bests, as evaluate_cityscapes.py
    return Curve(label if label is not None else path.resolve().parent.name, points, files[best[0]], best,
                 str(path))


def _iteration_text(value: float) -> str:
    """Tick label of an iteration: ``120k`` for whole thousands, else the number."""
    value = round(value)
    return f"{value // 1000}k" if value >= 1000 and value % 1000 == 0 else str(value)


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """About ``count`` evenly spaced round values (steps 1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]."""
    if hi <= lo:
        lo, hi = lo - 1.0, hi + 1.0
    raw = (hi - lo) / max(1, count - 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(i * step, 10) for i in range(first, last + 1)]


@dataclass
class CurveAxes:
    """The plot box in pixels and the data ranges it spans: :meth:`xy` maps (iteration, mIoU %) to pixels."""

    left: int
    top: int
    right: int
    bottom: int
    x_ticks: list[float]
    y_ticks: list[float]

    def xy(self, iteration: float, pct: float) -> tuple[int, int]:
        x0, x1, y0, y1 = self.x_ticks[0], self.x_ticks[-1], self.y_ticks[0], self.y_ticks[-1]
        return (self.left + round((self.right - self.left) * (iteration - x0) / (x1 - x0)),
                self.bottom - round((self.bottom - self.top) * (pct - y0) / (y1 - y0)))


CURVE_FONT = 14


def curve_axes(curves: Sequence[Curve], width: int, height: int) -> CurveAxes:
    """Ticks from 0 to the last iteration, and around the mIoUs (percent); the box leaves room for the title, the
    legend (a line per run), the tick labels and the axis titles."""
    font = _font(CURVE_FONT)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = _text_size(probe, "Ag", font)[1]
    iterations = [it for c in curves for it, _ in c.points]
    pcts = [100 * v for c in curves for _, v in c.points]
    x_ticks = nice_ticks(min(0, min(iterations)), max(iterations))
    spread = max(pcts) - min(pcts)
    y_ticks = nice_ticks(max(0.0, min(pcts) - 0.05 * spread), min(100.0, max(pcts) + 0.05 * spread))
    y_ticks = [t for t in y_ticks if 0 <= t <= 100]  # an mIoU is a percentage
    y_label_w = max(_text_size(probe, f"{t:g}", font)[0] for t in y_ticks)
    pad = 10
    top = pad + 2 * (text_h + pad) + len(curves) * (text_h + pad // 2)
    return CurveAxes(left=pad + y_label_w + pad, top=top, right=width - 3 * pad,
                     bottom=height - 2 * (text_h + pad), x_ticks=x_ticks, y_ticks=y_ticks)


def make_curve(curves: Sequence[Curve], title: str = "mIoU (%) over training", width: int = 800,
               height: int = 480) -> Image.Image:
    """mIoU (%) against iteration: one line with a dot per snapshot for each run, its best snapshot ringed and
    labelled; grid, ticks, axis titles and a legend."""
    if not curves:
        raise VisualizeError("curve: give at least one snapshots.json file")
    if width < 200 or height < 150:
        raise VisualizeError(f"--width/--height must be at least 200x150 pixels, got {width}x{height}")
    font, title_font = _font(CURVE_FONT), _font(CURVE_FONT + 3)
    pad = 10
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = _text_size(probe, "Ag", font)[1]
    legend = [f"{c.label}: best {100 * c.best[1]:.2f} at {_iteration_text(c.best[0])} ({c.best_file})"
              for c in curves]
    axes = curve_axes(curves, width, height)
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.text((pad, pad), title, fill=TEXT, font=title_font)
    for k, text in enumerate(legend):  # a short line in the run's colour, then its text
        y = pad + text_h + pad + k * (text_h + pad // 2) + text_h // 2
        draw.line((pad, y, pad + 24, y), fill=RUN_COLOURS[k % len(RUN_COLOURS)], width=3)
        draw.text((pad + 30, y - text_h // 2 - 2), text, fill=TEXT, font=font)
    for t in axes.y_ticks:
        x, y = axes.xy(axes.x_ticks[0], t)
        draw.line((axes.left, y, axes.right, y), fill=GRID)
        label = f"{t:g}"
        draw.text((axes.left - pad - _text_size(draw, label, font)[0], y - text_h // 2 - 2), label, fill=TEXT,
                  font=font)
    for t in axes.x_ticks:
        x, _ = axes.xy(t, axes.y_ticks[0])
        draw.line((x, axes.top, x, axes.bottom), fill=GRID)
        label = _iteration_text(t)
        draw.text((x - _text_size(draw, label, font)[0] // 2, axes.bottom + pad // 2), label, fill=TEXT, font=font)
    draw.rectangle((axes.left, axes.top, axes.right, axes.bottom), outline=TEXT)
    draw.text((axes.right - _text_size(draw, "iteration", font)[0], height - text_h - pad), "iteration", fill=TEXT,
              font=font)
    draw.text((pad, axes.top - text_h - pad), "mIoU (%)", fill=TEXT, font=font)
    for k, curve in enumerate(curves):
        colour = RUN_COLOURS[k % len(RUN_COLOURS)]
        xy = [axes.xy(it, 100 * v) for it, v in curve.points]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2, joint="curve")
        for x, y in xy:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        bx, by = axes.xy(curve.best[0], 100 * curve.best[1])
        draw.ellipse((bx - 7, by - 7, bx + 7, by + 7), outline=colour, width=2)
        label = f"{100 * curve.best[1]:.1f}"
        label_w = _text_size(draw, label, font)[0]
        lx = bx + 10 if bx + 10 + label_w <= width - pad else bx - 10 - label_w
        ly = max(axes.top + 2, by - text_h - 8)
        draw.rectangle((lx - 2, ly, lx + label_w + 2, ly + text_h + 4), fill=BACKGROUND)  # readable over lines
        draw.text((lx, ly), label, fill=colour, font=font)
    return img


# ---- command line -------------------------------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Result pictures: prediction sheet, IoU chart, mIoU curve.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{sheet,chart,curve}")

    s = sub.add_parser("sheet", help="image | prediction | ground truth for a few images, into one PNG")
    s.add_argument("--data-dir", default="./data/Cityscapes/data",
                   help="Cityscapes directory holding leftImg8bit/ (as evaluate_cityscapes.py)")
    s.add_argument("--data-list", default="./dataset/cityscapes_list/val.txt",
                   help="list of images (as evaluate_cityscapes.py); the first --num-images are shown")
    s.add_argument("--set", default="val", help="split folder under leftImg8bit/")
    s.add_argument("--pred-dir", default="./result/cityscapes",
                   help="evaluate_cityscapes.py's --save directory (trainId PNGs)")
    s.add_argument("--gt-dir", default=None,
                   help="gtFine directory (e.g. ./data/Cityscapes/data/gtFine/val); without it, no ground-truth "
                        "column")
    s.add_argument("--num-images", type=int, default=4, help="rows of the sheet")
    s.add_argument("--width", type=int, default=384, help="width of each tile in pixels")
    s.add_argument("--out", default="sheet.png", help="output PNG")

    c = sub.add_parser("chart", help="per-class IoU bar chart of one or more compute_iou.py --json files")
    c.add_argument("json", nargs="+", help="compute_iou.py (or evaluate_cityscapes.py) --json files")
    c.add_argument("--labels", nargs="+", default=None,
                   help="one name per JSON file (default: the file names)")
    c.add_argument("--title", default="Per-class IoU (%)", help="chart title")
    c.add_argument("--out", default="chart.png", help="output PNG")

    v = sub.add_parser("curve", help="mIoU against iteration of one or more runs (their snapshots.json)")
    v.add_argument("json", nargs="+", help="SAVE/snapshots.json files of evaluate_cityscapes.py --restore-from "
                                           "SNAPSHOT_DIR, one per run")
    v.add_argument("--labels", nargs="+", default=None, help="one name per run (default: the JSON files' folders)")
    v.add_argument("--title", default="mIoU (%) over training", help="title")
    v.add_argument("--width", type=int, default=800, help="picture width in pixels")
    v.add_argument("--height", type=int, default=480, help="picture height in pixels")
    v.add_argument("--out", default="curve.png", help="output PNG")
    return parser


def check_usage(args: argparse.Namespace) -> None:
    """Flag values that cannot work: :class:`UsageError` (exit status 2)."""
    if args.command == "sheet" and (args.num_images < 1 or args.width < 16):
        raise UsageError(f"--num-images must be at least 1 and --width at least 16 pixels, got {args.num_images} and "
                         f"{args.width}")
    if args.command == "curve" and (args.width < 200 or args.height < 150):
        raise UsageError(f"--width/--height must be at least 200x150 pixels, got {args.width}x{args.height}")
    if args.command in ("chart", "curve") and args.labels is not None and len(args.labels) != len(args.json):
        raise UsageError(f"--labels: {len(args.labels)} labels for {len(args.json)} JSON files, give one label per "
                         "file")


def run_sheet(args: argparse.Namespace) -> int:
    names = read_list(repo_path(args.data_list, "--data-list"), "--data-list")[: args.num_images]
    rows = sheet_rows(args.data_dir, names, args.pred_dir, args.gt_dir, args.set)
    save_png(make_sheet(rows, width=args.width), args.out)
    print(f"sheet of {len(rows)} images: {args.out}")
    return 0


def run_chart(args: argparse.Namespace) -> int:
    runs = [read_iou_json(p, lab) for p, lab in zip(args.json, args.labels or [None] * len(args.json))]
    if args.labels is None and len({r.label for r in runs}) < len(runs):
        for r in runs:  # same file names in different folders: use the paths
            r.label = r.path
    print(format_table(runs))
    save_png(make_chart(runs, title=args.title), args.out)
    print(f"chart: {args.out}")
    return 0


def run_curve(args: argparse.Namespace) -> int:
    curves = [read_snapshots_json(p, lab) for p, lab in zip(args.json, args.labels or [None] * len(args.json))]
    if args.labels is None and len({c.label for c in curves}) < len(curves):
        for c in curves:  # the same folder name in different places: use the paths
            c.label = str(Path(c.path).parent)
    for c in curves:
        print(f"{c.label}: {len(c.points)} snapshots, best {c.best_file} (iteration {c.best[0]}), "
              f"mIoU {100 * c.best[1]:.2f}")
    save_png(make_curve(curves, title=args.title, width=args.width, height=args.height), args.out)
    print(f"curve: {args.out}")
    return 0


COMMANDS = {"sheet": run_sheet, "chart": run_chart, "curve": run_curve}


def main(args: argparse.Namespace) -> int:
    """Run the command; 0 when done, 1 for bad input or a file that cannot be written, 2 for flag values that
    cannot work (one message on stderr)."""
    try:
        check_usage(args)
        return COMMANDS[args.command](args)
    except UsageError as exc:
        return fail(f"{PROG} {args.command}", str(exc), 2)
    except (ValueError, OSError) as exc:  # VisualizeError, DatasetError (lists), WriteError
        return fail(f"{PROG} {args.command}", str(exc))


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
