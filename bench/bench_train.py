"""Benchmark: the training iteration of train_gta2cityscapes_multi.py (fp32 / --amp / --amp --channels-last) against a
straightforward port of the original loop (``tests/original_port.py``), plus the faithful SGD step against PyTorch
0.4's loop over the listing.

Each variant trains ``--iters`` timed iterations (after ``--warmup``) on generated data in the real folder layouts
(``tools/make_synthetic_data.py``), through the script's own data pipeline and its real ``train_step`` (the script
is imported as a module). Reported per variant:

* seconds per iteration (the median of the timed iterations of the best of ``--rounds`` rounds, in which the
  variants take turns in a rotating order; every time is in the JSON), iterations/s and images/s (source and target
  images together: ``2 * batch * iter_size`` per iteration);
* peak memory, each variant running in its own fresh process: CUDA: ``torch.cuda.max_memory_allocated`` (weights,
  optimizer state, activations); CPU: the process's peak RSS minus its RSS before the variant was built;
* the share of the time spent waiting for the next batch (``next()`` on the data iterators);
* FLOPs per iteration counted with ``torch.utils.flop_counter.FlopCounterMode`` on the real ``train_step`` run on
  meta tensors (forward and backward of the segmentation network on both domains and of the discriminators; shapes
  only, nothing computed), achieved TFLOP/s, and % of the card's dense bf16 peak (:data:`BF16_PEAK_TFLOPS`); the
  FLOP count at the paper's sizes (1280x720 + 1024x512, batch 1) is printed too.

The baselines: ``original port`` (``tests/original_port.py``) is the original iteration as it ran: PyTorch 0.4's SGD
over the duplicate listing and Adam (Python loops), ``nn.Upsample``, the original's ``CrossEntropy2d``, ``.item()`` on
every loss, ``DataLoader(shuffle=True)`` with float32 items converted in the workers; ``original port (torch.optim)``
the same with the original's literal ``optim.SGD``/``optim.Adam`` calls on today's torch (today's arithmetic, C++
loops). Same model class, same data, same sizes, in the same run.

CPU (defaults: the real ResNet-101 at 160x96 + 128x64, a few minutes on 2 cores)::

    python bench/bench_train.py --json bench/results/train_cpu.json

GPU (defaults: the paper's 1280x720 + 1024x512, batch 1, 4 loader workers per domain)::

    python bench/bench_train.py --device cuda --json bench/results/train_cuda.json
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "tests"))

import train_gta2cityscapes_multi as train  # noqa: E402
from original_port import SGD04, OriginalIteration  # noqa: E402  (tests/original_port.py)
from dataset.transforms import to_network_input  # noqa: E402
from tools.make_synthetic_data import make_synthetic_datasets  # noqa: E402
from utils.cli import parse_size  # noqa: E402
from utils.device import configure_backends, seed_everything  # noqa: E402
from utils.optim import FaithfulSGD  # noqa: E402
from utils.sampling import training_loader  # noqa: E402
from utils.training import build_networks  # noqa: E402

#: Dense (no sparsity) bf16 tensor-core peak in TFLOP/s by device-name substring; first match wins.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.0),
    ("H200", 989.0),  # same tensor cores as H100 SXM, more and faster memory
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("RTX 4090", 165.0),  # bf16 with fp32 accumulation
    ("A10", 125.0),
    ("L4", 121.0),
)
PAPER_SIZES = ((1280, 720), (1024, 512))
VARIANTS = {  # name -> extra training flags (None: a port of the original)
    "original port": None,
    "original port (torch.optim)": None,
    "fp32": [],
    "amp": ["--amp"],
    "amp+channels-last": ["--amp", "--channels-last"],
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--input-size", type=parse_size, default=None,
                   help="W,H source crops (default: cpu 160,96; cuda the paper's 1280,720)")
    p.add_argument("--input-size-target", type=parse_size, default=None,
                   help="W,H target crops (default: cpu 128,64; cuda the paper's 1024,512)")
    p.add_argument("--image-size", type=parse_size, default=None,
                   help="W,H of the generated source files (default: cpu = --input-size; cuda GTA5's 1914,1052)")
    p.add_argument("--image-size-target", type=parse_size, default=None,
                   help="W,H of the generated target files (default: cpu = --input-size-target; cuda 2048,1024)")
    p.add_argument("--resnet-layers", type=str, default="3,4,23,3", help="default: the real ResNet-101")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--iter-size", type=int, default=1)
    p.add_argument("--variants", type=str, default=",".join(VARIANTS),
                   help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    p.add_argument("--iters", type=int, default=None, help="timed iterations per round (default: cpu 3, cuda 20)")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations first (default: cpu 1, cuda 5)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds over all variants, each variant in a fresh process, the order rotating; the best "
                        "round's median counts (default: cpu 4, cuda 1)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader workers per domain (default: cpu 0 -- workers would take the cores the step "
                        "uses; cuda 4, the script's default)")
    p.add_argument("--num-images", type=int, default=8, help="generated images per domain")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP counts")
    p.add_argument("--optimizer-repeats", type=int, default=None,
                   help="timed faithful-SGD steps per implementation (default: cpu 5, cuda 20; 0 skips it)")
    p.add_argument("--workdir", type=str, default=None, help="keep the generated data here (default: temp dir)")
    p.add_argument("--json", type=str, default=None, help="write the results here")
    return p


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    defaults = {
        "input_size": PAPER_SIZES[0] if cuda else (160, 96),
        "input_size_target": PAPER_SIZES[1] if cuda else (128, 64),
        "iters": 20 if cuda else 3,
        "warmup": 5 if cuda else 1,
        "rounds": 1 if cuda else 4,
        "num_workers": train.NUM_WORKERS if cuda else 0,
        "optimizer_repeats": 20 if cuda else 5,
    }
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.image_size is None:
        args.image_size = (1914, 1052) if cuda else args.input_size
    if args.image_size_target is None:
        args.image_size_target = (2048, 1024) if cuda else args.input_size_target
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; choose from {list(VARIANTS)}")
    return args


# ---- machine and memory ----------------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs)"


def bf16_peak_tflops(name: str) -> float | None:
    """The dense bf16 peak of a known card (by name), else ``None`` (CPUs and unknown cards)."""
    for key, peak in BF16_PEAK_TFLOPS:
        if key in name:
            return peak
    return None


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of one variant, measured in its own fresh process. CUDA: ``torch.cuda.max_memory_allocated``
    (weights, optimizer state, activations). CPU: the process's peak RSS (``VmHWM``; elsewhere ``ru_maxrss``) minus
    its RSS before the variant was built (the same three, plus the allocator's retained blocks)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rss0 = _proc_status_kb("VmRSS")
        if self.rss0 is None:
            import resource

            self.rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def peak_gib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        peak = _proc_status_kb("VmHWM")
        if peak is None:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max(0, peak - self.rss0) / 2**20


# ---- data ------------------------------------------------------------------------------------------------------------


class TimedIterator:
    """Wraps a batch iterator and adds the time spent in ``next()`` (waiting for data) to ``self.wait``."""

    def __init__(self, it: Iterator) -> None:
        self.it = it
        self.wait = 0.0

    def __iter__(self) -> "TimedIterator":
        return self

    def __next__(self):
        t0 = time.perf_counter()
        item = next(self.it)
        self.wait += time.perf_counter() - t0
        return item

    def close(self) -> None:
        close = getattr(self.it, "close", None)
        if close is not None:
            close()


def make_data(args: argparse.Namespace, out: Path):
    return make_synthetic_datasets(out, num_source=args.num_images, num_target_train=args.num_images, num_val=1,
                                   source_size=tuple(args.image_size), target_size=tuple(args.image_size_target),
                                   seed=0)


def train_argv(args: argparse.Namespace, data, extra: list[str]) -> list[str]:
    argv = ["--data-dir", str(data.gta5_root), "--data-list", str(data.gta5_list),
            "--data-dir-target", str(data.cityscapes_root), "--data-list-target", str(data.cityscapes_train_list),
            "--input-size", "%d,%d" % tuple(args.input_size),
            "--input-size-target", "%d,%d" % tuple(args.input_size_target),
            "--restore-from", "none", "--resnet-layers", args.resnet_layers, "--num-workers", str(args.num_workers),
            "--batch-size", str(args.batch_size), "--iter-size", str(args.iter_size),
            # a short horizon: the lists are repeated num_steps times (250000 would cost seconds of start-up)
            "--num-steps", "10000", "--num-steps-stop", "10000", *extra]
    if args.device == "cpu":
        argv.append("--cpu")
    return argv


# ---- the original loop, ported (tests/original_port.py) ----------------------------------------------------------


class Float32Items(torch.utils.data.Dataset):
    """The original's items (float32 image [3, H, W] BGR minus the mean, float32 label) from the training script's
    uint8 ones, converted in the loader (its workers), where the original converted them."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        item = list(self.dataset[index])
        if item[0].dtype == np.uint8:
            item[0] = to_network_input(torch.from_numpy(item[0])[None], "cpu")[0].numpy()
        if len(item) == 4:  # a source item: its label as the original's float32
            item[1] = item[1].astype(np.float32)
        return tuple(item)


