"""Tests of utils/weights.py: reading files and URLs (a local http.server and file:// URLs, never the real network),
the original's initialisation rule, strict checkpoint loading with hints, and torchvision initialisation."""
from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch
import torchvision

from model import DeeplabMulti, DeeplabVGG, FCDiscriminator, Res_Deeplab
from utils import weights as W
from utils.weights import (
    CheckpointMismatchError,
    is_none_restore,
    load_checkpoint,
    load_state_dict_from,
    restore_init,
    torchvision_init,
)

TINY = (1, 1, 1, 1)


def perturbed(state: dict, seed: int = 0) -> dict:
    """A copy of ``state`` with every float tensor replaced by fresh random values (so copies are detectable)."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: (torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()) for k, v in state.items()
    }


def same(a: dict, b: dict, keys) -> bool:
    return all(torch.equal(a[k], b[k]) for k in keys)


def original_init_rule(model_state: dict, saved: dict, num_classes: int) -> dict:
    """The original training script's rule, restated: strip the first component, skip layer5 for 19 classes."""
    new = dict(model_state)
    for key, value in saved.items():
        parts = key.split(".")
        if not num_classes == 19 or not parts[1] == "layer5":
            new[".".join(parts[1:])] = value
    return new


# ---- load_state_dict_from: local files --------------------------------------------------------------------------


def test_local_file_plain_resume_and_legacy(tmp_path):
    sd = perturbed(DeeplabMulti(num_classes=3, layers=TINY).state_dict())
    plain, legacy, resume, resume2 = (tmp_path / n for n in ("plain.pth", "legacy.pth", "resume.pth", "r2.pth"))
    torch.save(sd, plain)
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)  # the 2018 files' format
    torch.save({"model": sd, "iteration": 7, "optimizer": {"lr": 0.1}}, resume)
    torch.save({"state_dict": sd, "epoch": 1}, resume2)
    for path in (plain, str(legacy), resume, resume2):
        got = load_state_dict_from(path)
        assert list(got) == list(sd) and same(got, sd, sd)


