"""World captions read back into facts, and a caption's accuracy against the scene it describes.

The parser follows the grammar of :mod:`open4m.data.world.captions` and is lenient about what a model may
write instead (case, spacing around punctuation, extra words): text is lower-cased and split into words
and sentences, and three kinds of facts are picked out:

- a **count**: ``"<number> object(s)"`` (``"no objects"`` and ``"an empty floor"`` = 0); without one, the
  sum of the counts of the listed items;
- **items** of a list: ``"a [size] [colour] [material] <shape>"`` (count 1) or ``"<number> <shape>s"``;
- **relations**: ``"the <phrase> is <left of | to the left of | right of | to the right of | in front of |
  behind> the <phrase>"``, normalised to ``left / right / front / behind``.

A noun phrase's attributes may come in any order; when one kind is repeated (``"red blue cube"``) the
first is kept.

Accuracy of a caption (:func:`score_caption`) against the *visible* objects of the scene, each statement
judged on its own; the scores are counts (correct, stated) so a set pools them:

- **count**: the stated count equals the number of visible objects (a caption stating none is wrong);
- **colour**: each noun phrase (list item or relation side) that names a colour is correct when a visible
  object has that colour *and* that shape;
- **list colour**: each list item that names a colour is correct when the visible object it describes has
  that colour, whatever its shape. The world lists objects left to right, so the list (an ``"<n> <shape>s"``
  item fills n places) is aligned in order with the visible objects sorted left to right, keeping the order
  on both sides, skipping objects or items where that fits better: the alignment whose pairs agree on the most
  stated size, material and shape words, then the one with the most pairs, then the earliest pairs (colour
  plays no part in it); an item left without an object is wrong.
  Unlike **colour**, a right colour on a wrong shape (``"a red cylinder"`` for the one red cube) counts;
- **shape**: each ``"a ... <shape>"`` phrase or relation side is correct when a visible object has that
  shape; each ``"<n> <shape>(s)"`` item when exactly n visible objects have it;
- **relation**: correct when each side names exactly one visible object (all its stated attributes match)
  and the relation holds between their centres in the camera frame (x for left/right, depth for
  front/behind) by more than ``margin`` metres (default 0: it holds at all; the world only *states*
  relations that hold by ``WorldConfig.relation_margin``);
- **object recall**: the fraction of visible objects the list accounts for: each item takes as many
  not-yet-taken visible objects matching all its attributes as it counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from open4m.data.world.captions import NUMBER_WORDS, image_order
from open4m.data.world.config import COLORS, MATERIALS, SHAPES, SIZES
from open4m.data.world.scene import Scene

RELATIONS = {"left of": "left", "to the left of": "left", "right of": "right", "to the right of": "right",
             "in front of": "front", "behind": "behind"}
_ATTR = "|".join([*SIZES, *COLORS, *MATERIALS])
_SHAPE = "|".join(SHAPES)
_PHRASE = rf"((?:(?:{_ATTR}) )*)({_SHAPE})"
_RELATION = re.compile(rf"\bthe {_PHRASE} is ({'|'.join(sorted(RELATIONS, key=len, reverse=True))}) the {_PHRASE}\b")
_ITEM = re.compile(rf"\b(an?|{'|'.join(NUMBER_WORDS)}) {_PHRASE}(s?)\b")
_COUNT = re.compile(rf"\b({'|'.join(NUMBER_WORDS)}) objects?\b")
_WORD = re.compile(r"[a-z]+|[.!?]")


@dataclass(frozen=True)
class Mention:
    """One noun phrase: its shape, the attributes it states (None = not stated), how many it counts, and whether
    that count is exact (a number word: ``"two cubes"``, ``"one cone"``) or just "some" (``"a red cube"``)."""

    shape: str
    color: str | None = None
    size: str | None = None
    material: str | None = None
    count: int = 1
    exact: bool = False

    def matches(self, obj: dict) -> bool:
        """Whether scene object ``obj`` (``{"shape", "color", "size", "material", ...}``) has every stated attribute."""
        return obj["shape"] == self.shape and all(
            value is None or obj[key] == value
            for key, value in (("color", self.color), ("size", self.size), ("material", self.material)))


@dataclass
class CaptionFacts:
    """What a caption states: ``count`` (None = no count), list ``items``, ``relations`` (a, kind, b)."""

    count: int | None = None
    items: list[Mention] = field(default_factory=list)
    relations: list[tuple[Mention, str, Mention]] = field(default_factory=list)

    @property
    def mentions(self) -> list[Mention]:
        """Every noun phrase: the items, then both sides of each relation."""
        return [*self.items, *(m for a, _, b in self.relations for m in (a, b))]

    @property
    def shapes(self) -> set[str]:
        """The shapes the caption says are present (items with a count above 0, relation sides)."""
        return {m.shape for m in self.mentions if m.count > 0}


def _mention(attribute_words: str, shape: str, count: int = 1, exact: bool = False) -> Mention:
    attrs: dict[str, str] = {}
    for word in attribute_words.split():
        kind = "color" if word in COLORS else "size" if word in SIZES else "material"
        attrs.setdefault(kind, word)
    return Mention(shape, count=count, exact=exact, **attrs)


def parse_caption(caption: str) -> CaptionFacts:
    """The facts a caption states (grammar in the module docstring); never raises."""
    words = _WORD.findall(caption.lower())
    sentences, current = [], []
    for word in words:
        if word in ".!?":
            sentences.append(" ".join(current))
            current = []
        else:
            current.append(word)
    sentences.append(" ".join(current))
    facts = CaptionFacts()
    for sentence in filter(None, sentences):
        relations = list(_RELATION.finditer(sentence))
        for m in relations:
            facts.relations.append((_mention(m.group(1), m.group(2)), RELATIONS[m.group(3)],
                                    _mention(m.group(4), m.group(5))))
        if relations:
            continue
        count = _COUNT.search(sentence)
        if count and facts.count is None:
            facts.count = NUMBER_WORDS.index(count.group(1))
        elif "empty floor" in sentence and facts.count is None:
            facts.count = 0
        for m in _ITEM.finditer(sentence):
            exact = m.group(1) not in ("a", "an")
            facts.items.append(_mention(m.group(2), m.group(3), NUMBER_WORDS.index(m.group(1)) if exact else 1, exact))
    if facts.count is None and facts.items:
        facts.count = sum(m.count for m in facts.items)
    return facts


@dataclass
class SceneTruth:
    """The visible objects of a scene (scene-graph dicts) and their centres ``(K, 3)`` in the camera frame
    (x right, y up, z toward the viewer; depth = -z)."""

    objects: list[dict]
    centres: np.ndarray


def scene_truth(sample: dict) -> SceneTruth:
    """The visible objects of a world sample: those with a box in ``sample["det"]`` (in box order)."""
    scene = Scene.from_json(sample["scene"])
    visible = [int(d["instance"]) - 1 for d in sample["det"]]
    objects = [sample["scene"]["objects"][i] for i in visible]
    centres = scene.camera.to_camera([scene.objects[i].position for i in visible]) if visible else np.zeros((0, 3))
    return SceneTruth(objects, np.asarray(centres).reshape(-1, 3))


CAPTION_METRICS = ("count_acc", "color_acc", "list_color_acc", "shape_acc", "relation_acc", "object_recall")


def score_caption(facts: CaptionFacts, truth: SceneTruth, margin: float = 0.0) -> dict[str, tuple[int, int]]:
    """``{metric: (correct, stated)}`` for each of :data:`CAPTION_METRICS` (definitions in the module docstring);
    ``object_recall`` is (objects accounted for, visible objects)."""
    objects = truth.objects
    count = (int(facts.count == len(objects)), 1)
    colour = [any(m.shape == o["shape"] and m.color == o["color"] for o in objects)
              for m in facts.mentions if m.color is not None]
    shapes = [sum(o["shape"] == m.shape for o in objects) == m.count if m.exact
              else any(o["shape"] == m.shape for o in objects) for m in facts.mentions]
    relations = [_relation_holds(truth, a, kind, b, margin) for a, kind, b in facts.relations]
    taken = np.zeros(len(objects), bool)
    for m in facts.items:
        for _ in range(m.count):
            free = [i for i, o in enumerate(objects) if not taken[i] and m.matches(o)]
            if not free:
                break
            taken[free[0]] = True
    return {"count_acc": count, "color_acc": (sum(colour), len(colour)), "list_color_acc": _list_colours(facts, truth),
            "shape_acc": (sum(shapes), len(shapes)), "relation_acc": (sum(relations), len(relations)),
            "object_recall": (int(taken.sum()), len(objects))}


def _list_colours(facts: CaptionFacts, truth: SceneTruth) -> tuple[int, int]:
    """``(right, stated)`` colours of the list's items, each judged on the visible object it is aligned with."""
    places = [m for m in facts.items for _ in range(m.count)]
    objects = [truth.objects[k] for k in image_order(truth.centres)]
    aligned = align_in_order(places, objects)
    stated = [i for i, m in enumerate(places) if m.color is not None]
    return sum(i in aligned and objects[aligned[i]]["color"] == places[i].color for i in stated), len(stated)


