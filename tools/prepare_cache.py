"""Build the exact resized-frame cache that ``--data-cache DIR`` of the training and evaluation scripts reads.

Decodes every image (and label) of a setting's datasets once, resizes it exactly as the loaders do (the loaders' own
code: bicubic for images, nearest for labels) and stores the result under ``--cache DIR``, one folder per dataset,
split and input size (:mod:`dataset.cache` describes the layout and the formats). The flags and their defaults are
the training script's, so the command that trains is the command that caches::

    python tools/prepare_cache.py --cache /fast/disk/cache                      # GTA5 1280x720 + Cityscapes train
    python tools/prepare_cache.py --cache /fast/disk/cache --eval               # ... + Cityscapes val (evaluation)
    python train_gta2cityscapes_multi.py ... --data-cache /fast/disk/cache
    python evaluate_cityscapes.py ... --data-cache /fast/disk/cache

It runs in parallel (``--workers``, default: the usable cores), shows a progress bar, resumes where an interrupted
run stopped (and redoes only the entries whose source files changed), and reports the cache's size on disk. Every
file is written atomically. Exit status: 0 done, 1 a data or write error (the message names the file; run the tool
again after fixing it: it resumes), 2 unusable flags.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.cache import DEFAULT_FORMAT, IMAGE_FORMATS, CacheError, build_cache
from dataset.checks import DatasetError, dataset_error_message
from dataset.settings import CITIES, SOURCES, TARGETS, resolve_setting
from utils.cli import ArgumentParser, UsageError, fail, parse_size, repo_path, usable_cpus
from utils.files import WriteError, free_bytes, human_bytes

PROG = "prepare_cache.py"
logger = logging.getLogger("prepare_cache")


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Write every image (and label) of a training setting, resized as "
                            "the loaders resize it, into a cache that --data-cache reads (docs/data.md).")
    per_source = "default: the --source setting's (dataset/settings.py)"
    per_target = "default: the --target setting's (dataset/settings.py)"
    parser.add_argument("--cache", required=True, metavar="DIR", help="the cache directory (created)")
    data = parser.add_argument_group("data (the flags and defaults of train_gta2cityscapes_multi.py)")
    data.add_argument("--source", choices=tuple(SOURCES), help="labelled source domain (default gta5; cityscapes "
                      "with --target crosscity)")
    data.add_argument("--target", default="cityscapes", choices=tuple(TARGETS), help="target domain")
    data.add_argument("--city", choices=CITIES, help="the Cross-City city of --target crosscity")
    data.add_argument("--data-dir", help=f"source dataset directory ({per_source})")
    data.add_argument("--data-list", help=f"file listing the source images ({per_source})")
    data.add_argument("--input-size", type=parse_size, metavar="W,H", help=f"source input size ({per_source})")
    data.add_argument("--data-dir-target", help=f"target dataset directory ({per_target})")
    data.add_argument("--data-list-target", help=f"file listing the target images ({per_target})")
    data.add_argument("--input-size-target", type=parse_size, metavar="W,H",
                      help=f"target input size, also of --eval ({per_target})")
    data.add_argument("--set", default="train", help="split folder of the target images")
    tool = parser.add_argument_group("cache")
    tool.add_argument("--eval", action="store_true",
                      help="also cache the target's evaluation split (Cityscapes val, Cross-City test) for "
                           "evaluate_cityscapes.py --data-cache")
    tool.add_argument("--val-set", help="split of --eval (default: the target's: cityscapes val, crosscity test)")
    tool.add_argument("--data-list-val",
                      help="list of --eval (default: the target's: ./dataset/cityscapes_list/val.txt; crosscity: "
                           "every test image)")
    tool.add_argument("--skip-source", action="store_true", help="do not cache the source")
    tool.add_argument("--skip-target", action="store_true", help="do not cache the target's adaptation split")
    tool.add_argument("--format", default=DEFAULT_FORMAT, choices=IMAGE_FORMATS,
                      help="image format: npy (raw arrays, fastest to read) or png (level 1, smaller, ~20 ms to "
                           "decode a 1280x720 frame); labels are always PNG")
    tool.add_argument("--workers", type=int, default=usable_cpus(), help="processes decoding and resizing")
    tool.add_argument("--no-progress", action="store_true", help="no progress bar (it is off when not a TTY)")
    return parser


def build_datasets(args: argparse.Namespace) -> list:
    """The datasets to cache, built as the training script builds them (without augmentation), each with the
    loaders' file checks (a missing file raises ``DatasetError`` before anything is written)."""
    source, target = SOURCES[args.source], TARGETS[args.target]
    city = (args.city,) if args.target == "crosscity" else ()
    datasets = []
    if not args.skip_source:
        datasets.append(source.dataset(args.data_dir or source.data_dir,
                                       repo_path(args.data_list or source.data_list, "--data-list"),
                                       crop_size=args.input_size or source.input_size))
    size_target = args.input_size_target or target.input_size
    root_target = args.data_dir_target or target.data_dir
    if not args.skip_target:
        datasets.append(target.dataset(root_target, *city,
                                       repo_path(args.data_list_target or target.data_list, "--data-list-target"),
                                       crop_size=size_target, set=args.set))
    if args.eval:
        eval_list = args.data_list_val or target.eval_list
        datasets.append(target.dataset(root_target, *city, repo_path(eval_list, "--data-list-val"),
                                       crop_size=size_target, set=args.val_set or target.eval_set))
    return datasets


