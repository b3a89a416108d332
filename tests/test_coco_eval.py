"""coco_eval against pycocotools used directly on the same inputs, and on hand-computed cases."""
import contextlib
import io

import numpy as np
import pytest

from mlperf_jax.input_pipelines import coco_eval

# two images (h, w) = (100, 200) and (50, 80); labels 1..3 map to COCO categories 1, 3, 7
SIZES = np.array([[100, 200], [50, 80]])
IDS = np.array([42, 7])
L2C = np.array([0, 1, 3, 7])
BOXES = np.zeros((2, 3, 4), np.float32)
BOXES[0, 0] = [0.1, 0.1, 0.5, 0.4]    # image 42: y 10..50, x 20..80
BOXES[0, 1] = [0.5, 0.5, 0.9, 0.95]   # y 50..90, x 100..190
BOXES[0, 2] = [0.0, 0.0, 0.2, 0.2]
BOXES[1, 0] = [0.2, 0.25, 0.8, 0.75]  # image 7: y 10..40, x 20..60
LABELS = np.array([[1, 2, 3], [2, 0, 0]])
NUM = np.array([3, 1])


def _gt():
    return coco_eval.ground_truth_from_arrays(IDS, SIZES, BOXES, LABELS, NUM, L2C,
                                              ["one", "three", "seven"])


def _direct(gt, dets, iou_type="bbox"):
    """pycocotools as the reference harnesses call it."""
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.coco.loadRes([dict(d) for d in dets])
        e = COCOeval(gt.coco, dt, iouType=iou_type)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats


def test_ground_truth_from_arrays_builds_pixel_boxes():
    gt = _gt()
    assert gt.image_ids == [7, 42] and gt.num_images == 2
    assert sorted(gt.coco.getCatIds()) == [1, 3, 7]
    anns = gt.coco.loadAnns(gt.coco.getAnnIds(imgIds=[42]))
    assert [a["category_id"] for a in anns] == [1, 3, 7]
    np.testing.assert_allclose(anns[0]["bbox"], [20, 10, 60, 40], atol=1e-4)
    np.testing.assert_allclose(anns[0]["area"], 2400, atol=1e-2)
    assert min(a["id"] for a in gt.coco.dataset["annotations"]) == 1
    assert gt.category_to_label == {1: 1, 3: 2, 7: 3}
    with pytest.raises(ValueError, match="labels outside"):
        coco_eval.ground_truth_from_arrays(IDS, SIZES, BOXES, LABELS + 5, NUM, L2C)


def test_detections_to_coco_converts_and_filters():
    boxes = np.zeros((2, 2, 4), np.float32)
    boxes[0, 0] = [0.1, 0.1, 0.5, 0.4]
    boxes[0, 1] = [0.5, 0.5, 0.9, 0.95]
    boxes[1, 0] = [0.2, 0.25, 0.8, 0.75]
    scores = np.array([[0.9, 0.8], [0.7, 0.6]])
    classes = np.array([[1, 2], [2, 3]])
    valid = np.array([[True, True], [True, False]])
    dets = coco_eval.detections_to_coco(IDS, boxes, scores, classes, valid, SIZES, L2C)
    assert len(dets) == 3
    assert dets[0]["image_id"] == 42 and dets[0]["category_id"] == 1
    np.testing.assert_allclose(dets[0]["bbox"], [20, 10, 60, 40], atol=1e-4)
    assert dets[1]["category_id"] == 3 and dets[2]["image_id"] == 7
    np.testing.assert_allclose(dets[2]["bbox"], [20, 10, 40, 30], atol=1e-4)
    assert isinstance(dets[0]["image_id"], int) and isinstance(dets[0]["score"], float)
    # mask drops the padded rows of a batch; no label map: classes are category ids
    masked = coco_eval.detections_to_coco(IDS, boxes, scores, classes, valid, SIZES,
                                          mask=np.array([False, True]))
    assert [(d["image_id"], d["category_id"]) for d in masked] == [(7, 2)]


def test_perfect_detections_score_one(capsys):
    gt = _gt()
    scores = np.array([[0.9, 0.8, 0.7], [0.95, 0.0, 0.0]])
    valid = np.arange(3)[None] < NUM[:, None]
    dets = coco_eval.detections_to_coco(IDS, BOXES, scores, LABELS, valid, SIZES, L2C)
    stats = coco_eval.evaluate(gt, dets)
    assert stats["mAP"] == pytest.approx(1.0)
    assert stats["AP50"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)
    assert set(stats) == set(coco_eval.STAT_NAMES)
    np.testing.assert_allclose([stats[k] for k in coco_eval.STAT_NAMES], _direct(gt, dets))
    assert capsys.readouterr().out == ""  # pycocotools' prints are swallowed


