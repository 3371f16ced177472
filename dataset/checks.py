"""Input checks shared by the loaders and ``tools/check_data.py``.

A multi-day run must not die in hour three on a missing or truncated file, and it
must not silently train on labels that were converted to colours. Everything here
raises :class:`DatasetError` (a ``ValueError``) whose message names the file (or
list) and says what was expected, so the same text reaches the user whether it comes
from a ``DataLoader`` worker or from the checker tool.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

logger = logging.getLogger(__name__)

#: How many offending paths an error message lists before "... and N more".
MAX_LISTED = 5

#: The label modes a loader accepts: palette ('P', GTA5: the indices are the labelIds)
#: or 8-bit grey ('L', Cityscapes ``*_gtFine_labelIds.png``).
LABEL_MODES = ("P", "L")

#: What to tell a user whose GTA5 label is not a palette/grey PNG.
GTA5_LABEL_HINT = (
    "GTA5 labels must be palette ('P') PNGs whose indices are Cityscapes labelIds; "
    "do not convert them to RGB (the colours are not the labelIds): use the files "
    "from the original GTA5 download"
)
#: What to tell a user whose Cityscapes gtFine label is not an 8-bit labelId PNG.
CITYSCAPES_LABEL_HINT = (
    "Cityscapes labels must be the 8-bit *_gtFine_labelIds.png files of gtFine_trainvaltest.zip "
    "(not *_color.png, not converted to RGB)"
)


class DatasetError(ValueError):
    """A dataset input is missing, unreadable or of the wrong kind. The message names the file."""


class LabelFormatError(DatasetError):
    """A label file reads fine but is not in the dataset's label format (e.g. converted to RGB, or a 16-bit
    SYNTHIA label re-saved as 8 bits): its class ids are lost. The message names the file and ends with a hint."""


def format_paths(paths: Sequence[str | Path | int], limit: int = MAX_LISTED, inline: bool = False) -> str:
    """The first ``limit`` items then "... and N more": one per indented line, or with ``inline`` on one line
    separated by commas (for values, e.g. ``19, 255, ... and 3 more``)."""
    items = [str(p) for p in list(paths)[:limit]]
    if len(paths) > limit:
        items.append(f"... and {len(paths) - limit} more")
    return ", ".join(items) if inline else "\n".join(f"    {p}" for p in items)


def check_root(root: str | Path, what: str, expected: str = "") -> Path:
    """Return ``root`` as a Path; raise :class:`DatasetError` when it is not a directory.

    ``what`` is what the user calls it, e.g. ``"GTA5 data directory"``; ``expected``
    (optional) says what it should hold, e.g. ``"images/ and labels/"``.
    """
    root = Path(root)
    if not root.is_dir():
        state = "is not a directory" if root.exists() else "does not exist"
        tail = f" (expected a directory holding {expected})" if expected else ""
        raise DatasetError(f"{what} {root} {state}{tail}")
    return root


def read_list(list_path: str | Path, what: str = "list file") -> list[str]:
    """Read a list file: one name per line, surrounding whitespace stripped, blank lines skipped.

    Raises :class:`DatasetError` naming the file when it is missing, unreadable or empty.
    """
    list_path = Path(list_path)
    if not list_path.is_file():
        state = "is not a file" if list_path.exists() else "does not exist"
        raise DatasetError(f"{what} {list_path} {state}")
    try:
        text = list_path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{what} {list_path} cannot be read: {exc}") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{what} {list_path} is empty (expected one file name per line)")
    return names


def find_missing(paths: Iterable[str | Path]) -> list[Path]:
    """The paths in ``paths`` that are not existing files, in input order.

    Lists each parent directory once instead of one ``stat`` per file: 50 000 GTA5
    paths cost two directory listings, which matters on network file systems.
    Names are compared exactly (case-sensitive), as they will be opened on Linux.
    """
    paths = [Path(p) for p in paths]
    by_dir: dict[Path, set[str] | None] = {}
    for parent in {p.parent for p in paths}:
        try:
            with os.scandir(parent) as it:
                by_dir[parent] = {e.name for e in it if e.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            by_dir[parent] = set()
        except OSError:
            by_dir[parent] = None  # unlistable (permissions): fall back to one stat per file
    missing = []
    for p in paths:
        names = by_dir[p.parent]
        exists = p.is_file() if names is None else p.name in names
        if not exists:
            missing.append(p)
    return missing


def check_files_exist(paths: Iterable[str | Path], what: str, list_path: str | Path) -> None:
    """One :class:`DatasetError` for all missing files: the count and the first few paths."""
    paths = list(paths)
    missing = find_missing(paths)
    if missing:
        raise DatasetError(
            f"{len(missing)} of the {len(paths)} {what} named by {list_path} do not exist, e.g.:\n"
            f"{format_paths(missing)}\n"
            "Check the data directory flag and that the download was extracted completely "
            "(run tools/check_data.py for a full report)."
        )


def open_image(path: str | Path, what: str = "image") -> Image.Image:
    """Open and fully decode ``path``; a missing, unreadable or truncated file raises :class:`DatasetError`.

    ``Image.open`` is lazy, so truncation only shows at ``load()``; doing it here puts
    the file name in the error instead of a bare "image file is truncated".
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
    except FileNotFoundError:
        raise DatasetError(f"{what} {path} does not exist") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, zlib errors, DecompressionBombError
        raise DatasetError(
            f"cannot read {what} {path}: {exc} (the file is unreadable or truncated: re-download or re-extract it)"
        ) from None
    return img


