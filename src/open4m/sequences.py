"""Structured modalities as text: boxes, colour palettes and metadata (OFFICIAL-4M-SPEC §1.4, §5.4).

Each serialiser writes the official string built from value tokens (``v0=..``..``v3=..``); the
text tokenizer then turns it into ids. Each parser reads such a string back, typically
``TextTokenizer.decode(ids)`` of what a model generated, and never raises: it returns the valid
part and a :class:`ParseReport` of every fragment it dropped and why.

- det (Pix2Seq): ``v0=xmin v1=ymin v2=xmax v3=ymax <class>`` per box, coordinates ``round(c*999)``,
  boxes ordered by ascending ``xmin² + ymin²`` (the official ``dist_to_orig`` order).
- color_palette: ``v1=<k>`` then ``v0=<r> v0=<g> v0=<b>`` for each of the k colours.
- metadata: ``v1=<type id> v0=<bin>`` per entry; type ids and binning live in ``metadata_schema.py``.

Special tokens in a parsed string: ``[PAD]`` is ignored, ``[EOS]`` ends the sequence, anything
else (sentinels, ``[UNK]``, ``[SOS]``) is dropped and reported.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from open4m.metadata_schema import WORLD_METADATA, MetadataSchema

COORD_BINS = 1000
_VALUE = re.compile(r"v([0-9])=(0|[1-9][0-9]{0,4})")
_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class Dropped:
    """One fragment a parser could not use: the words, and why."""

    fragment: str
    reason: str


@dataclass
class ParseReport:
    """What a parser dropped. Empty (``ok``) when the whole string was valid."""

    dropped: list[Dropped] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.dropped

    def drop(self, words: Sequence[str], reason: str) -> None:
        self.dropped.append(Dropped(" ".join(words), reason))

    def __str__(self) -> str:
        if self.ok:
            return "nothing dropped"
        return "; ".join(f"dropped {d.fragment!r}: {d.reason}" for d in self.dropped)


def _value(word: str) -> tuple[int, int] | None:
    """``(axis, value)`` of a value-token word such as ``v2=417``; ``None`` otherwise."""
    m = _VALUE.fullmatch(word)
    return None if m is None else (int(m.group(1)), int(m.group(2)))


def _words(text: str, report: ParseReport) -> list[str]:
    """Whitespace-split ``text``: drop ``[PAD]``, stop at ``[EOS]``, keep other words for the parser."""
    return [w for _, w in _indexed_words(text, report)]


def _indexed_words(text: str, report: ParseReport) -> list[tuple[int, str]]:
    """:func:`_words` with each word's index in ``text.split()``."""
    if not isinstance(text, str):
        report.drop([repr(text)[:40]], f"expected a decoded string, got {type(text).__name__}")
        return []
    words = text.split()
    out: list[tuple[int, str]] = []
    for i, w in enumerate(words):
        if w == "[EOS]":
            rest = [x for x in words[i + 1 :] if x != "[PAD]"]
            if rest:
                report.drop(rest, "after [EOS]")
            break
        if w != "[PAD]":
            out.append((i, w))
    return out


def _is_special(word: str) -> bool:
    return word.startswith("[") and word.endswith("]") and len(word) > 2


def canonical_words(text: str) -> str:
    """Lower-case ``text`` with punctuation split off, as the tokenizer's decode writes it."""
    return " ".join(_WORD.findall(text.lower()))


# --------------------------------------------------------------------------------- boxes


def quantize_coord(c: float) -> int:
    """Bin a normalised coordinate in [0, 1] to 0..999: ``round(c * 999)`` (Python rounding, as official)."""
    return round(c * (COORD_BINS - 1))


def dequantize_coord(b: int) -> float:
    """Coordinate of bin ``b``: ``b / 999`` (within ``0.5/999`` of every coordinate in the bin)."""
    return b / (COORD_BINS - 1)


