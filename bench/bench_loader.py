"""Benchmark: the loaders' CPU time per training pair at the paper's sizes, against a port of the original's loaders.

One training iteration consumes one source item (a GTA5 frame, 1914x1052 PNG, resized to 1280x720) and one target
item (a Cityscapes frame, 2048x1024, resized to 1024x512): a *pair*. On generated full-size frames
(``tools/make_synthetic_data.py``, the real folder layouts), one thread, this measures:

1. CPU milliseconds per pair of five loaders:

   * ``original port``: ``tests/original_loaders.py``, the original GTA5DataSet / cityscapesDataSet (float32 items);
   * ``ours, float32 items``: the project's loaders as the dataset classes default (the original's items);
   * ``ours, uint8 items``: what the training script uses (``uint8=True``): the float conversion, BGR order and
     mean subtraction happen on the training device (:func:`dataset.transforms.to_network_input`), not here;
   * ``ours, uint8 + cache``: the same reading the resized frames from ``tools/prepare_cache.py``'s cache
     (``--data-cache``), in its default format (npy) and in ``--format png``;

   measured twice: in the loader worker processes of real DataLoaders (one worker per domain, as training reads:
   the item, the collate into shared memory and the hand-over; their CPU time from ``/proc``, over the pairs the
   main process consumed, between two idle moments of the workers), and item by item in this process
   (``dataset[i]`` under ``time.process_time``), with a breakdown (decode, resize, conversion) timed step by step
   on the same frames. The targets of issue 14, on the workers' CPU time: uint8 items at least 1.3x, cached at
   least 3x less than the port.
2. Pairs/s through real DataLoaders (one per domain, as training: ``utils.sampling.training_loader``; the port:
   ``DataLoader(shuffle=True)``) with 1 and 2 workers per domain.
3. The cache formats: bytes on disk and CPU ms to read one entry (npy by ``np.load``, npy by ``np.load(mmap_mode)``
   plus the copy, PNG at compression level 1), images and labels.
4. The decoders of one full-size frame: Pillow (``Image.open`` + ``load``, the original's ``convert('RGB')`` +
   ``np.asarray``), libspng (``pyspng``, as :func:`dataset.decode.read_rgb` runs it: read, CRC check, decode,
   ``Image.fromarray``), ``torchvision.io.decode_png``, OpenCV ``imdecode``; each checked bit-identical to Pillow.

Times are the best of ``--rounds`` rounds (variants in rotating order within a round) of the mean over the frames;
the load average is printed (other work on the machine slows everything)::

    python bench/bench_loader.py --json bench/results/loader_cpu.json
    python bench/bench_loader.py --num-images 2 --rounds 2 --workers 1    # quicker
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from dataset.cache import build_cache  # noqa: E402
from dataset.cityscapes_dataset import cityscapesDataSet  # noqa: E402
from dataset.decode import read_rgb  # noqa: E402
from dataset.gta5_dataset import GTA5DataSet  # noqa: E402
from dataset.labels import IMG_MEAN  # noqa: E402
from dataset.transforms import (CITYSCAPES_STREAM, GTA5_STREAM, item_rng, preprocess_uint8,  # noqa: E402
                                to_network_input)
from original_loaders import CityscapesDataSetPort, GTA5DataSetPort  # noqa: E402  (tests/original_loaders.py)
from tools.make_synthetic_data import make_synthetic_datasets  # noqa: E402
from utils.cli import parse_size  # noqa: E402
from utils.files import human_bytes  # noqa: E402
from utils.sampling import shutdown_loader, training_loader  # noqa: E402

PAPER = {"source_file": (1914, 1052), "source_input": (1280, 720), "target_file": (2048, 1024),
         "target_input": (1024, 512)}
VARIANTS = ("original port", "ours, float32 items", "ours, uint8 items", "ours, uint8 + cache (npy)",
            "ours, uint8 + cache (png)")
TARGETS = {"ours, uint8 items": 1.3, "ours, uint8 + cache (npy)": 3.0}
#: The GPU step the loaders must keep up with (issue 14: under 30 ms with --amp --channels-last).
GPU_STEP_MS = 30.0


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", type=int, default=4, help="generated frames per domain")
    p.add_argument("--rounds", type=int, default=3, help="rounds over the frames (the best round counts)")
    p.add_argument("--source-size", type=parse_size, default=PAPER["source_file"], help="W,H of the GTA5 files")
    p.add_argument("--target-size", type=parse_size, default=PAPER["target_file"], help="W,H of the Cityscapes files")
    p.add_argument("--input-size", type=parse_size, default=PAPER["source_input"], help="W,H source input")
    p.add_argument("--input-size-target", type=parse_size, default=PAPER["target_input"], help="W,H target input")
    p.add_argument("--workers", type=str, default="1,2", help="DataLoader workers per domain to time ('' skips)")
    p.add_argument("--loader-pairs", type=int, default=40, help="pairs timed per pairs/s measurement")
    p.add_argument("--worker-pairs", type=int, default=24, help="pairs per measurement of the workers' CPU time")
    p.add_argument("--workdir", type=str, default=None, help="keep the generated data and caches here")
    p.add_argument("--json", type=str, default=None, help="write the numbers here")
    return p


# ---- timing helpers --------------------------------------------------------------------------------------------------


def cpu_ms(fn: Callable[[], Any]) -> tuple[float, Any]:
    """CPU milliseconds of this process spent in ``fn()`` (one thread: torch, OpenCV and Pillow are set to one)."""
    start = time.process_time()
    out = fn()
    return (time.process_time() - start) * 1e3, out


def load_average() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


# ---- the loaders -----------------------------------------------------------------------------------------------------


def make_sets(paths, args, cache: Path, max_iters: int | None = None) -> dict[str, tuple]:
    """variant -> (source dataset, target dataset), the lists repeated to ``max_iters`` items."""
    src = dict(crop_size=args.input_size, mean=IMG_MEAN, max_iters=max_iters)
    tgt = dict(crop_size=args.input_size_target, mean=IMG_MEAN, set="train", max_iters=max_iters)
    port = (GTA5DataSetPort(str(paths.gta5_root), str(paths.gta5_list), **src),
            CityscapesDataSetPort(str(paths.cityscapes_root), str(paths.cityscapes_train_list), **tgt))
    ours = {}
    for name, kw in (("ours, float32 items", {}), ("ours, uint8 items", {"uint8": True}),
                     ("ours, uint8 + cache (npy)", {"uint8": True, "data_cache": cache / "npy"}),
                     ("ours, uint8 + cache (png)", {"uint8": True, "data_cache": cache / "png"})):
        ours[name] = (GTA5DataSet(paths.gta5_root, paths.gta5_list, **src, **kw),
                      cityscapesDataSet(paths.cityscapes_root, paths.cityscapes_train_list, **tgt, **kw))
    return {"original port": port, **ours}


def pair_ms(sets: tuple, index: int) -> float:
    source, target = sets
    ms_s, _ = cpu_ms(lambda: source[index])
    ms_t, _ = cpu_ms(lambda: target[index])
    return ms_s + ms_t


# ---- breakdowns: the same steps, timed one by one -------------------------------------------------------------------


def port_breakdown(gta5: GTA5DataSetPort, cs: CityscapesDataSetPort, index: int) -> dict[str, float]:
    """The port's steps: decode (open + convert + the label's load), resize, conversion (float, labels, BGR, mean)."""
    t = {"decode": 0.0, "resize": 0.0, "conversion": 0.0}
    for ds in (gta5, cs):
        files = ds.files[index]
        ms, image = cpu_ms(lambda: Image.open(files["img"]).convert("RGB"))
        t["decode"] += ms
        label = None
        if "label" in files:
            def open_label():
                lab = Image.open(files["label"])
                lab.load()
                return lab
            ms, label = cpu_ms(open_label)
            t["decode"] += ms
        ms, resized = cpu_ms(lambda: (image.resize(ds.crop_size, Image.BICUBIC),
                                      label.resize(ds.crop_size, Image.NEAREST) if label is not None else None))
        t["resize"] += ms

        def convert():
            img = np.asarray(resized[0], np.float32)
            if resized[1] is not None:
                lab = np.asarray(resized[1], np.float32)
                copy = 255 * np.ones(lab.shape, dtype=np.float32)
                for k, v in gta5.id_to_trainid.items():
                    copy[lab == k] = v
            img = img[:, :, ::-1]
            img -= ds.mean
            return img.transpose((2, 0, 1)).copy()
        t["conversion"] += cpu_ms(convert)[0]
    return t


def ours_breakdown(gta5: GTA5DataSet, cs: cityscapesDataSet, index: int) -> dict[str, float]:
    """Our uint8 items' steps: decode (``read_rgb``, ``load_label``), resize, conversion (``preprocess_uint8``:
    the arrays, the label table; a cache: its read counts as decode)."""
    t = {"decode": 0.0, "resize": 0.0, "conversion": 0.0}
    for ds, stream in ((gta5, GTA5_STREAM), (cs, CITYSCAPES_STREAM)):
        files = ds.files[index]
        if ds.cache is not None:
            ms, (image, label) = cpu_ms(lambda: ds.cache.read(files["name"]))
            t["decode"] += ms
        else:
            ms, image = cpu_ms(lambda: read_rgb(files["img"]))
            t["decode"] += ms
            label = None
            if ds.source:
                ms, label = cpu_ms(lambda: ds.load_label(files["label"]))
                t["decode"] += ms
            ms, (image, label) = cpu_ms(lambda: (image.resize(ds.crop_size, Image.Resampling.BICUBIC),
                                                 label.resize(ds.crop_size, Image.Resampling.NEAREST)
                                                 if label is not None else None))
            t["resize"] += ms
        rng = item_rng(ds.seed, index, stream)
        t["conversion"] += cpu_ms(lambda: preprocess_uint8(np.asarray(image),
                                                           None if label is None else np.asarray(label),
                                                           rng, ds.is_mirror, ds.label_table))[0]
    return t


def device_conversion_ms(sets: tuple, index: int) -> float:
    """CPU ms of :func:`to_network_input` on the pair's uint8 batches, run here on the CPU: what the GPU does instead
    (microseconds there), shown to say where the port's conversion went."""
    source, target = sets
    batches = [torch.from_numpy(ds[index][0])[None] for ds in (source, target)]
    return sum(cpu_ms(lambda b=b: to_network_input(b, "cpu"))[0] for b in batches)


