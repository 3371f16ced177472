"""Benchmark: a whole run in one call (``evaluate_cityscapes.py --restore-from SNAPSHOT_DIR``) against one
``evaluate_cityscapes.py --restore-from GTA5_<i>.pth`` process per snapshot, as a user's shell loop runs them.

Generates M Cityscapes-layout validation images and their gtFine labels at ``--output-size`` (full resolution,
2048x1024, by default; tools/make_synthetic_data.py) and K snapshots of a DeeplabMulti (``--resnet-layers``, default
1,1,1,1 so that a CPU run takes minutes; random weights with the main classifier scaled up so that predictions vary),
then times, each as subprocesses with the same flags (``--gt-dir``, input 1024x512 and output 2048x1024 by default):

* ``K separate runs``: ``evaluate_cityscapes.py --restore-from <snapshot> --json ...`` once per snapshot (every run
  starts Python, builds the model, decodes and resizes the M images, writes the M label maps);
* ``one call``: ``--restore-from SNAPSHOT_DIR``, with no results cached (one process, one model, the images decoded
  once; every snapshot's label maps are written too, to a staging folder, and kept when it is the best so far).

The two take turns ``--repeat`` times (a burst of load elsewhere on the machine then hits both alike); the best time
of each is kept. Checks that every snapshot's mIoU and confusion matrix are identical in both, prints a table and
writes JSON.

    python bench/bench_evaluate_run.py --json bench/results/evaluate_run_cpu.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.deeplab_multi import DeeplabMulti  # noqa: E402
from tools.make_synthetic_data import make_synthetic_datasets  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-snapshots", type=int, default=5, help="K")
    p.add_argument("--num-images", type=int, default=16, help="M (16: about 3.5 minutes on 2 quiet CPU cores)")
    p.add_argument("--input-size", type=str, default="1024,512", help="W,H network input (the original's)")
    p.add_argument("--output-size", type=str, default="2048,1024", help="W,H images, labels and predictions")
    p.add_argument("--resnet-layers", type=str, default="1,1,1,1")
    p.add_argument("--gpu", type=int, default=None, help="CUDA device (default: CPU)")
    p.add_argument("--repeat", type=int, default=1, help="rounds; the best time of each variant is kept")
    p.add_argument("--workdir", type=str, default=None, help="keep the generated data here (default: temp dir)")
    p.add_argument("--json", type=str, default=None)
    return p


def make_snapshots(folder: Path, k: int, layers: tuple[int, ...]) -> list[Path]:
    """``GTA5_1000.pth`` ... ``GTA5_<k>000.pth``: tiny DeeplabMulti state_dicts with different random weights."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(1, k + 1):
        torch.manual_seed(i)
        model = DeeplabMulti(num_classes=19, layers=layers)
        with torch.no_grad():  # vary the predictions (random weights otherwise predict one or two classes)
            for name, p in model.named_parameters():
                if name.startswith("layer6") and name.endswith("weight"):
                    p.mul_(300)
        paths.append(folder / f"GTA5_{i * 1000}.pth")
        torch.save(model.state_dict(), paths[-1])
    return paths