def _checked_box(i: int, item: Mapping) -> tuple[list[float], str]:
    if not isinstance(item, Mapping) or "box" not in item or "class" not in item:
        raise ValueError(f"det box {i}: expected {{'box': [x0, y0, x1, y1], 'class': str}}, got {item!r}")
    box, cls = item["box"], item["class"]
    try:
        coords = [float(c) for c in box]
    except (TypeError, ValueError):
        raise ValueError(f"det box {i}: 'box' must be 4 numbers, got {box!r}") from None
    if len(coords) != 4 or not all(math.isfinite(c) and 0.0 <= c <= 1.0 for c in coords):
        raise ValueError(f"det box {i}: 'box' must be 4 finite numbers in [0, 1] (normalised), got {box!r}")
    if coords[0] > coords[2] or coords[1] > coords[3]:
        raise ValueError(f"det box {i}: expected x0 <= x1 and y0 <= y1, got {box!r}")
    if not isinstance(cls, str) or not canonical_words(cls) or any(_value(w) or _is_special(w) for w in cls.split()):
        raise ValueError(f"det box {i}: 'class' must be a non-empty name (not a value or special token), got {cls!r}")
    return coords, cls


def boxes_to_text(boxes: Iterable[Mapping]) -> str:
    """Serialise boxes Pix2Seq style, ordered by ascending ``xmin² + ymin²`` (stable).

    Args:
        boxes: ``[{"box": [x0, y0, x1, y1], "class": str}, ...]`` with coordinates normalised to [0, 1].

    Returns:
        ``"v0=.. v1=.. v2=.. v3=.. <class> v0=.. ..."``; ``""`` for no boxes.
    """
    checked = [_checked_box(i, b) for i, b in enumerate(boxes)]
    checked.sort(key=lambda cb: cb[0][0] ** 2 + cb[0][1] ** 2)
    parts = []
    for coords, cls in checked:
        parts += [f"v{a}={quantize_coord(c)}" for a, c in enumerate(coords)]
        parts.append(" ".join(cls.split()))
    return " ".join(parts)


def text_to_boxes(
    text: str, class_names: Sequence[str] | None = None, word_scores: Sequence[float | None] | None = None
) -> tuple[list[dict], ParseReport]:
    """Parse a det string back into boxes; never raises.

    Args:
        text: a serialised det string, usually ``TextTokenizer.decode`` of model output.
        class_names: the allowed classes (multi-word allowed, matched case-insensitively, longest first).
            ``None`` accepts any words between a box's ``v3`` and the next ``v0`` as its class.
        word_scores: optional, one per word of ``text.split()`` (e.g. the probability the model gave the
            token the word starts at); each box then gets the score of its class name's first word as
            ``"score"`` (Pix2Seq's detection confidence: the class token's likelihood), when not None.

    Returns:
        ``(boxes, report)``: boxes as ``{"box": [x0, y0, x1, y1], "class": str[, "score": float]}`` in
        string order, with coordinates ``bin / 999``; the report lists every dropped fragment (bad or
        out-of-order coordinates, ``x0 > x1``, unknown or missing class, stray words, special tokens).
    """
    report = ParseReport()
    indexed = _indexed_words(text, report)
    if word_scores is not None and isinstance(text, str) and len(word_scores) != len(text.split()):
        raise ValueError(f"text_to_boxes: {len(word_scores)} word scores for {len(text.split())} words")
    words = [w for _, w in indexed]
    by_canon = {canonical_words(c): c for c in (class_names or ()) if isinstance(c, str) and canonical_words(c)}
    longest = max((len(c.split()) for c in by_canon), default=0)
    boxes: list[dict] = []
    i, n = 0, len(words)
    while i < n:
        coords, j = _read_coords(words, i)
        if len(coords) < 4:
            k = _next_box_start(words, max(j, i + 1))
            if not coords:
                reason = "expected a box starting with v0=<0..999>"
            elif j < n:
                reason = f"expected v{len(coords)}=<0..999>, got {words[j]!r}"
            else:
                reason = "truncated box"
            report.drop(words[i:k], reason)
            i = k
            continue
        k = j  # the class name runs up to the next value or special token
        while k < n and _value(words[k]) is None and not _is_special(words[k]):
            k += 1
        name_words = words[j:k]
        cls, used = _match_class(name_words, by_canon, longest, class_names is not None)
        if cls is None:
            report.drop(words[i:k], f"unknown class {' '.join(name_words)!r}" if name_words else "missing class")
        elif coords[0] > coords[2] or coords[1] > coords[3]:
            report.drop(words[i : j + used], "x0 > x1 or y0 > y1")
        else:
            box = {"box": [dequantize_coord(c) for c in coords], "class": cls}
            score = word_scores[indexed[j][0]] if word_scores is not None else None
            if score is not None:
                box["score"] = float(score)
            boxes.append(box)
        if cls is not None and used < len(name_words):
            report.drop(name_words[used:], "stray words after the class name")
        i = k
    return boxes, report


