"""Sequences decoded from an ensemble of views (TargetSpec(views=...), open4m.generation.describe) and the view
helpers they share with detect (open4m.generation.views)."""

import numpy as np
import pytest
import torch

from generation_helpers import moved_image
from open4m.data.world import render_scene
from open4m.evaluation.run import load_model_and_tokenizers
from open4m.generation import TargetSpec, generate
from open4m.generation import sampler as sampler_module
from open4m.generation.describe import CAPTION_SHIFTS, describe
from open4m.generation.views import View, neighbour_shifts, stack_views
from open4m.pixels import to_model_pixels
from open4m.shipped import world_model_dir

CAPTION = "caption@64"


@pytest.fixture(scope="module")
def world():
    return load_model_and_tokenizers(world_model_dir())


@pytest.fixture(scope="module")
def world_rgb():
    return np.stack([render_scene(2 * 10**9 + k)["rgb"] for k in range(3)])


def _captions(world, pixels, views=1, temperature=0.0, **spec):
    model, tokenizers = world
    result = generate(model, {"rgb@64": pixels}, [TargetSpec(CAPTION, views=views, temperature=temperature, **spec)],
                      tokenizers=tokenizers.image, text_tokenizer=tokenizers.text, seed=0)
    return result.decoded[CAPTION]


def test_identical_views_decode_what_the_image_alone_decodes(world, world_rgb):
    pixels = to_model_pixels(world_rgb)
    alone = _captions(world, pixels)
    ensemble = _captions(world, np.concatenate([pixels] * 3), views=3)
    assert ensemble == alone * 3  # every view row gets the prompt's caption


def test_each_token_is_the_argmax_of_the_views_mean_log_probabilities(world, world_rgb, monkeypatch):
    pixels = to_model_pixels(world_rgb)
    moved = to_model_pixels(moved_image(world_rgb, 3, -3))
    seen = []
    real = sampler_module.sample
    monkeypatch.setattr(sampler_module, "sample", lambda logits, *a, **k: seen.append(logits) or real(logits, *a, **k))
    # the first token's distribution of each view alone (sampled decodes hand the sampler the raw logits)
    _captions(world, np.concatenate([pixels, moved]), temperature=1.0, max_new_tokens=1)
    per_view = seen[-1].float().log_softmax(-1)  # (2B, 1, vocab)
    first = _captions(world, np.concatenate([pixels, moved]), views=2, max_new_tokens=1)
    mean = seen[-1]
    b = len(world_rgb)
    torch.testing.assert_close(mean, (per_view[:b] + per_view[b:]) / 2, atol=1e-4, rtol=1e-4)
    model, tokenizers = world
    ids = generate(model, {"rgb@64": np.concatenate([pixels, moved])},
                   [TargetSpec(CAPTION, views=2, temperature=0.0, max_new_tokens=1)],
                   tokenizers=tokenizers.image, text_tokenizer=tokenizers.text).tokens[CAPTION]
    assert [row[0] for row in ids[:b]] == mean[:, 0].argmax(-1).tolist()
    assert first[:b] == first[b:]
    sampled = _captions(world, np.concatenate([pixels, moved]), views=2, temperature=1.0)
    assert sampled[:b] == sampled[b:]  # one draw per prompt, written to both views
    # the views disagree somewhere: otherwise this test could not tell a mean from either view
    assert not torch.allclose(per_view[:b], per_view[b:], atol=1e-3)


def test_cached_and_uncached_ensembles_agree(world, world_rgb):
    model, tokenizers = world
    stacked = stack_views({"rgb@64": to_model_pixels(world_rgb)}, [View(), View(dx=3, width=64, height=64)], None)
    out = [generate(model, stacked, [TargetSpec(CAPTION, views=2, temperature=0.0)], tokenizers=tokenizers.image,
                    text_tokenizer=tokenizers.text, use_cache=cache).decoded[CAPTION] for cache in (True, False)]
    assert out[0] == out[1]


def test_describe_decodes_the_image_and_its_shifted_views_together(world, world_rgb):
    model, tokenizers = world
    pixels = to_model_pixels(world_rgb)
    kwargs = {"text_tokenizer": tokenizers.text, "tokenizers": tokenizers.image}
    shifts = [(3, 0), (-2, 4)]
    stacked = np.concatenate([pixels, *(to_model_pixels(moved_image(world_rgb, dx, dy)) for dx, dy in shifts)])
    want = _captions(world, stacked, views=3)[: len(world_rgb)]
    assert describe(model, {"rgb@64": pixels}, CAPTION, shifts=shifts, **kwargs) == want
    assert describe(model, {"rgb@64": pixels}, CAPTION, shifts=(), **kwargs) == _captions(world, pixels)
    default = describe(model, {"rgb@64": pixels[:1]}, CAPTION, **kwargs)  # the image and its 8 neighbours
    assert len(default) == 1 and isinstance(default[0], str) and default[0]
    assert CAPTION_SHIFTS == neighbour_shifts(3)


