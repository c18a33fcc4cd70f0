"""Captions are parsed back with the library's parser (open4m.evaluation.captions, the grammar documented in
open4m.data.world.captions) and checked against the scene graph and the rendered instance map: every statement
must be true of the image."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from open4m.data.world import COLORS, MATERIALS, SHAPES, SIZES, WorldConfig, render_scene
from open4m.evaluation.captions import SceneTruth, parse_caption, score_caption

MARGIN = WorldConfig().relation_margin
RELATION_WORDS = (" left of ", " right of ", " in front of ", " behind ")


def camera_frame(scene: dict) -> np.ndarray:
    """Object centres in the camera frame (x right, y up, z toward the viewer), recomputed here."""
    cam = scene["camera"]
    pos, target = np.array(cam["position"]), np.array(cam["target"])
    forward = (target - pos) / np.linalg.norm(target - pos)
    right = np.array([-forward[2], 0.0, forward[0]]) / np.hypot(forward[0], forward[2])
    up = np.cross(right, forward)
    rel = np.array([o["position"] for o in scene["objects"]]) - pos
    return np.stack([rel @ right, rel @ up, -(rel @ forward)], axis=-1)


def check_caption(sample: dict) -> dict:
    """Every statement of the caption holds for the objects visible in the instance map (relations by the
    margin, in a camera frame recomputed here); returns how many nouns and relations were checked."""
    scene = sample["scene"]
    visible = [k - 1 for k in range(1, len(scene["objects"]) + 1) if (sample["instance"] == k).any()]
    truth = SceneTruth([scene["objects"][i] for i in visible], camera_frame(scene)[visible])
    facts = parse_caption(sample["caption"])
    scores = score_caption(facts, truth, margin=MARGIN)
    for name, (correct, stated) in scores.items():
        assert correct == stated, f"{name}: {correct} of {stated} true in: {sample['caption']}"
    assert facts.count == len(visible), sample["caption"]
    assert sample["caption"].lower().count(" is ") >= len(facts.relations)
    return {"relations": len(facts.relations), "nouns": len(facts.mentions)}


@pytest.mark.parametrize("block", range(4))
def test_captions_are_true_of_their_images(block):
    totals = {"relations": 0, "nouns": 0}
    for seed in range(block * 40, block * 40 + 40):
        found = check_caption(render_scene(seed))
        for key in totals:
            totals[key] += found[key]
    assert totals["relations"] > 40 and totals["nouns"] > 80


def test_captions_are_rich_and_varied():
    captions = [render_scene(seed)["caption"].lower() for seed in range(200, 300)]
    text = " ".join(captions)
    for word in [*SHAPES, *COLORS, *SIZES, *MATERIALS, "left of", "right of", "in front of", "behind"]:
        assert word in text, f"no caption mentions {word!r}"
    assert len(set(captions)) == len(captions)
    openings = {c.split()[0] for c in captions}
    assert len(openings) >= 4, "several phrasings"
    assert sum(len(parse_caption(c).relations) for c in captions) > 100


def test_every_relation_sentence_is_parsed():
    """Guards the parser: each sentence with a relation word yields exactly one relation."""
    for seed in range(300, 340):
        caption = render_scene(seed)["caption"].lower()
        for sentence in caption.split(". "):
            if any(w in sentence for w in RELATION_WORDS):
                assert len(parse_caption(sentence).relations) == 1, sentence


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(min_value=0, max_value=10**9 + 2 * 10**6 - 1))
def test_captions_hold_for_any_seed(seed):
    check_caption(render_scene(seed))


def test_lists_name_the_objects_left_to_right_in_the_image():
    """A full list names the visible objects in the order of their centres' horizontal image position, which
    is also the order of their boxes' centres in all but the most occluded cases."""
    checked = in_box_order = 0
    for seed in range(400, 460):
        sample = render_scene(seed)
        facts = parse_caption(sample["caption"])
        items = [m for m in facts.items if not m.exact]  # "a <size> <colour> <material> <shape>" items
        if len(items) < 2:
            continue
        by_box = sorted(sample["det"], key=lambda d: d["box"][0] + d["box"][2])
        objects = [sample["scene"]["objects"][int(d["instance"]) - 1] for d in by_box]
        named = [(m.size, m.color, m.material, m.shape) for m in items]
        truth = [(o["size"], o["color"], o["material"], o["shape"]) for o in objects]
        agree = sum(n == t for n, t in zip(named, truth, strict=True))
        assert agree >= len(named) - 2, (sample["caption"], by_box)  # at most one pair swapped
        checked += 1
        in_box_order += agree == len(named)
    assert checked >= 15 and in_box_order >= 0.9 * checked


def test_count_sentence_states_the_count_in_each_template():
    from open4m.data.world.captions import COUNT_TEMPLATES, count_sentence

    assert count_sentence(3) == "There are three objects."
    assert count_sentence(1) == "There is one object."
    assert count_sentence(0) == "There are no objects."
    for template in range(len(COUNT_TEMPLATES)):
        for n in (0, 1, 2, 7):
            assert parse_caption(count_sentence(n, template)).count == n
    with pytest.raises(ValueError, match="counts 0-12, got 13"):
        count_sentence(13)
