"""Captions generated from the scene graph: counts, colours, sizes, materials, shapes and spatial relations.

Only *visible* objects (see :func:`open4m.data.world.labels.visible_objects`) are counted or named, so a
caption is always true of its image. Grammar (kept regular so that tests can parse it back):

- counts use number words: ``"three objects"``, ``"two spheres and one cube"``, ``"no objects"``;
- an object is a noun phrase ``[size] [colour] [material] shape``, e.g. ``"a large red shiny cube"``;
- a list names the objects as the image shows them, left to right (by the horizontal image position of their
  centres; a list by shape orders the shapes by their leftmost object): a captioner writing the list then looks
  for the next object to the right instead of choosing among all the objects it has not named yet;
- a relation is ``"the <phrase> is <left of | right of | to the left of | to the right of | in front of |
  behind> the <phrase>"``, where each phrase names exactly one visible object. Left/right compare the
  objects' centres along the camera's x axis, in front of/behind along its depth axis, and a relation is
  stated only when it holds by at least ``config.relation_margin`` metres.

The phrasing (sentence templates, order, which relations) is drawn from a generator seeded by the scene's
seed, so captions vary across scenes but a scene always has the same caption.
"""

from __future__ import annotations

import itertools

import numpy as np

from open4m.data.world.config import WorldConfig
from open4m.data.world.scene import Scene, SceneObject

NUMBER_WORDS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve"]
ATTRIBUTES = ("size", "color", "material", "shape")
# Attribute subsets tried, shortest first, to name an object unambiguously.
REFERENCE_ORDER = [("shape",), ("color", "shape"), ("size", "shape"), ("material", "shape"),
                   ("size", "color", "shape"), ("color", "material", "shape"), ("size", "material", "shape"),
                   ("size", "color", "material", "shape")]
CAPTION_STREAM = 1  # second entry of the seed sequence, separating caption choices from scene sampling

COUNT_TEMPLATES = ["There {are} {n} {objects}.", "The scene shows {n} {objects}.",
                   "{N} {objects} {stand} on the floor.", "A rendering of {n} {objects} on a floor."]
LIST_TEMPLATES = ["There {are} {items}.", "The image contains {items}.", "We can see {items}.",
                  "On the floor {are} {items}."]
RELATION_WORDS = {"left": ["left of", "to the left of"], "right": ["right of", "to the right of"],
                  "front": ["in front of"], "behind": ["behind"]}


def phrase(obj: SceneObject, attributes=ATTRIBUTES) -> str:
    """The noun phrase of ``obj`` using ``attributes`` in canonical order, e.g. ``"large red cube"``."""
    return " ".join(getattr(obj, a) for a in ATTRIBUTES if a in attributes)


def plural(shape: str, count: int) -> str:
    """``"sphere"`` / ``"spheres"``; shape names form regular plurals."""
    return shape if count == 1 else shape + "s"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def unique_references(objects: list[SceneObject]) -> list[str | None]:
    """Shortest phrase naming each object uniquely among ``objects``; None for indistinguishable twins."""
    refs: list[str | None] = []
    for obj in objects:
        ref = None
        for attrs in REFERENCE_ORDER:
            matches = [o for o in objects if all(getattr(o, a) == getattr(obj, a) for a in attrs)]
            if len(matches) == 1:
                ref = phrase(obj, attrs)
                break
        refs.append(ref)
    return refs


def relation_facts(scene: Scene, visible: list[int], margin: float) -> list[tuple[int, str, int]]:
    """All true relations ``(a, kind, b)`` between visible objects, kind in left/right/front/behind.

    ``a`` is left of ``b`` when its centre's camera x is smaller by at least ``margin``; in front of when
    its centre's depth is smaller by at least ``margin``.
    """
    centres = scene.camera.to_camera([scene.objects[i].position for i in visible])
    facts = []
    for (ia, a), (ib, b) in itertools.permutations(enumerate(visible), 2):
        if centres[ia, 0] < centres[ib, 0] - margin:
            facts.append((a, "left", b))
        if centres[ia, 0] > centres[ib, 0] + margin:
            facts.append((a, "right", b))
        if -centres[ia, 2] < -centres[ib, 2] - margin:
            facts.append((a, "front", b))
        if -centres[ia, 2] > -centres[ib, 2] + margin:
            facts.append((a, "behind", b))
    return facts