def test_stacked_views_are_view_major(world_rgb):
    pixels = to_model_pixels(world_rgb)
    views = [View(), View(dx=2, dy=-1, width=64, height=64), View(mirror=True)]
    stacked = stack_views({"rgb@64": pixels}, views, None)["rgb@64"]
    b = len(world_rgb)
    np.testing.assert_array_equal(stacked[:b], pixels)
    np.testing.assert_array_equal(stacked[b: 2 * b], to_model_pixels(moved_image(world_rgb, 2, -1)))
    np.testing.assert_array_equal(stacked[2 * b:], np.flip(pixels, 3))


def test_boxes_conditions_move_with_each_view():
    boxes = [[{"box": [0.25, 0.5, 0.5, 0.75], "class": "cube"}], [], [{"box": [0.0, 0.0, 1.0, 0.125], "class": "cone"}]]
    pixels = np.zeros((3, 3, 64, 64), np.float32)
    views = [View(), View(dx=8, dy=-16, width=64, height=64), View(mirror=True)]
    stacked = stack_views({"rgb@64": pixels, "det@64": boxes}, views, None)
    assert len(stacked["rgb@64"]) == len(stacked["det@64"]) == 9
    assert stacked["det@64"][:3] == boxes
    # moved right by 8 px (1/8) and up by 16 px (1/4): the boxes follow, clipped to the image
    assert stacked["det@64"][3] == [{"box": [0.375, 0.25, 0.625, 0.5], "class": "cube"}]
    assert stacked["det@64"][4] == []
    assert stacked["det@64"][5] == [{"box": [0.125, 0.0, 1.0, 0.0], "class": "cone"}]
    assert stacked["det@64"][6] == [{"box": [0.5, 0.5, 0.75, 0.75], "class": "cube"}]  # mirrored
    for view in views:  # boxes_back undoes boxes_forward where nothing was clipped
        assert view.boxes_back(view.boxes_forward(boxes[0])) == boxes[0]
    with pytest.raises(ValueError, match=r"describe: 'det@64' can be shifted or mirrored only as boxes"):
        stack_views({"rgb@64": pixels, "det@64": ["v0=1 v1=2 v2=3 v3=4 cube"] * 3}, views, None, "describe")


def test_bad_ensembles_are_named(world, world_rgb):
    model, tokenizers = world
    pixels = to_model_pixels(world_rgb)
    with pytest.raises(ValueError, match=r"views must be a whole number >= 1 that divides the batch \(3 rows\)"):
        _captions(world, pixels, views=2)
    with pytest.raises(ValueError, match="views .* is for autoregressive targets only"):
        generate(model, {"rgb@64": pixels}, [TargetSpec("tok_depth@64", views=3)], tokenizers=tokenizers.image,
                 text_tokenizer=tokenizers.text)
    kwargs = {"text_tokenizer": tokenizers.text, "tokenizers": tokenizers.image}
    with pytest.raises(ValueError, match="describe: 'tok_depth@64' is not a sequence modality"):
        describe(model, {"rgb@64": pixels}, "tok_depth@64", **kwargs)
    with pytest.raises(ValueError, match="describe: a shift is a nonzero pair"):
        describe(model, {"rgb@64": pixels}, CAPTION, shifts=[(0, 0)], **kwargs)
    tokens = tokenizers.image["tok_rgb@64"].encode(world_rgb)
    with pytest.raises(ValueError, match=r"describe: only image conditions can be shifted.*'tok_rgb@64'"):
        describe(model, {"tok_rgb@64": tokens}, CAPTION, **kwargs)
    with pytest.raises(ValueError, match="describe: 2 seeds for 3 rows"):
        describe(model, {"rgb@64": pixels}, CAPTION, seed=[1, 2], **kwargs)


