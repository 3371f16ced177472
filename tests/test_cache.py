"""The resized-frame cache (dataset/cache.py, tools/prepare_cache.py, --data-cache): cached items are bitwise the
uncached ones for every loader, both formats, mirror on and off, uint8 and float32 items; a build resumes and redoes
only what changed, in parallel or not; stale, wrong-size, incomplete and damaged caches are clear errors naming the
file and the command that rebuilds them; the training and evaluation scripts give the same results with it."""
from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch

import dataset.cache as cache_mod
import tools.prepare_cache as prep
from dataset.cache import MANIFEST, CacheError, build_cache
from loader_sets import LOADERS, make_all_data
from utils.files import WriteError

CROP = (40, 24)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_all_data(tmp_path_factory.mktemp("all"))


@pytest.fixture(scope="module")
def caches(data, tmp_path_factory):
    """Every loader cached at CROP, in npy (all) and png (gta5, cityscapes)."""
    root = tmp_path_factory.mktemp("cache")
    for fmt, names in (("npy", list(LOADERS)), ("png", ["gta5", "cityscapes"])):
        for name in names:
            report = build_cache(LOADERS[name][0](data, crop_size=CROP), root / fmt, image_format=fmt)
            assert report.written == 3 and report.reused == 0 and report.disk_bytes > 0
    return root


def _items_equal(a, b) -> None:
    assert len(a) == len(b)
    for i in range(len(a)):
        for x, y in zip(a[i], b[i]):
            if isinstance(x, np.ndarray):
                assert x.dtype == y.dtype and x.shape == y.shape
                np.testing.assert_array_equal(x, y)
            else:
                assert x == y


@pytest.mark.parametrize("name,fmt", [(n, "npy") for n in LOADERS] + [("gta5", "png"), ("cityscapes", "png")])
def test_cached_items_are_bitwise_the_uncached(data, caches, name, fmt):
    make, _ = LOADERS[name]
    for mirror in (False, True):
        for uint8 in (True, False):
            kw = dict(crop_size=CROP, max_iters=6, mirror=mirror, seed=4, uint8=uint8)
            _items_equal(make(data, data_cache=caches / fmt, **kw), make(data, **kw))


def test_layout_and_manifest(data, caches):
    directory = caches / "npy" / "gta5-40x24"
    manifest = json.loads((directory / MANIFEST).read_text())
    assert manifest["complete"] and manifest["format"] == "npy" and manifest["labels"] is True
    assert manifest["input_size"] == [40, 24] and manifest["root"] == str(data.main.gta5_root.resolve())
    name = "00001.png"
    st = os.stat(data.main.gta5_root / "images" / name)
    assert manifest["entries"][name]["image"] == [st.st_size, st.st_mtime_ns]
    image = np.load(directory / "images" / f"{name}.npy")
    assert image.dtype == np.uint8 and image.shape == (24, 40, 3)
    for sub in ("cityscapes-train-40x24", "cityscapes-source-train-40x24", "synthia-40x24", "synscapes-40x24",
                "crosscity-rome-train-40x24"):
        assert (caches / "npy" / sub / MANIFEST).is_file()
    assert not (caches / "npy" / "cityscapes-train-40x24" / "labels").exists()  # a target: images only