# ---- CPU time in the DataLoader workers ------------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu_s(pids: list[int], poll: float = 0.25) -> list[float]:
    """Each worker's CPU seconds once they are all idle (their prefetch queues full): two equal readings."""
    last = None
    while True:
        now = [process_cpu_s(p) for p in pids]
        if now == last:
            return now
        last = now
        time.sleep(poll)


def make_loaders(sets: tuple, workers: int, port: bool) -> list:
    """One DataLoader per domain: the port's ``DataLoader(shuffle=True)``, ours ``training_loader`` (as training)."""
    if port:
        return [torch.utils.data.DataLoader(ds, batch_size=1, shuffle=True, num_workers=workers) for ds in sets]
    return [training_loader(ds, batch_size=1, num_workers=workers, seed=0, start=0, salt=salt)
            for salt, ds in enumerate(sets)]


def close_loaders(loaders: list, port: bool) -> None:
    if not port:
        for loader in loaders:
            shutdown_loader(loader)


def worker_cpu_ms(sets: tuple, pairs: int, port: bool) -> tuple[float, float, list[float]] | None:
    """``(workers' CPU ms per pair, main process CPU ms per pair, [source worker's, target worker's] ms per item)``
    with one worker per domain, or ``None`` without ``/proc``. Between two idle moments the workers produce exactly
    the batches the main process consumed."""
    if not Path(f"/proc/{os.getpid()}/stat").exists():
        return None
    loaders = make_loaders(sets, 1, port)
    iters = [iter(loader) for loader in loaders]
    try:
        for it in iters:
            next(it)
        pids = [w.pid for it in iters for w in it._workers]
        before, main_before = idle_cpu_s(pids), time.process_time()
        for _ in range(pairs):
            for it in iters:
                next(it)
        main_ms = (time.process_time() - main_before) * 1e3 / pairs
        per_domain = [(after - b) * 1e3 / pairs for after, b in zip(idle_cpu_s(pids), before)]
        return sum(per_domain), main_ms, per_domain
    finally:
        del iters
        close_loaders(loaders, port)