class OriginalPort:
    """The original iteration (:class:`original_port.OriginalIteration`: PyTorch 0.4's SGD and Adam, the original's
    ``CrossEntropy2d``, ``nn.Upsample``, ``.item()`` on every loss) on the same model class, data and sizes, with the
    original's ``DataLoader(shuffle=True, pin_memory=True)`` and float32 items (:class:`Float32Items`)."""

    def __init__(self, targs: argparse.Namespace, device: torch.device, torch_optim: bool = False) -> None:
        source_set, target_set = (Float32Items(ds) for ds in train.build_datasets(targs)[:2])
        seed_everything(targs.random_seed)
        nets = build_networks(targs, device)
        self.port = OriginalIteration(*nets, targs)
        if torch_optim:  # the original's literal optimizer calls on today's torch (not 0.4's arithmetic)
            self.port.optimizer = torch.optim.SGD(nets[0].optim_parameters(targs.learning_rate),
                                                  lr=targs.learning_rate, momentum=targs.momentum,
                                                  weight_decay=targs.weight_decay)
            self.port.optimizer_D1, self.port.optimizer_D2 = (
                torch.optim.Adam(d.parameters(), lr=targs.learning_rate_D, betas=(0.9, 0.99)) for d in nets[1:])
        pin = device.type == "cuda"
        loaders = [torch.utils.data.DataLoader(ds, batch_size=targs.batch_size, shuffle=True,
                                               num_workers=targs.num_workers, pin_memory=pin)
                   for ds in (source_set, target_set)]
        self.source = TimedIterator(((images, labels) for images, labels, _, _ in loaders[0]))
        self.target = TimedIterator((images for images, _, _ in loaders[1]))
        self.device = device

    @property
    def wait(self) -> float:
        return self.source.wait + self.target.wait

    def close(self) -> None:
        pass

    def iteration(self, i_iter: int) -> None:
        self.port.step(self.source, self.target, i_iter, self.device)