def test_missing_directory_corrupt_and_non_state_dict_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--restore-from .*nope\.pth: no such file"):
        load_state_dict_from(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match=r"--init-weights .*nope\.pth"):
        load_state_dict_from(tmp_path / "nope.pth", flag="--init-weights")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_state_dict_from(tmp_path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint" * 20)
    with pytest.raises(ValueError, match=r"garbage\.pth: cannot be read as a PyTorch checkpoint"):
        load_state_dict_from(garbage)
    truncated = tmp_path / "truncated.pth"
    torch.save({"a": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"truncated\.pth: cannot be read"):
        load_state_dict_from(truncated)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pth"):
        load_state_dict_from(empty)
    pickled_model = tmp_path / "model.pth"
    torch.save(FCDiscriminator(3, ndf=2), pickled_model)  # a whole pickled object: refused by weights_only
    with pytest.raises(ValueError, match=r"model\.pth: .*pickled Python objects"):
        load_state_dict_from(pickled_model)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ValueError, match=r"list\.pth: expected a state_dict"):
        load_state_dict_from(listed)
    mixed = tmp_path / "mixed.pth"
    torch.save({"a": torch.zeros(1), "b": 3}, mixed)
    with pytest.raises(ValueError, match=r"1 entries are not tensors \[b\]"):
        load_state_dict_from(mixed)


def test_is_none_restore():
    for value in (None, "", "none", "None", " NONE ", "null"):
        assert is_none_restore(value)
    for value in ("model.pth", W.RESTORE_FROM_INIT, "no"):
        assert not is_none_restore(value)


def test_released_url_constants():
    assert W.RESTORE_FROM_INIT.endswith("/DeepLab_resnet_pretrained_init-f81d91e8.pth")
    assert W.RESTORE_FROM_MULTI.endswith("/GTA2Cityscapes_multi-ed35151c.pth")
    assert W.RESTORE_FROM_VGG.endswith("/GTA2Cityscapes_vgg-ac4ac9f6.pth")
    assert W.RESTORE_FROM_ORACLE == "http://vllab1.ucmerced.edu/~whung/adaptSeg/cityscapes_oracle-b7b9934.pth"


# ---- load_state_dict_from: URLs (local server only) -------------------------------------------------------------


@pytest.fixture()
def local_server(tmp_path, monkeypatch):
    """Serve ``tmp_path / 'www'`` on 127.0.0.1; no proxy may intercept it."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def save_with_hash_name(state: dict, directory: Path, stem: str, wrong: bool = False) -> str:
    tmp = directory / "tmp.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    prefix = ("0" if digest[0] != "0" else "1") + digest[1:8] if wrong else digest[:8]
    name = f"{stem}-{prefix}.pth"
    tmp.rename(directory / name)
    return name


def test_http_download_with_hash_check(local_server, tmp_path):
    root, base = local_server
    sd = perturbed(FCDiscriminator(3, ndf=4).state_dict())
    name = save_with_hash_name(sd, root, "disc")
    cache = tmp_path / "cache"
    got = load_state_dict_from(f"{base}/{name}", model_dir=cache, progress=False)
    assert same(got, sd, sd) and (cache / name).is_file()
    (root / name).unlink()  # the second read comes from the cache
    assert same(load_state_dict_from(f"{base}/{name}", model_dir=cache, progress=False), sd, sd)


def test_http_wrong_hash_rejected_and_not_cached(local_server, tmp_path):
    root, base = local_server
    name = save_with_hash_name({"w": torch.ones(3)}, root, "x", wrong=True)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=r"x-[0-9a-f]{8}\.pth: the downloaded file's SHA-256 does not start"):
        load_state_dict_from(f"{base}/{name}", model_dir=cache, progress=False)
    assert not (cache / name).exists()


def test_http_missing_file_is_a_clear_oserror(local_server, tmp_path):
    _, base = local_server
    with pytest.raises(OSError, match=r"--restore-from http://127\.0\.0\.1:\d+/gone-1234\.pth: download failed"):
        load_state_dict_from(f"{base}/gone-1234.pth", model_dir=tmp_path / "cache", progress=False)


def test_file_url_and_corrupt_cached_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    name = save_with_hash_name({"w": torch.arange(4.0)}, src, "y")
    cache = tmp_path / "cache"
    got = load_state_dict_from((src / name).as_uri(), model_dir=cache, progress=False)
    assert torch.equal(got["w"], torch.arange(4.0))
    (cache / name).write_bytes(b"junk")  # a damaged cache entry is named, with what to do
    with pytest.raises(ValueError, match=r"cache/y-[0-9a-f]{8}\.pth: cannot be read.*delete the cached file"):
        load_state_dict_from((src / name).as_uri(), model_dir=cache, progress=False)


# ---- restore_init: the original's initialisation rule -----------------------------------------------------------


def scale_prefixed(state: dict) -> dict:
    return {f"Scale.{k}": v for k, v in state.items()}


def test_restore_init_19_classes_skips_layer5():
    model = DeeplabMulti(num_classes=19, layers=TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # The init file: a single-level 21-class DeepLab (layer5 on 2048 channels), keys prefixed with "Scale.".
    init = scale_prefixed(perturbed(Res_Deeplab(num_classes=21, layers=TINY).state_dict(), seed=3))
    init = {k: v for k, v in init.items() if not k.endswith("num_batches_tracked")}  # like the 2018 file
    expected = original_init_rule(before, init, 19)
    report = restore_init(model, init, num_classes=19)
    after = model.state_dict()
    assert same(after, expected, expected)
    backbone = [k for k in after if not k.startswith(("layer5.", "layer6."))]
    assert same(after, {k[len("Scale."):]: v for k, v in init.items()}, [k for k in backbone if "num_batches" not in k])
    heads = [k for k in after if k.startswith(("layer5.", "layer6."))]
    assert len(heads) == 16 and same(after, before, heads)  # both classifiers keep their N(0, 0.01) init
    assert sorted(report.skipped) == sorted(k for k in init if k.startswith("Scale.layer5."))
    assert len(report.skipped) == 8
    assert set(report.kept_init) == set(heads) | {k for k in after if k.endswith("num_batches_tracked")}
    assert "skipped 8" in report.summary() and "16 keep their initialisation" in report.summary()


def test_restore_init_other_classes_copies_layer5_and_layer6():
    model = DeeplabMulti(num_classes=20, layers=TINY)
    init = scale_prefixed(perturbed(DeeplabMulti(num_classes=20, layers=TINY).state_dict(), seed=4))
    expected = original_init_rule(model.state_dict(), init, 20)
    report = restore_init(model, init, num_classes=20)
    after = model.state_dict()
    assert same(after, expected, expected)
    assert torch.equal(after["layer5.conv2d_list.3.bias"], init["Scale.layer5.conv2d_list.3.bias"])
    assert torch.equal(after["layer6.conv2d_list.0.weight"], init["Scale.layer6.conv2d_list.0.weight"])
    assert report.skipped == [] and report.kept_init == []


def test_restore_init_without_layer6_keeps_its_init():
    model = DeeplabMulti(num_classes=20, layers=TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    src = perturbed(DeeplabMulti(num_classes=20, layers=TINY).state_dict(), seed=5)
    init = scale_prefixed({k: v for k, v in src.items() if not k.startswith("layer6.")})
    report = restore_init(model, init, num_classes=20)
    after = model.state_dict()
    assert torch.equal(after["layer5.conv2d_list.1.weight"], src["layer5.conv2d_list.1.weight"])
    layer6 = [k for k in after if k.startswith("layer6.")]
    assert same(after, before, layer6) and sorted(report.kept_init) == sorted(layer6)


def test_restore_init_rejects_unknown_keys_and_shapes():
    model = DeeplabMulti(num_classes=19, layers=TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init = scale_prefixed(perturbed(Res_Deeplab(num_classes=21, layers=TINY).state_dict()))
    init["Scale.layer9.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointMismatchError, match=r"1 unexpected keys \[Scale\.layer9\.weight"):
        restore_init(model, init, num_classes=19)
    assert same(model.state_dict(), before, before)  # nothing half-loaded
    # 21 classes: the init file's layer5 (21 x 2048) does not fit DeeplabMulti's aux classifier (21 x 1024).
    model21 = DeeplabMulti(num_classes=21, layers=TINY)
    init = scale_prefixed(Res_Deeplab(num_classes=21, layers=TINY).state_dict())
    with pytest.raises(CheckpointMismatchError, match=r"4 shape mismatches.*\(21, 2048, 3, 3\) vs model \(21, 1024"):
        restore_init(model21, init, num_classes=21)
    # A trained (unprefixed) checkpoint is not an init file: the hint says so.
    trained = DeeplabMulti(num_classes=19, layers=TINY).state_dict()
    with pytest.raises(CheckpointMismatchError, match=r"no such prefix and look like a trained DeeplabMulti"):
        restore_init(model, trained, num_classes=19)


# ---- load_checkpoint --------------------------------------------------------------------------------------------


def test_load_checkpoint_old_file_without_num_batches_tracked(tmp_path):
    model = DeeplabMulti(num_classes=19, layers=TINY)
    src = perturbed(DeeplabMulti(num_classes=19, layers=TINY).state_dict(), seed=6)
    old = {k: v for k, v in src.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "GTA5_old.pth"
    torch.save(old, path, _use_new_zipfile_serialization=False)
    tolerated = load_checkpoint(model, load_state_dict_from(path))
    assert sorted(tolerated) == sorted(k for k in src if k.endswith("num_batches_tracked"))
    assert len(tolerated) == 17
    assert same(model.state_dict(), old, old)


def test_load_checkpoint_exact_and_module_prefix():
    model = Res_Deeplab(num_classes=19, layers=TINY)
    src = perturbed(model.state_dict(), seed=7)
    assert load_checkpoint(model, src) == []
    assert same(model.state_dict(), src, src)
    src2 = perturbed(model.state_dict(), seed=8)
    load_checkpoint(model, {f"module.{k}": v for k, v in src2.items()})
    assert same(model.state_dict(), src2, src2)


def test_load_checkpoint_rejects_vgg_weights_in_multi_with_hint():
    model = DeeplabMulti(num_classes=19, layers=TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    vgg = DeeplabVGG(num_classes=19).state_dict()
    with pytest.raises(CheckpointMismatchError) as e:
        load_checkpoint(model, vgg, model_name="DeeplabMulti", source="GTA2Cityscapes_vgg-ac4ac9f6.pth")
    err = e.value
    assert isinstance(err, ValueError)
    msg = str(err)
    assert msg.startswith("GTA2Cityscapes_vgg-ac4ac9f6.pth does not fit --model DeeplabMulti")
    assert "these look like DeeplabVGG weights; pass --model DeeplabVGG" in msg
    n_missing = len([k for k in before if not k.endswith("num_batches_tracked")])
    assert len(err.missing) == n_missing and len(err.unexpected) == len(vgg) == 38
    assert f"{n_missing} missing keys [conv1.weight, bn1.weight" in msg and f"({n_missing - 5} more)" in msg
    assert "38 unexpected keys [features.0.weight" in msg and "(33 more)" in msg
    assert same(model.state_dict(), before, before)


def test_load_checkpoint_other_hints():
    multi = DeeplabMulti(num_classes=19, layers=TINY)
    oracle_sd = Res_Deeplab(num_classes=19, layers=TINY).state_dict()
    with pytest.raises(CheckpointMismatchError, match="look like Oracle weights; pass --model Oracle"):
        load_checkpoint(multi, oracle_sd)
    with pytest.raises(CheckpointMismatchError, match="look like DeeplabMulti weights; pass --model DeeplabMulti"):
        load_checkpoint(Res_Deeplab(num_classes=19, layers=TINY), multi.state_dict(), model_name="Oracle")
    with pytest.raises(CheckpointMismatchError, match="this is an initialisation file.*--restore-from"):
        load_checkpoint(multi, scale_prefixed(oracle_sd))
    with pytest.raises(CheckpointMismatchError, match="discriminator weights"):
        load_checkpoint(multi, FCDiscriminator(19).state_dict())
    with pytest.raises(CheckpointMismatchError, match=r"pass --resnet-layers 1,2,1,1") as e:
        load_checkpoint(multi, DeeplabMulti(num_classes=19, layers=(1, 2, 1, 1)).state_dict(), model_name="DeepLab")
    assert e.value.missing == [] and len(e.value.unexpected) == 18
    with pytest.raises(CheckpointMismatchError, match=r"16 shape mismatches.*pass --num-classes 16") as e:
        load_checkpoint(multi, DeeplabMulti(num_classes=16, layers=TINY).state_dict())
    assert e.value.shape_mismatches[0] == (
        "layer5.conv2d_list.0.weight: checkpoint (16, 1024, 3, 3) vs model (19, 1024, 3, 3)"
    )
    one_missing = dict(multi.state_dict())
    del one_missing["layer6.conv2d_list.3.bias"]
    exact = r"^checkpoint does not fit --model DeeplabMulti: 1 missing keys \[layer6\.conv2d_list\.3\.bias\]$"
    with pytest.raises(CheckpointMismatchError, match=exact):
        load_checkpoint(multi, one_missing)


# ---- torchvision initialisation ---------------------------------------------------------------------------------


def test_torchvision_resnet101_keys_match_ours_except_fc():
    theirs = {k: tuple(v.shape) for k, v in torchvision.models.resnet101().state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in DeeplabMulti(num_classes=19).state_dict().items()}
    assert {k: s for k, s in theirs.items() if not k.startswith("fc.")} == {
        k: s for k, s in ours.items() if not k.startswith(("layer5.", "layer6."))
    }


def test_torchvision_init_resnet_backbone():
    model = DeeplabMulti(num_classes=19, layers=TINY)
    heads_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("layer5", "layer6"))}
    tv_model = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, list(TINY))
    tv = perturbed(tv_model.state_dict(), seed=9)
    report = torchvision_init(model, state_dict=tv)
    after = model.state_dict()
    backbone = [k for k in tv if not k.startswith("fc.")]
    assert same(after, tv, backbone) and same(after, heads_before, heads_before)
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"] and sorted(report.kept_init) == sorted(heads_before)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys.*resnet101 has blocks 1,1,2,1"):
        small = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 2, 1]).state_dict()
        torchvision_init(model, "resnet101", state_dict=small)
    with pytest.raises(ValueError, match="arch must be"):
        torchvision_init(model, "resnet50", state_dict=tv)


def tv_vgg16_like(seed: int) -> dict:
    """A torchvision-layout VGG-16 state_dict: features convs at torchvision's indices, a (small) fc classifier."""
    g = torch.Generator().manual_seed(seed)
    widths = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
              (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512)]
    sd = {}
    for i, cin, cout in widths:
        sd[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g)
        sd[f"features.{i}.bias"] = torch.randn(cout, generator=g)
    sd["classifier.0.weight"] = torch.zeros(2, 2)  # ignored (fc6/fc7 here are new dilated convs)
    sd["classifier.6.bias"] = torch.zeros(2)
    return sd


