"""Benchmark: compute_iou.py against a straightforward port of the original's loop.

Generates N ground-truth / prediction PNG pairs (default full resolution 2048x1024) in a temporary directory,
with a devkit (info.json, val.txt, label.txt) beside them, then times

* ``original``: the original compute_iou.py's loop, ported here as it was (``np.array(Image.open(...))``, 35
  masked passes of ``label_mapping``, ``fast_hist`` on int64, one image after the other);
* ``ours (workers=K)``: :func:`compute_iou.evaluate_dirs` (joint-histogram bincount, K decoding threads);
* ``ours CLI``: ``python compute_iou.py GT PRED --devkit_dir D`` in a subprocess (interpreter start included).

Both read the same files from a warm page cache; the variants take turns for ``--repeat`` rounds and the best
(and median) wall time of each is reported, img/s and speedup from the best; ``cpu s`` is the CPU time (all
threads and worker processes) of the best round, and the load average shows whether something else ran. Checks that the per-class IoUs are
identical to the original's, prints a table and writes JSON.

    python bench/bench_compute_iou.py --num-images 100 --json bench/results/compute_iou.json
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from os.path import join
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import compute_iou  # noqa: E402
from dataset.labels import CITYSCAPES_LIST_DIR  # noqa: E402
from utils.cli import usable_cpus  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", type=int, default=100)
    p.add_argument("--size", type=str, default="2048,1024", help="W,H of the generated images")
    p.add_argument("--workers", type=str, default="1,2", help="comma-separated thread counts to time")
    p.add_argument("--repeat", type=int, default=3, help="rounds; each variant's best time is kept")
    p.add_argument("--no-original", action="store_true", help="skip the slow original port")
    p.add_argument("--workdir", type=str, default=None, help="keep the generated data here (default: temp dir)")
    p.add_argument("--json", type=str, default=None, help="write the results here")
    return p


# ------------------------------------------------------------------------------------------------------------
# Data


def _blocky(rng: np.random.Generator, values: np.ndarray, w: int, h: int, cell: int) -> np.ndarray:
    small = rng.choice(values, size=(h // cell + 1, w // cell + 1)).astype(np.uint8)
    return np.repeat(np.repeat(small, cell, 0), cell, 1)[:h, :w]


def make_pair(rng: np.random.Generator, w: int, h: int, lut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A gt labelId map with regions of several scales and ragged edges, and a prediction that is partly right."""
    gt = _blocky(rng, np.arange(34), w, h, 128)
    fine = _blocky(rng, np.arange(34), w, h, 16)
    mask = _blocky(rng, np.array([0, 0, 0, 1]), w, h, 32).astype(bool)
    gt[mask] = fine[mask]
    edge = rng.random((h, w)) < 0.01  # ragged boundaries: real label maps are not pure blocks
    gt[edge] = rng.integers(0, 34, edge.sum())
    pred = lut[gt].astype(np.uint8)
    unknown = pred >= 19
    pred[unknown] = rng.integers(0, 19, unknown.sum())
    wrong = _blocky(rng, np.array([0, 0, 0, 0, 1]), w, h, 48).astype(bool)
    pred[wrong] = _blocky(rng, np.arange(19), w, h, 24)[wrong]
    return gt, pred


def generate(root: Path, n: int, w: int, h: int, seed: int = 0) -> tuple[str, str, str]:
    from utils.metrics import label_mapping_lut

    info = json.loads((CITYSCAPES_LIST_DIR / "info.json").read_text())
    lut = label_mapping_lut(info)
    gt_dir, pred_dir, devkit = root / "gt", root / "pred", root / "devkit"
    for d in (gt_dir / "benchcity", pred_dir, devkit):
        d.mkdir(parents=True, exist_ok=True)
    shutil.copy(CITYSCAPES_LIST_DIR / "info.json", devkit / "info.json")
    rng = np.random.default_rng(seed)
    val, label = [], []
    for i in range(n):
        stem = f"benchcity_{i:06d}_000019"
        val.append(f"benchcity/{stem}_leftImg8bit.png")
        label.append(f"benchcity/{stem}_gtFine_labelIds.png")
        gt_file = gt_dir / label[-1]
        pred_file = pred_dir / f"{stem}_leftImg8bit.png"
        if gt_file.exists() and pred_file.exists():
            continue
        gt, pred = make_pair(rng, w, h, lut)
        Image.fromarray(gt).save(gt_file)
        Image.fromarray(pred).save(pred_file)
    (devkit / "val.txt").write_text("\n".join(val) + "\n")
    (devkit / "label.txt").write_text("\n".join(label) + "\n")
    return str(gt_dir), str(pred_dir), str(devkit)


# ------------------------------------------------------------------------------------------------------------
# The original's loop, ported as written (Python 3 prints); the baseline