def _copy_cache(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_stale_source_file_is_an_error_naming_it(data, caches, tmp_path):
    root = _copy_cache(caches / "npy", tmp_path / "c")
    label = data.main.gta5_root / "labels" / "00002.png"
    st = os.stat(label)
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        with pytest.raises(CacheError) as err:
            LOADERS["gta5"][0](data, crop_size=CROP, data_cache=root)
        msg = str(err.value)
        assert "\n" not in msg and "stale" in msg and str(label) in msg and "changed since it was cached" in msg
        assert "python tools/prepare_cache.py --cache" in msg and "--source gta5" in msg and "--input-size 40,24" in msg
        # the rebuild redoes that entry only, then the cache opens again
        report = build_cache(LOADERS["gta5"][0](data, crop_size=CROP), root)
        assert (report.written, report.reused) == (1, 2)
        LOADERS["gta5"][0](data, crop_size=CROP, data_cache=root)
    finally:
        os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_wrong_input_size_names_what_the_cache_holds(data, caches):
    with pytest.raises(CacheError, match=r"has no gta5-48x24/ for GTA5 at 48x24 \(it holds: .*gta5-40x24.*\); "
                                         r"build it with: python tools/prepare_cache.py .*--input-size 48,24"):
        LOADERS["gta5"][0](data, crop_size=(48, 24), data_cache=caches / "npy")
    with pytest.raises(CacheError, match=r"data cache .*nowhere does not exist; build it with"):
        LOADERS["cityscapes"][0](data, crop_size=CROP, data_cache=caches / "nowhere")


def test_missing_or_damaged_cache_files(data, caches, tmp_path):
    root = _copy_cache(caches / "npy", tmp_path / "c")
    lost = root / "gta5-40x24" / "labels" / "00003.png.png"
    lost.unlink()
    with pytest.raises(CacheError, match=rf"1 files of the data cache .* are missing: {lost}; rebuild it with"):
        LOADERS["gta5"][0](data, crop_size=CROP, data_cache=root)
    assert build_cache(LOADERS["gta5"][0](data, crop_size=CROP), root).written == 1
    # a damaged file (another shape) is found when the item is read, in the loader's worker
    npy = root / "cityscapes-train-40x24" / "images"
    victim = sorted(npy.rglob("*.npy"))[0]
    np.save(victim, np.zeros((10, 10, 3), np.uint8))
    ds = LOADERS["cityscapes"][0](data, crop_size=CROP, data_cache=root, uint8=True)
    index = [f["name"] for f in ds.files].index(str(victim.relative_to(npy))[: -len(".npy")])
    with pytest.raises(CacheError, match=rf"data cache file {victim} is damaged \(it holds a uint8 array of shape "
                                         r"\(10, 10, 3\), expected uint8 \(24, 40, 3\)\); rebuild the cache"):
        ds[index]
    victim.write_bytes(b"not an array")
    with pytest.raises(CacheError, match=rf"{victim} is damaged \(ValueError"):
        ds[index]
    # read by a DataLoader worker (as in training): the script's one-line message, without the exception's name
    from dataset.checks import dataset_error_message

    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, [index]), num_workers=1)
    with pytest.raises(Exception) as err:
        next(iter(loader))
    message = dataset_error_message(err.value)
    assert message.startswith(f"data cache file {victim} is damaged (ValueError") and "rebuild the cache" in message


