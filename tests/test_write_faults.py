"""Faults while writing: a full disk gets one clear line and loses nothing; two runs cannot share a snapshot folder;
files follow the umask; renames are made durable. The disk is "filled" by patching the writers to raise
``OSError(ENOSPC)`` partway through a file, so no root and no small file system are needed."""
from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train_gta2cityscapes_multi as train
import utils.files
from tiny_training import make_tiny_data, one_thread  # noqa: F401 (one_thread: a fixture)
from tiny_training import train_argv
from utils.checkpoint import SnapshotDirLock, snapshot_space_warning

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
PREFIX = "train_gta2cityscapes_multi.py: error: "


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("synth"))


def _run(data, snap: Path, *extra: str) -> int:
    return train.main(train.get_args_parser().parse_args(train_argv(data, snap, *extra)))


def _full_disk_after(calls: int, monkeypatch) -> list[str]:
    """From the ``calls``-th ``torch.save`` on: write half of the data, then fail as a full disk does."""
    real_save, seen = torch.save, []

    def save(obj, f, *args, **kwargs):
        seen.append(getattr(f, "name", str(f)))
        if len(seen) < calls:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"\0" * 1000)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from OSError(
            errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)
    return seen


@pytest.mark.parametrize("calls, failing, snapshot, state", [
    (4, "resume.pth", "GTA5_2.pth (with _D1, _D2)", "no resume.pth from this run"),  # the first state
    (6, "GTA5_4_D1.pth", "GTA5_2.pth (with _D1, _D2)", "continues at iteration 3"),  # inside the second set
    (8, "resume.pth", "GTA5_4.pth (with _D1, _D2)", "continues at iteration 3"),  # the second state
])
def test_disk_full_while_training_one_line_nothing_lost(data, tmp_path, capsys, monkeypatch, calls, failing,
                                                        snapshot, state):
    """Snapshots at 2 and 4 (three files and the state each): the disk fills at the ``calls``-th write."""
    _full_disk_after(calls, monkeypatch)
    assert _run(data, tmp_path) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"{PREFIX}cannot write {tmp_path / failing}: no space left on the device (")
    assert re.search(r"\(\d[\d.]* [kMGT]?B free, about \d[\d.]* [kMGT]?B needed\)", lines[0]), lines[0]
    assert f"the last complete snapshot: {snapshot}" in lines[0] and state in lines[0]
    assert lines[0].endswith("Free space (or move the folder elsewhere) and continue with --resume auto")
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file is gone
    for path in tmp_path.glob("*.pth"):  # every file left is whole
        torch.load(path, weights_only=True)
    monkeypatch.undo()  # space freed: the run continues where the state says, to the same end
    assert _run(data, tmp_path, "--resume", "auto") == 0
    assert (tmp_path / "GTA5_4_D2.pth").is_file()


def test_disk_full_on_args_json(data, tmp_path, capsys, monkeypatch):
    real = Path.write_text

    def write_text(self, text, *a, **kw):
        if ".args.json." in self.name:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        return real(self, text, *a, **kw)

    monkeypatch.setattr(Path, "write_text", write_text)
    assert _run(data, tmp_path) == 1
    err = capsys.readouterr().err
    assert f"{PREFIX}cannot write {tmp_path / 'args.json'}: the disk quota is exceeded (" in err
    assert "Traceback" not in err and not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob("GTA5_*"))


def test_other_write_errors_give_the_os_reason(tmp_path, monkeypatch):
    def fail_io(tmp):
        tmp.write_bytes(b"x")
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(utils.files.WriteError, match=r"cannot write .*x\.bin: Input/output error$") as info:
        utils.files.atomic_write(tmp_path / "x.bin", fail_io)
    assert info.value.errno == errno.EIO and not list(tmp_path.iterdir())


def test_renames_are_made_durable(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    utils.files.atomic_write(tmp_path / "a.txt", lambda tmp: tmp.write_text("a"))
    assert synced[-1] == str(tmp_path.resolve())  # after the rename: the folder itself
    assert any(p.startswith(str(tmp_path.resolve() / ".a.txt.")) for p in synced[:-1])  # before it: the data


def test_files_follow_the_umask_in_a_fresh_process(tmp_path):
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); from utils.files import atomic_write, "
            "atomic_torch_save; from pathlib import Path; d = Path(sys.argv[2]); "
            "atomic_write(d / 'a.json', lambda t: t.write_text('{}')); atomic_torch_save({'x': torch.zeros(1)}, d / 'b.pth')")
    for mask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        out = tmp_path / f"m{mask:o}"
        subprocess.run([sys.executable, "-c", code, str(REPO), str(out)], check=True, preexec_fn=lambda m=mask: os.umask(m))
        assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {"a.json": mode, "b.pth": mode}


