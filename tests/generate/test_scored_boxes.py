"""Token scores of generated sequences, scored boxes, and boxes fused from several decodes (open4m.generation.boxes)."""

import numpy as np
import pytest
import torch

from generation_helpers import caption_state, moved_image, small_model, text_tokenizer
from open4m.data.world import render_scene
from open4m.evaluation.run import load_model_and_tokenizers
from open4m.generation import Partial, Sampler, TargetSpec, generate
from open4m.generation.boxes import MIRROR_SEED_OFFSET, SHIFTS, detect, fuse_boxes, neighbour_shifts
from open4m.pixels import to_model_pixels
from open4m.shipped import world_model_dir

# A row decoded beside other rows (another batch, other views) runs through GEMM kernels of other sizes: its
# scores and fused coordinates agree to float rounding, not bit for bit (seen: 1.4e-6 on an AMD EPYC host).
TOL = 1e-4


@pytest.fixture(scope="module")
def world():
    return load_model_and_tokenizers(world_model_dir())


@pytest.fixture(scope="module")
def world_rgb():
    return np.stack([render_scene(10**9 + k)["rgb"] for k in range(3)])


def _box(x0, y0, x1, y1, cls="cube", score=1.0):
    return {"box": [x0, y0, x1, y1], "class": cls, "score": score}


# ------------------------------------------------------------------------------------------ token scores


def test_cached_and_uncached_decoding_give_the_same_token_scores():
    model, tok = small_model(), text_tokenizer()
    rgb = torch.randint(0, 16384, (2, 196), generator=torch.Generator().manual_seed(3))
    spec = [TargetSpec("caption", temperature=0.7, max_new_tokens=8)]
    scores = []
    for cache in (True, False):
        sampler = Sampler(model, tok, use_cache=cache)
        state = sampler.generate(caption_state(tok, rgb, [0, 5], length=10), spec, seed=5)
        scores.append(sampler.token_scores["caption"])
        rows = [state["caption"]["tensor"][i][~state["caption"]["input_mask"][i]] for i in range(2)]
        assert [len(s) for s in scores[-1]] == [len(r) for r in rows]  # one per id, [EOS] included
    for a, b in zip(*scores, strict=True):
        assert [x is None for x in a] == [x is None for x in b]
        np.testing.assert_allclose([x for x in a if x is not None], [x for x in b if x is not None], rtol=1e-4)


def test_a_continued_prefix_keeps_no_score_for_its_given_tokens(world):
    model, tokenizers = world
    prefix = "there are two objects."
    result = generate(model, {"rgb@64": to_model_pixels(render_scene(10**9)["rgb"]),
                              "caption@64": Partial(prefix)}, [TargetSpec("caption@64", temperature=0.0)],
                      tokenizers=tokenizers.image, text_tokenizer=tokenizers.text)
    ids, scores = result.tokens["caption@64"][0], result.scores["caption@64"][0]
    given = tokenizers.text.encode(prefix)
    assert ids[: len(given)] == given and len(scores) == len(ids) > len(given)
    assert scores[: len(given)] == [None] * len(given)
    assert all(0.0 < s <= 1.0 for s in scores[len(given):])


def test_a_generated_box_is_scored_by_its_class_token(world, world_rgb):
    model, tokenizers = world
    result = generate(model, {"rgb@64": to_model_pixels(world_rgb)}, [TargetSpec("det@64", temperature=0.0)],
                      tokenizers=tokenizers.image, text_tokenizer=tokenizers.text)
    text = tokenizers.text
    checked = 0
    for ids, scores, boxes in zip(result.tokens["det@64"], result.scores["det@64"], result.decoded["det@64"],
                                  strict=True):
        class_positions = [k for k, t in enumerate(ids) if text.decode([t]) in ("sphere", "cube", "cylinder", "cone")]
        assert len(boxes) == len(class_positions) > 0
        for box, k in zip(boxes, class_positions, strict=True):
            assert box["class"] == text.decode([ids[k]]) and box["score"] == pytest.approx(scores[k])
            checked += 1
    assert checked >= 3


# ------------------------------------------------------------------------------------------ fusing decodes


def test_fused_score_is_the_share_of_decodes_that_wrote_the_box_times_their_confidence():
    a = _box(0.10, 0.10, 0.30, 0.30, score=0.9)
    a2 = _box(0.12, 0.10, 0.32, 0.30, score=0.6)  # the same object, moved a little (IoU 0.82)
    b = _box(0.60, 0.60, 0.80, 0.80, score=0.8)
    fused = fuse_boxes([[a, b], [a2], [a2, _box(0.11, 0.1, 0.31, 0.3, score=0.3)]])
    assert [f["class"] for f in fused] == ["cube", "cube"]
    first, second = fused
    # one best member per decode: 0.9 + 0.6 + 0.6 (the 0.3 duplicate of decode 2 adds nothing)
    assert first["score"] == pytest.approx((0.9 + 0.6 + 0.6) / 3)
    assert second["score"] == pytest.approx(0.8 / 3) and second["box"] == pytest.approx(b["box"])
    weights = np.array([0.9, 0.6, 0.6, 0.3])
    x0 = np.array([0.10, 0.12, 0.12, 0.11])
    assert first["box"][0] == pytest.approx(float((weights * x0).sum() / weights.sum()))