def timed(argv: list[str]) -> tuple[float, str]:
    """Run ``python evaluate_cityscapes.py ARGV`` (stdout discarded): its wall-clock seconds and its log (stderr).
    Raises on failure."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "evaluate_cityscapes.py"), *argv], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"evaluate_cityscapes.py {shlex.join(argv)} failed:\n{proc.stderr[-3000:]}")
    return seconds, proc.stderr


def run_records(save: Path) -> dict[str, dict]:
    return {r["file"]: r for r in json.loads((save / "snapshots.json").read_text())["snapshots"]}


def main(args: argparse.Namespace) -> dict:
    in_w, in_h = (int(v) for v in args.input_size.split(","))
    out_w, out_h = (int(v) for v in args.output_size.split(","))
    layers = tuple(int(v) for v in args.resnet_layers.split(","))
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_eval_run_"))
    try:
        t0 = time.perf_counter()
        paths = make_synthetic_datasets(root / "data", num_source=1, num_target_train=1, num_val=args.num_images,
                                        target_size=(out_w, out_h), seed=0)
        snapshots = make_snapshots(root / "snapshots", args.num_snapshots, layers)
        gen_s = time.perf_counter() - t0
        common = ["--data-dir", str(paths.cityscapes_root), "--data-list", str(paths.cityscapes_val_list),
                  "--gt-dir", str(paths.gt_dir), "--input-size", f"{in_w},{in_h}",
                  "--output-size", f"{out_w},{out_h}", "--resnet-layers", args.resnet_layers, "--no-progress"]
        common += ["--cpu"] if args.gpu is None else ["--gpu", str(args.gpu)]

        def separate() -> float:
            return sum(timed(["--restore-from", str(s), "--save", str(root / "separate" / s.stem),
                              "--json", str(root / "separate" / f"{s.stem}.json"), *common])[0] for s in snapshots)

        decode_s: list[float] = []

        def one_call() -> float:
            shutil.rmtree(root / "one_call", ignore_errors=True)  # no cached results: every snapshot evaluated
            seconds, log = timed(["--restore-from", str(root / "snapshots"), "--save", str(root / "one_call"),
                                  *common])
            decode_s.append(float(re.search(r"images decoded and resized in ([\d.]+) s", log).group(1)))
            return seconds

        variants = [(f"{args.num_snapshots} separate runs", separate), ("one call", one_call)]
        times: list[list[float]] = [[] for _ in variants]
        for _ in range(args.repeat):
            for t, (_, fn) in zip(times, variants):
                t.append(fn())
        rows = [{"variant": label, "seconds": min(t), "all_seconds": t} for (label, _), t in zip(variants, times)]
        reference = {s.name: json.loads((root / "separate" / f"{s.stem}.json").read_text()) for s in snapshots}
        got = run_records(root / "one_call")
        rows[1]["mious_identical"] = all(
            got[name]["mIoU"] == ref["mIoU"] and got[name]["confusion_matrix"] == ref["confusion_matrix"]
            for name, ref in reference.items())
        mious = {name: ref["mIoU"] for name, ref in reference.items()}
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    base = rows[0]["seconds"]
    for r in rows:
        r["seconds_per_snapshot"] = r["seconds"] / args.num_snapshots
        r["speedup_vs_separate"] = base / r["seconds"]
    dev = "cpu" if args.gpu is None else torch.cuda.get_device_name(args.gpu)
    result = {
        "benchmark": "evaluate_run", "num_snapshots": args.num_snapshots, "num_images": args.num_images,
        "input_wh": [in_w, in_h], "output_wh": [out_w, out_h], "resnet_layers": list(layers), "device": dev,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__, "machine": platform.platform(), "generate_seconds": gen_s,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]), "mious": mious, "rows": rows,
        "one_call_decode_seconds": min(decode_s), "repeat": args.repeat,
        "load_average": list(os.getloadavg()),
    }
    print(f"evaluate_cityscapes.py on a whole run: {args.num_snapshots} snapshots x {args.num_images} images, "
          f"input {in_w}x{in_h}, output {out_w}x{out_h}, resnet layers {args.resnet_layers}, device {dev}")
    print(f"| {'variant':24s} | {'seconds':>8s} | {'s/snapshot':>10s} | {'speedup':>8s} | {'mIoUs identical':>15s} |")
    print(f"|{'-' * 26}|{'-' * 10}:|{'-' * 11}:|{'-' * 9}:|{'-' * 16}:|")
    for r in rows:
        same = {True: "yes", False: "NO"}.get(r.get("mious_identical"), "(reference)")
        print(f"| {r['variant']:24s} | {r['seconds']:8.1f} | {r['seconds_per_snapshot']:10.2f} | "
              f"{r['speedup_vs_separate']:7.2f}x | {same:>15s} |")
    print(f"the one call decoded and resized the {args.num_images} images once, in {min(decode_s):.1f} s (threads); "
          f"the separate runs did it {args.num_snapshots} times")
    print(f"load average during the run (1/5/15 min): {' '.join(f'{x:.2f}' for x in result['load_average'])}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if not all(r.get("mious_identical", True) for r in rows):
        raise SystemExit("bench_evaluate_run.py: error: the one call's mIoUs differ from the separate runs'")
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