def _read_coords(words: list[str], i: int) -> tuple[list[int], int]:
    """Up to four coordinates ``v0 v1 v2 v3`` (in that order, 0..999) from ``words[i:]``, and where they end."""
    coords: list[int] = []
    j = i
    while j < len(words) and len(coords) < 4:
        v = _value(words[j])
        if v is None or v[0] != len(coords) or v[1] >= COORD_BINS:
            break
        coords.append(v[1])
        j += 1
    return coords, j


def _next_box_start(words: list[str], k: int) -> int:
    """Index of the next plausible box start (a ``v0=`` word) at or after ``k``."""
    while k < len(words) and not ((v := _value(words[k])) is not None and v[0] == 0 and v[1] < COORD_BINS):
        k += 1
    return k


def _match_class(
    words: list[str], by_canon: dict[str, str], longest: int, restricted: bool
) -> tuple[str | None, int]:
    """The class at the start of ``words`` and how many words it used; ``(None, 0)`` if none."""
    if not words:
        return None, 0
    if not restricted:
        return " ".join(words), len(words)
    for size in range(min(longest, len(words)), 0, -1):
        # compare in canonical form: decode may split punctuation ("t-shirt" -> "t - shirt")
        name = by_canon.get(canonical_words(" ".join(words[:size])))
        if name is not None:
            return name, size
    return None, 0


# --------------------------------------------------------------------------------- palettes


def palette_to_text(colors: Iterable[Sequence[float]]) -> str:
    """Serialise a colour palette: ``v1=<k>`` then ``v0=<r> v0=<g> v0=<b>`` per colour.

    Args:
        colors: k colours as ``[r, g, b]`` with components in 0..255 (rounded to ints), 1 <= k <= 999.
    """
    flat: list[int] = []
    colors = list(colors)
    if not 1 <= len(colors) < COORD_BINS:
        raise ValueError(f"color_palette: expected 1..{COORD_BINS - 1} colours, got {len(colors)}")
    for i, color in enumerate(colors):
        try:
            comps = [float(c) for c in color]
        except (TypeError, ValueError):
            raise ValueError(f"color_palette colour {i}: expected [r, g, b], got {color!r}") from None
        if len(comps) != 3 or not all(math.isfinite(c) and -0.5 < c < 255.5 for c in comps):
            raise ValueError(f"color_palette colour {i}: expected 3 components in 0..255, got {color!r}")
        flat += [round(c) for c in comps]
    return " ".join([f"v1={len(colors)}"] + [f"v0={c}" for c in flat])


def text_to_palette(text: str) -> tuple[list[list[int]], ParseReport]:
    """Parse a palette string back into ``[[r, g, b], ...]``; never raises.

    The first word should be ``v1=<k>``; complete ``v0`` triples with components <= 255 are kept,
    at most k of them. Missing or mismatched counts, stray words and incomplete colours are reported.
    """
    report = ParseReport()
    words = _words(text, report)
    count: int | None = None
    if words and (v := _value(words[0])) is not None and v[0] == 1:
        count = v[1]
        words = words[1:]
        if count == 0:
            report.drop([f"v1={count}"], "palette size 0")
    elif words:
        report.drop([], "missing the palette size v1=<k> at the start")
    colors: list[list[int]] = []
    triple: list[str] = []
    for w in words:
        v = _value(w)
        if v is None or v[0] != 0:
            report.drop([w], "not a colour component v0=<0..255>")
            continue
        triple.append(w)
        if len(triple) == 3:
            comps = [_value(t)[1] for t in triple]
            if max(comps) > 255:
                report.drop(triple, "component above 255")
            elif count is not None and len(colors) >= count:
                report.drop(triple, f"more colours than the size v1={count}")
            else:
                colors.append(comps)
            triple = []
    if triple:
        report.drop(triple, "incomplete colour (expected 3 components)")
    if count and len(colors) < count:
        report.drop([], f"size says {count} colours, found {len(colors)} valid")
    return colors, report


# --------------------------------------------------------------------------------- metadata