def validate_args(args: argparse.Namespace) -> None:
    """Raise :class:`UsageError` for flags that cannot work."""
    try:
        args.source = resolve_setting(args.source, args.target, args.city)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.skip_source and args.skip_target and not args.eval:
        raise UsageError("--skip-source and --skip-target leave nothing to cache (add --eval for the evaluation split)")


def estimated_bytes(dataset, image_format: str) -> int:
    """About how many bytes the cache of ``dataset`` takes (npy: exact images; png: a guess of half that)."""
    w, h = dataset.crop_size
    per_image = w * h * 3 if image_format == "npy" else w * h * 3 // 2
    per_label = w * h // 50 if dataset.source else 0  # label PNGs: flat regions compress ~50-100x
    return len({f["name"] for f in dataset.files}) * (per_image + per_label)


def main(args: argparse.Namespace) -> int:
    """Build the caches; 0 when done, 1 for a data or write error, 2 for unusable flags."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        validate_args(args)
        datasets = build_datasets(args)
    except UsageError as exc:
        return fail(PROG, str(exc), 2)
    except (DatasetError, ValueError, OSError) as exc:
        return fail(PROG, f"{dataset_error_message(exc)}; fix the data or the flags (tools/check_data.py checks every "
                          "file)")
    cache = Path(args.cache)
    needed = sum(estimated_bytes(ds, args.format) for ds in datasets)
    free = free_bytes(cache)
    if needed > free:
        logger.warning("the caches need about %s and %s is free at %s (entries already cached need nothing)",
                       human_bytes(needed), human_bytes(free), cache)
    from tqdm import tqdm

    total = 0
    for ds in datasets:
        w, h = ds.crop_size
        title = f"{ds.title or ds.dataset_name} at {w}x{h}"
        bar = tqdm(unit="img", desc=ds.cache_name(), dynamic_ncols=True, file=sys.stderr,
                   disable=True if args.no_progress else None)

        def progress(done: int, count: int, bar=bar) -> None:
            bar.total = count
            bar.n = done
            bar.refresh()

        try:
            report = build_cache(ds, cache, image_format=args.format, workers=args.workers, progress=progress)
        except WriteError as exc:
            return fail(PROG, f"{exc}; free space (or pass another --cache) and run this again: it resumes where it "
                              "stopped")
        except (DatasetError, OSError) as exc:
            hint = "" if isinstance(exc, CacheError) else " (tools/check_data.py finds every bad file)"
            return fail(PROG, f"{dataset_error_message(exc)}; fix it{hint} and run this again: it resumes where it "
                              "stopped")
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted; run the same command again to resume", file=sys.stderr, flush=True)
            return 130
        finally:
            bar.close()
        total += report.disk_bytes
        print(f"{title}: {report.written + report.reused} entries in {report.directory} ({report.written} written, "
              f"{report.reused} already cached), {human_bytes(report.disk_bytes)} on disk", flush=True)
    print(f"cache {cache}: {human_bytes(total)} on disk; use it with --data-cache {cache}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
