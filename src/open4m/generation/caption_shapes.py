"""World captions whose shapes agree with the model's own boxes (a chained RGB -> boxes -> caption decode).

A world caption lists the visible objects left to right (:mod:`open4m.data.world.captions`): in full (``"a
large red shiny cube, a small blue matte sphere and ..."``) or by shape (``"two spheres and one cube"``, the
shapes in the order of their leftmost object), and its relations name objects by their attributes (``"The red
cube is left of the blue sphere."``). The model's boxes know shapes better than its captions (shipped v8, 1,000
val scenes: boxes mAP@0.5 0.92; of the caption colour words that name no visible object of that colour and
shape, three in four give the right colour to a wrong shape). :class:`ShapesFromBoxes` is a
``TargetSpec(banned=...)`` rule for the caption decoder, built from one box list per prompt, that bans every
shape word but the one the boxes put there:

- the k-th object of a full list has the shape of the k-th box from the left (by box centre);
- the g-th group of a by-shape list has the g-th shape of the boxes taken left to right;
- a relation's object has the shape of a listed object with the attributes the relation states before it
  (``"the red ..."``: an object the list calls red; else one with its colour; else any shape among the boxes),
  and the attribute words of a relation's noun phrase keep to those of some object the list names in full;
- a relation's noun phrase names one listed object (a shape word that would fit two waits for an attribute that
  tells them apart), states each attribute kind once and in the world's order (size, colour, material), takes no
  attribute after which it could no longer name one listed object, and does not end before its shape;
- the second object of a relation whose first names one listed object lies on the side the relation says
  ("left of": later in the list, "right of": earlier; "in front of": its box ends higher in the image than the
  first's, "behind": lower, the k-th listed object having the k-th box from the left), is never the first, and
  is not one an earlier relation of the caption already relates to the first in the same way (a relation is
  stated once, as the world's captions do) while another is left; a relation kind with no such object left is
  not begun.

A sentence opening with "the" and a noun phrase is a relation; "The scene shows ..." and "The image contains ..."
are the world's count and list sentences.

Where the boxes run out (more objects listed than boxes found) or a prompt has no boxes, the model writes what
it likes. Everything else (count, the list's colours, sizes and materials, which relations) is the model's own.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from open4m import modalities
from open4m.data.world.captions import ATTRIBUTES, NUMBER_WORDS, count_sentence
from open4m.data.world.config import COLORS, MATERIALS, SHAPES, SIZES
from open4m.generation.boxes import FUSE_IOU, SHIFTS, box_iou, detect
from open4m.generation.describe import CAPTION_SHIFTS, describe
from open4m.generation.prompt import generate
from open4m.generation.sampler import TargetSpec
from open4m.generation.sampling import ZERO_TEMPERATURE

RELATION_WORDS = ("left", "right", "to", "in", "behind")  # the words opening a relation's kind after "is"
PHRASE_ORDER = tuple(kind for kind in ATTRIBUTES if kind != "shape")  # a noun phrase's attributes, in order
ATTRIBUTE_WORDS = {**{w: "color" for w in COLORS}, **{w: "size" for w in SIZES}, **{w: "material" for w in MATERIALS}}


def caption_through_boxes(
    model,
    conditions: Mapping[str, object],
    caption: str,
    det: str,
    *,
    text_tokenizer,
    tokenizers: Mapping[str, object] | None = None,
    seed: int = 0,
    shifts: Sequence[tuple[int, int]] = CAPTION_SHIFTS,
    box_shifts: Sequence[tuple[int, int]] = SHIFTS,
    shapes: Sequence[str] = SHAPES,
) -> tuple[list[str], list[list[dict]]]:
    """World captions ``caption`` of every row of ``conditions`` (an image with a batch axis, as
    :func:`open4m.generation.describe.describe` takes it) chained through the model's own boxes ``det``, as
    ``open4m eval`` decodes them by default (``--caption-count-from-boxes --caption-shapes-from-boxes``): one
    greedy box decode per row, its classes voted by the fused decodes of the image, its mirror and its
    ``box_shifts`` views (:func:`classes_by_vote`); the caption, decoded from the image and its ``shifts`` views,
    opens with the count of those boxes and keeps its shape words to them (:class:`ShapesFromBoxes`). Returns the
    captions and the voted boxes. Row i decodes with seed ``seed + i``."""
    rows = len(next(iter(conditions.values())))
    seeds = [seed + i for i in range(rows)]
    settings = {"tokenizers": tokenizers, "text_tokenizer": text_tokenizer}
    greedy = generate(model, conditions, [TargetSpec(det, temperature=0.0)], seed=seeds, **settings).decoded[det]
    fused = detect(model, conditions, det, samples=0, flip=True, shifts=box_shifts, seed=seeds, **settings)
    voted = [classes_by_vote(row, others) for row, others in zip(greedy, fused, strict=True)]
    openings = [count_sentence(min(len(row), len(NUMBER_WORDS) - 1)) for row in voted]
    captions = describe(model, conditions, caption, shifts=shifts, seed=seeds, openings=openings,
                        banned=ShapesFromBoxes(text_tokenizer, voted, shapes), **settings)
    return captions, voted


def chain_caption_through_boxes(model, conditions: Mapping[str, object], specs: Sequence[TargetSpec], result, *,
                                image_tokenizers: Mapping[str, object] | None, text_tokenizer, seed: int = 0) -> bool:
    """Replace the world caption in ``result`` (a :class:`open4m.generation.prompt.GenerationResult` of
    ``specs`` from ``conditions``, batched) by the one :func:`caption_through_boxes` decodes, where that chain
    applies: the prompt is one RGB image (pixels), a caption target is predicted greedily and unguided, the model
    writes boxes and the text tokenizer's box classes are world shapes. ``result.state``, and any target decoded
    after the caption, keep the plain decode's caption. Returns whether the caption was replaced."""
    images = [n for n in conditions if modalities.get(n).kind == "pixels" and n.split("@")[0] == "rgb"]
    captions = [s for s in specs if s.name.split("@")[0] == "caption" and abs(s.temperature) < ZERO_TEMPERATURE
                and s.guidance == 1.0]
    if len(conditions) != 1 or not images or not captions or not boxes_chain_applies(model, text_tokenizer):
        return False
    dets = [n for n in model.decoder_embeddings if n.split("@")[0] == "det"]
    name = captions[0].name
    texts, _ = caption_through_boxes(model, conditions, name, dets[0], text_tokenizer=text_tokenizer,
                                     tokenizers=image_tokenizers, seed=seed)
    ids = [text_tokenizer.encode(text) for text in texts]
    result.decoded[name] = texts
    result.tokens[name] = ids
    result.scores[name] = [[None] * len(row) for row in ids]
    return True


