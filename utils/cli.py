"""argparse value types shared by the scripts (``--input-size W,H``, ``--resnet-layers a,b,c,d``).

They turn a malformed value into a clear argparse error naming the flag; they read no arguments themselves.
"""
from __future__ import annotations

import argparse


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
