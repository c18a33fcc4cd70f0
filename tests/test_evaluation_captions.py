"""The caption parser recovers what real world captions state, and the scorer judges statements against the scene."""

from collections import Counter

import numpy as np
import pytest

from open4m.data.world import WorldConfig, render_scene
from open4m.evaluation.captions import Mention, SceneTruth, align_in_order, parse_caption, scene_truth, score_caption

MARGIN = WorldConfig().relation_margin


def visible(sample):
    return [sample["scene"]["objects"][d["instance"] - 1] for d in sample["det"]]


def test_parser_recovers_the_visible_objects_of_real_captions():
    kinds = Counter()
    for seed in range(60):
        sample = render_scene(seed)
        facts, objects = parse_caption(sample["caption"]), visible(sample)
        assert facts.count == len(objects), sample["caption"]
        if facts.items and all(not m.exact for m in facts.items):  # every object in full
            stated = Counter((m.size, m.color, m.material, m.shape) for m in facts.items)
            assert stated == Counter((o["size"], o["color"], o["material"], o["shape"]) for o in objects)
            kinds["full"] += 1
        elif facts.items:  # by shape, with counts
            assert {m.shape: m.count for m in facts.items} == Counter(o["shape"] for o in objects)
            kinds["by shape"] += 1
        for a, kind, b in facts.relations:
            assert kind in ("left", "right", "front", "behind")
            assert sum(a.matches(o) for o in objects) == 1 and sum(b.matches(o) for o in objects) == 1
    assert kinds["full"] > 10 and kinds["by shape"] > 10


@pytest.mark.parametrize("seeds", [range(0, 100), range(10**9, 10**9 + 50)])
def test_true_captions_score_perfectly(seeds):
    totals = Counter()
    for seed in seeds:
        sample = render_scene(seed)
        for name, (correct, stated) in score_caption(parse_caption(sample["caption"]), scene_truth(sample),
                                                     margin=MARGIN).items():
            assert correct == stated, (name, sample["caption"])
            totals[name] += stated
    assert min(totals.values()) > 30  # every kind of statement was exercised


def two_objects() -> SceneTruth:
    cube = {"shape": "cube", "color": "red", "size": "large", "material": "shiny"}
    sphere = {"shape": "sphere", "color": "blue", "size": "small", "material": "matte"}
    # the cube left of the sphere and nearer to the camera (depth = -z)
    return SceneTruth([cube, sphere], np.array([[-1.0, 0.0, -5.0], [1.0, 0.0, -8.0]]))


def test_wrong_statements_are_counted_as_wrong():
    caption = ("There are three objects. There is a red cube and a green sphere. "
               "The red cube is right of the sphere. The cube is in front of the sphere.")
    scores = score_caption(parse_caption(caption), two_objects())
    assert scores == {
        "count_acc": (0, 1),
        "color_acc": (2, 3),  # red cube (list), green sphere (wrong), red cube (relation)
        "list_color_acc": (1, 2),  # the list's red cube, its green sphere (the sphere is blue)
        "shape_acc": (6, 6),
        "relation_acc": (1, 2),  # the cube is left of the sphere, but in front of it
        "object_recall": (1, 2),  # no green sphere
    }


def three_objects() -> SceneTruth:
    """Left to right in the image: a red cube, a blue sphere, a green cone (given in another order)."""
    cone = {"shape": "cone", "color": "green", "size": "small", "material": "matte"}
    cube = {"shape": "cube", "color": "red", "size": "large", "material": "shiny"}
    sphere = {"shape": "sphere", "color": "blue", "size": "small", "material": "shiny"}
    return SceneTruth([cone, cube, sphere], np.array([[2.0, 0.0, -6.0], [-1.0, 0.0, -5.0], [0.5, 0.0, -9.0]]))


@pytest.mark.parametrize(("caption", "expected"), [
    ("There is a red cube, a blue sphere and a green cone.", (3, 3)),
    ("There is a red cube and a green cone.", (2, 2)),  # the sphere is skipped, the cone still found
    ("There is a red cylinder, a blue sphere and a green cone.", (3, 3)),  # a wrong shape, the right colour
    ("There is a blue cube, a red sphere and a green cone.", (1, 3)),  # colours of neighbours swapped
    ("There is a small yellow matte cylinder, a red cube, a blue sphere and a green cone.", (3, 4)),  # one extra
    ("There is a red cube, a blue sphere, a green cone and a red cone.", (3, 4)),  # the last has no object
    ("There are two cubes and a green cone.", (1, 1)),  # a count item fills two places, the cone is third
    ("There are three objects.", (0, 0)),
])
def test_list_colours_are_judged_on_the_object_each_item_describes(caption, expected):
    scores = score_caption(parse_caption(caption), three_objects())
    assert scores["list_color_acc"] == expected


def test_alignment_keeps_order_and_follows_the_stated_attributes():
    truth = three_objects()
    objects = [truth.objects[k] for k in (1, 2, 0)]  # left to right
    said = parse_caption("There is a small shiny sphere and a small matte cone.").items
    assert align_in_order(said, objects) == {0: 1, 1: 2}
    crossed = parse_caption("There is a cone and a cube.").items  # the order allows only one of them
    assert len(align_in_order(crossed, objects)) == 1
    assert align_in_order([], objects) == {} and align_in_order(said, []) == {}
    # without agreeing words every mention still takes an object, in order
    vague = [Mention("cylinder"), Mention("cylinder")]
    assert align_in_order(vague, objects) == {0: 0, 1: 1}


def test_shape_counts_must_be_exact_and_ambiguous_relations_fail():
    truth = two_objects()
    facts = parse_caption("On the floor are two cubes and one sphere. The shiny cone is behind the cube.")
    assert facts.count == 3 and facts.items == [Mention("cube", count=2, exact=True),
                                                 Mention("sphere", count=1, exact=True)]
    scores = score_caption(facts, truth)
    assert scores["shape_acc"] == (2, 4)  # two cubes (wrong), one sphere, cone (absent), cube
    assert scores["relation_acc"] == (0, 1)
    assert scores["object_recall"] == (2, 2)


def test_parser_is_lenient_and_never_raises():
    spaced = parse_caption("there are two objects . we can see a large red shiny cube , a small blue matte sphere .")
    assert spaced.count == 2 and [m.color for m in spaced.items] == ["red", "blue"]
    assert parse_caption("red blue cube") == parse_caption("")
    garbage = parse_caption("v0=12 [S_1] ## the the is of !!")
    assert garbage.count is None and not garbage.items and not garbage.relations
    assert score_caption(garbage, two_objects())["count_acc"] == (0, 1)
    assert parse_caption("An empty floor under the sky.").count == 0
    assert parse_caption("A small red blue cube.").items == [Mention("cube", color="red", size="small")]


def test_tokenizer_round_trip_keeps_the_facts():
    from open4m.shipped import world_tokenizers_dir
    from open4m.text import TextTokenizer

    text = TextTokenizer.load(world_tokenizers_dir() / "text" / "tokenizer.json")
    for seed in range(20):
        caption = render_scene(seed)["caption"]
        assert parse_caption(text.decode(text.encode(caption))) == parse_caption(caption)
