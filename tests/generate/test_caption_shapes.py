"""ShapesFromBoxes: the shape words a world caption may write next, from the model's boxes."""

import pytest

from open4m.data.world.config import COLORS, SHAPES
from open4m.generation.caption_shapes import (
    RELATION_WORDS,
    ShapesFromBoxes,
    boxes_left_to_right,
    classes_by_vote,
    groups_left_to_right,
)
from open4m.shipped import world_tokenizers_dir
from open4m.text import TextTokenizer


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer.load(world_tokenizers_dir() / "text")


def _box(x0: float, shape: str) -> dict:
    return {"box": [x0, 10.0, x0 + 8.0, 20.0], "class": shape, "score": 1.0}


# boxes given out of order: left to right they are sphere, cylinder, sphere, cube
BOXES = [_box(40, "cube"), _box(0, "sphere"), _box(20, "cylinder"), _box(30, "sphere")]


def _allowed(rule, tok, text, prompt=0):
    banned = {tok.id_to_token(i) for i in rule(prompt, tok.encode(text))}
    return set(SHAPES) - banned


def test_boxes_are_ordered_left_to_right_by_their_centres():
    assert boxes_left_to_right(BOXES) == ["sphere", "cylinder", "sphere", "cube"]
    assert groups_left_to_right(boxes_left_to_right(BOXES)) == ["sphere", "cylinder", "cube"]
    assert boxes_left_to_right([]) == []


def test_the_fused_decodes_vote_each_boxs_class():
    greedy = [_box(0, "cube"), _box(20, "cone")]
    fused = [{"box": [0.0, 10.0, 8.0, 19.0], "class": "cylinder", "score": 0.6},
             {"box": [0.0, 10.0, 8.0, 20.0], "class": "cube", "score": 0.3},
             {"box": [0.5, 10.0, 8.0, 20.0], "class": "cube", "score": 0.2},
             {"box": [50.0, 10.0, 58.0, 20.0], "class": "sphere", "score": 1.0}]
    voted = classes_by_vote(greedy, fused)
    assert [b["class"] for b in voted] == ["cylinder", "cone"]  # 0.6 against 0.5; the cone has no overlap
    assert voted[0]["box"] == greedy[0]["box"] and greedy[0]["class"] == "cube"  # placed as given, not changed
    assert [b["class"] for b in classes_by_vote(greedy, fused[1:])] == ["cube", "cone"]


def test_a_full_list_takes_each_objects_shape_from_the_box_it_has_reached(tok):
    rule = ShapesFromBoxes(tok, [BOXES], SHAPES)
    opening = "There are four objects. We can see "
    assert _allowed(rule, tok, opening + "a large red shiny") == {"sphere"}
    assert _allowed(rule, tok, opening + "a large red shiny cube, a small") == {"cylinder"}
    assert _allowed(rule, tok, opening + "a large red shiny cube, a small blue matte cone and an") == {"sphere"}
    four = opening + "a red cube, a blue cone, a gray sphere and a"
    assert _allowed(rule, tok, four) == {"cube"}
    assert _allowed(rule, tok, four + " green cube and a") == set(SHAPES)  # more objects listed than boxes


def test_a_by_shape_list_takes_its_groups_in_the_order_of_their_leftmost_box(tok):
    rule = ShapesFromBoxes(tok, [BOXES], SHAPES)
    assert _allowed(rule, tok, "We can see two") == {"sphere"}
    assert _allowed(rule, tok, "We can see two spheres, one") == {"cylinder"}
    assert _allowed(rule, tok, "On the floor are two spheres, one cylinder and one") == {"cube"}
    assert _allowed(rule, tok, "We can see two spheres, one cylinder, one cube and one") == set(SHAPES)


def test_a_relation_names_the_shape_of_a_listed_object_with_its_attributes(tok):
    rule = ShapesFromBoxes(tok, [BOXES], SHAPES)
    listed = ("We can see a large red shiny sphere, a small blue matte cylinder, a small red matte sphere and a gray "
              "cube. ")
    assert _allowed(rule, tok, listed + "The blue") == {"cylinder"}
    assert _allowed(rule, tok, listed + "The small red") == {"sphere"}
    assert _allowed(rule, tok, listed + "The gray cube is to the left of the small") == {"cylinder", "sphere"}
    # an attribute no listed object has: any shape the boxes show
    assert _allowed(rule, tok, listed + "The green") == {"sphere", "cylinder", "cube"}
    assert _allowed(rule, tok, "We can see two spheres. The red") == {"sphere", "cylinder", "cube"}


def test_prompts_without_boxes_and_other_positions_are_left_free(tok):
    rule = ShapesFromBoxes(tok, [BOXES, []], SHAPES)
    assert rule(1, tok.encode("We can see a large red shiny")) == []
    assert rule(0, tok.encode("We can see a large red shiny cube")) == []  # after the shape: nothing to keep
    assert rule(0, tok.encode("The scene shows four objects. There")) == []