def test_vgg_init_from_file_and_torchvision_init(tmp_path):
    tv = tv_vgg16_like(seed=10)
    path = tmp_path / "vgg16_caffe.pth"
    torch.save(tv, path)
    ours_of_theirs = {0: 0, 2: 2, 5: 5, 7: 7, 10: 10, 12: 12, 14: 14, 17: 17, 19: 19, 21: 21, 23: 24, 25: 26, 27: 28}
    model = DeeplabVGG(num_classes=19)
    W.restore_segmentation_weights(model, str(path), "DeeplabVGG", 19)  # the training script's --restore-from rule
    after = model.state_dict()
    for ours, theirs in ours_of_theirs.items():
        assert torch.equal(after[f"features.{ours}.weight"], tv[f"features.{theirs}.weight"])
        assert torch.equal(after[f"features.{ours}.bias"], tv[f"features.{theirs}.bias"])
    fresh = DeeplabVGG(num_classes=19)
    report = torchvision_init(fresh, state_dict=tv)
    assert same(fresh.state_dict(), after, [f"features.{i}.weight" for i in ours_of_theirs])
    assert sorted(report.skipped) == ["classifier.0.weight", "classifier.6.bias"]
    assert "features.29.weight" in report.kept_init and "classifier.conv2d_list.0.weight" in report.kept_init
    del tv["features.28.bias"]
    torch.save(tv, path)
    with pytest.raises(ValueError, match=r"vgg16_caffe\.pth: not a torchvision VGG-16 state_dict.*features\.28\.bias"):
        W.restore_segmentation_weights(DeeplabVGG(num_classes=19), str(path), "DeeplabVGG", 19)
