"""The tiny training set-up shared by the training tests: generated data and a command line that trains in seconds."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tools.make_synthetic_data import make_synthetic_datasets


def make_tiny_data(root: Path):
    """4 source and 4 target images of 48x32 (and one val image), seed 3."""
    return make_synthetic_datasets(root, num_source=4, num_target_train=4, num_val=1,
                                   source_size=(48, 32), target_size=(48, 32), seed=3)


def train_argv(data, snap: Path, *extra: str) -> list[str]:
    """Training flags for ``data``: ResNet blocks 1,1,1,1, no init file, CPU, 4 iterations with snapshots at 2 and 4."""
    return ["--data-dir", str(data.gta5_root), "--data-list", str(data.gta5_list),
            "--data-dir-target", str(data.cityscapes_root), "--data-list-target", str(data.cityscapes_train_list),
            "--input-size", "40,32", "--input-size-target", "32,32", "--restore-from", "none",
            "--resnet-layers", "1,1,1,1", "--num-workers", "0", "--cpu", "--num-steps", "10",
            "--num-steps-stop", "4", "--save-pred-every", "2", "--snapshot-dir", str(snap), *extra]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is as fast, and far faster when other work (torchrun ranks, another
    process) shares the cores (OpenMP threads spin-waiting for a busy core). Subprocesses get OMP_NUM_THREADS=1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