def original_compute_mIoU(gt_dir: str, pred_dir: str, devkit_dir: str = "") -> np.ndarray:
    def fast_hist(a, b, n):
        k = (a >= 0) & (a < n)
        return np.bincount(n * a[k].astype(int) + b[k], minlength=n ** 2).reshape(n, n)

    def per_class_iu(hist):
        return np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))

    def label_mapping(input, mapping):
        output = np.copy(input)
        for ind in range(len(mapping)):
            output[input == mapping[ind][0]] = mapping[ind][1]
        return np.array(output, dtype=np.int64)

    with open(join(devkit_dir, "info.json"), "r") as fp:
        info = json.load(fp)
    num_classes = int(info["classes"])
    print("Num classes", num_classes)
    name_classes = np.array(info["label"], dtype=str)
    mapping = np.array(info["label2train"], dtype=int)
    hist = np.zeros((num_classes, num_classes))
    image_path_list = join(devkit_dir, "val.txt")
    label_path_list = join(devkit_dir, "label.txt")
    gt_imgs = open(label_path_list, "r").read().splitlines()
    gt_imgs = [join(gt_dir, x) for x in gt_imgs]
    pred_imgs = open(image_path_list, "r").read().splitlines()
    pred_imgs = [join(pred_dir, x.split("/")[-1]) for x in pred_imgs]
    for ind in range(len(gt_imgs)):
        pred = np.array(Image.open(pred_imgs[ind]))
        label = np.array(Image.open(gt_imgs[ind]))
        label = label_mapping(label, mapping)
        if len(label.flatten()) != len(pred.flatten()):
            print("Skipping: len(gt) = {:d}, len(pred) = {:d}, {:s}, {:s}".format(
                len(label.flatten()), len(pred.flatten()), gt_imgs[ind], pred_imgs[ind]))
            continue
        hist += fast_hist(label.flatten(), pred.flatten(), num_classes)
        if ind > 0 and ind % 10 == 0:
            with np.errstate(invalid="ignore", divide="ignore"):
                print("{:d} / {:d}: {:0.2f}".format(ind, len(gt_imgs), 100 * np.mean(per_class_iu(hist))))
    with np.errstate(invalid="ignore", divide="ignore"):
        mIoUs = per_class_iu(hist)
    for ind_class in range(num_classes):
        print("===>" + name_classes[ind_class] + ":\t" + str(round(mIoUs[ind_class] * 100, 2)))
    print("===> mIoU: " + str(round(np.nanmean(mIoUs) * 100, 2)))
    return mIoUs


# ------------------------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> dict:
    w, h = (int(x) for x in args.size.split(","))
    tmp = None
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_iou_"))
    if not args.workdir:
        tmp = root
    try:
        t0 = time.perf_counter()
        gt_dir, pred_dir, devkit = generate(root, args.num_images, w, h)
        gen_s = time.perf_counter() - t0
        # warm the page cache
        for d in (gt_dir, pred_dir):
            for p in Path(d).rglob("*.png"):
                p.read_bytes()
        variants = []  # (label, workers, executor or None for the CLI/original, callable)
        if not args.no_original:
            variants.append(("original (port)", 1, lambda: _quiet(original_compute_mIoU, gt_dir, pred_dir, devkit)))
        for k in (int(x) for x in args.workers.split(",")):
            for executor in (("thread",) if k == 1 else compute_iou.EXECUTORS):
                label = "ours (evaluate_dirs)" if k == 1 else f"ours (evaluate_dirs, {executor} pool)"
                variants.append((label, k, lambda k=k, executor=executor: compute_iou.evaluate_dirs(
                    gt_dir, pred_dir, devkit, workers=k, progress=False, executor=executor).ious))
        cli = [sys.executable, str(ROOT / "compute_iou.py"), gt_dir, pred_dir, "--devkit_dir", devkit]
        variants.append(("ours CLI (defaults, incl. startup)", usable_cpus(),
                         lambda: subprocess.run(cli, check=True, capture_output=True, cwd=ROOT)))
        # The variants take turns, --repeat rounds, so that load elsewhere on the machine hits all alike.
        times: list[list[float]] = [[] for _ in variants]
        cpu: list[list[float]] = [[] for _ in variants]
        outputs: list[object] = [None] * len(variants)
        for _ in range(args.repeat):
            for i, (_, _, fn) in enumerate(variants):
                c = _cpu_seconds()
                t = time.perf_counter()
                outputs[i] = fn()
                times[i].append(time.perf_counter() - t)
                cpu[i].append(_cpu_seconds() - c)
        ref = outputs[0] if not args.no_original else None
        rows = []
        for i, (label, k, _) in enumerate(variants):
            if ref is not None and isinstance(outputs[i], np.ndarray):
                np.testing.assert_array_equal(outputs[i], ref)  # the same IoUs, to the last bit
            rows.append({"variant": label, "workers": k, "seconds": min(times[i]),
                         "median_seconds": float(np.median(times[i])), "all_seconds": times[i],
                         "cpu_seconds": min(cpu[i])})
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    base = rows[0]["seconds"] if not args.no_original else None
    for r in rows:
        r["images_per_s"] = args.num_images / r["seconds"]
        r["speedup_vs_original"] = (base / r["seconds"]) if base else None
    result = {
        "benchmark": "compute_iou", "num_images": args.num_images, "size_wh": [w, h], "repeat": args.repeat,
        "generate_seconds": gen_s, "cpus": usable_cpus(), "machine": platform.platform(),
        "python": platform.python_version(), "numpy": np.__version__,
        "pillow": Image.__version__ if hasattr(Image, "__version__") else "",
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "rows": rows,
        "load_average": list(os.getloadavg()),
    }
    print(f"compute_iou: {args.num_images} pairs of {w}x{h} PNGs, {result['cpus']} cores, best of {args.repeat}")
    print(f"{'variant':40s} {'workers':>7s} {'best s':>7s} {'median s':>8s} {'cpu s':>7s} {'img/s':>7s} "
          f"{'speedup':>8s}")
    for r in rows:
        sp = f"{r['speedup_vs_original']:.2f}x" if r["speedup_vs_original"] else "-"
        print(f"{r['variant']:40s} {r['workers']:7d} {r['seconds']:7.2f} {r['median_seconds']:8.2f} "
              f"{r['cpu_seconds']:7.2f} {r['images_per_s']:7.1f} {sp:>8s}")
    print(f"load average during the run (1/5/15 min): {' '.join(f'{x:.2f}' for x in result['load_average'])}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process, its threads and its finished child processes."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _quiet(fn, *a):
    with redirect_stdout(io.StringIO()):
        return fn(*a)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