# ---- ours: the script's own set-up and train_step ------------------------------------------------------------------


class Ours:
    """The training script's data pipeline, set-up (flags ``extra``) and :func:`train_step`."""

    def __init__(self, targs: argparse.Namespace, device: torch.device) -> None:
        source_set, target_set, _ = train.build_datasets(targs)
        seed_everything(targs.random_seed)
        self.setup = train.build_training(targs, device)
        loaders = [training_loader(ds, batch_size=targs.batch_size, num_workers=targs.num_workers,
                                   seed=targs.random_seed, start=0, salt=salt, pin_memory=device.type == "cuda")
                   for salt, ds in enumerate((source_set, target_set))]
        self.source = TimedIterator(train.source_batches(loaders[0]))
        self.target = TimedIterator(train.target_batches(loaders[1]))

    @property
    def wait(self) -> float:
        return self.source.wait + self.target.wait

    def close(self) -> None:
        self.source.close()
        self.target.close()

    def iteration(self, i_iter: int) -> None:
        train.train_step(self.setup, self.source, self.target, i_iter)


def build_variant(name: str, args: argparse.Namespace, data, device: torch.device):
    extra = VARIANTS[name]
    targs = train.get_args_parser().parse_args(train_argv(args, data, extra or []))
    train.validate_args(targs)
    if extra is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.optim warns about the duplicate listing
            return OriginalPort(targs, device, torch_optim=name.endswith("(torch.optim)"))
    return Ours(targs, device)


# ---- FLOPs ---------------------------------------------------------------------------------------------------------


class _BackwardDone(Exception):
    """Raised from the losses' reduction hook: every forward and backward of the iteration has run."""