def test_bad_rules_are_named(tok):
    with pytest.raises(ValueError, match=r"box classes \['torus'\] are not among the shapes"):
        ShapesFromBoxes(tok, [[_box(0, "torus")]], SHAPES)
    with pytest.raises(ValueError, match="shape 'cubes' is 2 tokens of the text tokenizer, expected one"):
        ShapesFromBoxes(tok, [BOXES], ["cubes"])


def test_a_relation_phrase_keeps_to_attributes_of_listed_objects(tok):
    rule = ShapesFromBoxes(tok, [BOXES], SHAPES)
    listed = "We can see a large red shiny sphere, a small blue matte cylinder and a small red matte sphere. "
    assert rule.banned_attributes(0, rule._words(tok.encode(listed + "The"))) == [
        "gray", "green", "brown", "purple", "cyan", "yellow"]  # red and blue objects, both sizes and materials
    # "the small ...": a small blue matte or small red matte object; no second size ("the small large ...")
    assert set(rule.banned_attributes(0, rule._words(tok.encode(listed + "The small")))) == {
        "gray", "green", "brown", "purple", "cyan", "yellow", "shiny", "small", "large"}
    banned = {tok.id_to_token(i) for i in rule(0, tok.encode(listed + "The red"))}
    # two red spheres, of either size and material: the material says which (a size no longer can, it comes
    # before the colour); no shape and no full stop before it
    assert banned - set(COLORS) == {*SHAPES, "small", "large", "."}
    banned = {tok.id_to_token(i) for i in rule(0, tok.encode(listed + "The red shiny"))}
    assert banned == {"cylinder", "cube", "cone", "small", "large", "shiny", "matte", ".", *COLORS}
    banned = {tok.id_to_token(i) for i in rule(0, tok.encode(listed + "The blue"))}
    assert banned == {"sphere", "cube", "cone", "small", "large", "shiny", ".", *COLORS}
    # outside relation phrases, after a by-shape list, or once the phrase fits nothing listed: nothing banned
    assert rule.banned_attributes(0, rule._words(tok.encode("We can see a"))) == []
    assert rule.banned_attributes(0, rule._words(tok.encode("We can see two spheres. The"))) == []
    assert rule.banned_attributes(0, rule._words(tok.encode(listed + "The green"))) == []


def test_the_second_object_of_a_relation_lies_on_the_side_the_relation_says(tok):
    rule = ShapesFromBoxes(tok, [BOXES], SHAPES)
    listed = ("We can see a large red shiny sphere, a small blue matte cylinder, a small red matte sphere and a gray "
              "cube. ")  # left to right

    def named(text):
        return _allowed(rule, tok, listed + text)

    # "sphere" alone would name both spheres: a phrase says more first
    assert named("The blue cylinder is to the left of the") == {"cube"}  # the objects to its right
    assert named("The blue cylinder is to the left of the small") == {"sphere"}
    assert named("The blue cylinder is right of the") == set()  # the large red shiny sphere: no shape yet
    assert named("The blue cylinder is right of the large") == {"sphere"}
    assert named("The gray cube is left of the") == {"cylinder"}  # none to its right: any other
    assert named("The blue cylinder is behind the") == {"cube"}  # no box lower in the image: any other
    assert named("The red sphere is left of the") == {"cylinder", "cube"}  # two red spheres: not one object
    assert rule.banned_attributes(0, rule._words(tok.encode(listed + "The blue cylinder is right of the"))) == [
        "gray", "blue", "green", "brown", "purple", "cyan", "yellow", "small", "matte"]



def test_a_list_opening_with_the_image_contains_is_a_list_not_a_relation(tok):
    rule = ShapesFromBoxes(tok, [BOXES], SHAPES)
    opening = "There are four objects. The image contains "
    assert _allowed(rule, tok, opening + "a large red shiny") == {"sphere"}
    assert _allowed(rule, tok, opening + "a large red shiny sphere, a small") == {"cylinder"}
    listed = opening + "a large red shiny sphere, a small blue matte cylinder, a red sphere and a gray cube. "
    assert _allowed(rule, tok, listed + "The gray cube is behind the blue") == {"cylinder"}  # a listed object


def test_a_relation_already_stated_is_not_stated_again(tok):
    rule = ShapesFromBoxes(tok, [BOXES], SHAPES)
    listed = ("We can see a large red shiny sphere, a small blue matte cylinder, a small red matte sphere and a gray "
              "cube. ")
    said = "The blue cylinder is to the left of the gray cube. "
    assert _allowed(rule, tok, listed + said + "The blue cylinder is left of the small") == {"sphere"}
    assert _allowed(rule, tok, listed + said + "The blue cylinder is left of the") == set()  # only "sphere" is left
    words = rule._words(tok.encode(listed + said + "The blue cylinder is left of the"))
    assert "gray" in rule.banned_attributes(0, words) and "small" not in rule.banned_attributes(0, words)
    assert _allowed(rule, tok, listed + said + "The blue cylinder is behind the") == {"cube"}  # another kind
    both = said + "The blue cylinder is left of the small red sphere. "
    assert _allowed(rule, tok, listed + both + "The blue cylinder is left of the") == {"cube"}  # all said