def _count_sentence(rng: np.random.Generator, n: int) -> str:
    return count_sentence(n, int(rng.integers(len(COUNT_TEMPLATES))))


def count_sentence(n: int, template: int = 0) -> str:
    """The sentence stating that ``n`` objects are visible, in count template ``template`` of
    :data:`COUNT_TEMPLATES`: ``count_sentence(3) == "There are three objects."``."""
    if not 0 <= n < len(NUMBER_WORDS):
        raise ValueError(f"count_sentence: captions name counts 0-{len(NUMBER_WORDS) - 1}, got {n}")
    template = COUNT_TEMPLATES[template]
    words = {"are": "is" if n == 1 else "are", "stand": "stands" if n == 1 else "stand",
             "objects": "object" if n == 1 else "objects", "n": NUMBER_WORDS[n]}
    words["N"] = words["n"].capitalize()
    return template.format(**words)


def left_to_right(scene: Scene, visible: list[int]) -> list[int]:
    """``visible`` (object indices) in the image's left-to-right order of the objects' centres (x / depth in the
    camera frame; ties keep scene order)."""
    if not visible:
        return []
    centres = np.asarray(scene.camera.to_camera([scene.objects[i].position for i in visible])).reshape(-1, 3)
    return [visible[k] for k in image_order(centres)]


def image_order(centres: np.ndarray) -> np.ndarray:
    """Indices sorting objects with camera-frame centres ``centres`` (K, 3) left to right as the image shows them
    (by x / depth; ties keep the given order): the order of a world caption's list."""
    centres = np.asarray(centres, dtype=float).reshape(-1, 3)
    return np.argsort(centres[:, 0] / -centres[:, 2], kind="stable")


def _list_sentence(rng: np.random.Generator, objects: list[SceneObject]) -> str:
    """The list sentence of ``objects``, given left to right."""
    template = LIST_TEMPLATES[int(rng.integers(len(LIST_TEMPLATES)))]
    if rng.random() < 0.5:  # by shape, with counts
        counts = {}
        for obj in objects:
            counts[obj.shape] = counts.get(obj.shape, 0) + 1
        items = [f"{NUMBER_WORDS[c]} {plural(s, c)}" for s, c in counts.items()]
        first_single = next(iter(counts.values())) == 1
    else:  # every object in full
        # Lists were once in a random order; that draw stays, so a seed's other choices (templates, relations)
        # are those of earlier versions of the world.
        rng.permutation(len(objects))
        items = [f"a {phrase(obj)}" for obj in objects]
        first_single = True
    return template.format(are="is" if first_single else "are", items=_join(items))  # agrees with the first item


def make_caption(scene: Scene, visible: list[int], config: WorldConfig) -> str:
    """One caption for ``scene``, true of the image in which the objects ``visible`` (0-based) are seen."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([scene.seed, CAPTION_STREAM])))
    ordered = left_to_right(scene, visible)
    objects = [scene.objects[i] for i in ordered]
    if not objects:
        return ["An empty floor under the sky.", "There are no objects on the floor."][int(rng.integers(2))]
    sentences = [_count_sentence(rng, len(objects)), _list_sentence(rng, objects)]
    if rng.random() < 0.3:
        sentences = sentences[1:]
    refs = dict(zip(ordered, unique_references(objects), strict=True))
    facts = [f for f in relation_facts(scene, visible, config.relation_margin) if refs[f[0]] and refs[f[2]]]
    chosen: list[tuple[int, str, int]] = []
    pairs: set[frozenset[int]] = set()
    for j in rng.permutation(len(facts)):
        a, kind, b = facts[j]
        if len(chosen) >= config.max_relations or frozenset((a, b)) in pairs:
            continue
        pairs.add(frozenset((a, b)))
        chosen.append((a, kind, b))
    for a, kind, b in chosen:
        words = RELATION_WORDS[kind]
        sentences.append(f"The {refs[a]} is {words[int(rng.integers(len(words)))]} the {refs[b]}.")
    return " ".join(sentences)
