"""utils/metrics.py: the confusion matrix, IoU, label mapping and the printed lines, against hand-worked numbers and
straightforward re-implementations written here."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from dataset.labels import LABEL2TRAIN, load_info
from utils.metrics import (
    MetricsError,
    evaluate_pair,
    fast_hist,
    format_iou_lines,
    format_progress_line,
    format_skip_line,
    label_mapping,
    label_mapping_lut,
    mean_iu,
    per_class_iu,
    read_label_png,
    result_dict,
)

# A tiny example worked out by hand: 2 classes, one 3x3 image, 255 = ignore.
GT = np.array([[0, 0, 0], [0, 1, 1], [255, 1, 1]], dtype=np.uint8)
PRED = np.array([[0, 0, 1], [1, 1, 1], [0, 1, 0]], dtype=np.uint8)
# (gt, pred) pairs: row 0: (0,0) (0,0) (0,1); row 1: (0,1) (1,1) (1,1); row 2: ignored, (1,1) (1,0)
HAND_HIST = np.array([[2, 2], [1, 3]])
# class 0: 2 / (4 + 3 - 2) = 0.4; class 1: 3 / (4 + 5 - 3) = 0.5
HAND_IOU = np.array([0.4, 0.5])


def test_hand_worked_confusion_matrix_and_iou():
    hist = fast_hist(GT.flatten(), PRED.flatten(), 2)
    np.testing.assert_array_equal(hist, HAND_HIST)
    assert hist.dtype == np.int64
    np.testing.assert_allclose(per_class_iu(hist), HAND_IOU)
    assert mean_iu(per_class_iu(hist)) == pytest.approx(0.45)
    assert format_iou_lines(per_class_iu(hist), ["a", "b"]) == ["===>a:\t40.0", "===>b:\t50.0", "===> mIoU: 45.0"]
    # the same through the wider-dtype path
    np.testing.assert_array_equal(fast_hist(GT.astype(np.int32), PRED.astype(np.int64), 2), HAND_HIST)


def test_absent_class_is_nan_and_ignored_by_the_mean():
    hist = fast_hist(GT.flatten(), PRED.flatten(), 3)  # class 2 appears nowhere
    ious = per_class_iu(hist)
    assert math.isnan(ious[2])
    assert format_iou_lines(ious, ["a", "b", "c"]) == ["===>a:\t40.0", "===>b:\t50.0", "===>c:\tnan",
                                                      "===> mIoU: 45.0"]
    assert math.isnan(mean_iu(np.array([np.nan, np.nan])))
    assert format_iou_lines([np.nan], ["a"])[-1] == "===> mIoU: nan"


def test_prediction_out_of_range_on_labelled_pixels_is_an_error():
    pred = PRED.copy()
    pred[0, 0] = 19
    pred[1, 1] = 255
    with pytest.raises(MetricsError, match=r"pred\.png: prediction values outside \[0, 2\).*19, 255"):
        fast_hist(GT, pred, 2, name="pred.png")
    with pytest.raises(MetricsError, match="19, 255"):
        fast_hist(GT.astype(np.int64), pred.astype(np.int64), 2)
    neg = PRED.astype(np.int64)
    neg[0, 0] = -3
    with pytest.raises(MetricsError, match="-3"):
        fast_hist(GT, neg, 2)
    # a value out of range where the ground truth is ignored does not count and is allowed
    ok = PRED.copy()
    ok[2, 0] = 255
    np.testing.assert_array_equal(fast_hist(GT, ok, 2), HAND_HIST)


def test_shape_and_dtype_checks():
    with pytest.raises(MetricsError, match="sizes differ"):
        fast_hist(GT, PRED[:2], 2)
    with pytest.raises(MetricsError, match="integer"):
        fast_hist(GT, PRED.astype(np.float32), 2)
    with pytest.raises(MetricsError, match=r"size mismatch: p\.png is 2x3 \(WxH\) but its ground truth g\.png is 3x3"):
        evaluate_pair(GT, PRED[:, :2], np.arange(256), [], 2, "g.png", "p.png")


def _reference_hist(gt: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """Pixel by pixel, the definition."""
    hist = np.zeros((n, n), dtype=np.int64)
    for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist()):
        if 0 <= g < n:
            hist[g, p] += 1
    return hist


@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_fast_hist_matches_the_definition(dtype):
    rng = np.random.default_rng(1)
    gt = rng.choice([0, 1, 2, 3, 4, 18, 19, 100, 255], size=(17, 23)).astype(dtype)
    pred = rng.integers(0, 19, size=(17, 23)).astype(dtype)
    np.testing.assert_array_equal(fast_hist(gt, pred, 19), _reference_hist(gt, pred, 19))


def test_label_mapping_is_the_originals():
    info = load_info()
    lut = label_mapping_lut(info["label2train"])
    assert lut[7] == 0 and lut[8] == 1 and lut[33] == 18 and lut[0] == 255 and lut[34] == 34 and lut[200] == 200
    # on every value that counts ([0, 19) after mapping), the same as the shared 255-default table
    counted = (lut >= 0) & (lut < 19)
    np.testing.assert_array_equal(lut[counted], LABEL2TRAIN[counted])
    assert np.all(LABEL2TRAIN[~counted] == 255)
    # the original's per-id passes, written out here, on an image holding every value
    img = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = img.astype(np.int64).copy()
    for label_id, train_id in info["label2train"]:
        expected[img == label_id] = train_id
    np.testing.assert_array_equal(label_mapping(img, info["label2train"]), expected)
    np.testing.assert_array_equal(label_mapping(img.astype(np.int32), info["label2train"]), expected)
    # a later entry for the same id wins; an unlisted id is kept
    np.testing.assert_array_equal(label_mapping_lut([[3, 1], [3, 0]])[[2, 3]], [2, 0])


def test_evaluate_pair_maps_labelids():
    info = load_info()
    lut = label_mapping_lut(info)
    gt = np.array([[7, 8, 0], [26, 33, 34]], dtype=np.uint8)  # road, sidewalk, unlabeled, car, bicycle, (34)
    pred = np.array([[0, 0, 5], [13, 18, 200]], dtype=np.uint8)  # 200 sits on gt 34: not counted, allowed
    hist = evaluate_pair(gt, pred, lut, info["label2train"], 19)
    expected = np.zeros((19, 19), dtype=np.int64)
    expected[0, 0] = 1
    expected[1, 0] = 1
    expected[13, 13] = 1
    expected[18, 18] = 1
    np.testing.assert_array_equal(hist, expected)
    np.testing.assert_array_equal(
        evaluate_pair(gt.astype(np.int32), pred.astype(np.int32), lut, info["label2train"], 19), expected)


def test_printed_lines_are_the_originals_expressions():
    rng = np.random.default_rng(0)
    ious = np.concatenate([rng.random(16), [0.12345, 0.865, np.nan]])
    names = [f"c{i}" for i in range(19)]
    expected = ["===>" + names[i] + ":\t" + str(round(ious[i] * 100, 2)) for i in range(19)]
    expected.append("===> mIoU: " + str(round(np.nanmean(ious) * 100, 2)))
    assert format_iou_lines(ious, names) == expected
    # round() of a NumPy float (what the original rounds) is np.round: 12.345 -> 12.34 (Python's float round
    # would give 12.35). The original's numbers, not Python's, are the reference.
    assert format_iou_lines(ious, names)[16] == "===>c16:\t12.34"
    hist = np.array([[2, 2], [1, 3]])
    assert format_progress_line(10, 500, hist) == "10 / 500: 45.00"
    assert format_progress_line(20, 500, np.zeros((2, 2))) == "20 / 500: nan"
    assert format_skip_line(6, 4, "g.png", "p.png") == "Skipping: len(gt) = 6, len(pred) = 4, g.png, p.png"


def test_result_dict_is_json_ready():
    hist = fast_hist(GT, PRED, 3)
    d = result_dict(hist, ["a", "b", "c"], 1, extra_key="x")
    assert d["per_class_iou"] == {"a": pytest.approx(0.4), "b": pytest.approx(0.5), "c": None}
    assert d["mIoU"] == pytest.approx(0.45)
    assert d["num_images"] == 1 and d["extra_key"] == "x"
    assert d["confusion_matrix"] == [[2, 2, 0], [1, 3, 0], [0, 0, 0]]


def test_read_label_png_errors(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(GT).save(good)
    np.testing.assert_array_equal(read_label_png(good), GT)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(MetricsError, match="truncated.png"):
        read_label_png(truncated, "prediction")
    with pytest.raises(MetricsError, match="prediction not found: .*nothere.png"):
        read_label_png(tmp_path / "nothere.png", "prediction")
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(rgb)
    with pytest.raises(MetricsError, match="rgb.png has 3 channels"):
        read_label_png(rgb, "prediction")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png at all")
    with pytest.raises(MetricsError, match="junk.png"):
        read_label_png(junk)


def test_many_bad_prediction_values_are_listed_then_counted():
    gt = np.zeros((1, 14), dtype=np.uint8)
    pred = np.arange(2, 16, dtype=np.uint8)[None]  # 14 values outside [0, 2): 10 listed, then the rest counted
    with pytest.raises(MetricsError, match=r": 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, \.\.\. and 4 more \(predictions"):
        fast_hist(gt, pred, 2)


def test_ignore_other_classes_against_a_hand_computed_matrix():
    """Two protocols for a class subset, by hand. Classes a, b, c; the subset keeps a and b. Pixels (gt -> pred):
    a->a, a->a, a->c, b->b, c->a, c->b, c->c. Counting c's ground truth (the default): a: TP 2, row 3, column 3 ->
    2/4; b: TP 1, row 1, column 2 -> 1/2; mIoU over {a, b} = 0.5. Ignoring c's ground truth: a: column 2 -> 2/3; b:
    column 1 -> 1/1; mIoU = 5/6. The a->c pixel (a prediction of the left-out class) counts against a in both."""
    from dataset.labels import CLASS_NAMES
    from utils.metrics import ignore_other_classes

    gt = np.array([[0, 0, 0, 1, 2, 2, 2]], dtype=np.uint8)
    pred = np.array([[0, 0, 2, 1, 0, 1, 2]], dtype=np.uint8)
    hist = fast_hist(gt, pred, 3)
    np.testing.assert_array_equal(hist, [[2, 0, 1], [0, 1, 0], [1, 1, 1]])
    np.testing.assert_allclose(per_class_iu(hist)[:2], [2 / 4, 1 / 2])
    # the same pixels as devkit classes: a, b, c = road, sidewalk, terrain (terrain is outside the 16 and 13 subsets)
    names = ["road", "sidewalk", "terrain"]
    full = np.zeros((19, 19), dtype=np.int64)
    idx = [CLASS_NAMES.index(n) for n in names]
    full[np.ix_(idx, idx)] = hist
    kept = ignore_other_classes(full, CLASS_NAMES, 16)
    np.testing.assert_array_equal(kept[np.ix_(idx, idx)], [[2, 0, 1], [0, 1, 0], [0, 0, 0]])
    assert full[idx[2]].sum() == 3  # the input is not changed
    np.testing.assert_allclose(per_class_iu(kept)[idx[:2]], [2 / 3, 1 / 1])
    assert mean_iu(per_class_iu(full)[idx[:2]]) == pytest.approx(0.5)
    assert mean_iu(per_class_iu(kept)[idx[:2]]) == pytest.approx(5 / 6)
