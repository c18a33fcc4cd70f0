"""Metric truths: perfect predictions score perfectly, small cases match hand computation, batches pool exactly."""

import numpy as np
import pytest

from open4m.evaluation.metrics import (
    average_precision,
    box_iou,
    class_fractions,
    depth_metrics,
    detection_map,
    histogram_agreement,
    jaccard,
    normal_metrics,
    semseg_confusion,
    semseg_miou,
)


def test_depth_perfect_and_hand_computed():
    true = np.array([[[2.0, 0.0], [4.0, 1.0]]])
    assert depth_metrics(true, true) == {"abs_rel": 0.0, "delta1": 1.0, "pixels": 3}
    pred = np.array([[[2.2, 5.0], [2.0, 1.0]]])  # sky pixel ignored; errors 0.1, 0.5, 0; ratios 1.1, 2, 1
    m = depth_metrics(true, pred)
    assert m["abs_rel"] == pytest.approx(0.2)
    assert m["delta1"] == pytest.approx(2 / 3)
    assert m["pixels"] == 3


def test_depth_zero_prediction_on_a_valid_pixel_fails_delta():
    true = np.array([[[1.0, 1.0]]])
    pred = np.array([[[0.0, 1.2]]])
    assert depth_metrics(true, pred)["delta1"] == pytest.approx(0.5)


def test_depth_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="depth"):
        depth_metrics(np.ones((1, 4, 4)), np.ones((1, 4, 5)))


def test_normals_perfect_and_hand_computed():
    true = np.zeros((1, 1, 3, 3))
    true[0, 0, 0] = (0, 0, 1)
    true[0, 0, 1] = (0, 1, 0)  # pixel 2 is sky (zero vector)
    assert normal_metrics(true, true) == pytest.approx({"angle_deg": 0.0, "within_11_25": 1.0, "pixels": 2})
    pred = np.zeros_like(true)
    pred[0, 0, 0] = (0, 0, 2)  # same direction, any length
    pred[0, 0, 1] = (1, 0, 0)  # 90 degrees off
    m = normal_metrics(true, pred)
    assert m["angle_deg"] == pytest.approx(45.0)
    assert m["within_11_25"] == pytest.approx(0.5)


def test_semseg_miou_perfect_hand_computed_and_pooled():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 6, (4, 8, 8))
    assert semseg_miou(semseg_confusion(true, true)) == 1.0
    # class 0: 1 hit, union 2 (one pixel predicted 7, outside the classes); class 1: 2 hits, union 2
    t, p = np.array([[0, 0, 1, 1]]), np.array([[0, 7, 1, 1]])
    assert semseg_miou(semseg_confusion(t, p, num_classes=2)) == pytest.approx(0.75)
    pred = rng.integers(0, 8, (4, 8, 8))
    pooled = semseg_confusion(true[:2], pred[:2]) + semseg_confusion(true[2:], pred[2:])
    assert np.array_equal(pooled, semseg_confusion(true, pred))


def test_box_iou_hand_computed():
    iou = box_iou(np.array([[0, 0, 2, 2], [0, 0, 1, 1]]), np.array([[1, 1, 3, 3], [5, 5, 6, 6]]))
    assert iou == pytest.approx(np.array([[1 / 7, 0.0], [0.0, 0.0]]))


def test_average_precision_all_point():
    assert average_precision([True, True], 2) == 1.0
    assert average_precision([False, True], 1) == pytest.approx(0.5)
    # recall 0.5 at precision 1, never more: 0.5; a missed truth counts as recall not reached
    assert average_precision([True, False, False], 2) == pytest.approx(0.5)
    assert average_precision([], 3) == 0.0
    with pytest.raises(ValueError):
        average_precision([True], 0)


def box(x0, y0, x1, y1, cls="cube"):
    return {"box": [x0, y0, x1, y1], "class": cls}


def test_map_perfect_missed_duplicate_and_false_boxes():
    truths = [[box(0.1, 0.1, 0.3, 0.3), box(0.6, 0.6, 0.9, 0.9), box(0.1, 0.5, 0.2, 0.7, "sphere")]]
    assert detection_map(truths, truths) == {"map": 1.0, "ap": {"sphere": 1.0, "cube": 1.0, "cylinder": None,
                                                                "cone": None}}
    # cube: a hit, a duplicate of it, a false box, the second cube missed -> AP 0.5; sphere missed -> AP 0
    predictions = [[box(0.1, 0.1, 0.3, 0.3), box(0.11, 0.1, 0.3, 0.3), box(0.5, 0.0, 0.55, 0.1)]]
    result = detection_map(predictions, truths)
    assert result["ap"]["cube"] == pytest.approx(0.5)
    assert result["ap"]["sphere"] == 0.0
    assert result["map"] == pytest.approx(0.25)


def test_map_ranks_by_generation_order_across_images():
    truths = [[box(0.1, 0.1, 0.3, 0.3)], [box(0.5, 0.5, 0.7, 0.7)]]
    # ranked: image 0's first (false), image 1's first (hit), image 0's second (hit)
    predictions = [[box(0.8, 0.8, 0.9, 0.9), box(0.1, 0.1, 0.3, 0.3)], [box(0.5, 0.5, 0.7, 0.7)]]
    assert detection_map(predictions, truths)["ap"]["cube"] == pytest.approx(2 / 3)
    # a box of the right place but the wrong class does not match, and an unknown class is ignored
    assert detection_map([[box(0.1, 0.1, 0.3, 0.3, "cone")], [box(0.5, 0.5, 0.7, 0.7, "boat")]], truths)["map"] == 0


def test_map_without_ground_truth_is_none_and_lengths_must_agree():
    assert detection_map([[box(0, 0, 1, 1)]], [[]])["map"] is None
    with pytest.raises(ValueError, match="images"):
        detection_map([[]], [[], []])


def test_set_and_histogram_agreement():
    assert jaccard(set(), set()) == 1.0
    assert jaccard({"cube", "cone"}, {"cube"}) == 0.5
    a = class_fractions(np.array([[0, 0, 1, 2]]))
    assert a == pytest.approx([0.5, 0.25, 0.25, 0, 0, 0])
    assert histogram_agreement(a, a) == pytest.approx(1.0)
    assert histogram_agreement(a, class_fractions(np.array([[3, 3, 3, 1]]))) == pytest.approx(0.25)


def test_map_ranks_scored_boxes_by_score_across_images():
    truths = [[box(0.1, 0.1, 0.3, 0.3)], [box(0.5, 0.5, 0.7, 0.7)]]
    false, hit0, hit1 = box(0.8, 0.8, 0.9, 0.9), box(0.1, 0.1, 0.3, 0.3), box(0.5, 0.5, 0.7, 0.7)
    # generation order puts the false box first (AP 2/3); its low score ranks it last: AP 1
    scored = [[{**false, "score": 0.2}, {**hit0, "score": 0.9}], [{**hit1, "score": 0.8}]]
    assert detection_map(scored, truths)["ap"]["cube"] == pytest.approx(1.0)
    # a high-scoring false box ranks first again
    scored[0][0]["score"] = 0.95
    assert detection_map(scored, truths)["ap"]["cube"] == pytest.approx(2 / 3)
    # scores are used only when every box has one
    del scored[1][0]["score"]
    scored[0][0]["score"] = 0.01
    assert detection_map(scored, truths)["ap"]["cube"] == pytest.approx(2 / 3)