def test_space_warning_before_the_hours_are_spent(tmp_path, monkeypatch):
    from model import FCDiscriminator, build_model

    nets = {"model": build_model("DeepLab", 19, layers=(1, 1, 1, 1)), "model_D1": FCDiscriminator(19),
            "model_D2": FCDiscriminator(19)}
    sizes = [sum(t.numel() * t.element_size() for t in n.state_dict().values()) for n in nets.values()]
    params = [sum(p.numel() * p.element_size() for p in n.parameters()) for n in nets.values()]
    snapshot, state = sum(sizes), sum(sizes) + params[0] + 2 * (params[1] + params[2])  # computed by hand here
    for free, expected in ((snapshot + 2 * state - 1, "not even the next snapshot set"),
                           (3 * snapshot + 2 * state - 1, "not all 3 snapshot sets still to come"),
                           (3 * snapshot + 2 * state, None)):
        monkeypatch.setattr(utils.files, "free_bytes", lambda path, free=free: free)
        warning = snapshot_space_warning(tmp_path, nets, 3)
        assert (warning is None) if expected is None else (expected in warning and str(tmp_path) in warning)


# ---- one run per snapshot folder ---------------------------------------------------------------------------------


def _spawn(data, snap: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(REPO / "tests" / "train_with_hooks.py"), *train_argv(data, snap, *extra)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _first_iteration(proc: subprocess.Popen) -> None:
    for line in proc.stdout:
        if line.startswith("iter ="):
            return
    raise AssertionError(f"the run ended early: {proc.wait()} {proc.stderr.read()}")


def test_second_run_on_the_same_folder_refuses_at_once(data, tmp_path):
    snap = tmp_path / "snap"
    go = tmp_path / "go"  # the first run waits at iteration 1 until this file exists
    first = _spawn(data, snap, "--num-steps", "4", "--num-steps-stop", "4", "--wait-at", "1", "--until", str(go))
    try:
        _first_iteration(first)
        t0 = time.monotonic()
        second = subprocess.run([sys.executable, str(REPO / "train_gta2cityscapes_multi.py"),
                                 *train_argv(data, snap, "--num-steps-stop", "30")], cwd=REPO, capture_output=True,
                                text=True, timeout=60, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert second.returncode == 2 and time.monotonic() - t0 < 15
        assert re.search(rf"^{re.escape(PREFIX)}--snapshot-dir {re.escape(str(snap))} is in use by another training "
                         rf"run \(pid {first.pid}, started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\); use another folder or "
                         "stop that run$", second.stderr.strip(), re.M), second.stderr
        assert "iter =" not in second.stdout
        go.touch()
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, err  # the first run was not disturbed
        assert (snap / "GTA5_4.pth").is_file()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)


def test_a_killed_runs_lock_does_not_block_the_next(data, tmp_path):
    snap = tmp_path / "snap"
    first = _spawn(data, snap, "--num-steps", "400", "--num-steps-stop", "400", "--save-pred-every", "1")
    try:
        _first_iteration(first)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert (snap / SnapshotDirLock.NAME).is_file()  # the file stays; the kernel released its lock
    assert _run(data, snap, "--num-steps", "400", "--num-steps-stop", "3", "--resume", "auto") == 0


def test_torchrun_ranks_follow_rank_zero(data, tmp_path):
    snap = tmp_path / "snap"
    snap.mkdir()
    holder = SnapshotDirLock()
    holder.acquire(snap)  # this test process plays the other training run
    try:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                               str(REPO / "train_gta2cityscapes_multi.py"), *train_argv(data, snap)], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=120)
    finally:
        holder.release()
    assert proc.returncode != 0
    assert proc.stderr.count(f"--snapshot-dir {snap} is in use by another training run (pid {os.getpid()}") == 1
    assert "iter =" not in proc.stdout and not list(snap.glob("GTA5_*"))