def test_boxes_of_other_classes_or_far_apart_are_not_fused():
    fused = fuse_boxes([[_box(0.1, 0.1, 0.3, 0.3), _box(0.1, 0.1, 0.3, 0.3, cls="cone", score=0.5)],
                        [_box(0.5, 0.5, 0.7, 0.7, score=0.7)]])
    assert sorted((f["class"], round(f["score"], 3)) for f in fused) == [("cone", 0.25), ("cube", 0.35),
                                                                          ("cube", 0.5)]


def test_fuse_rejects_unscored_boxes_and_no_decodes():
    with pytest.raises(ValueError, match="no 'score'"):
        fuse_boxes([[{"box": [0, 0, 1, 1], "class": "cube"}]])
    with pytest.raises(ValueError, match="at least one decode"):
        fuse_boxes([])


# ------------------------------------------------------------------------------------------ detect


def test_detect_without_samples_is_the_greedy_decode(world, world_rgb):
    model, tokenizers = world
    pixels = to_model_pixels(world_rgb)
    greedy = generate(model, {"rgb@64": pixels}, [TargetSpec("det@64", temperature=0.0)],
                      tokenizers=tokenizers.image, text_tokenizer=tokenizers.text)
    boxes = detect(model, {"rgb@64": pixels}, "det@64", text_tokenizer=tokenizers.text, samples=0)
    for got, want in zip(boxes, greedy.decoded["det@64"], strict=True):
        want = sorted(want, key=lambda b: -b["score"])
        assert [(b["class"], b["score"]) for b in got] == [(b["class"], pytest.approx(b["score"], abs=TOL))
                                                           for b in want]
        assert all(g["box"] == pytest.approx(w["box"], abs=TOL) for g, w in zip(got, want, strict=True))


def test_detect_gives_a_row_the_same_boxes_whatever_its_batch(world, world_rgb):
    model, tokenizers = world
    pixels = to_model_pixels(world_rgb)
    both = detect(model, {"rgb@64": pixels}, "det@64", text_tokenizer=tokenizers.text, samples=2, seed=[4, 9, 1])
    alone = detect(model, {"rgb@64": pixels[1:2]}, "det@64", text_tokenizer=tokenizers.text, samples=2, seed=[9])
    assert [b["class"] for b in both[1]] == [b["class"] for b in alone[0]]  # same decodes: batch size only
    for a, b in zip(both[1], alone[0], strict=True):  # changes float rounding in the matmuls
        assert a["box"] == pytest.approx(b["box"], abs=TOL) and a["score"] == pytest.approx(b["score"], abs=TOL)
    assert all(0 < b["score"] <= 1 for row in both for b in row)


def test_detect_rejects_a_non_box_target_and_bad_settings(world, world_rgb):
    model, tokenizers = world
    pixels = to_model_pixels(world_rgb[:1])
    with pytest.raises(ValueError, match="not a det"):
        detect(model, {"rgb@64": pixels}, "caption@64", text_tokenizer=tokenizers.text)
    with pytest.raises(ValueError, match="samples must be >= 0"):
        detect(model, {"rgb@64": pixels}, "det@64", text_tokenizer=tokenizers.text, samples=-1)
    with pytest.raises(ValueError, match="temperature > 0"):
        detect(model, {"rgb@64": pixels}, "det@64", text_tokenizer=tokenizers.text, temperature=0.0)


def _mirror(boxes):
    return [{**b, "box": [1 - b["box"][2], b["box"][1], 1 - b["box"][0], b["box"][3]]} for b in boxes]