def test_incomplete_build_resumes(data, tmp_path, monkeypatch):
    root = tmp_path / "c"
    real = cache_mod.write_entry
    calls = []

    def fail_third(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise WriteError("cannot write x: no space left on the device (1 B free)")
        return real(*args, **kw)

    monkeypatch.setattr(cache_mod, "write_entry", fail_third)
    with pytest.raises(WriteError):
        build_cache(LOADERS["synscapes"][0](data, crop_size=CROP), root)
    manifest = json.loads((root / "synscapes-40x24" / MANIFEST).read_text())
    assert not manifest["complete"] and len(manifest["entries"]) == 2
    with pytest.raises(CacheError, match=r"is incomplete \(2 entries cached, the build did not finish\); finish it "
                                         r"with the same command \(it resumes\)"):
        LOADERS["synscapes"][0](data, crop_size=CROP, data_cache=root)
    monkeypatch.setattr(cache_mod, "write_entry", real)
    report = build_cache(LOADERS["synscapes"][0](data, crop_size=CROP), root)
    assert (report.written, report.reused) == (1, 2)
    LOADERS["synscapes"][0](data, crop_size=CROP, data_cache=root)


def test_parallel_build_writes_the_same_files(data, caches, tmp_path):
    report = build_cache(LOADERS["gta5"][0](data, crop_size=CROP), tmp_path / "c", workers=2)
    assert report.written == 3
    for sub in ("images", "labels"):
        for f in sorted((caches / "npy" / "gta5-40x24" / sub).iterdir()):
            assert (tmp_path / "c" / "gta5-40x24" / sub / f.name).read_bytes() == f.read_bytes()


def test_other_list_and_random_scale_are_refused(data, caches, tmp_path):
    longer = tmp_path / "list.txt"
    longer.write_text(data.main.gta5_list.read_text() + "00009.png\n")
    (data.main.gta5_root / "images" / "00009.png").write_bytes((data.main.gta5_root / "images" / "00001.png").read_bytes())
    (data.main.gta5_root / "labels" / "00009.png").write_bytes((data.main.gta5_root / "labels" / "00001.png").read_bytes())
    try:
        from dataset.gta5_dataset import GTA5DataSet

        with pytest.raises(CacheError, match=r"1 of the 4 entries of .*list.txt are not in the data cache .*: "
                                             r"00009.png; add them with"):
            GTA5DataSet(data.main.gta5_root, longer, crop_size=CROP, data_cache=caches / "npy")
    finally:
        for sub in ("images", "labels"):
            (data.main.gta5_root / sub / "00009.png").unlink()
    with pytest.raises(ValueError, match=r"scale \(--random-scale\) rescales the full-resolution frames, which a data "
                                         r"cache does not hold"):
        LOADERS["gta5"][0](data, crop_size=CROP, scale=True, data_cache=caches / "npy")


# ---- tools/prepare_cache.py ------------------------------------------------------------------------------------------


def _prep(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = prep.main(prep.get_args_parser().parse_args(list(argv)))
    return rc, out.getvalue(), err.getvalue()


def _setting(data) -> list[str]:
    return ["--data-dir", str(data.main.gta5_root), "--data-list", str(data.main.gta5_list),
            "--data-dir-target", str(data.main.cityscapes_root), "--data-list-target",
            str(data.main.cityscapes_train_list), "--input-size", "40,24", "--input-size-target", "32,24",
            "--no-progress"]


def test_prepare_cache_tool(data, tmp_path):
    root = tmp_path / "c"
    rc, out, err = _prep("--cache", str(root), *_setting(data), "--eval", "--data-list-val",
                         str(data.main.cityscapes_val_list), "--workers", "2")
    assert rc == 0, err
    assert "GTA5 at 40x24: 3 entries in" in out and "(3 written, 0 already cached)" in out
    assert "Cityscapes val at 32x24: 2 entries" in out and "on disk; use it with --data-cache" in out
    assert sorted(p.name for p in root.iterdir()) == ["cityscapes-train-32x24", "cityscapes-val-32x24", "gta5-40x24"]
    rc, out, _ = _prep("--cache", str(root), *_setting(data), "--skip-target")
    assert rc == 0 and "(0 written, 3 already cached)" in out and "Cityscapes" not in out


def test_prepare_cache_errors(data, tmp_path, monkeypatch):
    root = str(tmp_path / "c")
    rc, _, err = _prep("--cache", root, *_setting(data), "--workers", "0")
    assert rc == 2 and err.strip() == "prepare_cache.py: error: --workers must be at least 1, got 0"
    rc, _, err = _prep("--cache", root, *_setting(data), "--skip-source", "--skip-target")
    assert rc == 2 and "leave nothing to cache" in err
    rc, _, err = _prep("--cache", root, *_setting(data), "--target", "crosscity")
    assert rc == 2 and "--target crosscity needs --city" in err
    rc, _, err = _prep("--cache", root, *_setting(data)[:2], "--data-list", str(tmp_path / "none.txt"),
                       "--skip-target")
    assert rc == 1 and err.startswith("prepare_cache.py: error: GTA5 list file") and "does not exist" in err

    def full(path, write, needed=None):
        raise WriteError(f"cannot write {path}: no space left on the device (1 B free)")

    monkeypatch.setattr(cache_mod, "atomic_write", full)
    rc, _, err = _prep("--cache", root, *_setting(data), "--skip-target")
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "no space left on the device" in err and "it resumes where it stopped" in err


# ---- the scripts -----------------------------------------------------------------------------------------------------


def test_training_with_the_cache_gives_the_same_snapshots(tmp_path):
    import train_gta2cityscapes_multi as train
    from tiny_training import make_tiny_data, train_argv

    tiny = make_tiny_data(tmp_path / "data")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        argv = ["--num-steps-stop", "2", "--random-mirror"]
        assert train.main(train.get_args_parser().parse_args(train_argv(tiny, tmp_path / "plain", *argv))) == 0
        rc, _, err = _prep("--cache", str(tmp_path / "c"), "--data-dir", str(tiny.gta5_root), "--data-list",
                           str(tiny.gta5_list), "--data-dir-target", str(tiny.cityscapes_root), "--data-list-target",
                           str(tiny.cityscapes_train_list), "--input-size", "40,32", "--input-size-target", "32,32",
                           "--no-progress")
        assert rc == 0, err
        cached = train_argv(tiny, tmp_path / "cached", *argv, "--data-cache", str(tmp_path / "c"))
        assert train.main(train.get_args_parser().parse_args(cached)) == 0
        for suffix in ("", "_D1", "_D2"):
            a = torch.load(tmp_path / "plain" / f"GTA5_2{suffix}.pth", weights_only=True)
            b = torch.load(tmp_path / "cached" / f"GTA5_2{suffix}.pth", weights_only=True)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert json.loads((tmp_path / "cached" / "args.json").read_text())["data_cache"] == str(tmp_path / "c")
        # refused with --random-scale (usage: exit 2), and a missing cache is a data error naming the fix (exit 1)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = train.main(train.get_args_parser().parse_args(train_argv(
                tiny, tmp_path / "s", "--data-cache", str(tmp_path / "c"), "--random-scale")))
        assert rc == 2 and "--random-scale rescales the full-resolution frames" in err.getvalue()
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = train.main(train.get_args_parser().parse_args(train_argv(
                tiny, tmp_path / "m", "--data-cache", str(tmp_path / "c"), "--input-size", "48,32")))
        assert rc == 1 and "has no gta5-48x32/" in err.getvalue() and "tools/prepare_cache.py" in err.getvalue()
    finally:
        torch.set_num_threads(threads)


