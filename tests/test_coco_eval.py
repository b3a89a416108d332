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


def _direct(gt, dets):
    """pycocotools as the reference harnesses call it."""
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.coco.loadRes([dict(d) for d in dets])
        e = COCOeval(gt.coco, dt, iouType="bbox")
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