# ---- DataLoader throughput -------------------------------------------------------------------------------------------


def loader_pairs_per_s(sets: tuple, workers: int, pairs: int, port: bool) -> float:
    """Pairs/s drawing one batch (1 item) from a source and a target DataLoader of ``workers`` workers each."""
    loaders = make_loaders(sets, workers, port)
    iters = [iter(loader) for loader in loaders]
    try:
        for it in iters:  # start-up (worker processes, first items) not timed
            next(it)
        start = time.perf_counter()
        for _ in range(pairs):
            for it in iters:
                next(it)
        return pairs / (time.perf_counter() - start)
    finally:
        del iters
        close_loaders(loaders, port)


# ---- cache formats and decoders --------------------------------------------------------------------------------------


def format_rows(cache: Path, gta5: GTA5DataSet, rounds: int) -> list[dict]:
    """Bytes on disk and read ms of one GTA5 entry (image 1280x720, label) in each format."""
    name = gta5.files[0]["name"]
    npy = cache / "npy" / gta5.cache_name() / "images" / f"{name}.npy"
    png = cache / "png" / gta5.cache_name() / "images" / f"{name}.png"
    label_png = cache / "npy" / gta5.cache_name() / "labels" / f"{name}.png"
    label_arr = np.asarray(Image.open(label_png))
    label_npy = cache / "label.npy"
    np.save(label_npy, label_arr)

    def best(fn) -> float:
        fn()
        return min(cpu_ms(fn)[0] for _ in range(max(3, rounds * 3)))

    def png_read(path):
        with Image.open(path) as img:
            return np.array(img)

    rows = [
        {"what": "image, npy (np.load) [chosen]", "bytes": npy.stat().st_size, "ms": best(lambda: np.load(npy))},
        {"what": "image, npy (np.load mmap + copy)", "bytes": npy.stat().st_size,
         "ms": best(lambda: np.array(np.load(npy, mmap_mode="r")))},
        {"what": "image, PNG level 1 (--format png)", "bytes": png.stat().st_size, "ms": best(lambda: png_read(png))},
        {"what": "label, npy (np.load)", "bytes": label_npy.stat().st_size, "ms": best(lambda: np.load(label_npy))},
        {"what": "label, PNG level 1 [chosen]", "bytes": label_png.stat().st_size,
         "ms": best(lambda: png_read(label_png))},
    ]
    return rows


