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