def count_flops(args: argparse.Namespace, input_size, input_size_target) -> int:
    """FLOPs of one training iteration at the given sizes: the real ``train_step`` on meta tensors (shapes only)
    under ``FlopCounterMode``, stopped right after its last backward (the optimizer steps are elementwise work the
    counter does not count). Checks that every backward ran."""
    from torch.utils.flop_counter import FlopCounterMode

    fargs = argparse.Namespace(**vars(args))
    fargs.input_size, fargs.input_size_target = tuple(input_size), tuple(input_size_target)
    argv = train_argv(fargs, argparse.Namespace(gta5_root="-", gta5_list="-", cityscapes_root="-",
                                                cityscapes_train_list="-"), [])
    targs = train.get_args_parser().parse_args(argv)
    meta = torch.device("meta")
    with warnings.catch_warnings(), meta:  # parameters created on meta: no memory, no init work
        warnings.simplefilter("ignore")
        setup = train.build_training(targs, meta)
    calls = []

    class CountingScaler:  # the step's backward passes go through scaler.scale(loss).backward()
        def scale(self, loss):
            calls.append(1)
            return loss

    def stop(_losses):
        raise _BackwardDone

    setup.scaler = CountingScaler()
    reduce, train.all_reduce_mean_ = train.all_reduce_mean_, stop  # reached right after the last backward
    autocast, torch.autocast = torch.autocast, lambda *a, **k: contextlib.nullcontext()  # it rejects "meta"
    b = args.batch_size
    (w, h), (wt, ht) = input_size, input_size_target
    source = iter([(torch.empty(b, 3, h, w, device=meta), torch.zeros(b, h, w, device=meta))] * args.iter_size)
    target = iter([torch.empty(b, 3, ht, wt, device=meta)] * args.iter_size)
    counter = FlopCounterMode(display=False)
    with counter:
        try:
            train.train_step(setup, source, target, 0)
        except _BackwardDone:
            pass
        finally:
            train.all_reduce_mean_, torch.autocast = reduce, autocast
    expected = (6 if setup.use_aux else 4) * args.iter_size
    if len(calls) != expected:
        raise RuntimeError(f"FLOP count incomplete: {len(calls)} of {expected} backward passes ran")
    return int(counter.get_total_flops())


# ---- the optimizer step --------------------------------------------------------------------------------------------