def decoder_rows(paths: list[Path], rounds: int) -> list[dict]:
    """CPU ms to decode each full-size frame with each decoder, and whether the pixels equal Pillow's."""
    import cv2

    cv2.setNumThreads(1)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # torchvision 0.29 deprecates its decoders
    from torchvision.io import ImageReadMode, decode_png

    def pillow_load(p):
        img = Image.open(p)
        img.load()
        return img

    decoders = {
        "Pillow open + load (the fallback)": lambda p: pillow_load(p),
        "pyspng + CRC check + Image.fromarray (ours: read_rgb)": lambda p: read_rgb(p),
        "Pillow open + convert('RGB') + np.asarray (the original's)":
            lambda p: np.asarray(Image.open(p).convert("RGB")),
        "torchvision.io.decode_png + Image.fromarray": lambda p: Image.fromarray(
            decode_png(torch.from_numpy(np.fromfile(p, np.uint8)), mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()),
        "cv2.imdecode(IMREAD_COLOR_RGB) + Image.fromarray": lambda p: Image.fromarray(cv2.imdecode(
            np.fromfile(p, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)),
    }
    rows = []
    for what, fn in decoders.items():
        per_file = []
        same = True
        for p in paths:
            reference = np.asarray(Image.open(p).convert("RGB"))
            same &= np.array_equal(np.asarray(fn(p)), reference)
            fn(p)
            per_file.append(min(cpu_ms(lambda: fn(p))[0] for _ in range(max(3, rounds * 2))))
        rows.append({"decoder": what, "ms": per_file, "bit_identical": bool(same)})
    return rows


# ---- the run ---------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path) -> dict:
    torch.set_num_threads(1)
    data = work / "data"
    t0 = time.perf_counter()
    paths = make_synthetic_datasets(data, num_source=args.num_images, num_target_train=args.num_images, num_val=1,
                                    source_size=args.source_size, target_size=args.target_size, seed=0)
    print(f"generated {args.num_images} + {args.num_images} frames in {time.perf_counter() - t0:.1f} s", flush=True)
    cache = work / "cache"
    for fmt in ("npy", "png"):
        for ds in (GTA5DataSet(paths.gta5_root, paths.gta5_list, crop_size=args.input_size),
                   cityscapesDataSet(paths.cityscapes_root, paths.cityscapes_train_list,
                                     crop_size=args.input_size_target, set="train")):
            build_cache(ds, cache / fmt, image_format=fmt, workers=1)
    sets = make_sets(paths, args, cache)
    n = args.num_images

    # 1. CPU ms per pair: in the DataLoader workers and item by item here, rotating the variants' order every round
    repeated = make_sets(paths, args, cache, max_iters=2 * max(args.loader_pairs, args.worker_pairs) + 16)
    per_round: dict[str, list[float]] = {v: [] for v in VARIANTS}
    in_workers: dict[str, list[tuple[float, float, list[float]]]] = {v: [] for v in VARIANTS}
    for v in VARIANTS:  # warm-up: page cache, lazy imports
        pair_ms(sets[v], 0)
    for r in range(args.rounds):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
        for v in order:
            per_round[v].append(statistics.fmean(pair_ms(sets[v], i) for i in range(n)))
            measured = worker_cpu_ms(repeated[v], args.worker_pairs, port=v == "original port")
            if measured is not None:
                in_workers[v].append(measured)
        print(f"  round {r + 1}/{args.rounds} done (load average {load_average()})", flush=True)
    breakdown = {}
    for v, fn in (("original port", port_breakdown), ("ours, uint8 items", ours_breakdown),
                  ("ours, uint8 + cache (npy)", ours_breakdown), ("ours, uint8 + cache (png)", ours_breakdown)):
        rounds = []
        for _ in range(args.rounds):
            parts = [fn(*sets[v], i) for i in range(n)]
            rounds.append({k: statistics.fmean(p[k] for p in parts) for k in parts[0]})
        breakdown[v] = min(rounds, key=lambda d: sum(d.values()))
    device_ms = min(statistics.fmean(device_conversion_ms(sets["ours, uint8 items"], i) for i in range(n))
                    for _ in range(args.rounds))
    port_item = min(per_round["original port"])
    port_worker = min(m[0] for m in in_workers["original port"]) if in_workers["original port"] else None
    rows = []
    for v in VARIANTS:
        item = min(per_round[v])
        best = min(in_workers[v], key=lambda m: m[0], default=None)  # the best round's numbers
        worker, main = (best[0], best[1]) if best else (None, None)
        row = {"variant": v, "item_cpu_ms_per_pair": item, "item_rounds_ms": per_round[v],
               "item_speedup_vs_port": port_item / item, "breakdown_ms": breakdown.get(v),
               "worker_cpu_ms_per_pair": worker, "worker_rounds_ms": [m[0] for m in in_workers[v]],
               "worker_cpu_ms_per_item": {"source": best[2][0], "target": best[2][1]} if best else None,
               "main_cpu_ms_per_pair": main,
               "worker_speedup_vs_port": port_worker / worker if worker and port_worker else None}
        if v in TARGETS:
            row["target"] = TARGETS[v]
            speedup = row["worker_speedup_vs_port"]
            row["target_met"] = speedup is not None and speedup >= TARGETS[v]
        rows.append(row)

    # 2. DataLoader throughput
    loader_rows = []
    for w in [int(x) for x in args.workers.split(",") if x.strip()]:
        for v in ("original port", "ours, uint8 items", "ours, uint8 + cache (npy)"):
            pps = loader_pairs_per_s(repeated[v], w, args.loader_pairs, port=v == "original port")
            loader_rows.append({"variant": v, "workers_per_domain": w, "pairs_per_s": pps})
            print(f"  DataLoader {v}, {w} worker(s) per domain: {pps:.1f} pairs/s", flush=True)

    # 3. and 4.
    formats = format_rows(cache, sets["ours, uint8 + cache (npy)"][0], args.rounds)
    frames = [Path(sets["original port"][0].files[0]["img"]), Path(sets["original port"][1].files[0]["img"])]
    decoders = decoder_rows(frames, args.rounds)
    return {"rows": rows, "loader": loader_rows, "formats": formats, "decoders": decoders,
            "device_conversion_cpu_ms": device_ms}


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def print_tables(result: dict, args: argparse.Namespace) -> None:
    sw, sh = args.source_size
    tw, th = args.target_size
    iw, ih = args.input_size
    jw, jh = args.input_size_target
    print(f"\nCPU ms per training pair (GTA5 {sw}x{sh} -> {iw}x{ih} + Cityscapes {tw}x{th} -> {jw}x{jh}), one thread "
          f"per loader, best of {args.rounds} rounds; load average at the end {result['load_average']}\n")
    print("| loader | in the workers | vs port | item alone | decode | resize | conversion | collate + hand-over "
          "| vs port (item) | target (workers) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        b = r["breakdown_ms"] or {}
        cells = [f"{b[k]:.1f}" if k in b else "" for k in ("decode", "resize", "conversion")]
        worker = r["worker_cpu_ms_per_pair"]
        target = ""
        if "target" in r:
            target = f">= {r['target']}x: {'met' if r['target_met'] else 'NOT met'}"
        print(f"| {r['variant']} | {_ms(worker)} | {_x(r['worker_speedup_vs_port'])} | "
              f"{r['item_cpu_ms_per_pair']:.1f} | {' | '.join(cells)} | "
              f"{_ms(worker - r['item_cpu_ms_per_pair'] if worker else None)} | {_x(r['item_speedup_vs_port'])} "
              f"| {target} |")
    print("\n| loader | source worker, ms per item | target worker, ms per item | workers per domain for a 30 ms "
          "GPU step (source + target) |")
    print("|---|---|---|---|")
    for r in result["rows"]:
        per = r["worker_cpu_ms_per_item"]
        if per:
            need = f"{math.ceil(per['source'] / GPU_STEP_MS)} + {math.ceil(per['target'] / GPU_STEP_MS)}"
            print(f"| {r['variant']} | {per['source']:.1f} | {per['target']:.1f} | {need} |")
    mains = ", ".join(f"{r['variant']} {_ms(r['main_cpu_ms_per_pair'])}" for r in result["rows"])
    print(f"\n(the main process, receiving the batches: {mains} ms per pair; the device-side conversion of a pair's "
          f"two uint8 batches, run on this CPU: {result['device_conversion_cpu_ms']:.1f} ms, on a GPU a few kernels "
          "of microseconds)")
    if result["loader"]:
        print("\n| loader | workers per domain | pairs/s |")
        print("|---|---|---|")
        for r in result["loader"]:
            print(f"| {r['variant']} | {r['workers_per_domain']} | {r['pairs_per_s']:.1f} |")
    print(f"\nCache formats (one {iw}x{ih} GTA5 entry)\n")
    print("| entry, format | bytes on disk | CPU ms to read |")
    print("|---|---|---|")
    for r in result["formats"]:
        print(f"| {r['what']} | {human_bytes(r['bytes'])} | {r['ms']:.2f} |")
    print(f"\nDecoders (one {sw}x{sh} GTA5 frame, one {tw}x{th} Cityscapes frame)\n")
    print("| decoder | GTA5 ms | Cityscapes ms | pixels = Pillow's |")
    print("|---|---|---|---|")
    for r in result["decoders"]:
        print(f"| {r['decoder']} | {r['ms'][0]:.1f} | {r['ms'][1]:.1f} | {'yes' if r['bit_identical'] else 'NO'} |")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if min(args.num_images, args.rounds, args.loader_pairs, args.worker_pairs) < 1:
        print("bench_loader.py: error: --num-images, --rounds, --loader-pairs and --worker-pairs must be at least 1",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        result = run(args, work)
    result.update({
        "benchmark": "loader", "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "load_average": load_average(),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "numpy": np.__version__, "pillow": Image.__version__},
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
    })
    print_tables(result, args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