def test_partial_case_matches_pycocotools_and_hand_count():
    # one category, one image, two GT boxes; one exact detection (score 0.9), one false
    # positive elsewhere (score 0.95, ranked first)
    boxes = np.array([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]], np.float32)
    gt = coco_eval.ground_truth_from_arrays([1], [[100, 100]], boxes, [[1, 1]], [2])
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 50.0, 50.0], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [60.0, 0.0, 30.0, 30.0], "score": 0.95}]
    stats = coco_eval.evaluate(gt, [dict(d) for d in dets])
    np.testing.assert_allclose([stats[k] for k in coco_eval.STAT_NAMES], _direct(gt, dets))
    # by hand: ranked FP then TP -> precision 1/2 at recall 1/2, interpolated precision 0.5
    # at the 51 recall thresholds 0, 0.01, ..., 0.5, 0 after: AP = 0.5 * 51 / 101 at every IoU
    assert stats["mAP"] == pytest.approx(0.5 * 51 / 101)
    assert stats["AR100"] == pytest.approx(0.5)
    # the same detection slightly off: IoU 45*50/(50*50) = 0.9 -> a TP at IoU thresholds .5...9
    off = [{"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 45.0, 50.0], "score": 0.9}]
    s2 = coco_eval.evaluate(gt, off)
    assert s2["mAP"] == pytest.approx(51 / 101 * 9 / 10)  # precision 1 to recall 1/2, 9 of 10 IoUs
    np.testing.assert_allclose([s2[k] for k in coco_eval.STAT_NAMES], _direct(gt, off))


def test_zero_detections_and_unknown_images():
    gt = _gt()
    stats = coco_eval.evaluate(gt, [])
    assert stats["mAP"] == 0.0 and len(stats) == 12
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_eval.evaluate(gt, [{"image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1],
                                 "score": 0.5}])


def test_image_ids_restrict_the_evaluation():
    gt = _gt()
    # perfect on image 7 only: restricted to image 7 the score is 1, over both images less
    dets = [{"image_id": 7, "category_id": 3, "bbox": [20.0, 10.0, 40.0, 30.0], "score": 0.9}]
    assert coco_eval.evaluate(gt, [dict(d) for d in dets], image_ids=[7])["mAP"] == pytest.approx(1.0)
    assert coco_eval.evaluate(gt, [dict(d) for d in dets])["mAP"] < 1.0


def test_load_annotations(tmp_path):
    import json
    (tmp_path / "a.json").write_text(json.dumps({
        "images": [{"id": 3, "height": 10, "width": 20}],
        "annotations": [{"id": 1, "image_id": 3, "category_id": 9, "bbox": [1, 2, 3, 4],
                         "area": 12, "iscrowd": 0}],
        "categories": [{"id": 9, "name": "b"}, {"id": 2, "name": "a"}]}))
    gt = coco_eval.load_annotations(str(tmp_path / "a.json"))
    assert gt.label_to_category.tolist() == [0, 2, 9]
    dets = [{"image_id": 3, "category_id": 9, "bbox": [1, 2, 3, 4], "score": 1.0}]
    assert coco_eval.evaluate(gt, dets)["mAP"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# segm: masks in the ground truth, pasted and RLE-encoded detections
# ---------------------------------------------------------------------------------------------

def _rect(h, w, y0, x0, y1, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def _disk(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _seg_det(image_id, mask, score, category_id=1):
    from pycocotools import mask as mask_util
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return {"image_id": image_id, "category_id": category_id, "segmentation": rle,
            "score": score}


def _two_image_segm_gt():
    """Image 1 (40x40): a rectangle (rows 5..14, cols 5..24) and a disk (centre (28, 28), radius
    6); image 2 (30x30, padded to 40x40 in the mask array): a 10x10 square at rows/cols 10..19.
    One category; boxes are the masks' boxes (normalised)."""
    masks = np.zeros((2, 2, 40, 40), bool)
    masks[0, 0] = _rect(40, 40, 5, 5, 15, 25)
    masks[0, 1] = _disk(40, 40, 28, 28, 6)
    masks[1, 0, :30, :30] = _rect(30, 30, 10, 10, 20, 20)
    boxes = np.array([[[5, 5, 15, 25], [22, 22, 35, 35]], [[10, 10, 20, 20], [0, 0, 0, 0]]],
                     np.float64)
    boxes[0] /= 40.0
    boxes[1] /= 30.0
    return coco_eval.ground_truth_from_arrays([1, 2], [[40, 40], [30, 30]], boxes,
                                              [[1, 1], [1, 0]], [2, 1], masks=masks), masks


def test_ground_truth_from_arrays_with_masks():
    from pycocotools import mask as mask_util
    gt, masks = _two_image_segm_gt()
    anns = gt.coco.dataset["annotations"]
    assert [(a["id"], a["image_id"]) for a in anns] == [(1, 1), (2, 1), (3, 2)]
    expected = [masks[0, 0], masks[0, 1], masks[1, 0, :30, :30]]
    for a, m in zip(anns, expected):
        assert isinstance(a["segmentation"]["counts"], str)
        assert a["segmentation"]["size"] == list(m.shape)
        np.testing.assert_array_equal(mask_util.decode(a["segmentation"]), m.astype(np.uint8))
        assert a["area"] == m.sum()
        # the COCO index decodes it the same way (the path COCOeval's segm takes)
        np.testing.assert_array_equal(gt.coco.annToMask(a), m.astype(np.uint8))
    assert [a["area"] for a in anns] == [200.0, float(_disk(40, 40, 28, 28, 6).sum()), 100.0]
    # without masks nothing changes: no segmentation, box areas; and segm refuses such GT
    plain = _gt()
    assert all("segmentation" not in a for a in plain.coco.dataset["annotations"])
    with pytest.raises(ValueError, match="ground-truth masks"):
        coco_eval.evaluate(plain, [_seg_det(42, np.ones((100, 200)), 0.5)], iou_type="segm")
    with pytest.raises(ValueError, match="iou_type"):
        coco_eval.evaluate(plain, [], iou_type="keypoints")
    # explicit areas win over the masks' pixel counts
    gt2 = coco_eval.ground_truth_from_arrays([1], [[40, 40]], np.zeros((1, 1, 4)), [[1]], [1],
                                             areas=[[7.0]], masks=masks[:1, :1])
    assert gt2.coco.dataset["annotations"][0]["area"] == 7.0


def test_segm_map_hand_computed():
    gt, masks = _two_image_segm_gt()
    perfect = _seg_det(1, masks[0, 0], 0.9)                        # IoU 1 with the rectangle
    sixty = _seg_det(2, _rect(30, 30, 10, 10, 16, 20), 0.8)         # 60 of the 100 px: IoU 0.6
    false_pos = _seg_det(1, _rect(40, 40, 30, 0, 40, 10), 0.7)      # touches no ground truth
    dets = [perfect, sixty, false_pos]
    stats = coco_eval.evaluate(gt, [dict(d) for d in dets], iou_type="segm")
    np.testing.assert_allclose([stats[k] for k in coco_eval.STAT_NAMES],
                               _direct(gt, dets, "segm"))
    # 3 GT (rectangle, disk, square); ranked TP(1.0), (IoU .6), FP. IoU thresholds .50, .55, .60
    # (IoU >= t matches): recall 1/3, 2/3, 2/3 at precision 1, 1, 2/3 -> interpolated precision 1
    # at the 67 recall thresholds 0 .. 0.66, 0 above: 67/101. The 7 thresholds .65 .. .95:
    # recall stays 1/3 (precision 1 there) -> 34 recall thresholds 0 .. 0.33: 34/101.
    assert stats["mAP"] == pytest.approx((3 * 67 + 7 * 34) / 1010)
    assert stats["AP50"] == pytest.approx(67 / 101) and stats["AP75"] == pytest.approx(34 / 101)
    # the IoU 0.6 detection alone against its only GT: a TP at 3 of 10 thresholds -> 3/10
    only = coco_eval.evaluate(gt, [dict(sixty)], image_ids=[2], iou_type="segm")
    assert only["mAP"] == pytest.approx(0.3)


def test_segm_equals_bbox_when_masks_are_their_boxes():
    # integer pixel boxes; GT masks are the boxes' rectangles, detections pasted from all-ones
    # masks with padding 0 (exactly the box) -> mask IoUs equal box IoUs, areas equal
    sizes = np.array([[60, 80], [50, 50]])
    px = np.array([[[5, 10, 25, 40], [30, 30, 55, 70]], [[0, 0, 20, 20], [0, 0, 0, 0]]], float)
    norm = px / np.concatenate([sizes, sizes], 1)[:, None, :]
    labels, num = np.array([[1, 2], [2, 0]]), np.array([2, 1])
    masks = np.zeros((2, 2, 60, 80), bool)
    for i in range(2):
        for j in range(num[i]):
            masks[i, j] = _rect(60, 80, *px[i, j].astype(int))
    l2c = np.array([0, 5, 9])
    gt = coco_eval.ground_truth_from_arrays([11, 12], sizes, norm, labels, num, l2c,
                                            masks=masks)
    det_px = np.array([[[6, 10, 25, 41], [30, 35, 50, 70], [0, 0, 30, 30]],
                       [[2, 1, 21, 20], [10, 10, 30, 30], [0, 0, 0, 0]]], float)
    det = det_px / np.concatenate([sizes, sizes], 1)[:, None, :]
    scores = np.array([[0.9, 0.8, 0.3], [0.7, 0.6, 0.0]])
    classes = np.array([[1, 2, 1], [2, 2, 1]])
    valid = np.array([[True, True, True], [True, True, False]])
    ones = np.ones((2, 3, 28, 28), np.float32)
    bb = coco_eval.detections_to_coco([11, 12], det, scores, classes, valid, sizes, l2c)
    sg = coco_eval.segmentations_to_coco([11, 12], det, scores, classes, valid, ones, sizes,
                                         l2c, padding=0)
    s_bb = coco_eval.evaluate(gt, bb)
    s_sg = coco_eval.evaluate(gt, sg, iou_type="segm")
    assert 0.1 < s_bb["mAP"] < 1.0
    for k in coco_eval.STAT_NAMES:
        assert s_sg[k] == pytest.approx(s_bb[k], abs=1e-12), k


def test_segmentations_to_coco():
    from pycocotools import mask as mask_util
    from mlperf_jax.input_pipelines.instance_masks import paste_masks
    ids, sizes = np.array([42, 7]), np.array([[100, 200], [50, 80]])
    boxes = np.zeros((2, 2, 4))
    boxes[0, 0] = [0.1, 0.1, 0.5, 0.4]       # image 42: rows 10..49, cols 20..79
    boxes[0, 1] = [0.5, 0.5, 0.9, 0.95]
    boxes[1, 0] = [0.2, 0.25, 0.8, 0.75]     # image 7: rows 10..39, cols 20..59
    scores = np.array([[0.9, 0.8], [0.7, 0.6]])
    classes = np.array([[1, 2], [3, 1]])
    valid = np.array([[True, False], [True, True]])
    masks = np.ones((2, 2, 28, 28), np.float32)
    masks[1, 1] = 0.2                         # below the threshold everywhere: an empty mask
    dets = coco_eval.segmentations_to_coco(ids, boxes, scores, classes, valid, masks, sizes, L2C)
    assert [(d["image_id"], d["category_id"], d["score"]) for d in dets] == [
        (42, 1, 0.9), (7, 7, 0.7), (7, 1, 0.6)]   # labels 1, 3, 1 -> categories 1, 7, 1
    assert set(dets[0]) == {"image_id", "category_id", "segmentation", "score"}
    assert all(isinstance(d["segmentation"]["counts"], str) for d in dets)
    m0 = mask_util.decode(dets[0]["segmentation"])
    assert m0.shape == (100, 200)
    # the box's pixels within the padding=1 edge behaviour (each edge within one pixel) ...
    rows, cols = np.nonzero(m0.any(1))[0], np.nonzero(m0.any(0))[0]
    assert abs(rows[0] - 10) <= 1 and abs(rows[-1] - 49) <= 1
    assert abs(cols[0] - 20) <= 1 and abs(cols[-1] - 79) <= 1
    # (bilinear products of two edge weights can drop a corner pixel of the rectangle)
    full = len(rows) * len(cols)
    assert m0[11:49, 21:79].all() and full - 4 <= m0.sum() <= full
    # ... exactly paste_masks on the pixel box; padding 0: exactly the box
    np.testing.assert_array_equal(
        m0, paste_masks(masks[0, :1], np.array([[10, 20, 50, 80]]), 100, 200)[0])
    m1 = mask_util.decode(dets[1]["segmentation"])
    np.testing.assert_array_equal(
        m1, paste_masks(masks[1, :1], np.array([[10, 20, 40, 60]]), 50, 80)[0])
    assert not mask_util.decode(dets[2]["segmentation"]).any()
    exact = coco_eval.segmentations_to_coco(ids, boxes, scores, classes, valid, masks, sizes,
                                            L2C, padding=0)
    np.testing.assert_array_equal(mask_util.decode(exact[0]["segmentation"])[10:50, 20:80], 1)
    assert mask_util.decode(exact[0]["segmentation"]).sum() == 40 * 60
    # padded batch rows dropped; no label map: classes are category ids; nothing valid: []
    masked = coco_eval.segmentations_to_coco(ids, boxes, scores, classes, valid, masks, sizes,
                                             mask=np.array([False, True]))
    assert [(d["image_id"], d["category_id"]) for d in masked] == [(7, 3), (7, 1)]
    assert coco_eval.segmentations_to_coco(ids, boxes, scores, classes, valid & False, masks,
                                           sizes, L2C) == []