def test_forced_openings_are_written_first_and_the_model_continues(world, world_rgb):
    model, tokenizers = world
    pixels = to_model_pixels(world_rgb)
    kwargs = {"text_tokenizer": tokenizers.text, "tokenizers": tokenizers.image}
    free = describe(model, {"rgb@64": pixels}, CAPTION, shifts=(), **kwargs)
    openings = ["There are twelve objects.", "", "There is one object."]
    forced = describe(model, {"rgb@64": pixels}, CAPTION, shifts=(), openings=openings, **kwargs)
    assert forced[0].startswith("there are twelve objects.") and forced[2].startswith("there is one object.")
    assert forced[1] == free[1]  # an empty opening leaves the row free
    assert len(forced[0]) > len("there are twelve objects.") + 10  # the model writes on after the opening
    assert forced[0] != free[0] and not free[0].startswith("there are twelve objects.")
    # with views, every view of a prompt gets its opening
    shifted = describe(model, {"rgb@64": pixels}, CAPTION, shifts=[(3, 0)], openings=openings, **kwargs)
    assert shifted[2].startswith("there is one object.")
    words = tokenizers.text.encode("cube sphere")
    ids = generate(model, {"rgb@64": pixels}, [TargetSpec(CAPTION, temperature=0.0, forced=[words, [], words[:1]])],
                   tokenizers=tokenizers.image, text_tokenizer=tokenizers.text)
    assert ids.tokens[CAPTION][0][:2] == words and ids.tokens[CAPTION][2][:1] == words[:1]
    assert all(np.isnan(p) for p in ids.scores[CAPTION][0][:2])  # forced tokens were not drawn
    with pytest.raises(ValueError, match="describe: 2 openings for 3 rows"):
        describe(model, {"rgb@64": pixels}, CAPTION, openings=["", ""], **kwargs)
    with pytest.raises(ValueError, match="forced has 2 rows, the batch has 3"):
        generate(model, {"rgb@64": pixels}, [TargetSpec(CAPTION, forced=[[5], [6]])], tokenizers=tokenizers.image,
                 text_tokenizer=tokenizers.text)
    with pytest.raises(ValueError, match="forced .* are for autoregressive targets only, not 'maskgit'"):
        generate(model, {"rgb@64": pixels}, [TargetSpec("tok_depth@64", forced=[[1], [], []])],
                 tokenizers=tokenizers.image, text_tokenizer=tokenizers.text)
    with pytest.raises(ValueError, match=r"forced token ids must lie in \[0, "):
        generate(model, {"rgb@64": pixels}, [TargetSpec(CAPTION, forced=[[-1], [], []])],
                 tokenizers=tokenizers.image, text_tokenizer=tokenizers.text)


def test_banned_ids_are_never_written_and_keep_caption_shapes_to_the_boxes(world, world_rgb):
    from open4m.data.world.config import SHAPES
    from open4m.evaluation.captions import parse_caption
    from open4m.generation.caption_shapes import ShapesFromBoxes

    model, tokenizers = world
    pixels = to_model_pixels(world_rgb)
    kwargs = {"text_tokenizer": tokenizers.text, "tokenizers": tokenizers.image}
    free = describe(model, {"rgb@64": pixels}, CAPTION, shifts=(), **kwargs)
    said = sorted({m.shape for m in parse_caption(free[0]).mentions})
    assert said  # the image's caption names shapes; ban them all for prompt 0 (every view), nothing for the rest
    ids = [tokenizers.text.encode(shape)[0] for shape in said]
    asked = []

    def ban(i, written):
        asked.append(i)
        return ids if i == 0 else []

    for shifts in ((), [(3, 0)]):
        banned = describe(model, {"rgb@64": pixels}, CAPTION, shifts=shifts, banned=ban, **kwargs)
        assert not {m.shape for m in parse_caption(banned[0]).mentions} & set(said)
        assert banned[1:] == describe(model, {"rgb@64": pixels}, CAPTION, shifts=shifts, **kwargs)[1:]
    assert set(asked) == {0, 1, 2}  # asked per prompt, not per view: the views share its answer
    # a rule built from boxes: three cones left to right, so every object the caption lists is a cone
    cones = [[{"box": [x, 0.4, x + 0.1, 0.5], "class": "cone"} for x in (0.1, 0.4, 0.7)]] * 3
    ruled = describe(model, {"rgb@64": pixels}, CAPTION, shifts=(), banned=ShapesFromBoxes(
        tokenizers.text, cones, SHAPES), openings=["There are three objects."] * 3, **kwargs)
    items = [m for caption in ruled for m in parse_caption(caption).items[:3]]  # items past the boxes are free
    assert items and {m.shape for m in items} == {"cone"}
    with pytest.raises(ValueError, match="banned .* are for autoregressive targets only, not 'maskgit'"):
        generate(model, {"rgb@64": pixels}, [TargetSpec("tok_depth@64", banned=ban)], tokenizers=tokenizers.image,
                 text_tokenizer=tokenizers.text)