def check_label_mode(img: Image.Image, path: str | Path, hint: str = GTA5_LABEL_HINT) -> None:
    """Raise :class:`DatasetError` naming ``path`` and the mode found unless it is 'P' or 'L'.

    An RGB (or RGBA, or 16-bit) label would be read as colours, not labelIds; the
    mapping would then turn almost everything into ignore and training would learn
    nothing, without any error. So it is refused.
    """
    if img.mode not in LABEL_MODES:
        raise LabelFormatError(f"label {path} has mode {img.mode!r}, expected 'P' or 'L'. {hint}")


def open_label(path: str | Path, hint: str = GTA5_LABEL_HINT) -> Image.Image:
    """Open, decode and mode-check a label PNG. Never converts it: the indices are the labels."""
    img = open_image(path, "label")
    check_label_mode(img, path, hint)
    return img


def open_rgb(path: str | Path) -> Image.Image:
    """Open and decode an image and convert it to RGB, as the original loaders did (``.convert('RGB')``).

    An image already in RGB is returned as decoded: ``convert`` would only copy it (the same pixels; a few ms of a
    full-size frame). The loaders read through :func:`dataset.decode.read_rgb`, which decodes 8-bit RGB PNGs faster
    and falls back to this.
    """
    image = open_image(path, "image")
    return image if image.mode == "RGB" else image.convert("RGB")



#: How many label files :func:`check_label_modes_sample` opens at construction.
LABEL_MODE_SAMPLE = 16


def check_label_modes_sample(paths: Sequence[str | Path], hint: str = GTA5_LABEL_HINT,
                             sample: int = LABEL_MODE_SAMPLE) -> None:
    """Check the mode of up to ``sample`` evenly spaced label files from their PNG headers (no decoding).

    A whole label folder converted to RGB is the common way to lose the labelIds; this finds it
    when the dataset is built, in milliseconds, instead of at the first batch. Every label is
    still checked when it is read (:func:`open_label`); ``tools/check_data.py`` checks them all.
    """
    if not paths:
        return
    step = max(1, len(paths) // sample)
    for path in list(paths)[::step][:sample]:
        try:
            with Image.open(path) as img:
                mode = img.mode
        except (OSError, SyntaxError) as exc:
            raise DatasetError(f"cannot read label {path}: {exc} (the file is unreadable or truncated: "
                               "re-download or re-extract it)") from None
        if mode not in LABEL_MODES:
            raise LabelFormatError(f"label {path} has mode {mode!r}, expected 'P' or 'L'. {hint}")


def dataset_error_message(exc: Exception) -> str:
    """The one-line message of a :class:`DatasetError`, also when a DataLoader worker re-raised it ("Caught
    DatasetError in DataLoader worker process 0. Original Traceback ...": only its last line is the message, after
    the exception's name, e.g. ``dataset.cache.CacheError: ``)."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = re.sub(r"^[\w.]*Error: ", "", text.splitlines()[-1])
    return text
