"""Benchmark: a short training run as a whole process (start-up, ``--steps`` iterations, the final snapshot, exit),
``train_gta2cityscapes_multi.py`` against a port of the original script's ``main()``.

The port (``--port``, run in its own process like ours) does what the original's main did, in today's idioms: parse
its flags, build the GTA5 and Cityscapes loaders (``DataLoader(shuffle=True, num_workers)``, the project's dataset
classes, as the training benchmark's port), the networks in the original's order, the original iteration
(``tests/original_port.py``: the original's cross-entropy and passes) with the original's own optimizer calls
(``optim.SGD``, ``optim.Adam``) and, at the stop, the three snapshots with a plain ``torch.save`` (no training
state, no fsync). Ours also writes ``args.json`` and the
resumable training state, flushes every file to the disk, locks the folder and checks the data first.

The two take turns (A B A B ...) on the same generated data; the table has the median wall time of each and the
difference, and the median time to the first iteration's log line.

    python bench/bench_startup.py                       # the real ResNet-101 at 320x176 + 256x128, 1 step
    python bench/bench_startup.py --steps 3 --repeat 5 --num-workers 4
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def get_args_parser() -> argparse.ArgumentParser:
    from utils.cli import ArgumentParser, parse_size

    p = ArgumentParser(description="Whole-process time of a short training run: ours against the original's port.")
    p.add_argument("--steps", type=int, default=1, help="iterations per run")
    p.add_argument("--repeat", type=int, default=3, help="runs of each, in turns")
    p.add_argument("--input-size", type=parse_size, default=(320, 176), help="W,H of the source crops and files")
    p.add_argument("--input-size-target", type=parse_size, default=(256, 128), help="W,H of the target")
    p.add_argument("--resnet-layers", default="3,4,23,3", help="ResNet block counts (the real ResNet-101)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="loader processes per domain (default: the training script's, at most the usable cores)")
    p.add_argument("--json", default=None, help="also write the results here")
    return p


def port_main(argv: list[str]) -> None:
    """The original script's main() for ``--steps`` iterations (see the module docstring)."""
    import torch

    import train_gta2cityscapes_multi as train
    from dataset.settings import training_sets
    from original_port import OriginalIteration
    from utils.device import seed_everything
    from utils.training import build_networks

    args = train.get_args_parser().parse_args(argv)
    train.validate_args(args)
    seed_everything(args.random_seed)
    nets = build_networks(args, torch.device("cpu"))
    source_set, target_set = training_sets(  # float32 items, converted in the loader workers as the original's
        args.source, args.target, data_dir=args.data_dir, data_list=args.data_list, input_size=args.input_size,
        data_dir_target=args.data_dir_target, data_list_target=args.data_list_target,
        input_size_target=args.input_size_target, max_iters=args.num_steps * args.iter_size * args.batch_size)
    port = OriginalIteration(*nets, args)
    # the original's own optimizer calls (today's torch.optim: the arithmetic differs, the set-up cost is the same)
    port.optimizer = torch.optim.SGD(nets[0].optim_parameters(args.learning_rate), lr=args.learning_rate,
                                     momentum=args.momentum, weight_decay=args.weight_decay)
    port.optimizer_D1, port.optimizer_D2 = (torch.optim.Adam(d.parameters(), lr=args.learning_rate_D,
                                                             betas=(0.9, 0.99)) for d in nets[1:])
    loaders = [torch.utils.data.DataLoader(ds, batch_size=1, shuffle=True, num_workers=args.num_workers,
                                           pin_memory=False) for ds in (source_set, target_set)]
    source = ((images, labels) for images, labels, _, _ in loaders[0])
    target = (images for images, _, _ in loaders[1])
    Path(args.snapshot_dir).mkdir(parents=True, exist_ok=True)
    for i_iter in range(args.num_steps_stop):
        port.step(source, target, i_iter, torch.device("cpu"))
        print(f"iter = {i_iter:8d}", flush=True)
    for suffix, net in zip(("", "_D1", "_D2"), nets):
        torch.save(net.state_dict(), Path(args.snapshot_dir) / f"GTA5_{args.num_steps_stop}{suffix}.pth")


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds of the whole process, and until its first ``iter =`` line."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = None
    for line in proc.stdout:
        if first is None and line.startswith("iter ="):
            first = time.perf_counter() - t0
    err = proc.stderr.read()
    if proc.wait() != 0:
        raise RuntimeError(f"{cmd[1]} failed ({proc.returncode}):\n{err[-3000:]}")
    return time.perf_counter() - t0, first if first is not None else float("nan")


def main(args: argparse.Namespace) -> dict:
    from tools.make_synthetic_data import make_synthetic_datasets

    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        tmp = Path(tmp)
        data = make_synthetic_datasets(tmp / "data", num_source=8, num_target_train=8, num_val=1,
                                       source_size=args.input_size, target_size=args.input_size_target, seed=0)
        flags = ["--data-dir", str(data.gta5_root), "--data-list", str(data.gta5_list),
                 "--data-dir-target", str(data.cityscapes_root), "--data-list-target", str(data.cityscapes_train_list),
                 "--input-size", "%d,%d" % args.input_size, "--input-size-target", "%d,%d" % args.input_size_target,
                 "--restore-from", "none", "--resnet-layers", args.resnet_layers, "--cpu",
                 "--num-steps-stop", str(args.steps)]
        if args.num_workers is not None:
            flags += ["--num-workers", str(args.num_workers)]
        commands = {"original port": [sys.executable, str(Path(__file__).resolve()), "--port"],
                    "ours": [sys.executable, str(ROOT / "train_gta2cityscapes_multi.py")]}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for r in range(args.repeat):
            for name, cmd in commands.items():
                times[name].append(timed([*cmd, *flags, "--snapshot-dir", str(tmp / f"{name}_{r}".replace(" ", "_"))]))
    rows = {name: {"wall_s": statistics.median(t for t, _ in ts), "first_iteration_s": statistics.median(f for _, f in ts),
                   "all": ts} for name, ts in times.items()}
    result = {"benchmark": "training run as a whole process", "date": datetime.date.today().isoformat(),
              "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "python": platform.python_version(),
                          "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
              "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k != "json"},
              "rows": rows}
    print(f"# {args.steps}-step run, {args.input_size[0]}x{args.input_size[1]} + {args.input_size_target[0]}x"
          f"{args.input_size_target[1]}, ResNet layers {args.resnet_layers}, median of {args.repeat} in turns; load "
          "average at the end " + " ".join(f"{x:.2f}" for x in result["machine"]["load_average_at_end"] or []))
    print("| program | wall s (median) | to the first iteration s | all runs (wall) |")
    print("|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['wall_s']:.2f} | {row['first_iteration_s']:.2f} | "
              + ", ".join(f"{t:.2f}" for t, _ in row["all"]) + " |")
    print(f"ours - port: {rows['ours']['wall_s'] - rows['original port']['wall_s']:+.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--port":
        port_main(sys.argv[2:])
    else:
        main(get_args_parser().parse_args())
