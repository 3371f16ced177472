"""The whole AdaptSegNet job in a few minutes on a CPU, on generated data: ``python tools/demo.py``.

Steps, each the real script through its real command line (printed before it runs, so it can be copied):

1. ``tools/make_synthetic_data.py``: a small GTA5-like source (labelled) and Cityscapes-like target (train
   images without labels, val images with gtFine labels), in the real folder layouts;
2. ``train_gta2cityscapes_multi.py``: the original's multi-level adversarial objective (``--lambda-seg 0.1
   --lambda-adv-target1 0.0002 --lambda-adv-target2 0.001``, vanilla GAN) on the CPU, at a small input size, for
   a short schedule, with a small ResNet (``--resnet-layers 1,1,1,1``) from its own random initialisation
   (``--restore-from none``: no download); snapshots and TensorBoard logs;
3. ``evaluate_cityscapes.py``: predictions of the final snapshot on the generated val split (trainId PNGs,
   colour PNGs, overlays);
4. ``compute_iou.py``: per-class IoU and mIoU against the generated ground truth, also as JSON;
5. ``tools/visualize.py sheet``: image | prediction | ground truth for a few val images;
6. ``tools/visualize.py chart``: the per-class IoU bar chart.

Everything goes under ``--out`` (default ``./demo_output``). At the end the demo prints the per-class IoU table,
the mIoU (with the score of predicting the most frequent class everywhere, for scale) and where each file is.
A step that fails stops the demo with that step's exit status and a message naming the step
(``demo.py: error: step 'train' failed ...``).

The numbers say that the pipeline works, not what AdaptSegNet achieves: the network is a 1-1-1-1-block ResNet
trained from scratch for a few hundred iterations on tiny images. For the paper's setting see README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(REPO_ROOT))

from utils.cli import ArgumentParser, fail  # noqa: E402
from utils.files import atomic_write  # noqa: E402

PROG = "demo.py"
#: Written into --out so that a later run may clear what an earlier demo wrote, and nothing else.
MARKER = ".adaptsegnet-demo"
#: The interpreter that runs the steps (the demo's own).
PYTHON = sys.executable
#: What the demo writes under --out (removed before a new run when the marker is there).
OUTPUTS = ("data", "snapshots", "log", "result", "iou.json", "sheet.png", "chart.png")


@dataclass(frozen=True)
class Settings:
    """Sizes and schedule of a demo run. ``source_size``/``target_size`` are (W, H)."""

    num_source: int
    num_target_train: int
    num_val: int
    source_size: tuple[int, int]
    target_size: tuple[int, int]
    steps: int
    learning_rate: float
    sheet_images: int
    sheet_width: int
    log_every: int


#: The full demo: about 2-3 minutes on 2 CPU cores (see README.md for measured numbers).
FULL = Settings(num_source=60, num_target_train=60, num_val=10, source_size=(128, 72), target_size=(128, 64),
                steps=200, learning_rate=5e-3, sheet_images=4, sheet_width=256, log_every=20)
#: --quick (the test): a few iterations at the smallest size the discriminators take (32 px per side at least).
QUICK = Settings(num_source=4, num_target_train=4, num_val=3, source_size=(64, 36), target_size=(64, 32),
                 steps=4, learning_rate=5e-3, sheet_images=2, sheet_width=128, log_every=1)


class StepFailed(Exception):
    """A step's command exited with a non-zero status."""

    def __init__(self, step: str, returncode: int, command: str) -> None:
        super().__init__(step)
        self.step, self.returncode, self.command = step, returncode, command