def boxes_chain_applies(model, text_tokenizer) -> bool:
    """Whether ``model``'s world captions can be decoded through its own boxes: it has a det target and
    ``text_tokenizer`` (which writes its boxes) names world shapes only (:data:`open4m.data.world.config.SHAPES`)."""
    if text_tokenizer is None or not any(n.split("@")[0] == "det" for n in model.decoder_embeddings):
        return False
    classes = getattr(text_tokenizer, "class_names", None)
    return bool(classes) and not set(classes) - set(SHAPES)


def boxes_left_to_right(boxes: Sequence[Mapping]) -> list[str]:
    """The classes of ``boxes`` (``{"box": [x0, y0, x1, y1], "class": str}``) ordered by their centre's x (ties
    keep the given order): the shapes of a world caption's full list, as the boxes see them."""
    return [str(b["class"]) for b in _left_to_right(boxes)]


def _left_to_right(boxes: Sequence[Mapping]) -> list[Mapping]:
    return sorted(boxes, key=lambda b: (b["box"][0] + b["box"][2]) / 2)


def classes_by_vote(boxes: Sequence[Mapping], fused: Sequence[Mapping], iou: float = FUSE_IOU) -> list[dict]:
    """``boxes`` (one decode) with each box's class replaced by the class the boxes of ``fused`` (several decodes
    fused, :func:`open4m.generation.boxes.detect`) that overlap it at IoU >= ``iou`` vote for, each with its
    score (a box no fused box overlaps keeps its class). One decode places and counts the objects; the fused
    decodes name their shapes better (shipped v8, 200 val scenes, boxes matched to the true ones: the greedy
    decode's class is right for 0.85 of them, voted 0.89)."""
    voted = []
    for box in boxes:
        votes: dict[str, float] = {}
        for other in fused:
            if box_iou(box["box"], other["box"])[0, 0] >= iou:
                votes[str(other["class"])] = votes.get(str(other["class"]), 0.0) + float(other.get("score", 1.0))
        voted.append({**box, "class": max(votes, key=votes.__getitem__) if votes else box["class"]})
    return voted


