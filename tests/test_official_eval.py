"""Cross-check with the Cityscapes benchmark's own evaluator (``cityscapesscripts``): its per-class IoUs on generated
data equal compute_iou.py's. Skipped only when the package is not installed."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import compute_iou
from tools.make_synthetic_data import make_synthetic_datasets

official = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
cs_labels = pytest.importorskip("cityscapesscripts.helpers.labels")


def test_per_class_iou_equals_the_official_evaluator(tmp_path, monkeypatch):
    paths = make_synthetic_datasets(tmp_path / "data", num_source=1, num_target_train=1, num_val=6,
                                    target_size=(80, 40), seed=5)
    info = json.loads((Path(paths.devkit_dir) / "info.json").read_text())
    label2train = dict((a, b) for a, b in info["label2train"])
    train2label = {}
    for label_id, train_id in info["label2train"]:  # the first labelId of each class
        if train_id < 19 and label_id >= 0:
            train2label.setdefault(train_id, label_id)
    names = Path(paths.devkit_dir, "val.txt").read_text().split()
    gts = Path(paths.devkit_dir, "label.txt").read_text().split()
    rng = np.random.default_rng(0)
    pred_dir, official_dir = tmp_path / "pred", tmp_path / "pred_labelids"
    pred_dir.mkdir()
    official_dir.mkdir()
    pred_files, gt_files = [], []
    for name, gt_name in zip(names, gts):
        gt = np.array(Image.open(Path(paths.gt_dir) / gt_name))
        # a prediction that is partly right: the true class, or a random one on a third of the pixels
        pred = np.array([label2train.get(int(v), 255) for v in gt.ravel()], dtype=np.uint8).reshape(gt.shape)
        pred[pred == 255] = rng.integers(0, 19, int((pred == 255).sum()))
        noisy = rng.random(gt.shape) < 0.33
        pred[noisy] = rng.integers(0, 19, int(noisy.sum()))
        base = name.split("/")[-1]
        Image.fromarray(pred).save(pred_dir / base)
        as_label_ids = np.vectorize(train2label.get)(pred).astype(np.uint8)
        Image.fromarray(as_label_ids).save(official_dir / base)
        pred_files.append(str(official_dir / base))
        gt_files.append(str(Path(paths.gt_dir) / gt_name))

    with contextlib.redirect_stdout(io.StringIO()):
        ours = compute_iou.compute_mIoU(str(paths.gt_dir), str(pred_dir), str(paths.devkit_dir), progress=False)

    args = official.args
    monkeypatch.setattr(args, "evalInstLevelScore", False)  # its instance part crashes on NumPy >= 2.4
    monkeypatch.setattr(args, "quiet", True)
    monkeypatch.setattr(args, "JSONOutput", False)
    monkeypatch.setattr(args, "evalPixelAccuracy", False)
    with contextlib.redirect_stdout(io.StringIO()):
        result = official.evaluateImgLists(pred_files, gt_files, args)
    scores = result["classScores"]
    for train_id in range(19):
        theirs = scores[cs_labels.trainId2label[train_id].name]
        if np.isnan(ours[train_id]):
            assert np.isnan(theirs), train_id
        else:
            assert theirs == pytest.approx(ours[train_id], abs=1e-12), train_id
    assert np.sum(~np.isnan(ours)) >= 8  # the generated scenes cover many classes
