"""Boxes, palettes and metadata as text: official strings, exact parse-back, and parsers that never raise."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from open4m.metadata_schema import OFFICIAL_METADATA, WORLD_METADATA, MetadataField, MetadataSchema
from open4m.sequences import (
    boxes_to_text,
    from_text,
    metadata_to_chunks,
    metadata_to_text,
    palette_to_text,
    text_to_boxes,
    text_to_metadata,
    text_to_palette,
    to_text,
)
from open4m.text import TextTokenizer

OFFICIAL_FILE = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / (
    "official-text-tokenizer-wordpiece-30k.json"
)
WORLD_CLASSES = ["sphere", "cube", "cylinder", "cone", "torus"]
COCO_SAMPLE = ["person", "wine glass", "potted plant", "traffic light", "hot dog", "wine"]
CLASSES = WORLD_CLASSES + COCO_SAMPLE
HYPOTHESIS = settings(max_examples=150, deadline=None)


@pytest.fixture(scope="module")
def tokenizers() -> list[TextTokenizer]:
    """A small tokenizer trained here, and the official one when its fixture is present."""
    corpus = [f"a {c} next to a {d}" for c in CLASSES for d in CLASSES]
    toks = [TextTokenizer.train(corpus, vocab_size=4400, class_names=CLASSES)]
    if OFFICIAL_FILE.is_file():
        toks.append(TextTokenizer.load(OFFICIAL_FILE))
    return toks


# --------------------------------------------------------------------------------- boxes

def test_boxes_official_string_and_order():
    boxes = [
        {"box": [0.4, 0.003, 0.5, 0.1], "class": "bottle"},  # xmin²+ymin² = 0.16
        {"box": [0.0, 0.25025, 0.42, 1.0], "class": "potted plant"},  # 0.0626
        {"box": [0.3, 0.3, 0.9, 0.9], "class": "wine glass", "score": 0.9},  # 0.18
        {"box": [0.25025, 0.0, 0.3, 0.2], "class": "cube"},  # 0.0626: equal key, keeps input order
    ]
    assert boxes_to_text(boxes) == (
        "v0=0 v1=250 v2=420 v3=999 potted plant v0=250 v1=0 v2=300 v3=200 cube "
        "v0=400 v1=3 v2=500 v3=100 bottle v0=300 v1=300 v2=899 v3=899 wine glass"
    )
    assert boxes_to_text([{"box": [0.5, 0.5, 0.5, 0.5], "class": "x"}]) == "v0=500 v1=500 v2=500 v3=500 x"
    assert boxes_to_text([]) == ""


@pytest.mark.parametrize("bad, message", [
    ({"box": [0.1, 0.1, 0.2]}, "det box 0: expected"),
    ({"box": [0.1, 0.1, 0.2], "class": "a"}, "4 finite numbers in"),
    ({"box": [0.1, 0.1, 1.2, 0.5], "class": "a"}, "in \\[0, 1\\]"),
    ({"box": [0.1, float("nan"), 0.2, 0.5], "class": "a"}, "finite"),
    ({"box": [0.3, 0.1, 0.2, 0.5], "class": "a"}, "x0 <= x1"),
    ({"box": "abcd", "class": "a"}, "4 numbers"),
    ({"box": [0.1, 0.1, 0.2, 0.5], "class": ""}, "non-empty name"),
    ({"box": [0.1, 0.1, 0.2, 0.5], "class": "v0=3"}, "not a value or special"),
    ({"box": [0.1, 0.1, 0.2, 0.5], "class": 7}, "'class' must be"),
])
def test_boxes_bad_input(bad, message):
    good = {"box": [0.0, 0.0, 1.0, 1.0], "class": "cube"}
    with pytest.raises(ValueError, match=message.replace("det box 0", "det box 1")):
        boxes_to_text([good, bad])


def test_boxes_parse_malformed_reports_what_was_dropped():
    boxes, report = text_to_boxes(
        "[S_1] v0=3 v1=4 v2=900 v3=5 sphere cube v0=10 v1=1 v2=3 v0=1 v1=2 v2=3 v3=4 dragon "
        "v0=9 v1=9 v2=1 v3=10 cone v0=1 v1=1 v2=2 v3=2 wine glass [EOS] [PAD] v0=1", CLASSES)
    assert boxes == [
        {"box": [3 / 999, 4 / 999, 900 / 999, 5 / 999], "class": "sphere"},
        {"box": [1 / 999, 1 / 999, 2 / 999, 2 / 999], "class": "wine glass"},
    ]
    assert [(d.fragment, d.reason) for d in report.dropped] == [
        ("v0=1", "after [EOS]"),
        ("[S_1]", "expected a box starting with v0=<0..999>"),
        ("cube", "stray words after the class name"),
        ("v0=10 v1=1 v2=3", "expected v3=<0..999>, got 'v0=1'"),
        ("v0=1 v1=2 v2=3 v3=4 dragon", "unknown class 'dragon'"),
        ("v0=9 v1=9 v2=1 v3=10 cone", "x0 > x1 or y0 > y1"),
    ]
    assert not report.ok and "dragon" in str(report)
    # without a class vocabulary any words are a class; a truncated last box is reported
    boxes, report = text_to_boxes("v0=0 v1=0 v2=10 v3=10 red ball v0=1 v1=1000 v2=3 v3=4 x v0=5", None)
    assert boxes == [{"box": [0.0, 0.0, 10 / 999, 10 / 999], "class": "red ball"}]
    assert [d.reason for d in report.dropped] == ["expected v1=<0..999>, got 'v1=1000'", "truncated box"]
    boxes, report = text_to_boxes("v0=01 v1=1 v2=2 v3=2 cube", CLASSES)  # "v0=01" is no value token
    assert boxes == [] and report.dropped[0].fragment == "v0=01 v1=1 v2=2 v3=2 cube"
    assert text_to_boxes("", CLASSES) == ([], text_to_boxes("[PAD] [PAD]", CLASSES)[1])
    assert text_to_boxes("", CLASSES)[1].ok


def test_boxes_longest_class_match_and_case():
    boxes, report = text_to_boxes("v0=1 v1=1 v2=2 v3=2 Wine Glass v0=1 v1=1 v2=2 v3=2 wine", CLASSES)
    assert [b["class"] for b in boxes] == ["wine glass", "wine"] and report.ok
    boxes, report = text_to_boxes("v0=1 v1=1 v2=2 v3=2 t - shirt", ["T-shirt"])
    assert [b["class"] for b in boxes] == ["T-shirt"] and report.ok


boxes_strategy = st.lists(
    st.tuples(
        st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.sampled_from(CLASSES)
    ).map(lambda t: {"box": [min(t[0], t[2]), min(t[1], t[3]), max(t[0], t[2]), max(t[1], t[3])], "class": t[4]}),
    max_size=12,
)


@HYPOTHESIS
@given(boxes=boxes_strategy)
def test_boxes_serialise_parse_is_identity_within_binning(tokenizers, boxes):
    text = boxes_to_text(boxes)
    expected = sorted(boxes, key=lambda b: b["box"][0] ** 2 + b["box"][1] ** 2)
    for source in [text] + [tok.decode(tok.encode(text)) for tok in tokenizers]:
        parsed, report = text_to_boxes(source, CLASSES)
        assert report.ok, report
        assert [b["class"] for b in parsed] == [b["class"] for b in expected]
        for got, want in zip(parsed, expected, strict=True):
            assert all(abs(g - w) <= 0.5 / 999 + 1e-12 for g, w in zip(got["box"], want["box"], strict=True))
        # re-serialising gives the same boxes (their order may differ: it is decided before binning)
        again, _ = text_to_boxes(boxes_to_text(parsed), CLASSES)
        assert sorted((b["box"], b["class"]) for b in again) == sorted((b["box"], b["class"]) for b in parsed)


# --------------------------------------------------------------------------------- palettes

def test_palette_official_string_and_errors():
    assert palette_to_text([[255, 0, 10], [3, 4.4, 5.6]]) == "v1=2 v0=255 v0=0 v0=10 v0=3 v0=4 v0=6"
    bad_inputs = [([], "1..999 colours"), ([[1, 2]], "colour 0: expected 3 components"), ([[1, 2, 256]], "0..255"),
                  ([[1, 2, float("nan")]], "0..255"), ([5], "expected \\[r, g, b\\]")]
    for bad, message in bad_inputs:
        with pytest.raises(ValueError, match=message):
            palette_to_text(bad)


def test_palette_parse_malformed():
    colors, report = text_to_palette("v1=2 v0=3 v0=4 v0=300 v0=1 v0=2 v0=3 hello v0=7 v0=8 v0=9 v0=1 [EOS] v0=5")
    assert colors == [[1, 2, 3], [7, 8, 9]]
    assert [(d.fragment, d.reason) for d in report.dropped] == [
        ("v0=5", "after [EOS]"), ("v0=3 v0=4 v0=300", "component above 255"),
        ("hello", "not a colour component v0=<0..255>"), ("v0=1", "incomplete colour (expected 3 components)"),
    ]
    colors, report = text_to_palette("v0=1 v0=2 v0=3 v0=4 v0=5 v0=6")
    assert colors == [[1, 2, 3], [4, 5, 6]] and [d.reason for d in report.dropped] == [
        "missing the palette size v1=<k> at the start"]
    colors, report = text_to_palette("v1=1 v0=1 v0=2 v0=3 v0=4 v0=5 v0=6")
    assert colors == [[1, 2, 3]] and report.dropped[0].reason == "more colours than the size v1=1"
    colors, report = text_to_palette("v1=3 v0=1 v0=2 v0=3")
    assert colors == [[1, 2, 3]] and report.dropped[0].reason == "size says 3 colours, found 1 valid"


@HYPOTHESIS
@given(colors=st.lists(st.lists(st.integers(0, 255), min_size=3, max_size=3), min_size=1, max_size=7))
def test_palette_serialise_parse_is_identity(tokenizers, colors):
    text = palette_to_text(colors)
    assert len(text.split()) == 1 + 3 * len(colors)
    for source in [text] + [tok.decode(tok.encode(text)) for tok in tokenizers]:
        parsed, report = text_to_palette(source)
        assert parsed == colors and report.ok, report


# --------------------------------------------------------------------------------- metadata

SPEC_TYPE_IDS = [  # OFFICIAL-4M-SPEC §1.4, in type-id order
    "original_width", "original_height", "caption_n_chars", "caption_n_words", "caption_n_sentences", "n_humans",
    "n_sam_instances", "n_coco_instances", "coco_instance_diversity", "colorfulness", "brightness", "contrast",
    "saturation", "entropy", "walkability", "objectness", "semantic_diversity", "geometric_complexity",
    "occlusion_score", "watermark_score", "aesthetic_score",
]


def test_metadata_official_type_ids_and_bins():
    assert {f.name: f.type_id for f in OFFICIAL_METADATA.fields} == {n: i for i, n in enumerate(SPEC_TYPE_IDS)}
    md = {"original_width": 640, "original_height": 31, "n_humans": 1500, "brightness": 120.3, "contrast": 200,
          "colorfulness": -3.0, "occlusion_score": 0.1, "watermark_score": 0.5, "aesthetic_score": 4.49}
    # by hand from the official formulas: 640//32, 31//32, clip 999, int(120.3/255*49), clip→49, clip→0,
    # int(0.1/0.25*49), 0.5 >= 0.5, 4.49 < 4.5
    assert metadata_to_chunks(md, OFFICIAL_METADATA) == [
        "v1=0 v0=20", "v1=1 v0=0", "v1=5 v0=999", "v1=10 v0=23", "v1=11 v0=49", "v1=9 v0=0", "v1=18 v0=19",
        "v1=19 v0=1", "v1=20 v0=0",
    ]
    assert metadata_to_text({"n_objects": 4, "n_object_classes": 2}) == "v1=7 v0=4 v1=8 v0=2"
    assert metadata_to_text({"n_coco_instances": 4}) == "v1=7 v0=4"  # official name accepted as an alias


@pytest.mark.parametrize("schema", [OFFICIAL_METADATA, WORLD_METADATA])
def test_metadata_every_bin_decodes_into_itself(schema):
    for f in schema.fields:
        values = [f.from_bin(b) for b in range(f.num_bins)]
        assert [f.to_bin(v) for v in values] == list(range(f.num_bins)), f.name
        assert values == sorted(values)
        if f.kind == "range":
            assert values[0] > f.vmin and values[-1] == f.vmax


def test_metadata_bad_input():
    with pytest.raises(ValueError, match="unknown key 'n_cats'; known keys: .*n_objects"):
        metadata_to_text({"n_cats": 3})
    for bad in (float("nan"), float("inf"), "3", None, True):
        with pytest.raises(ValueError, match="'brightness': expected a finite number"):
            metadata_to_text({"brightness": bad})
    with pytest.raises(ValueError, match="unique"):
        MetadataSchema((MetadataField("a", 1, "count"), MetadataField("b", 1, "count")))
    with pytest.raises(ValueError, match="own bin"):
        MetadataField("w", 3, "thresholds", thresholds=(0.5,), representatives=(0.7, 0.8))


def test_metadata_parse_malformed():
    md, report = text_to_metadata(
        "v0=1 v1=99 v0=3 v1=9 v0=60 v1=10 v1=11 v0=5 v0=6 v0=2 v1=7 v0=3 [S_3] v1=10 v0=49 v1=7 v0=8 v0=1 "
        "v1=10 v0=3 [EOS] v1=5 v0=1")
    assert md == {"n_objects": 3, "brightness": 255.0}
    exactly = "expected exactly 'v1=<type id> v0=<value>'"
    assert [(d.fragment, d.reason) for d in report.dropped] == [
        ("v1=5 v0=1", "after [EOS]"),
        ("[S_3]", "special token inside metadata"),
        ("v0=1", "expected v1=<type id>"),
        ("v1=99 v0=3", "unknown metadata type id 99"),
        ("v1=9 v0=60", "colorfulness: bin 60 outside 0..49"),
        ("v1=10", exactly),
        ("v1=11 v0=5 v0=6 v0=2", exactly),
        ("v1=7 v0=8 v0=1", exactly),
        ("v1=10 v0=3", "brightness repeated"),
    ]
    assert text_to_metadata("v1=7 v0=2", OFFICIAL_METADATA)[0] == {"n_coco_instances": 2}


world_metadata = st.fixed_dictionaries({}, optional={
    "n_objects": st.integers(0, 999), "n_object_classes": st.integers(0, 20),
    "brightness": st.floats(0, 255), "contrast": st.floats(0, 127), "colorfulness": st.floats(0, 150),
    "saturation": st.floats(0, 255), "entropy": st.floats(0, 10), "original_width": st.integers(0, 4096),
    "caption_n_words": st.integers(0, 60), "aesthetic_score": st.floats(0, 10),
})


@HYPOTHESIS
@given(md=world_metadata)
def test_metadata_serialise_parse_is_identity_within_binning(tokenizers, md):
    text = metadata_to_text(md)
    for source in [text] + [tok.decode(tok.encode(text)) for tok in tokenizers]:
        parsed, report = text_to_metadata(source)
        assert report.ok, report
        assert set(parsed) == set(md)
        for name, value in md.items():
            f = WORLD_METADATA.lookup(name)
            assert f.to_bin(parsed[name]) == f.to_bin(value)  # same bin
            if f.kind == "count":
                assert parsed[name] == value
            elif f.kind == "range":
                assert abs(parsed[name] - value) <= 0.5 * (f.vmax - f.vmin) / (f.bins - 1) + 1e-9
            elif f.kind == "image_dim":
                assert abs(parsed[name] - value) <= 16
        assert sorted(metadata_to_chunks(parsed)) == sorted(metadata_to_chunks(md))


# --------------------------------------------------------------------------------- token soup

SOUP_WORDS = (
    [f"v{a}={v}" for a in range(5) for v in (0, 1, 2, 7, 49, 50, 255, 256, 998, 999, 1000, 12345)]
    + ["[PAD]", "[EOS]", "[UNK]", "[SOS]", "[S_0]", "[S_1]", "[S_199]", "=", "v0", "v0=", "v=1", "v0=-1", "v0=007"]
    + ["##ing"]
    + CLASSES + ["wine", "glass", "potted", "plant", "dragon", "Ünïcode", "日本", ""]
)
soup_text = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(st.sampled_from(SOUP_WORDS), st.text(max_size=6)), max_size=60).map(" ".join),
)


def _check_valid_parts(text: str) -> None:
    boxes, rb = text_to_boxes(text, CLASSES)
    for b in boxes:
        x0, y0, x1, y1 = b["box"]
        assert 0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1 and b["class"] in CLASSES
    free_boxes, _ = text_to_boxes(text, None)
    assert all(b["class"] for b in free_boxes)
    colors, rp = text_to_palette(text)
    assert all(len(c) == 3 and all(0 <= x <= 255 for x in c) for c in colors)
    md, rm = text_to_metadata(text, OFFICIAL_METADATA)
    for name, value in md.items():
        f = OFFICIAL_METADATA.lookup(name)
        assert value in [f.from_bin(b) for b in range(f.num_bins)]
    for report in (rb, rp, rm):
        assert all(isinstance(d.fragment, str) and d.reason for d in report.dropped)


@HYPOTHESIS
@given(text=soup_text)
def test_parsers_never_raise_on_text_soup(text):
    _check_valid_parts(text)


@HYPOTHESIS
@given(data=st.data())
def test_parsers_never_raise_on_decoded_token_soup(tokenizers, data):
    for tok in tokenizers:
        ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=80))
        _check_valid_parts(tok.decode(ids))
        _check_valid_parts(tok.decode(ids, skip_special_tokens=True))


def test_parsers_accept_non_strings_without_raising():
    for junk in (None, 3, [1, 2], b"v0=1"):
        for parse in (text_to_boxes, text_to_palette, text_to_metadata):
            value, report = parse(junk)
            assert not value and not report.ok and "expected a decoded string" in report.dropped[0].reason


def test_structured_strings_are_single_value_tokens(tokenizers):
    text = " ".join([boxes_to_text([{"box": [0.1, 0.2, 0.3, 0.4], "class": "wine glass"}]),
                     palette_to_text([[1, 2, 3]]), metadata_to_text({"brightness": 100.0})])
    for tok in tokenizers:
        ids = tok.encode(text)
        assert len(ids) == 5 + 4 + 2  # every v-token and the multi-word class is one id
        assert [tok.value_of(i) for i in ids[:4]] == [(0, 100), (1, 200), (2, 300), (3, 400)]
        assert tok.id_to_token(ids[4]) == "wine glass"
        assert math.isclose(text_to_metadata(tok.decode(ids[9:]))[0]["brightness"], 255 * 19.5 / 49)


def test_to_text_and_from_text_by_modality_name():
    raw = {
        "caption": "a red cube left of a sphere",
        "det": [{"box": [0.1, 0.2, 0.3, 0.4], "class": "cube"}],
        "color_palette": [[10, 20, 30]],
        "metadata": {"n_objects": 2, "brightness": 255.0},
    }
    for modality, value in raw.items():
        text = to_text(modality, value)
        parsed, report = from_text(modality, text + " [EOS] [PAD]", class_names=CLASSES)
        assert report.ok, (modality, report)
        if modality == "det":
            assert parsed == [{"box": [100 / 999, 200 / 999, 300 / 999, 400 / 999], "class": "cube"}]
        else:
            assert parsed == value, modality
    with pytest.raises(ValueError, match="no text serialisation for modality 'tok_rgb@224'"):
        to_text("tok_rgb@224", [1, 2])
    with pytest.raises(ValueError, match="caption: expected a str"):
        to_text("caption", 3)
    with pytest.raises(ValueError, match="metadata: expected a dict"):
        to_text("metadata", [1])


def test_serialisers_accept_numpy_values():
    np = pytest.importorskip("numpy")
    md = {"brightness": np.float32(100.0), "n_objects": np.int64(3), "original_width": np.uint16(640)}
    assert metadata_to_text(md) == "v1=10 v0=19 v1=7 v0=3 v1=0 v0=20"
    assert palette_to_text(np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8)) == "v1=2 v0=1 v0=2 v0=3 v0=4 v0=5 v0=6"
    box = {"box": np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32), "class": "cube"}
    assert boxes_to_text([box]) == "v0=100 v1=200 v2=300 v3=400 cube"


def test_boxes_take_the_score_of_their_class_word_and_dropped_boxes_shift_nothing():
    text = "v0=10 v1=20 v2=30 v3=40 cube v0=50 v1=5 v2=40 v3=60 cone [S_3] v0=1 v1=2 v2=3 v3=4 sphere [EOS] x"
    scores = [None, 0.1, 0.2, 0.3, 0.9, 0.5, 0.5, 0.5, 0.5, 0.8, 0.4, 0.1, 0.1, 0.1, 0.1, 0.7, None, None]
    boxes, report = text_to_boxes(text, WORLD_CLASSES, scores)
    # the second box has x0 > x1 and is dropped; the sentinel and what follows [EOS] are reported
    assert [(b["class"], b["score"]) for b in boxes] == [("cube", 0.9), ("sphere", 0.7)]
    assert not report.ok
    assert "score" not in text_to_boxes(text, WORLD_CLASSES)[0][0]
    with pytest.raises(ValueError, match="word scores"):
        text_to_boxes(text, WORLD_CLASSES, scores[:-1])
    # a None score (a given word) leaves the box unscored
    scores[4] = None
    assert "score" not in text_to_boxes(text, WORLD_CLASSES, scores)[0][0]


def test_word_starts_name_the_token_each_decoded_word_begins_at(tokenizers):
    for tok in tokenizers:
        ids = tok.encode("v0=5 v1=6 v2=7 v3=8 potted plant, a wine glass.") + [tok.eos_id]
        words = tok.decode(ids).split()
        starts = tok.word_starts(ids)
        assert len(starts) == len(words) and starts == sorted(starts) and starts[0] == 0
        for i, k in enumerate(starts):  # word i appears exactly when token k is decoded
            assert len(tok.decode(ids[:k]).split()) <= i < len(tok.decode(ids[: k + 1]).split())
        plant = words.index("plant,") if "plant," in words else words.index("plant")
        assert starts[plant] == starts[plant - 1]  # a two-word class name is one token
        assert tok.word_starts([]) == []