def groups_left_to_right(shapes: Sequence[str]) -> list[str]:
    """The distinct shapes of ``shapes`` (left to right) in the order of their leftmost object: the groups of a
    world caption's by-shape list."""
    return list(dict.fromkeys(shapes))


class ShapesFromBoxes:
    """``TargetSpec(banned=...)`` rule keeping each prompt's caption shapes to its boxes (module docstring).

    Args:
        text_tokenizer: the caption's :class:`open4m.text.TextTokenizer`; every shape must be one token of it.
        boxes: one box list per prompt (as :func:`open4m.generation.boxes.detect` returns them).
        shapes: the shape words (the world's ``SHAPES``).
    """

    def __init__(self, text_tokenizer, boxes: Sequence[Sequence[Mapping]], shapes: Sequence[str]) -> None:
        self.tok = text_tokenizer
        self.shape_ids: dict[str, int] = {}
        for shape in shapes:
            ids = text_tokenizer.encode(shape)
            if len(ids) != 1:
                raise ValueError(f"ShapesFromBoxes: shape {shape!r} is {len(ids)} tokens of the text tokenizer, "
                                 "expected one")
            self.shape_ids[shape] = ids[0]
        self.attribute_ids: dict[str, int] = {}
        for word in ATTRIBUTE_WORDS:
            ids = text_tokenizer.encode(word)
            if len(ids) == 1:  # a word of several tokens is never banned
                self.attribute_ids[word] = ids[0]
        self.relation_ids = {word: ids[0] for word in RELATION_WORDS
                             if len(ids := text_tokenizer.encode(word)) == 1}  # one token each, as attributes
        self.stop_ids = [ids[0] for word in (".",) if len(ids := text_tokenizer.encode(word)) == 1]
        rows = [_left_to_right(row) for row in boxes]
        self.ordered = [[str(b["class"]) for b in row] for row in rows]
        self.bottoms = [[float(b["box"][3]) for b in row] for row in rows]  # image y grows downward: nearer
        unknown = {s for row in self.ordered for s in row} - set(self.shape_ids)
        if unknown:
            raise ValueError(f"ShapesFromBoxes: box classes {sorted(unknown)} are not among the shapes "
                             f"{list(self.shape_ids)}")

    def __call__(self, prompt: int, ids: list[int]) -> list[int]:
        """The ids prompt ``prompt`` may not write after ``ids`` (its caption so far): shapes the boxes rule
        out; inside a relation's noun phrase, the attribute words :meth:`banned_attributes` rules out and the
        full stop before its shape; the relation words of kinds with no object left; [] elsewhere."""
        words = self._words(ids)
        allowed = self.allowed_shapes(prompt, words)
        banned = [] if allowed is None else [i for shape, i in self.shape_ids.items() if shape not in allowed]
        phrase = self._open_phrase(prompt, words)  # read once for the attribute words and the full stop
        banned += [self.attribute_ids[w] for w in self._attributes_banned_in(phrase)]
        if phrase is not None:
            banned += self.stop_ids
        return banned + [self.relation_ids[w] for w in self.banned_relation_words(prompt, words)
                         if w in self.relation_ids]

    def allowed_shapes(self, prompt: int, words: list[str]) -> set[str] | None:
        """The shapes a shape word written after ``words`` (the caption so far, as whole words and ``"."``)
        may be: None = any."""
        shapes = self.ordered[prompt]
        if not shapes:
            return None
        done, sentence = _split(words)
        listed = _listed(done, self.shape_ids)
        if _is_relation(sentence, self.shape_ids):
            stated = _stated(sentence)
            named = self._relation_objects(prompt, listed, sentence, done)
            fitting = {shape for shape, attrs in named if _fits(attrs, stated)}
            unique = {shape for shape in fitting if _names_one(listed, shape, stated)}
            if fitting:
                return unique  # a phrase that would name two listed objects says more first (maybe no shape)
            fitting = {shape for shape, attrs in named if _fits(attrs, {k: v for k, v in stated.items()
                                                                       if k == "color"})}
            return fitting or set(shapes)
        listed += _list_items(sentence, self.shape_ids)
        grouped = [item for item in listed if item[1] is None]
        full = [item for item in listed if item[1] is not None]
        if sentence and sentence[-1] in NUMBER_WORDS[1:]:  # "two ..." opens a by-shape group
            groups = groups_left_to_right(shapes)
            return {groups[len(grouped)]} if len(grouped) < len(groups) else None
        if sentence and sentence[-1] not in NUMBER_WORDS and _in_item(sentence):  # "a [size colour material] ..."
            return {shapes[len(full)]} if len(full) < len(shapes) else None
        return None

    def banned_attributes(self, prompt: int, words: list[str]) -> list[str]:
        """Inside a relation's noun phrase (after "the" and attribute words), the attribute words that would
        make it name no object of the caption's full list (a relation names listed objects), state a kind the
        phrase has stated or one that comes before it (size, colour, material), or leave it unable to name one
        listed object (:func:`_nameable`). [] elsewhere, when the list names no object in full, or when the
        phrase already fits none (the model's own choice)."""
        return self._attributes_banned_in(self._open_phrase(prompt, words))

    def _attributes_banned_in(self, phrase) -> list[str]:
        """:meth:`banned_attributes` of an open phrase as :meth:`_open_phrase` reads it (None: [])."""
        if phrase is None:
            return []
        listed, stated, fitting = phrase
        last = _last_kind(stated)
        full = [(shape, attrs) for shape, attrs in listed if attrs]
        return [w for w, kind in ATTRIBUTE_WORDS.items() if w in self.attribute_ids and (
            PHRASE_ORDER.index(kind) <= last  # each kind once, in the world's order (size, colour, material)
            or not any(attrs.get(kind) == w and _nameable(full, shape, attrs, {**stated, kind: w})
                       for shape, attrs in fitting))]

    def in_open_phrase(self, prompt: int, words: list[str]) -> bool:
        """Whether ``words`` end inside a relation's noun phrase ("the" and attribute words, no shape yet) that
        fits a listed object: the sentence may not end there (the phrase names no object yet)."""
        return self._open_phrase(prompt, words) is not None

    def _open_phrase(self, prompt: int, words: list[str]):
        """``(listed items, attributes stated, listed objects the phrase fits)`` when ``words`` end inside a
        relation's noun phrase that fits an object of the full list; None elsewhere."""
        if not self.ordered[prompt]:
            return None
        done, sentence = _split(words)
        if not _is_relation(sentence, self.shape_ids) or not (sentence[-1] == "the" or sentence[-1] in ATTRIBUTE_WORDS):
            return None
        listed = _listed(done, self.shape_ids)
        stated = _stated(sentence)
        fitting = [(shape, attrs) for shape, attrs in self._relation_objects(prompt, listed, sentence, done)
                   if _fits(attrs, stated)]
        return (listed, stated, fitting) if fitting else None

    def banned_relation_words(self, prompt: int, words: list[str]) -> list[str]:
        """Where a relation sentence names its kind (after ``"the <object> is"`` and ``"is to the"``), the words
        of the kinds that have no object left for their second phrase (none on that side, or every one already
        related the same way); [] when every kind has none, or the first phrase names no one listed object."""
        if not self.ordered[prompt]:
            return []
        done, sentence = _split(words)
        if not _is_relation(sentence, self.shape_ids) or "is" not in sentence:
            return []
        cut = sentence.index("is")
        if sentence[cut + 1:] not in ([], ["to", "the"]):
            return []
        full = [(shape, attrs) for shape, attrs in _listed(done, self.shape_ids) if attrs]
        k = _one_listed(full, sentence[1:cut])
        if k is None:
            return []
        said = _said_all(full, [s for s in done if _is_relation(s, self.shape_ids)])
        free = {kind: bool(_partners(k, kind, said, _side(k, kind, len(full), self.bottoms[prompt])))
                for kind in ("left", "right", "front", "behind")}
        if not any(free.values()):
            return []
        banned = [kind for kind in ("left", "right") if not free[kind]]
        if sentence[cut + 1:] == []:
            banned += [word for word, kinds in (("to", ("left", "right")), ("in", ("front",)), ("behind", ("behind",)))
                       if not any(free[kind] for kind in kinds)]
        return banned

    def _relation_objects(self, prompt: int, listed, sentence: list[str], done: list[list[str]]):
        relations = [s for s in done if _is_relation(s, self.shape_ids)]
        return _relation_objects(listed, sentence, relations, self.bottoms[prompt])

    def _words(self, ids: list[int]) -> list[str]:
        words: list[str] = []
        for i in ids:
            token = self.tok.id_to_token(int(i)) or ""
            if token.startswith("##") and words:
                words[-1] += token[2:]
            else:
                words.append(token.lower())
        return words


