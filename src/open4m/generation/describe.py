"""Captions (or any sequence target) decoded from an ensemble of views of the image.

:func:`describe` stacks the image and its shifted views (:mod:`open4m.generation.views`) along the batch
axis and decodes the sequence once for all of them: at each step the views' next-token log-probabilities are
averaged and one token is chosen per image (``TargetSpec(views=...)`` of :mod:`open4m.generation.sampler`).
A caption decoded from one view commits to whatever that view's patch grid shows best; the ensemble writes
what the views agree on. Unlike the boxes of :func:`open4m.generation.boxes.detect`, the views are not
mirrored: a mirror would reverse the left-to-right lists and left / right relations of a world caption.
``openings`` forces each sequence to begin with given text (``TargetSpec(forced=...)``) and lets the model write
the rest: ``open4m eval --caption-count-from-boxes`` opens each world caption with the count of the model's own
boxes this way (shipped v8, nine views: count 0.827 -> 0.908; v7: 0.824 -> 0.892). ``banned`` keeps the model from
writing given tokens at given places: ``open4m eval --caption-shapes-from-boxes`` keeps a world caption's shape words
to the model's own boxes this way (:mod:`open4m.generation.caption_shapes`; v8, nine views, with the count as well:
colour and shape together 0.760 -> 0.864, shape 0.932 -> 0.957, relations 0.261 -> 0.627). Both are
``open4m eval``'s default for a model with boxes of world shapes.

On the shipped world model (v8, 1,000 val scenes, greedy, `open4m eval --tasks rgb->caption`), the image alone
vs with its eight 3 px shifts: object count 0.827 -> 0.827, colour 0.733 -> 0.757, shape 0.914 -> 0.928,
relations 0.212 -> 0.252, objects accounted for 0.589 -> 0.633 (v7: count 0.833 -> 0.824, colour 0.708 -> 0.730,
shape 0.913 -> 0.923; v5: count 0.752 -> 0.756, colour 0.648 -> 0.682, shape 0.896 -> 0.912; v4: count 0.723 ->
0.730, colour 0.619 -> 0.635, shape 0.879 -> 0.900); 33 s -> 219 s for the 1,000 captions on a 2-core CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from open4m import modalities
from open4m.generation.prompt import generate
from open4m.generation.sampler import TargetSpec
from open4m.generation.views import View, neighbour_shifts, shifted_views, stack_views

# The eight neighbours of the image moved by 3 px (world models: 4 px patches, so each view cuts the scene into
# patches 3/4 of a patch from the original's).
CAPTION_SHIFT = 3
CAPTION_SHIFTS = neighbour_shifts(CAPTION_SHIFT)


def describe(
    model,
    conditions: Mapping[str, object],
    target: str,
    *,
    text_tokenizer,
    tokenizers: Mapping[str, object] | None = None,
    shifts: Sequence[tuple[int, int]] = CAPTION_SHIFTS,
    temperature: float = 0.0,
    seed: int | Sequence[int] = 0,
    openings: Sequence[str] | None = None,
    banned: Callable[[int, list[int]], Sequence[int]] | None = None,
) -> list:
    """Sequence ``target`` (e.g. ``"caption@64"``) of every row of ``conditions`` (each with a batch axis: image
    pixels (B, C, H, W) or raw float images (B, H, W[, C]) with a tokenizer in ``tokenizers``; boxes, ``det``, as
    one list of box dicts per row, move with the image), decoded from the image and its views moved by each
    ``(dx, dy)`` of ``shifts`` (pixels; ``()`` = the image alone, the same as :func:`open4m.generation.generate`).
    ``temperature`` 0 is greedy; ``seed`` an int (row i: seed + i) or one per row. ``openings``: one text per row
    that its sequence must begin with (forced, e.g. a caption's count sentence; ``""`` leaves a row free), the rest
    decoded as usual. ``banned(i, ids)``: the token ids row ``i`` may not write after ``ids``
    (``TargetSpec(banned=...)``, e.g. :class:`open4m.generation.caption_shapes.ShapesFromBoxes`). Returns the
    decoded rows (strings for captions). Shifted conditions must share one size."""
    if modalities.get(target).kind != "sequence":
        raise ValueError(f"describe: {target!r} is not a sequence modality (captions, boxes); image targets "
                         "are decoded with generate()")
    views = [View(), *shifted_views(conditions, shifts, tokenizers, "describe")]
    stacked = stack_views(conditions, views, tokenizers, "describe")
    rows = _rows(stacked)
    seeds = [seed + i for i in range(rows // len(views))] if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) * len(views) != rows:
        raise ValueError(f"describe: {len(seeds)} seeds for {rows // len(views)} rows")
    forced = None
    if openings is not None:
        if len(openings) != len(seeds):
            raise ValueError(f"describe: {len(openings)} openings for {len(seeds)} rows")
        forced = [text_tokenizer.encode(text) if text else [] for text in openings] * len(views)
    result = generate(model, stacked, [TargetSpec(target, temperature=temperature, views=len(views), forced=forced,
                                                   banned=banned)],
                      tokenizers=tokenizers, text_tokenizer=text_tokenizer, seed=seeds * len(views))
    return list(result.decoded[target][: len(seeds)])


def _rows(conditions: Mapping[str, object]) -> int:
    sizes = {len(value) for value in conditions.values()}
    if len(sizes) != 1:
        raise ValueError(f"describe: every condition needs the same batch size, got {sorted(sizes)}")
    return sizes.pop()


__all__ = ["CAPTION_SHIFT", "CAPTION_SHIFTS", "describe"]