def test_in_front_of_and_behind_follow_the_bottom_edges_of_the_boxes(tok):
    # left to right: a sphere near the camera (lowest in the image), a cylinder far away, a cube between
    boxes = [{"box": [0.0, 10.0, 8.0, 30.0], "class": "sphere"}, {"box": [20.0, 5.0, 28.0, 15.0], "class": "cylinder"},
             {"box": [40.0, 10.0, 48.0, 25.0], "class": "cube"}]
    rule = ShapesFromBoxes(tok, [boxes], SHAPES)
    listed = "We can see a red sphere, a blue cylinder and a gray cube. "

    def named(text):
        return _allowed(rule, tok, listed + text)

    assert named("The red sphere is in front of the") == {"cylinder", "cube"}
    assert named("The gray cube is in front of the") == {"cylinder"}
    assert named("The gray cube is behind the") == {"sphere"}
    assert named("The blue cylinder is in front of the") == {"sphere", "cube"}  # none further: any other

def test_the_chain_replaces_a_greedy_caption_of_image_prompts_only():
    import numpy as np

    from open4m.data.world import render_scene
    from open4m.evaluation.captions import parse_caption
    from open4m.evaluation.run import load_model_and_tokenizers
    from open4m.generation import TargetSpec, generate
    from open4m.generation.caption_shapes import chain_caption_through_boxes
    from open4m.pixels import to_model_pixels
    from open4m.shipped import world_model_dir

    model, tokenizers = load_model_and_tokenizers(world_model_dir())
    images = {"rgb@64": to_model_pixels(np.stack([render_scene(10**9 + i)["rgb"] for i in (3, 4)]))}
    settings = {"tokenizers": tokenizers.image, "text_tokenizer": tokenizers.text, "seed": 0}

    def chained(conditions, specs, text_tokenizer=tokenizers.text):
        result = generate(model, conditions, specs, **settings)
        plain = list(result.decoded.get("caption@64", []))
        done = chain_caption_through_boxes(model, conditions, specs, result, image_tokenizers=tokenizers.image,
                                           text_tokenizer=text_tokenizer)
        return done, plain, result

    done, plain, result = chained(images, [TargetSpec("caption@64", temperature=0.0)])
    assert done and len(result.decoded["caption@64"]) == 2
    for caption, ids in zip(result.decoded["caption@64"], result.tokens["caption@64"], strict=True):
        assert parse_caption(caption).count is not None and ids == tokenizers.text.encode(caption)
    assert result.decoded["caption@64"] != plain
    sampled = [TargetSpec("caption@64", temperature=1.0)]
    captions = {"caption@64": ["a red cube", "two spheres"]}
    for conditions, specs in ((images, sampled), (captions, [TargetSpec("det@64", temperature=0.0)])):
        assert not chained(conditions, specs)[0]


def test_a_relation_kind_with_no_object_left_is_not_begun(tok):
    boxes = [{"box": [0.0, 10.0, 8.0, 30.0], "class": "sphere"}, {"box": [20.0, 5.0, 28.0, 15.0], "class": "cylinder"},
             {"box": [40.0, 10.0, 48.0, 25.0], "class": "cube"}]  # near, far, between
    rule = ShapesFromBoxes(tok, [boxes], SHAPES)
    listed = "We can see a red sphere, a blue cylinder and a gray cube. "

    def banned(text):
        return {tok.id_to_token(i) for i in rule(0, tok.encode(listed + text))} & set(RELATION_WORDS)

    assert banned("The red sphere is") == {"right", "behind"}  # the leftmost and nearest object
    assert banned("The red sphere is to the") == {"right"}
    assert banned("The gray cube is") == {"left"}
    assert banned("The red sphere is left of the blue cylinder. The red sphere is left of the gray cube. "
                  "The red sphere is") == {"left", "right", "to", "behind"}  # both to its right said: in front of
    assert banned("The") == set()  # not yet at the kind


def test_a_relation_phrase_takes_no_word_that_leaves_it_unable_to_name_one_object(tok):
    rule = ShapesFromBoxes(tok, [[_box(0, "cylinder"), _box(20, "cylinder"), _box(40, "cube")]], SHAPES)
    listed = "We can see a large gray matte cylinder, a small gray matte cylinder and a large red shiny cube. "

    def banned(text):
        return {tok.id_to_token(i) for i in rule(0, tok.encode(listed + text))}

    # "the gray ..." could only go on with the material, which both gray cylinders share: the size comes first
    assert "gray" in banned("The") and not {"large", "small", "red"} & banned("The")
    assert not {"gray", "matte", "cylinder"} & banned("The large") and "." in banned("The large")
    assert "cylinder" not in banned("The large gray") and "cylinder" not in banned("The small gray matte")
    # the second phrase too: right of the cube lie both cylinders
    second = "The red cube is to the right of the"
    assert "gray" in banned(second) and "." in banned(second) and "small" not in banned(second)
    assert "." not in banned("The large gray cylinder")  # a named object: the sentence may go on or end
    assert rule.in_open_phrase(0, rule._words(tok.encode(listed + "The small"))) is True
    assert rule.in_open_phrase(0, rule._words(tok.encode(listed + "The green"))) is False  # fits none listed