def _split(words: list[str]) -> tuple[list[list[str]], list[str]]:
    """Finished sentences (without their full stops) and the one being written."""
    sentences, current = [], []
    for word in words:
        if word in (".", "!", "?"):
            sentences.append(current)
            current = []
        else:
            current.append(word)
    return sentences, current


def _listed(sentences: list[list[str]], shapes: Collection[str]) -> list[tuple[str, dict[str, str] | None]]:
    """The list items of the finished ``sentences`` that are not relations, in order (see :func:`_list_items`)."""
    return [item for s in sentences if not _is_relation(s, shapes) for item in _list_items(s, shapes)]


def _is_relation(sentence: list[str], shapes: Collection[str]) -> bool:
    """A relation sentence opens with "the" and a noun phrase (an attribute word or one of ``shapes``): "The
    scene shows ..." is a count sentence, "The image contains ..." a list."""
    return bool(sentence) and sentence[0] == "the" and (
        len(sentence) < 2 or sentence[1] in ATTRIBUTE_WORDS or sentence[1] in shapes)


def _relation_objects(listed: list[tuple[str, dict[str, str] | None]], sentence: list[str],
                      finished: Sequence[list[str]] = (), bottoms: Sequence[float] = ()) -> list[tuple[str, dict]]:
    """The objects of the caption's full list (``(shape, attributes)``, left to right) that the noun phrase a
    relation sentence is writing may name: any of them for the first phrase; for the second (after ``"is"``),
    when the first names exactly one listed object, the others on the side the relation says ("left of": those
    to its right in the list, "right of": to its left; in front of: those whose box ends higher in the image,
    behind: lower, the k-th listed object having the k-th box from the left, whose bottom edge is
    ``bottoms[k]``; an object without a box may be either) that no relation of ``finished`` (the caption's
    finished relation sentences) already relates to it the same way, else any other."""
    full = [(shape, attrs) for shape, attrs in listed if attrs]
    if "is" not in sentence:
        return full
    cut = sentence.index("is")
    k = _one_listed(full, sentence[1:cut])
    if k is None:
        return full
    kind = _relation_kind(sentence[cut + 1:])
    side = _side(k, kind, len(full), bottoms)
    fresh = _partners(k, kind, _said_all(full, finished), side)
    return [full[j] for j in fresh or side] or [full[j] for j in range(len(full)) if j != k] or full