@dataclass
class Demo:
    """Runs the steps and remembers how long each took."""

    out: Path
    settings: Settings
    seed: int
    python: str = PYTHON
    timings: list[tuple[str, float]] = field(default_factory=list)

    # Paths handed to the scripts: relative to the repository root (the scripts' cwd) when --out is inside it,
    # so that the printed commands run as shown from there; absolute otherwise.
    def arg(self, *parts: str) -> str:
        path = self.out.joinpath(*parts)
        try:
            return str(path.relative_to(REPO_ROOT))
        except ValueError:
            return str(path)

    @property
    def data(self) -> str:
        return self.arg("data")

    @property
    def cityscapes(self) -> str:
        return self.arg("data", "Cityscapes", "data")

    @property
    def devkit(self) -> str:
        return self.arg("data", "lists", "cityscapes_list")

    @property
    def gt_dir(self) -> str:
        return self.arg("data", "Cityscapes", "data", "gtFine", "val")

    @property
    def snapshot(self) -> str:
        return self.arg("snapshots", f"GTA5_{self.settings.steps}.pth")

    def run(self, number: int, total: int, step: str, title: str, argv: Sequence[str], quiet: bool = False) -> None:
        """Print and run ``python argv...`` in the repository root; raise StepFailed on a non-zero exit.

        ``quiet``: the command's output is shown only if it fails.
        """
        shown = "python " + " ".join(shlex.quote(a) for a in argv)
        print(f"\n[{number}/{total}] {title}\n$ {shown}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run([self.python, *argv], cwd=REPO_ROOT, text=True,
                              stdout=subprocess.PIPE if quiet else None,
                              stderr=subprocess.STDOUT if quiet else None)
        self.timings.append((step, time.perf_counter() - start))
        if proc.returncode != 0:
            if quiet and proc.stdout:
                print(proc.stdout, end="", flush=True)
            raise StepFailed(step, proc.returncode, shown)

    def steps(self) -> None:
        s = self.settings
        total = 6
        size = lambda wh: f"{wh[0]},{wh[1]}"  # noqa: E731
        self.run(1, total, "data", "Generating a GTA5-like source and a Cityscapes-like target", [
            "tools/make_synthetic_data.py", "--out", self.data,
            "--num-source", str(s.num_source), "--num-target-train", str(s.num_target_train),
            "--num-val", str(s.num_val), "--source-size", size(s.source_size),
            "--target-size", size(s.target_size), "--random-seed", str(self.seed),
        ], quiet=True)
        self.run(2, total, "train", f"Training (multi-level adversarial, {s.steps} iterations on the CPU)", [
            "train_gta2cityscapes_multi.py",
            "--data-dir", self.arg("data", "GTA5"), "--data-list", self.arg("data", "lists", "gta5_list", "train.txt"),
            "--data-dir-target", self.cityscapes, "--data-list-target", os.path.join(self.devkit, "train.txt"),
            "--input-size", size(s.source_size), "--input-size-target", size(s.target_size),
            "--lambda-seg", "0.1", "--lambda-adv-target1", "0.0002", "--lambda-adv-target2", "0.001",
            "--learning-rate", str(s.learning_rate),
            "--num-steps", str(s.steps), "--num-steps-stop", str(s.steps),
            "--save-pred-every", str(max(1, s.steps // 2)),
            "--restore-from", "none", "--resnet-layers", "1,1,1,1", "--cpu", "--num-workers", "0",
            "--random-seed", str(self.seed), "--log-every", str(s.log_every),
            "--snapshot-dir", self.arg("snapshots"), "--tensorboard", "--log-dir", self.arg("log"),
        ])
        self.run(3, total, "evaluate", "Predicting the generated val split with the final snapshot", [
            "evaluate_cityscapes.py", "--restore-from", self.snapshot, "--resnet-layers", "1,1,1,1",
            "--data-dir", self.cityscapes, "--data-list", os.path.join(self.devkit, "val.txt"),
            "--input-size", size(s.target_size), "--output-size", size(s.target_size),
            "--save", self.arg("result"), "--save-overlay", "--cpu",
        ])
        self.run(4, total, "compute_iou", "Per-class IoU against the generated ground truth", [
            "compute_iou.py", self.gt_dir, self.arg("result"), "--devkit-dir", self.devkit,
            "--json", self.arg("iou.json"),
        ])
        self.run(5, total, "sheet", "Drawing image | prediction | ground truth", [
            "tools/visualize.py", "sheet", "--data-dir", self.cityscapes,
            "--data-list", os.path.join(self.devkit, "val.txt"), "--pred-dir", self.arg("result"),
            "--gt-dir", self.gt_dir, "--num-images", str(s.sheet_images), "--width", str(s.sheet_width),
            "--out", self.arg("sheet.png"),
        ], quiet=True)
        self.run(6, total, "chart", "Drawing the per-class IoU chart", [
            "tools/visualize.py", "chart", self.arg("iou.json"), "--labels", f"GTA5_{s.steps}",
            "--out", self.arg("chart.png"),
        ], quiet=True)


def majority_miou(confusion: Sequence[Sequence[int]]) -> tuple[float, int]:
    """mIoU (fraction) of predicting the most frequent ground-truth class everywhere, and that class.

    With rows = ground truth: that class k gets IoU n_k / N (all N labelled pixels predicted k, n_k of them
    right); every other class present in the ground truth gets 0; classes absent from the ground truth have no
    IoU (0 / 0) and, as in compute_iou.py, do not count.
    """
    rows = [sum(r) for r in confusion]
    total = sum(rows)
    present = sum(1 for n in rows if n > 0)
    if total == 0:
        return float("nan"), -1
    k = max(range(len(rows)), key=lambda i: rows[i])
    return rows[k] / total / present, k


def prepare_out(out: Path) -> None:
    """Create ``out``; clear what an earlier demo wrote there; refuse a non-empty folder that is not a demo's."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ValueError(f"--out {out}: the folder is not empty and was not written by this demo; "
                         "choose another --out (the demo does not delete files it did not write)")
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    atomic_write(out / MARKER, lambda tmp: tmp.write_text("written by tools/demo.py; the demo may clear this folder's "
                                                          "outputs\n"))


def report(demo: Demo, elapsed: float) -> str:
    """The closing text: table, mIoU, what chance would score, where everything is."""
    from tools.visualize import format_table, read_iou_json

    s = demo.settings
    run = read_iou_json(demo.out / "iou.json", label=f"GTA5_{s.steps}")
    data = json.loads((demo.out / "iou.json").read_text())
    base, k = majority_miou(data["confusion_matrix"])
    from dataset.labels import CLASS_NAMES

    shown = demo.arg
    snaps = sorted(p.name for p in (demo.out / "snapshots").glob("GTA5_*.pth"))
    lines = [
        "",
        f"Per-class IoU (%) of snapshot GTA5_{s.steps}.pth on the {data['num_images']} generated val images:",
        format_table([run]),
        "",
        f"mIoU: {100 * run.miou:.1f}%  (for scale: predicting the most frequent class, "
        f"{CLASS_NAMES[k] if k >= 0 else '-'}, everywhere scores {100 * base:.1f}%)",
        "The demo shows that the pipeline works; its numbers are not the paper's (a 1-1-1-1-block ResNet trained "
        "from scratch",
        f"for {s.steps} iterations on {s.source_size[0]}x{s.source_size[1]} images).",
        "",
        f"Everything is in {demo.out}:",
        f"  {shown('data'):<34} generated GTA5-like source and Cityscapes-like target (real layouts, lists)",
        f"  {shown('snapshots'):<34} {', '.join(n for n in snaps if '_D' not in n)} (+ _D1/_D2), args.json, "
        "resume.pth",
        f"  {shown('log'):<34} TensorBoard events (pip install tensorboard; tensorboard --logdir {shown('log')})",
        f"  {shown('result'):<34} predictions: <name>.png (trainIds), <name>_color.png, <name>_overlay.png",
        f"  {shown('iou.json'):<34} per-class IoU, mIoU and confusion matrix (compute_iou.py --json)",
        f"  {shown('sheet.png'):<34} image | prediction | ground truth",
        f"  {shown('chart.png'):<34} per-class IoU bar chart",
        "Step times: " + ", ".join(f"{name} {t:.0f} s" for name, t in demo.timings) + f"; total {elapsed:.0f} s.",
    ]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG, description="Run the whole AdaptSegNet pipeline (data, training, evaluation, IoU, pictures) on a "
                               "small generated dataset on the CPU.")
    parser.add_argument("--out", default="./demo_output", help="folder for everything the demo writes")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"training iterations (default {FULL.steps}; {QUICK.steps} with --quick)")
    parser.add_argument("--random-seed", "--seed", dest="seed", type=int, default=0,
                        help="seed of the data generator and of the training")
    parser.add_argument("--quick", action="store_true",
                        help="tiny images and a few iterations (seconds; the numbers mean nothing): a smoke test")
    return parser


def main(args: argparse.Namespace) -> int:
    settings = QUICK if args.quick else FULL
    if args.steps is not None:
        if args.steps < 1:
            return fail(PROG, f"--steps must be at least 1, got {args.steps}", 2)
        settings = Settings(**{**settings.__dict__, "steps": args.steps,
                               "log_every": max(1, min(settings.log_every, args.steps // 10 or 1))})
    out = Path(args.out).resolve()
    try:
        prepare_out(out)
    except OSError as exc:  # a folder that cannot be written
        return fail(PROG, str(exc))
    except ValueError as exc:  # a --out that is not the demo's
        return fail(PROG, str(exc), 2)
    demo = Demo(out, settings, args.seed, python=PYTHON)
    start = time.perf_counter()
    try:
        demo.steps()
    except StepFailed as exc:
        print(file=sys.stderr)
        return fail(PROG, f"step '{exc.step}' failed with exit status {exc.returncode}; its command was:\n"
                          f"  {exc.command}\n(run from {REPO_ROOT})",
                    exc.returncode if exc.returncode > 0 else 128 - exc.returncode)  # killed by signal N: 128 + N
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return fail(PROG, "interrupted", 130)
    print(report(demo, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