def bench_optimizer(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Time ``step()`` of the faithful SGD (each parameter's listings back to back), of PyTorch 0.4's loop over the
    listing (the port's :class:`original_port.SGD04`) and of today's ``torch.optim.SGD`` on the same duplicate
    listing, on the DeeplabMulti of ``--resnet-layers`` with fixed random gradients; checks that FaithfulSGD ends
    bitwise equal to the 0.4 loop."""
    from model import DeeplabMulti

    layers = tuple(int(v) for v in args.resnet_layers.split(","))
    torch.manual_seed(0)
    net = DeeplabMulti(19, layers=layers).to(device)
    grads = {}
    for name, p in net.named_parameters():
        if p.requires_grad and ".conv2d_list.2." not in name and ".conv2d_list.3." not in name:
            grads[name] = torch.randn_like(p) * 1e-3
    init = {k: v.detach().clone() for k, v in net.state_dict().items()}
    kw = dict(lr=2.5e-4, momentum=0.9, weight_decay=5e-4)
    impls: dict[str, Callable[[], Any]] = {
        "PyTorch 0.4 loop over the listing (port)": lambda: SGD04(net.optim_parameters(2.5e-4), **kw),
        "FaithfulSGD (per parameter; used)": lambda: FaithfulSGD(net.optim_parameters(2.5e-4), **kw),
        "torch.optim.SGD on the listing": lambda: torch.optim.SGD(net.optim_parameters(2.5e-4), **kw),
    }
    listing = sum(len(g["params"]) for g in net.optim_parameters(1.0))
    results: dict[str, list[float]] = {k: [] for k in impls}
    finals = {}
    for _ in range(max(1, args.rounds)):
        for name, make in impls.items():
            net.load_state_dict(init)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opt = make()
            named = dict(net.named_parameters())
            for k, g in grads.items():
                named[k].grad = g.clone()
            opt.step()  # the first step creates the momentum buffers
            for _ in range(args.optimizer_repeats):
                _sync(device)
                t0 = time.perf_counter()
                opt.step()
                _sync(device)
                results[name].append(time.perf_counter() - t0)
            finals[name] = {k: v.detach().clone() for k, v in net.named_parameters()}
    loop, ours = list(impls)[:2]
    base = min(results[loop])
    rows = []
    for name in impls:
        best = min(results[name])
        same = all(torch.equal(finals[loop][k], v) for k, v in finals[name].items()) if name == ours else None
        rows.append({"optimizer": name, "ms_per_step": best * 1e3, "median_ms": statistics.median(results[name]) * 1e3,
                     "speedup_vs_loop": base / best, "listing_entries": listing, "bitwise_equal_to_loop": same})
    return rows


# ---- main ----------------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_variant(name: str, args: argparse.Namespace, data, device: torch.device) -> dict[str, Any]:
    """Build variant ``name``, run ``--warmup`` then ``--iters`` timed iterations; in the calling process."""
    mem = PeakMemory(device)
    with contextlib.redirect_stdout(io.StringIO()):
        runner = build_variant(name, args, data, device)
    try:
        for i in range(args.warmup):
            runner.iteration(i)
        _sync(device)
        wait0 = runner.wait
        times = []
        for i in range(args.warmup, args.warmup + args.iters):
            t0 = time.perf_counter()
            runner.iteration(i)
            _sync(device)
            times.append(time.perf_counter() - t0)
        wait = runner.wait - wait0
    finally:
        runner.close()
    return {"times": times, "wait": wait, "peak_gib": mem.peak_gib()}


def run_variant_process(name: str, args: argparse.Namespace, data, workdir: Path) -> dict[str, Any]:
    """:func:`run_variant` in a fresh Python process: its memory is measured alone, and no variant inherits
    another's allocator state or warm caches."""
    spec = workdir / "worker.json"
    out = workdir / "worker_result.json"
    spec.write_text(json.dumps({"variant": name, "data": {k: str(v) for k, v in vars(data).items()},
                                "settings": {k: (list(v) if isinstance(v, tuple) else v)
                                             for k, v in vars(args).items()}}))
    out.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec), str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"variant {name!r} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def worker_main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    args = argparse.Namespace(**spec["settings"])
    args.input_size, args.input_size_target = tuple(args.input_size), tuple(args.input_size_target)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    configure_backends(device, deterministic=False)
    data = argparse.Namespace(**spec["data"])
    result = run_variant(spec["variant"], args, data, device)
    Path(out_path).write_text(json.dumps(result))


def main(args: argparse.Namespace) -> dict[str, Any]:
    args = resolve_defaults(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    configure_backends(device, deterministic=False)
    name = device_name(device)
    peak_tflops = bf16_peak_tflops(name) if device.type == "cuda" else None
    variants = args.variants.split(",")
    per_iter_images = 2 * args.batch_size * args.iter_size

    flops = None if args.no_flops else count_flops(args, args.input_size, args.input_size_target)
    paper_flops = None if args.no_flops else count_flops(
        argparse.Namespace(**{**vars(args), "batch_size": 1, "iter_size": 1}), *PAPER_SIZES)

    tmp = None
    if args.workdir:
        root = Path(args.workdir)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_train_")
        root = Path(tmp.name)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            data = make_data(args, root / "data")
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for r in range(args.rounds):  # the variants take turns, the order rotating each round (order effects)
            k = r % len(variants)
            for v in variants[k:] + variants[:k]:
                runs[v].append(run_variant_process(v, args, data, root))
    finally:
        if tmp is not None:
            tmp.cleanup()

    rows = []
    for v in variants:
        times = [t for r in runs[v] for t in r["times"]]
        best_round = min(runs[v], key=lambda r: statistics.median(r["times"]))
        sec = min(statistics.median(r["times"]) for r in runs[v])
        total = sum(best_round["times"])
        row = {
            "variant": v,
            "sec_per_iter": sec,
            "sec_per_iter_all": times,
            "iter_per_s": 1.0 / sec,
            "images_per_s": per_iter_images / sec,
            "peak_mem_gib": max(r["peak_gib"] for r in runs[v]),
            "data_wait_share": best_round["wait"] / total if total > 0 else 0.0,
            "flops_per_iter": flops,
            "achieved_tflops": flops / sec / 1e12 if flops else None,
            "pct_of_bf16_peak": 100.0 * flops / sec / 1e12 / peak_tflops if flops and peak_tflops else None,
        }
        rows.append(row)
    ref = {r["variant"]: r["sec_per_iter"] for r in rows}
    for r in rows:
        r["speed_vs_original_port"] = ref["original port"] / r["sec_per_iter"] if "original port" in ref else None
        r["speed_vs_fp32"] = ref["fp32"] / r["sec_per_iter"] if "fp32" in ref else None

    opt_rows = bench_optimizer(args, device) if args.optimizer_repeats > 0 else []

    result = {
        "benchmark": "train_step",
        "date": datetime.date.today().isoformat(),
        "command": "python " + " ".join([str(Path(sys.argv[0]).as_posix())] + sys.argv[1:]),
        "machine": {"device": name, "torch": torch.__version__, "python": platform.python_version(),
                    "threads": torch.get_num_threads(), "bf16_peak_tflops": peak_tflops,
                    "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k != "json"},
        "memory_definition": ("torch.cuda.max_memory_allocated of the variant's own process"
                              if device.type == "cuda" else
                              "peak RSS of the variant's own process minus its RSS before the set-up"),
        "paper_flops_per_iter": paper_flops,
        "rows": rows,
        "optimizer": opt_rows,
    }
    print_report(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def print_report(result: dict[str, Any]) -> None:
    s, m = result["settings"], result["machine"]
    print(f"# train_step benchmark, {result['date']}: {m['device']}, torch {m['torch']}, {m['threads']} threads")
    print(f"# sizes {s['input_size'][0]}x{s['input_size'][1]} + {s['input_size_target'][0]}x"
          f"{s['input_size_target'][1]}, batch {s['batch_size']}, iter-size {s['iter_size']}, ResNet layers "
          f"{s['resnet_layers']}, {s['iters']} timed iterations x {s['rounds']} round(s) after {s['warmup']} warm-up, "
          f"{s['num_workers']} loader workers per domain")
    if result["paper_flops_per_iter"]:
        print(f"# FLOPs per iteration (FlopCounterMode): {result['rows'][0]['flops_per_iter'] / 1e9:.1f} GFLOP here; "
              f"{result['paper_flops_per_iter'] / 1e12:.2f} TFLOP at the paper's 1280x720 + 1024x512, batch 1")
    if m.get("load_average_at_end"):
        print("# load average at the end (1/5/15 min): " + " ".join(f"{x:.2f}" for x in m["load_average_at_end"]))
    print(f"# peak memory: {result['memory_definition']}; bf16 peak of this device: "
          f"{_fmt(m['bf16_peak_tflops'], '.0f', 'unknown')} TFLOP/s")
    head = ("variant", "s/iter", "it/s", "img/s", "peak GiB", "data wait", "TFLOP/s", "% bf16 peak", "vs port",
            "vs fp32")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in result["rows"]:
        cells = (r["variant"], f"{r['sec_per_iter']:.3f}", f"{r['iter_per_s']:.3f}", f"{r['images_per_s']:.2f}",
                 f"{r['peak_mem_gib']:.3f}", f"{100 * r['data_wait_share']:.1f}%",
                 _fmt(r["achieved_tflops"], ".3f"), _fmt(r["pct_of_bf16_peak"], ".1f"),
                 _fmt(r["speed_vs_original_port"], ".2f") + "x", _fmt(r["speed_vs_fp32"], ".2f") + "x")
        print("| " + " | ".join(cells) + " |")
    if result["optimizer"]:
        o = result["optimizer"]
        print(f"\n# optimizer step of the segmentation network ({o[0]['listing_entries']} listing entries), best of "
              f"{s['optimizer_repeats']} x {s['rounds']}")
        print("| optimizer | ms/step | median ms | speed-up vs the 0.4 loop | bitwise = the 0.4 loop |")
        print("|---|---|---|---|---|")
        for r in o:
            print(f"| {r['optimizer']} | {r['ms_per_step']:.1f} | {r['median_ms']:.1f} | "
                  f"{r['speedup_vs_loop']:.2f}x | {_fmt(r['bitwise_equal_to_loop'], '')} |")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":  # internal: one variant in a fresh process
        worker_main(sys.argv[2], sys.argv[3])
    else:
        main(get_args_parser().parse_args())