def test_flip_fuses_the_decodes_of_the_image_and_of_its_mirror_mapped_back(world, world_rgb):
    model, tokenizers = world
    pixels = to_model_pixels(world_rgb)
    mirrored = to_model_pixels(world_rgb[:, :, ::-1].copy())
    want = []
    for image in (pixels, mirrored):
        greedy = generate(model, {"rgb@64": image}, [TargetSpec("det@64", temperature=0.0)],
                          tokenizers=tokenizers.image, text_tokenizer=tokenizers.text)
        want.append(greedy.decoded["det@64"])
    got = detect(model, {"rgb@64": pixels}, "det@64", text_tokenizer=tokenizers.text, samples=0, flip=True)
    for row, boxes in enumerate(got):
        expected = fuse_boxes([want[0][row], _mirror(want[1][row])])
        assert [(b["class"], b["score"]) for b in boxes] == [(b["class"], pytest.approx(b["score"], abs=TOL))
                                                             for b in expected]
        assert all(g["box"] == pytest.approx(e["box"], abs=TOL) for g, e in zip(boxes, expected, strict=True))
    # the two views of the mirrored image are the two views of the image: its boxes are the mirror of these
    again = detect(model, {"rgb@64": mirrored}, "det@64", text_tokenizer=tokenizers.text, samples=0, flip=True)
    for a, b in zip(again, got, strict=True):
        key = lambda box: (box["class"], round(box["score"], 4))  # noqa: E731
        for x, y in zip(sorted(a, key=key), sorted(_mirror(b), key=key), strict=True):
            assert x["class"] == y["class"] and x["box"] == pytest.approx(y["box"], abs=1e-4)


def test_flip_gives_a_row_the_same_boxes_whatever_its_batch(world, world_rgb):
    model, tokenizers = world
    pixels = to_model_pixels(world_rgb)
    both = detect(model, {"rgb@64": pixels}, "det@64", text_tokenizer=tokenizers.text, samples=2, flip=True,
                  seed=[4, 9, 1])
    alone = detect(model, {"rgb@64": pixels[2:]}, "det@64", text_tokenizer=tokenizers.text, samples=2, flip=True,
                   seed=[1])
    assert [b["class"] for b in both[2]] == [b["class"] for b in alone[0]]
    for a, b in zip(both[2], alone[0], strict=True):
        assert a["box"] == pytest.approx(b["box"], abs=TOL) and a["score"] == pytest.approx(b["score"], abs=TOL)


def test_flip_mirrors_images_only(world, world_rgb):
    model, tokenizers = world
    pixels = to_model_pixels(world_rgb[:1])
    with pytest.raises(ValueError, match=r"'caption@64' \(sequence\) cannot be mirrored"):
        detect(model, {"rgb@64": pixels, "caption@64": ["one object."]}, "det@64", text_tokenizer=tokenizers.text,
               flip=True)
    tokens = tokenizers.image["tok_rgb@64"].encode(world_rgb[:1])
    with pytest.raises(ValueError, match=r"'tok_rgb@64' \(image_tokens\) cannot be mirrored"):
        detect(model, {"tok_rgb@64": tokens}, "det@64", text_tokenizer=tokenizers.text, flip=True)


def test_flip_mirrors_raw_images_that_a_tokenizer_encodes(world):
    model, tokenizers = world
    depth = np.stack([render_scene(10**9 + k)["depth"] for k in range(2)]).astype(np.float32)
    kwargs = dict(text_tokenizer=tokenizers.text, tokenizers=tokenizers.image, samples=0)
    got = detect(model, {"tok_depth@64": depth}, "det@64", flip=True, **kwargs)
    views = [detect(model, {"tok_depth@64": d}, "det@64", **kwargs) for d in (depth, depth[:, :, ::-1].copy())]
    for row, boxes in enumerate(got):
        expected = fuse_boxes([views[0][row], _mirror(views[1][row])])
        assert [b["class"] for b in boxes] == [b["class"] for b in expected]
        assert all(g["box"] == pytest.approx(e["box"], abs=TOL) for g, e in zip(boxes, expected, strict=True))


def _moved_back(boxes, dx, dy, size=64):
    return [{**b, "box": [float(np.clip(c - o / size, 0, 1)) for c, o in zip(b["box"], (dx, dy, dx, dy), strict=True)]}
            for b in boxes]


def test_shifts_fuse_the_greedy_decodes_of_the_shifted_images_moved_back(world, world_rgb):
    model, tokenizers = world
    shifts = [(3, 0), (0, -5)]
    want = []
    for dx, dy in [(0, 0), *shifts]:
        image = to_model_pixels(moved_image(world_rgb, dx, dy))
        greedy = generate(model, {"rgb@64": image}, [TargetSpec("det@64", temperature=0.0)],
                          tokenizers=tokenizers.image, text_tokenizer=tokenizers.text)
        want.append([_moved_back(boxes, dx, dy) for boxes in greedy.decoded["det@64"]])
    assert want[1] != want[0]  # the shifted views see the scene differently
    got = detect(model, {"rgb@64": to_model_pixels(world_rgb)}, "det@64", text_tokenizer=tokenizers.text,
                 samples=0, shifts=shifts)
    for row, boxes in enumerate(got):
        expected = fuse_boxes([view[row] for view in want])
        assert [(b["class"], b["score"]) for b in boxes] == [(b["class"], pytest.approx(b["score"], abs=TOL))
                                                             for b in expected]
        assert all(g["box"] == pytest.approx(e["box"], abs=TOL) for g, e in zip(boxes, expected, strict=True))
        assert all(0 <= c <= 1 for b in boxes for c in b["box"])


