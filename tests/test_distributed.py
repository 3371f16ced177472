"""Multi-process training through torchrun (gloo, CPU) on generated data, ResNet blocks 1,1,1,1, tiny sizes.

What is checked: both ranks end with the same parameters; one set of files is written (by rank 0); two ranks with
batch 1 give the update of one process with ``--iter-size 2`` (the same two images per iteration, gradients
averaged); parameters that get no gradient stay untouched as in one process (DDP leaves their gradient ``None``,
so the faithful SGD does not decay them); a signal to one rank stops both at the same iteration with a saved state.
"""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch

import train_with_hooks
from model import FCDiscriminator, build_model
from tiny_training import make_tiny_data, one_thread  # noqa: F401 (one_thread: a fixture)
from tiny_training import train_argv as _argv
from utils.device import seed_everything

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
LAYERS = (1, 1, 1, 1)
NUMBER = re.compile(r"= *(-?[0-9.]+)")
UNUSED_BRANCHES = [f"layer{k}.conv2d_list.{b}.{w}" for k in (5, 6) for b in (2, 3) for w in ("weight", "bias")]




@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("synth"))




def _torchrun(data, snap: Path, *extra: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(REPO / "tests" / "train_with_hooks.py"), *_argv(data, snap, *extra)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _trainable(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in state if "running_" not in k and "num_batches" not in k]


def _initial_model() -> dict[str, torch.Tensor]:
    """The segmentation network as the script builds it (seed 1234, --restore-from none)."""
    seed_everything(1234)
    return build_model("DeepLab", 19, layers=LAYERS).state_dict()


def test_two_ranks_equal_weights_one_file_set_and_the_iter_size_equivalent(data, tmp_path):
    snap, dump = tmp_path / "ddp", tmp_path / "dump"
    proc = _torchrun(data, snap, "--dump-ranks", str(dump))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # one set of files, written once (rank 0): snapshots at 2 and at the stop (4), the state, the arguments
    assert sorted(p.name for p in snap.iterdir()) == [
        ".lock", "GTA5_2.pth", "GTA5_2_D1.pth", "GTA5_2_D2.pth", "GTA5_4.pth", "GTA5_4_D1.pth", "GTA5_4_D2.pth",
        "args.json", "resume.pth"]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("iter =")]
    assert len(lines) == 4  # logged by rank 0 only
    assert proc.stdout.count("save model ...") == 1
    # plain (unwrapped) state_dicts
    build_model("DeepLab", 19, layers=LAYERS).load_state_dict(_load(snap / "GTA5_4.pth"))
    FCDiscriminator(19).load_state_dict(_load(snap / "GTA5_4_D2.pth"))
    state = torch.load(snap / "resume.pth", weights_only=True)
    assert state["next_iter"] == 4 and state["data_positions"] == {"source": 8, "target": 8}  # 2 ranks x 4
    assert "scaler" not in state  # no --amp float16

    rank0, rank1 = _load(dump / "rank0.pth"), _load(dump / "rank1.pth")
    for k in _trainable(rank0):
        assert torch.equal(rank0[k], rank1[k]), f"ranks differ in {k}"
    saved = _load(snap / "GTA5_4.pth")
    for k in saved:  # rank 0's networks are what was saved (BN running statistics included)
        assert torch.equal(saved[k], rank0[f"model.{k}"]), k

    # The same run in one process with --iter-size 2 sees the same two images per iteration.
    single = tmp_path / "single"
    with redirect_stdout(io.StringIO()) as out:
        rc = train_with_hooks.run(_argv(data, single, "--iter-size", "2", "--dump-ranks", str(single)))
    assert rc == 0
    ref = _load(single / "rank0.pth")
    ref_lines = [line for line in out.getvalue().splitlines() if line.startswith("iter =")]
    for a, b in zip(lines, ref_lines):  # the logged losses are the means over the ranks
        va, vb = [float(v) for v in NUMBER.findall(a)[1:]], [float(v) for v in NUMBER.findall(b)[1:]]
        assert len(va) == 6 and va == pytest.approx(vb, abs=2e-3)
    for prefix in ("model.", "D1.", "D2."):
        keys = [k for k in _trainable(ref) if k.startswith(prefix)]
        num = sum(float((rank0[k].double() - ref[k].double()).pow(2).sum()) for k in keys)
        den = sum(float(ref[k].double().pow(2).sum()) for k in keys)
        assert (num / den) ** 0.5 < 1e-5, prefix
    # the classifier branches the forward never uses: untouched (no gradient, hence no weight decay) in both
    init = _initial_model()
    for k in UNUSED_BRANCHES:
        assert torch.equal(rank0[f"model.{k}"], init[k]) and torch.equal(ref[f"model.{k}"], init[k]), k
    assert not torch.equal(rank0["model.layer6.conv2d_list.0.weight"], init["layer6.conv2d_list.0.weight"])


def test_signal_to_one_rank_stops_both_single_level(data, tmp_path):
    """--signal-at (tests/train_with_hooks.py) under torchrun signals the last rank only: both stop after that iteration, rank 0 saves
    the state and says so once. Single-level setting: layer5 and D1 are never used, DDP leaves them untouched."""
    snap = tmp_path / "snap"
    proc = _torchrun(data, snap, "--lambda-seg", "0", "--lambda-adv-target1", "0", "--num-steps-stop", "6",
                     "--save-pred-every", "100", "--signal-at", "1")
    err = proc.stderr
    assert proc.returncode != 0  # torchrun reports the workers' exit status 128 + SIGTERM as a failure
    assert re.search(rf"exitcode\s*:\s*{128 + signal.SIGTERM}\b", err), err[-3000:]  # the signalled rank's status
    assert err.count("SIGTERM: saved the training state after iteration 1") == 1, err[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("iter =")]
    assert len(lines) == 2
    state = torch.load(snap / "resume.pth", weights_only=True)
    assert state["next_iter"] == 2 and state["data_positions"] == {"source": 4, "target": 4}
    init = _initial_model()
    for k, v in init.items():
        if k.startswith("layer5."):
            assert torch.equal(state["model"][k], v), k
    assert not torch.equal(state["model"]["layer6.conv2d_list.0.weight"], init["layer6.conv2d_list.0.weight"])
    assert not list(snap.glob("GTA5_*.pth"))
