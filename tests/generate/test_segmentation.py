"""Label maps refined by the model's own boxes (open4m.generation.segmentation)."""

import numpy as np
import pytest

from open4m.data.world import render_scene
from open4m.data.world.config import SEMSEG_CLASSES, SHAPES
from open4m.evaluation.run import load_model_and_tokenizers
from open4m.generation import TargetSpec, generate
from open4m.generation.boxes import SHIFTS, detect
from open4m.generation.segmentation import refine_with_boxes, segment
from open4m.pixels import to_model_pixels
from open4m.shipped import world_model_dir

IDS = {"cube": 3, "cylinder": 4}  # box class -> label id; 0 and 1 are background classes here


def _box(x0, y0, x1, y1, cls, score):
    return {"box": [x0, y0, x1, y1], "class": cls, "score": score}


def _labels():
    """One 8x8 map: floor (1) everywhere, a cube (3) blob in the left half, a cylinder (4) blob on the right."""
    labels = np.ones((1, 8, 8), np.int64)
    labels[0, 2:6, 1:4] = 3
    labels[0, 2:6, 5:7] = 4
    return labels


def test_a_confident_box_relabels_the_object_pixels_it_covers_and_nothing_else():
    labels = _labels()
    original = labels.copy()
    # a cylinder box over the left blob and the floor around it (x 0..4/8, y 1..7/8)
    out = refine_with_boxes(labels, [[_box(0.0, 0.125, 0.5, 0.875, "cylinder", 0.6)]], IDS)
    np.testing.assert_array_equal(labels, original)  # the input is left alone
    want = original.copy()
    want[0, 2:6, 1:4] = 4
    np.testing.assert_array_equal(out, want)  # the floor in the box and the right blob are kept
    assert out.dtype == labels.dtype


def test_the_map_keeps_its_label_against_a_box_weaker_than_its_own_vote():
    labels = _labels()
    weak = [[_box(0.0, 0.0, 0.5, 1.0, "cylinder", 0.05)]]
    np.testing.assert_array_equal(refine_with_boxes(labels, weak, IDS, pixel_weight=0.1), labels)
    np.testing.assert_array_equal(refine_with_boxes(labels, weak, IDS, pixel_weight=0.0)[0, 2:6, 1:4], 4)
    np.testing.assert_array_equal(refine_with_boxes(labels, [[]], IDS, pixel_weight=0.0), labels)  # no box, no change


def test_overlapping_boxes_vote_by_score_and_agreeing_boxes_add_up():
    labels = _labels()
    cube, cylinder = _box(0.0, 0.0, 0.5, 1.0, "cube", 0.5), _box(0.0, 0.0, 0.5, 1.0, "cylinder", 0.55)
    assert (refine_with_boxes(labels, [[cube, cylinder]], IDS, 0.0)[0, 2:6, 1:4] == 4).all()
    assert (refine_with_boxes(labels, [[cube, cylinder]], IDS, 0.1)[0, 2:6, 1:4] == 3).all()  # 0.5 + 0.1 > 0.55
    two_cubes = [cube, _box(0.0, 0.0, 0.4, 1.0, "cube", 0.3), _box(0.0, 0.0, 0.5, 1.0, "cylinder", 0.7)]
    out = refine_with_boxes(labels, [two_cubes], IDS, 0.0)
    assert (out[0, 2:6, 1:3] == 3).all() and (out[0, 2:6, 3] == 4).all()  # 0.8 vs 0.7 inside both, 0.5 vs 0.7 not


def test_a_box_covers_the_pixels_whose_centres_it_holds():
    labels = np.full((1, 4, 4), 3)
    out = refine_with_boxes(labels, [[_box(0.2, 0.0, 0.6, 1.0, "cylinder", 1.0)]], IDS)
    # centres at 0.125, 0.375, 0.625, 0.875: only column 1 lies in [0.2, 0.6)
    np.testing.assert_array_equal(out[0], np.tile([3, 4, 3, 3], (4, 1)))


def test_bad_input_is_named():
    labels = _labels()
    with pytest.raises(ValueError, match="integer maps"):
        refine_with_boxes(labels[0], [[]], IDS)
    with pytest.raises(ValueError, match="integer maps"):
        refine_with_boxes(labels.astype(float), [[]], IDS)
    with pytest.raises(ValueError, match="2 box lists for 1 label maps"):
        refine_with_boxes(labels, [[], []], IDS)
    with pytest.raises(ValueError, match="'cone' is not in class_ids"):
        refine_with_boxes(labels, [[_box(0, 0, 1, 1, "cone", 0.5)]], IDS)
    with pytest.raises(ValueError, match="no 'score'"):
        refine_with_boxes(labels, [[{"box": [0, 0, 1, 1], "class": "cube"}]], IDS)
    with pytest.raises(ValueError, match="class_ids is empty"):
        refine_with_boxes(labels, [[]], {})
    with pytest.raises(ValueError, match="pixel_weight"):
        refine_with_boxes(labels, [[]], IDS, pixel_weight=-1)


def test_segment_refines_the_models_greedy_map_by_its_detected_boxes():
    model, tokenizers = load_model_and_tokenizers(world_model_dir())
    rgb = np.stack([render_scene(10**9 + k)["rgb"] for k in range(2)])
    conditions = {"rgb@64": to_model_pixels(rgb)}
    class_ids = {shape: SEMSEG_CLASSES.index(shape) for shape in SHAPES}
    kwargs = dict(text_tokenizer=tokenizers.text, tokenizers=tokenizers.image, seed=3)
    result = segment(model, conditions, "tok_semseg@64", "det@64", class_ids=class_ids, **kwargs)
    greedy = generate(model, conditions, [TargetSpec("tok_semseg@64", steps=1, temperature=0.0)], **kwargs)
    np.testing.assert_array_equal(result.raw, greedy.decoded["tok_semseg@64"])
    boxes = detect(model, conditions, "det@64", samples=0, flip=True, shifts=SHIFTS, **kwargs)  # the default
    assert [[b["class"] for b in row] for row in result.boxes] == [[b["class"] for b in row] for row in boxes]
    np.testing.assert_array_equal(result.labels, refine_with_boxes(result.raw, result.boxes, class_ids))
    objects = np.isin(result.raw, list(class_ids.values()))
    np.testing.assert_array_equal(result.labels[~objects], result.raw[~objects])  # floor and sky kept
    with pytest.raises(ValueError, match="not a semantic segmentation"):
        segment(model, conditions, "tok_depth@64", "det@64", class_ids=class_ids, **kwargs)