def metadata_to_chunks(metadata: Mapping[str, float], schema: MetadataSchema | None = None) -> list[str]:
    """Serialise metadata to one ``"v1=<type id> v0=<bin>"`` chunk per entry, in the dict's order.

    The official training code shuffles the chunks and span-masks them chunk-wise (§4.4); both are
    the masking code's job. ``schema`` defaults to :data:`open4m.metadata_schema.WORLD_METADATA`.
    """
    schema = schema or WORLD_METADATA
    chunks = []
    for name, value in metadata.items():
        f = schema.lookup(name)
        chunks.append(f"v1={f.type_id} v0={f.to_bin(value)}")
    return chunks


def metadata_to_text(metadata: Mapping[str, float], schema: MetadataSchema | None = None) -> str:
    """The chunks of :func:`metadata_to_chunks` joined by spaces."""
    return " ".join(metadata_to_chunks(metadata, schema))


def text_to_metadata(text: str, schema: MetadataSchema | None = None) -> tuple[dict[str, float], ParseReport]:
    """Parse a metadata string back into ``{name: value}`` (values are bin centres); never raises.

    Chunks must be exactly ``v1=<known type id> v0=<bin in range>``; a repeated type keeps its first
    value. Keys come out in the schema's order.
    """
    schema = schema or WORLD_METADATA
    report = ParseReport()
    words = _words(text, report)
    chunks: list[list[str]] = []
    for w in words:
        v = _value(w)
        if _is_special(w):
            report.drop([w], "special token inside metadata")
        elif (v is not None and v[0] == 1) or not chunks:
            chunks.append([w])
        else:
            chunks[-1].append(w)
    found: dict[str, float] = {}
    by_type_id = schema.by_type_id
    for chunk in chunks:
        head, value = _value(chunk[0]), _value(chunk[1]) if len(chunk) > 1 else None
        f = by_type_id.get(head[1]) if head and head[0] == 1 else None
        if head is None or head[0] != 1:
            report.drop(chunk, "expected v1=<type id>")
        elif f is None:
            report.drop(chunk, f"unknown metadata type id {head[1]}")
        elif len(chunk) != 2 or value is None or value[0] != 0:
            report.drop(chunk, "expected exactly 'v1=<type id> v0=<value>'")
        elif not 0 <= value[1] < f.num_bins:
            report.drop(chunk, f"{f.name}: bin {value[1]} outside 0..{f.num_bins - 1}")
        elif f.name in found:
            report.drop(chunk, f"{f.name} repeated")
        else:
            found[f.name] = f.from_bin(value[1])
    return {f.name: found[f.name] for f in schema.fields if f.name in found}, report




# --------------------------------------------------------------------------------- by modality name


def to_text(modality: str, raw: object) -> str:
    """Serialise one raw value of a text-like modality: ``caption`` (str), ``det`` (boxes),
    ``color_palette`` (colours) or ``metadata`` (dict, world schema). A sized variant (``caption@64``)
    serialises as its base modality."""
    base = modality.split("@")[0]
    if base == "caption":
        if not isinstance(raw, str):
            raise ValueError(f"caption: expected a str, got {type(raw).__name__}")
        return raw
    if base == "det":
        return boxes_to_text(raw)  # type: ignore[arg-type]
    if base == "color_palette":
        return palette_to_text(raw)  # type: ignore[arg-type]
    if base == "metadata":
        if not isinstance(raw, Mapping):
            raise ValueError(f"metadata: expected a dict of numbers, got {type(raw).__name__}")
        return metadata_to_text(raw)
    raise ValueError(f"no text serialisation for modality {modality!r}; known: caption, det, color_palette, metadata")


def from_text(modality: str, text: str, class_names: Sequence[str] | None = None) -> tuple[object, ParseReport]:
    """Parse text of a text-like modality back (see :func:`to_text`); never raises for known modalities."""
    base = modality.split("@")[0]
    if base == "caption":
        report = ParseReport()
        return " ".join(_words(text, report)), report
    if base == "det":
        return text_to_boxes(text, class_names)
    if base == "color_palette":
        return text_to_palette(text)
    if base == "metadata":
        return text_to_metadata(text)
    raise ValueError(f"no text serialisation for modality {modality!r}; known: caption, det, color_palette, metadata")
