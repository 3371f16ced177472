"""What every script and tool shares on the command line: the parser (help with defaults, a short usage error), the
value types (``--input-size W,H``, ``--resnet-layers a,b,c,d``, ``--scales 1.0,0.75``), the error line, and a few
defaults.

One error style everywhere: ``<script>: error: <what>, <what to do>`` on stderr, exit status 1 for data and runtime
errors, 2 for usage errors (argparse's own, and flags that cannot work together). Nothing here imports torch.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

#: The repository root: default list paths (``./dataset/...``) are found here when run from another folder.
REPO = Path(__file__).resolve().parents[1]


class HelpFormatter(argparse.HelpFormatter):
    """Every flag's default at the end of its help, written as it is typed (``1280,720``, not ``(1280, 720)``);
    none for flags without one (``None``, off switches) or whose help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default is None or default is False or default == argparse.SUPPRESS
                or "default" in text or isinstance(action, argparse._HelpAction)):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with :class:`HelpFormatter` and a short usage error: one usage line and the
    error line (``<prog>: error: ...``, exit 2) instead of the whole usage block."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:
        self.exit(2, f"usage: {self.prog} [options] (--help lists them)\n{self.prog}: error: {message}\n")


def fail(prog: str, message: str, code: int = 1) -> int:
    """Print ``<prog>: error: <message>`` to stderr and return ``code`` (1: data or runtime error, 2: usage)."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return code


class UsageError(ValueError):
    """Flags that cannot work together (or a flag that cannot work on this machine): exit status 2."""


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in str(text).split(",")]
    except ValueError:
        return []


def parse_size(text: str) -> tuple[int, int]:
    """``"W,H"`` -> ``(W, H)``, both positive."""
    parts = _ints(text)
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected W,H as two positive integers such as 1280,720, got {text!r}")
    return parts[0], parts[1]


def parse_layers(text: str) -> tuple[int, int, int, int]:
    """``"3,4,23,3"`` -> the block counts of layer1..layer4 (ResNet-101 is 3,4,23,3)."""
    parts = _ints(text)
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected four positive block counts such as 3,4,23,3, got {text!r}")
    return parts[0], parts[1], parts[2], parts[3]


def parse_scales(text: str) -> tuple[float, ...]:
    """``"1.0,0.75"`` -> ``(1.0, 0.75)``, all positive (test-time augmentation scales)."""
    try:
        scales = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 1.0,0.75, got {text!r}") from None
    if min(scales) <= 0:
        raise argparse.ArgumentTypeError(f"scales must be positive, got {text!r}")
    return scales


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. a cluster job's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def repo_path(path: str | None, flag: str) -> str | None:
    """``path`` itself when it exists (or is absolute, or None); else, when the repository has it (a default such as
    ``./dataset/gta5_list/train.txt`` used from another folder), the repository's copy, with a log line."""
    if path is None or Path(path).is_absolute() or Path(path).exists() or not (REPO / path).exists():
        return path
    found = str((REPO / path).resolve())
    logger.info("%s %s: not in the current folder; using the repository's %s", flag, path, found)
    return found
