"""Captions are parsed back with the grammar documented in open4m.data.world.captions and checked
against the scene graph and the rendered instance map: every statement must be true of the image."""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from open4m.data.world import COLORS, MATERIALS, SHAPES, SIZES, render_scene
from open4m.data.world.captions import NUMBER_WORDS

SIZE, COLOR, MATERIAL, SHAPE = ("|".join(v) for v in (SIZES, COLORS, MATERIALS, SHAPES))
NOUN = rf"(?:({SIZE}) )?(?:({COLOR}) )?(?:({MATERIAL}) )?({SHAPE})(s?)\b"
NUMBER = "|".join(NUMBER_WORDS)
RELATION = re.compile(rf"the ((?:(?:{SIZE}|{COLOR}|{MATERIAL}) )*(?:{SHAPE})) is "
                      r"(left of|to the left of|right of|to the right of|in front of|behind) the "
                      rf"((?:(?:{SIZE}|{COLOR}|{MATERIAL}) )*(?:{SHAPE}))\b")
MARGIN = 0.3


def camera_frame(scene: dict) -> np.ndarray:
    """Object centres in the camera frame (x right, y up, z toward the viewer), recomputed here."""
    cam = scene["camera"]
    pos, target = np.array(cam["position"]), np.array(cam["target"])
    forward = (target - pos) / np.linalg.norm(target - pos)
    right = np.array([-forward[2], 0.0, forward[0]]) / np.hypot(forward[0], forward[2])
    up = np.cross(right, forward)
    rel = np.array([o["position"] for o in scene["objects"]]) - pos
    return np.stack([rel @ right, rel @ up, -(rel @ forward)], axis=-1)


def matches(obj: dict, words: str) -> bool:
    """Whether a noun phrase like 'large red cube' describes obj."""
    attrs = words.split()
    return attrs[-1] == obj["shape"] and all(a in (obj["size"], obj["color"], obj["material"]) for a in attrs[:-1])


def check_caption(sample: dict) -> dict:
    caption, scene = sample["caption"].lower(), sample["scene"]
    visible = [o for k, o in enumerate(scene["objects"], start=1) if (sample["instance"] == k).any()]
    found = {"relations": 0, "nouns": 0}
    # every noun phrase describes at least one visible object, with all its attributes
    for m in re.finditer(NOUN, caption):
        words = " ".join(w for w in m.groups()[:4] if w)
        assert any(matches(o, words) for o in visible), f"{words!r} is not visible in: {caption}"
        found["nouns"] += 1
    # counts: "<number> objects" and "<number> <shape>s" are exact counts of visible objects
    for m in re.finditer(rf"\b({NUMBER}) objects?\b", caption):
        assert NUMBER_WORDS.index(m.group(1)) == len(visible), caption
    for m in re.finditer(rf"\b({NUMBER}) ({SHAPE})s?\b", caption):
        assert NUMBER_WORDS.index(m.group(1)) == sum(o["shape"] == m.group(2) for o in visible), caption
    # relations hold between the unique objects named, in camera space, by the margin
    centres = camera_frame(scene)
    index = {id(o): i for i, o in enumerate(scene["objects"])}
    for m in RELATION.finditer(caption):
        named = []
        for words in (m.group(1), m.group(3)):
            candidates = [o for o in visible if matches(o, words)]
            assert len(candidates) == 1, f"{words!r} is ambiguous or absent in: {caption}"
            named.append(centres[index[id(candidates[0])]])
        a, b = named
        kind = m.group(2)
        if "left" in kind:
            assert a[0] < b[0] - MARGIN, caption
        elif "right" in kind:
            assert a[0] > b[0] + MARGIN, caption
        elif kind == "in front of":
            assert -a[2] < -b[2] - MARGIN, caption
        else:
            assert -a[2] > -b[2] + MARGIN, caption
        found["relations"] += 1
    assert caption.count(" is ") >= found["relations"]
    return found


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
    relation_sentences = [s for c in captions for s in c.split(". ") if RELATION.search(s)]
    assert len(relation_sentences) > 100


def test_every_relation_sentence_is_parsed():
    """Guards the parser above: each sentence with a relation word is matched by RELATION."""
    for seed in range(300, 340):
        caption = render_scene(seed)["caption"].lower()
        for sentence in caption.split(". "):
            if any(w in sentence for w in (" left of ", " right of ", " in front of ", " behind ")):
                assert RELATION.search(sentence), sentence


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(min_value=0, max_value=10**9 + 2 * 10**6 - 1))
def test_captions_hold_for_any_seed(seed):
    check_caption(render_scene(seed))