def test_shifted_views_add_greedy_decodes_to_the_sampled_and_mirrored_ones(world, world_rgb):
    model, tokenizers = world
    rgb, seed, samples = world_rgb[1:2], 9, 2
    decodes = []
    for mirrored, image in enumerate((rgb, rgb[:, :, ::-1].copy())):
        pixels = to_model_pixels(image)
        runs = [(0.0, seed)] + [(0.7, seed * (samples + 1) + j + 1 + mirrored * MIRROR_SEED_OFFSET)
                                for j in range(samples)]  # the documented seeds of the sampled decodes
        for temperature, s in runs:
            boxes = generate(model, {"rgb@64": pixels}, [TargetSpec("det@64", temperature=temperature)],
                             tokenizers=tokenizers.image, text_tokenizer=tokenizers.text, seed=s).decoded["det@64"][0]
            decodes.append(_mirror(boxes) if mirrored else boxes)
    greedy_shifted = generate(model, {"rgb@64": to_model_pixels(moved_image(rgb, 3, 0))},
                              [TargetSpec("det@64", temperature=0.0)], tokenizers=tokenizers.image,
                              text_tokenizer=tokenizers.text).decoded["det@64"][0]
    expected = fuse_boxes([*decodes, _moved_back(greedy_shifted, 3, 0)])
    both = detect(model, {"rgb@64": to_model_pixels(world_rgb)}, "det@64", text_tokenizer=tokenizers.text,
                  samples=samples, temperature=0.7, flip=True, shifts=[(3, 0)], seed=[4, seed, 1])
    got = both[1]  # row 1 of a batch of 3 = the row alone, with its own seed
    assert [b["class"] for b in got] == [b["class"] for b in expected]
    for g, e in zip(got, expected, strict=True):
        assert g["box"] == pytest.approx(e["box"], abs=TOL) and g["score"] == pytest.approx(e["score"], abs=TOL)


def test_shifts_move_raw_images_that_a_tokenizer_encodes_and_need_one_size(world):
    model, tokenizers = world
    depth = np.stack([render_scene(10**9 + k)["depth"] for k in range(2)]).astype(np.float32)
    kwargs = dict(text_tokenizer=tokenizers.text, tokenizers=tokenizers.image, samples=0)
    got = detect(model, {"tok_depth@64": depth}, "det@64", shifts=[(-4, 2)], **kwargs)
    moved = moved_image(depth, -4, 2)
    views = [detect(model, {"tok_depth@64": d}, "det@64", **kwargs) for d in (depth, moved)]
    for row, boxes in enumerate(got):
        expected = fuse_boxes([views[0][row], _moved_back(views[1][row], -4, 2)])
        assert [b["class"] for b in boxes] == [b["class"] for b in expected]
        # Decoded as one batch or view by view, a near-tie of a coordinate token may fall either way: within
        # about one coordinate bin (1/999) of the fused box, the same boxes in the same order.
        assert all(g["box"] == pytest.approx(e["box"], abs=1.5e-3) for g, e in zip(boxes, expected, strict=True))
    pixels = to_model_pixels(np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="one size"):
        detect(model, {"tok_depth@64": depth, "rgb@64": pixels}, "det@64", shifts=[(1, 0)], **kwargs)


@pytest.mark.parametrize("shift", [(0, 0), (1.5, 0), (1,), "up"])
def test_a_bad_shift_is_named(world, world_rgb, shift):
    model, tokenizers = world
    with pytest.raises(ValueError, match="a shift is a"):
        detect(model, {"rgb@64": to_model_pixels(world_rgb[:1])}, "det@64", text_tokenizer=tokenizers.text,
               shifts=[shift])


def test_shifts_move_images_only(world, world_rgb):
    model, tokenizers = world
    tokens = tokenizers.image["tok_rgb@64"].encode(world_rgb[:1])
    with pytest.raises(ValueError, match=r"'tok_rgb@64' \(image_tokens\) cannot be shifted"):
        detect(model, {"tok_rgb@64": tokens}, "det@64", text_tokenizer=tokenizers.text, shifts=[(1, 1)])


def test_neighbour_shifts_are_the_eight_moves_around_the_image():
    assert neighbour_shifts(0) == ()
    shifts = neighbour_shifts(2)
    assert sorted(shifts) == sorted((dx, dy) for dx in (-2, 0, 2) for dy in (-2, 0, 2) if (dx, dy) != (0, 0))
    assert SHIFTS == shifts  # the default views: half a patch of the world models' 4 px patches
    with pytest.raises(ValueError, match=">= 0"):
        neighbour_shifts(-1)