def test_evaluation_with_the_cache_gives_the_same_predictions(tmp_path):
    import evaluate_cityscapes as ev
    from model.deeplab_multi import DeeplabMulti
    from tools.make_synthetic_data import make_synthetic_datasets

    paths = make_synthetic_datasets(tmp_path / "data", num_source=1, num_target_train=1, num_val=3,
                                    target_size=(64, 32), seed=2)
    torch.manual_seed(0)
    torch.save(DeeplabMulti(num_classes=19, layers=(1, 1, 1, 1)).state_dict(), tmp_path / "m.pth")
    rc, _, err = _prep("--cache", str(tmp_path / "c"), "--data-dir-target", str(paths.cityscapes_root),
                       "--data-list-target", str(paths.cityscapes_val_list), "--set", "val",
                       "--input-size-target", "48,24", "--skip-source", "--no-progress")
    assert rc == 0, err
    base = ["--restore-from", str(tmp_path / "m.pth"), "--data-dir", str(paths.cityscapes_root), "--data-list",
            str(paths.cityscapes_val_list), "--cpu", "--input-size", "48,24", "--output-size", "64,32",
            "--resnet-layers", "1,1,1,1", "--num-workers", "0"]
    out = {}
    for key, extra in (("plain", []), ("cached", ["--data-cache", str(tmp_path / "c")])):
        with contextlib.redirect_stdout(io.StringIO()):
            assert ev.main(ev.get_args_parser().parse_args(base + ["--save", str(tmp_path / key)] + extra)) == 0
        out[key] = {p.name: p.read_bytes() for p in (tmp_path / key).iterdir()}
    assert out["plain"] and out["plain"] == out["cached"]


@pytest.mark.parametrize("name", ["gta5", "synthia", "cityscapes_source", "cityscapes", "crosscity", "eval"])
def test_the_command_in_the_message_builds_the_missing_cache(data, tmp_path, name):
    """Run the very command a missing cache's error gives: afterwards the dataset opens with the cache."""
    import shlex

    from dataset.cityscapes_dataset import cityscapesDataSet

    if name == "eval":  # evaluate_cityscapes.py's dataset: Cityscapes val
        def make(**kw):
            return cityscapesDataSet(data.main.cityscapes_root, data.main.cityscapes_val_list, set="val", **kw)
    else:
        make = lambda **kw: LOADERS[name][0](data, **kw)  # noqa: E731
    with pytest.raises(CacheError) as err:
        make(crop_size=(36, 20), data_cache=tmp_path / "c")
    assert "\n" not in str(err.value)  # one line
    command = str(err.value).split("build it with: ", 1)[1]
    argv = shlex.split(command)
    assert argv[:2] == ["python", "tools/prepare_cache.py"]
    rc, _, stderr = _prep(*argv[2:], "--no-progress")
    assert rc == 0, stderr
    assert len(list((tmp_path / "c").iterdir())) == 1  # that dataset only
    _items_equal(make(crop_size=(36, 20), data_cache=tmp_path / "c", uint8=True),
                 make(crop_size=(36, 20), uint8=True))