def _side(k: int, kind: str | None, n: int, bottoms: Sequence[float]) -> list[int]:
    """The indices among ``n`` listed objects that the relation ``kind`` may relate the k-th one to (see
    :func:`_relation_objects`)."""
    if kind == "left":
        return [j for j in range(n) if j > k]
    if kind == "right":
        return [j for j in range(n) if j < k]
    if kind in ("front", "behind") and k < len(bottoms):  # a nearer object stands lower in the image
        further = [j >= len(bottoms) or (bottoms[j] < bottoms[k] if kind == "front" else bottoms[j] > bottoms[k])
                   for j in range(n)]
        return [j for j in range(n) if j != k and further[j]]
    return [j for j in range(n) if j != k]


def _partners(k: int, kind: str | None, said: set[tuple], side: Sequence[int]) -> list[int]:
    """The objects of ``side`` (:func:`_side` of the k-th listed one) that no finished relation (``said``,
    :func:`_said_all`) already relates to it the same way."""
    return [j for j in side if (k, kind, j) not in said]


def _said_all(full: list[tuple[str, dict]], finished: Sequence[list[str]]) -> set[tuple]:
    """``(first, kind, second)`` of every finished relation sentence (:func:`_said`)."""
    return {_said(full, done) for done in finished}


def _names_one(listed: list[tuple[str, dict[str, str] | None]], shape: str, stated: Mapping[str, str]) -> bool:
    """Whether a relation's noun phrase ending with ``shape`` after the attributes ``stated`` names one object
    of the caption's full list, or objects no further attribute word tells apart (nothing more to say)."""
    fits = [attrs for s, attrs in listed if attrs and s == shape and _fits(attrs, stated)]
    return len(fits) <= 1 or all(attrs == fits[0] for attrs in fits)