def align_in_order(mentions: list[Mention], objects: list[dict]) -> dict[int, int]:
    """An order-keeping alignment of ``mentions`` with ``objects`` (both in list order) as ``{mention index:
    object index}`` (neither side's order crossed, either side may skip): the most stated size / material / shape
    words that agree with their object's, among such alignments the most pairs, and among those the earliest
    pairs (the k-th mention with the k-th object where nothing says otherwise). Colours are not compared."""
    n, m = len(mentions), len(objects)
    per_pair = 1.0 / (min(n, m) + 1)  # all the pairs together weigh less than one agreeing word

    def weight(i: int, j: int) -> float:
        return sum(getattr(mentions[i], key) == objects[j][key] for key in ("size", "material", "shape")) + per_pair

    best = np.zeros((n + 1, m + 1))  # best[i, j]: the best alignment of mentions[i:] with objects[j:]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            best[i, j] = max(best[i + 1, j], best[i, j + 1], best[i + 1, j + 1] + weight(i, j))
    pairs, i, j = {}, 0, 0
    while i < n and j < m:  # on a tie, pair now rather than skip
        if best[i, j] == best[i + 1, j + 1] + weight(i, j):
            pairs[i] = j
            i, j = i + 1, j + 1
        elif best[i, j] == best[i, j + 1]:
            j += 1
        else:
            i += 1
    return pairs


def _relation_holds(truth: SceneTruth, a: Mention, kind: str, b: Mention, margin: float) -> bool:
    ia = [i for i, o in enumerate(truth.objects) if a.matches(o)]
    ib = [i for i, o in enumerate(truth.objects) if b.matches(o)]
    if len(ia) != 1 or len(ib) != 1 or ia == ib:
        return False
    pa, pb = truth.centres[ia[0]], truth.centres[ib[0]]
    if kind == "left":
        return bool(pa[0] < pb[0] - margin)
    if kind == "right":
        return bool(pa[0] > pb[0] + margin)
    if kind == "front":
        return bool(-pa[2] < -pb[2] - margin)
    return bool(-pa[2] > -pb[2] + margin)
