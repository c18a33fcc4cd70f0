"""`open4m generate` with the shipped world model and tokenizers: raw inputs in, decoded pictures out."""

import numpy as np
import pytest
from PIL import Image

from open4m.cli import main
from open4m.data.world import render_scene
from open4m.generation.runner import default_output, generate_to_png, parse_condition, unknown_words
from open4m.shipped import world_model_dir, world_tokenizers_dir
from open4m.tokenizer_set import load_text_tokenizer

WORLD_INPUTS = ["rgb@64", "tok_rgb@64", "tok_depth@64", "tok_normal@64", "tok_semseg@64", "caption@64", "det@64"]


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    Image.fromarray(render_scene(10**9 + 7)["rgb"]).save(path)
    return path


def test_a_raw_image_named_rgb_enters_through_the_pixel_input(scene_png):
    name, pixels = parse_condition(f"rgb={scene_png}", WORLD_INPUTS)
    assert name == "rgb@64" and pixels.shape == (3, 64, 64) and pixels.dtype == np.float32
    assert parse_condition("caption=a red cube", WORLD_INPUTS) == ("caption@64", "a red cube")


def test_caption_to_depth_with_the_shipped_model_gives_a_world_depth_map(tmp_path):
    result, path = generate_to_png(None, ["caption=one large red shiny cube"], ["depth"], tmp_path / "g.png",
                                   steps=2)
    depth = result.decoded["tok_depth@64"][0]
    assert depth.shape == (64, 64) and path.is_file()
    floor = depth[-8:]  # the bottom rows see the floor, a few metres away
    assert (floor > 0.5).all() and (floor < 30).all()


def test_a_caption_from_one_image_is_decoded_through_the_models_boxes(scene_png, tmp_path):
    from open4m.evaluation.captions import parse_caption
    from open4m.evaluation.run import load_model_and_tokenizers
    from open4m.generation.caption_shapes import caption_through_boxes

    result, path = generate_to_png(None, [f"rgb={scene_png}"], ["caption", "det"], tmp_path / "g.png")
    plain, _ = generate_to_png(None, [f"rgb={scene_png}"], ["caption", "det"], tmp_path / "p.png", plain_caption=True)
    model, tokenizers = load_model_and_tokenizers(world_model_dir())
    _, pixels = parse_condition(f"rgb={scene_png}", WORLD_INPUTS)
    chained, boxes = caption_through_boxes(model, {"rgb@64": pixels[None]}, "caption@64", "det@64",
                                           text_tokenizer=tokenizers.text, tokenizers=tokenizers.image)
    caption = result.decoded["caption@64"][0]
    assert caption == chained[0] and path.is_file()
    assert result.tokens["caption@64"][0] == tokenizers.text.encode(caption)
    assert plain.decoded["caption@64"][0] != caption  # the plain chained decode (caption first, boxes after)
    facts = parse_caption(caption)
    assert facts.count == len(boxes[0]) > 0  # the count sentence counts the boxes
    assert {m.shape for m in facts.mentions} <= {b["class"] for b in boxes[0]}
    assert all(p is None for p in result.scores["caption@64"][0])  # re-encoded, not drawn by that decode
    # another condition beside the image, or a sampled caption: the plain decode
    for conditions, settings in (([f"rgb={scene_png}", "det=v0=100 v1=100 v2=300 v3=300 cube"], {}),
                                 ([f"rgb={scene_png}"], {"temperature": 1.0, "seed": 3})):
        other, _ = generate_to_png(None, conditions, ["caption"], tmp_path / "o.png", overwrite=True, **settings)
        assert all(p is not None for p in other.scores["caption@64"][0][1:3])  # drawn by the sampler


def test_rgb_to_semseg_with_the_shipped_model_finds_the_floor_and_the_sky(scene_png, tmp_path):
    result, _ = generate_to_png(world_model_dir(), [f"rgb={scene_png}"], ["semseg"], tmp_path / "g.png",
                                steps=1, temperature=0.0)
    truth = render_scene(10**9 + 7)["semseg"]
    predicted = result.decoded["tok_semseg@64"][0]
    assert np.mean(predicted == truth) > 0.8


def test_unknown_caption_words_are_named():
    text = load_text_tokenizer(world_tokenizers_dir())
    assert unknown_words(text, "two red spheres left of a blue cube") == []
    assert unknown_words(text, "a zebra next to a purplish cube") == ["zebra", "next", "purplish"]


def test_cli_errors_for_unknown_words_non_images_missing_models_and_missing_modalities(tmp_path, capsys):
    bad_image = tmp_path / "bad.png"
    bad_image.write_text("not an image")
    cases = [
        (["--from", "caption=a zebra"], "does not know ['zebra']"),
        (["--from", f"rgb={bad_image}"], "is not an image PIL can read"),
        (["--model", str(tmp_path / "none"), "--from", "caption=a cube"], "does not exist"),
        (["--from", "caption=a cube", "--to", "tok_clip@224"], "target 'tok_clip@224' is not one of"),
    ]
    for extra, message in cases:
        args = ["generate", "--to", "depth", "--out", str(tmp_path / "x.png"), *extra]
        if "--to" in extra:
            args = ["generate", "--out", str(tmp_path / "x.png"), *extra]
        assert main(args) == 2
        assert message in capsys.readouterr().err


def test_default_output_never_names_an_existing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_output().name == "generated.png"
    (tmp_path / "generated.png").write_bytes(b"x")
    (tmp_path / "generated-1.png").write_bytes(b"x")
    assert default_output().name == "generated-2.png"