def _last_kind(stated: Mapping[str, str]) -> int:
    """The place in :data:`PHRASE_ORDER` of the last attribute kind a noun phrase has stated (-1: none)."""
    return max((PHRASE_ORDER.index(kind) for kind in stated), default=-1)


def _nameable(full: list[tuple[str, dict]], shape: str, attrs: Mapping[str, str], stated: Mapping[str, str]) -> bool:
    """Whether a relation's noun phrase that has stated ``stated`` can still go on to name the listed object
    ``(shape, attrs)`` alone: the attribute kinds after the last stated one (in :data:`PHRASE_ORDER`) and the
    shape tell it apart from every other object of ``full`` that fits ``stated`` (identical twins aside)."""
    last = _last_kind(stated)
    later = PHRASE_ORDER[last + 1:]
    for other_shape, other in full:
        if other_shape == shape and _fits(other, stated) and other != attrs and all(
                other.get(kind) == attrs.get(kind) for kind in later):
            return False
    return True


def _one_listed(full: list[tuple[str, dict]], phrase: list[str]) -> int | None:
    """The index in ``full`` of the one listed object the noun phrase ``phrase`` (``["the", "red", "cube"]``)
    names, None when it names none or several."""
    shape = phrase[-1] if phrase else None
    stated = {ATTRIBUTE_WORDS[w]: w for w in phrase if w in ATTRIBUTE_WORDS}
    ones = [k for k, (s, attrs) in enumerate(full) if s == shape and _fits(attrs, stated)]
    return ones[0] if len(ones) == 1 else None


def _relation_kind(words: list[str]) -> str | None:
    """``"left" / "right" / "front" / "behind"`` for the words after a relation's "is", None before they say."""
    return next((kind for kind in ("left", "right", "front", "behind") if kind in words), None)


def _said(full: list[tuple[str, dict]], sentence: list[str]) -> tuple[int | None, str | None, int | None]:
    """``(first, kind, second)`` of a finished relation sentence: the listed objects its phrases name (indices in
    ``full``, None where a phrase names no one object) and the relation's kind."""
    if "is" not in sentence:
        return None, None, None
    cut = sentence.index("is")
    rest = sentence[cut + 1:]
    second = _open_phrase(rest) if "the" in rest else []  # "to the left of the red cube": after the last "the"
    return _one_listed(full, sentence[1:cut]), _relation_kind(rest), _one_listed(full, second) if second else None


def _stated(sentence: list[str]) -> dict[str, str]:
    """``{attribute kind: word}`` of the relation noun phrase being written."""
    return {ATTRIBUTE_WORDS[w]: w for w in _open_phrase(sentence) if w in ATTRIBUTE_WORDS}


def _fits(attrs: Mapping[str, str], stated: Mapping[str, str]) -> bool:
    return all(attrs.get(kind) == word for kind, word in stated.items())


def _open_phrase(sentence: list[str]) -> list[str]:
    """The words of the noun phrase being written: those after the sentence's last "the"."""
    last = max(i for i, w in enumerate(sentence) if w == "the")
    return sentence[last + 1:]


def _in_item(sentence: list[str]) -> bool:
    """Whether the sentence ends inside a full-list item: "a" / "an" and attribute words only since then."""
    for word in reversed(sentence):
        if word in ("a", "an"):
            return True
        if word not in ATTRIBUTE_WORDS:
            return False
    return False


def _list_items(sentence: list[str], shapes: Collection[str]) -> list[tuple[str, dict[str, str] | None]]:
    """The list items of a finished or partial non-relation sentence, in order: ``(shape, attributes)`` for a
    full item (``"a large red cube"``), ``(shape, None)`` for a by-shape group (``"two cubes"``)."""
    items = []
    for k, word in enumerate(sentence):
        shape = word[:-1] if word.endswith("s") and word[:-1] in shapes else word
        if shape not in shapes or k == 0:
            continue
        before = sentence[:k]
        if before[-1] in NUMBER_WORDS[1:]:
            items.append((shape, None))
        elif _in_item(before):
            start = max(i for i, w in enumerate(before) if w in ("a", "an"))
            items.append((shape, {ATTRIBUTE_WORDS[w]: w for w in before[start + 1:]}))
    return items


__all__ = ["RELATION_WORDS", "ShapesFromBoxes", "boxes_chain_applies", "boxes_left_to_right", "caption_through_boxes",
           "chain_caption_through_boxes", "classes_by_vote", "groups_left_to_right"]
