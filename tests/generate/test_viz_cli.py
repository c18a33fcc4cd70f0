"""Pictures (viz.py) and the ``open4m generate`` command."""

import numpy as np
import pytest
import torch
from PIL import Image

from generation_helpers import FIXTURES, small_model, text_tokenizer
from open4m import viz
from open4m.cli import main
from open4m.generation import runner
from open4m.model import save_pretrained


def test_depth_normals_semseg_boxes_text_render_as_expected():
    depth = np.tile(np.linspace(1, 5, 32, dtype=np.float32), (16, 1))
    pic = np.asarray(viz.depth_image(depth))
    assert pic.shape == (16, 32, 3) and not np.array_equal(pic[:, 0], pic[:, -1])  # near and far differ
    normals = np.zeros((3, 8, 8), np.float32)
    normals[2] = 1.0  # facing the camera → (0.5, 0.5, 1.0)
    assert np.asarray(viz.normals_image(normals))[0, 0].tolist() == [127, 127, 255]
    labels = np.zeros((20, 20), np.int64)
    labels[10:] = 3
    seg = viz.semseg_image(labels, class_names=["bg", "a", "b", "cube"])
    assert seg.size == (220, 220 + 16)  # enlarged 11x to fit the 224 px tile; two classes → one legend row
    assert tuple(np.asarray(seg)[165, 55]) == viz.palette_colour(3) and tuple(np.asarray(seg)[55, 55]) == \
        viz.palette_colour(0)
    assert viz.upscaled(viz.rgb_image(np.zeros((64, 64, 3), np.uint8))).size == (192, 192)
    assert viz.upscaled(viz.rgb_image(np.zeros((150, 150, 3), np.uint8))).size == (150, 150)
    boxed = np.asarray(viz.boxes_image([{"box": [0.25, 0.25, 0.75, 0.75], "class": "cube"}]))
    assert (boxed[56, 100] != 255).any() and (boxed[112, 112] == 255).all()  # outline drawn, inside left blank
    scored = np.asarray(viz.boxes_image([{"box": [0.25, 0.25, 0.75, 0.75], "class": "cube", "score": 0.93}]))
    label_row = slice(57, 70)  # the label is written inside the box's top-left corner; the score after the class
    assert (scored[label_row, 57:170] != boxed[label_row, 57:170]).any()
    assert (scored[label_row, :57] == boxed[label_row, :57]).all()
    assert (np.asarray(viz.text_image("a red cube")) < 128).any()


def test_save_png_is_atomic_and_refuses_to_overwrite(tmp_path):
    path = viz.save_png(Image.new("RGB", (4, 4)), tmp_path / "a.png")
    with pytest.raises(FileExistsError, match="already exists"):
        viz.save_png(Image.new("RGB", (4, 4)), path)
    viz.save_png(Image.new("RGB", (4, 4), "red"), path, overwrite=True)
    assert Image.open(path).getpixel((0, 0)) == (255, 0, 0)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model")
    save_pretrained(small_model(), directory, overwrite=True)
    return directory


def test_cli_generate_writes_a_grid_from_a_caption(model_dir, tmp_path, capsys):
    text_tokenizer()  # skips without the fixture
    tok_path = str(FIXTURES / "official-text-tokenizer-wordpiece-30k.json")
    out = tmp_path / "grid.png"
    args = ["generate", "--model", str(model_dir), "--from", "caption=a small red sphere left of a blue cube",
            "--to", "depth,det", "--out", str(out), "--steps", "2", "--text-tokenizer", tok_path]
    assert main(args) == 0
    grid = Image.open(out)
    assert grid.size == (3 * (viz.TILE + 4) + 4, viz.TILE + 16 + 8)  # caption, depth, det in one row
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    bad = args[:6] + ["tok_normal@224", "--out", str(tmp_path / "b.png")] + args[9:]
    assert main(bad) == 2 and "target 'tok_normal@224' is not one of" in capsys.readouterr().err


def test_cli_generate_from_token_file_to_all(model_dir, tmp_path):
    tokens = tmp_path / "rgb.npy"
    np.save(tokens, np.random.default_rng(0).integers(0, 16384, (14, 14)))
    tok_path = str(FIXTURES / "official-text-tokenizer-wordpiece-30k.json")
    text_tokenizer()
    out = tmp_path / "all.png"
    assert main(["generate", "--model", str(model_dir), "--from", f"tok_rgb@224={tokens}", "--to", "all",
                 "--out", str(out), "--steps", "1", "--temperature", "0", "--text-tokenizer", tok_path]) == 0
    assert Image.open(out).size[0] == 4 * (viz.TILE + 4) + 4  # rgb tokens in, depth + caption + det out


def test_cli_generate_guidance_reaches_every_target_and_defaults_to_words_only_and_rgb(model_dir, tmp_path,
                                                                                      monkeypatch):
    text_tokenizer()
    specs, real = [], runner.generate

    def recording(model, conditions, targets, **kwargs):
        specs.extend(targets)
        return real(model, conditions, targets, **kwargs)

    monkeypatch.setattr(runner, "generate", recording)
    args = ["generate", "--model", str(model_dir), "--from", "caption=a red cube", "--to", "depth,rgb", "--steps", "1",
            "--text-tokenizer", str(FIXTURES / "official-text-tokenizer-wordpiece-30k.json")]
    assert main([*args, "--out", str(tmp_path / "a.png")]) == 0
    guided = runner.RGB_GUIDANCE
    assert [(s.name, s.guidance) for s in specs] == [("tok_depth@224", guided), ("tok_rgb@224", guided)]
    assert guided != 1.0
    assert runner.default_guidance("caption", ["det"]) == runner.default_guidance("det", ["caption"]) == 1.0
    assert runner.default_guidance("tok_depth@224", ["rgb@224"]) == 1.0  # predicted from an image: unguided
    assert runner.default_guidance("tok_rgb@224", ["tok_depth@224"]) == guided
    assert runner.default_guidance("tok_rgb@224", ["rgb@224"]) == 1.0  # RGB tokens of a given RGB: predicted
    specs.clear()
    assert main([*args, "--out", str(tmp_path / "b.png"), "--guidance", "2.5"]) == 0
    assert [(s.name, s.guidance) for s in specs] == [("tok_depth@224", 2.5), ("tok_rgb@224", 2.5)]


def test_grid_shows_token_maps_before_image_tokenizers_exist():
    pic = viz.render("tok_depth@224", torch.tensor([[1, 2], [3, 4]]))
    assert pic.size == (viz.TILE, viz.TILE)
    assert len({pic.getpixel((0, 0)), pic.getpixel((viz.TILE - 1, viz.TILE - 1))}) == 2


def test_condition_files_parse_to_tokens_pixels_and_text(tmp_path):
    from open4m.generation.runner import parse_condition

    Image.new("RGB", (50, 40), (124, 116, 104)).save(tmp_path / "photo.png")  # ~ the ImageNet mean colour
    name, pixels = parse_condition(f"rgb={tmp_path / 'photo.png'}", ["rgb@224", "tok_rgb@224"])
    assert name == "rgb@224" and pixels.shape == (3, 224, 224) and np.abs(pixels).max() < 0.02
    assert parse_condition("caption=a red cube = here") == ("caption", "a red cube = here")
    assert parse_condition("depth=x", ["tok_depth@224", "caption"])[0] == "tok_depth@224"
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_condition("a red cube")
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        parse_condition("tok_rgb@224=missing.npy")


def test_normalised_rgb_input_is_shown_in_its_true_colours():
    colour = np.array([0.8, 0.2, 0.1], np.float32)
    normalised = (colour - [0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225])
    image = np.broadcast_to(normalised.astype(np.float32)[:, None, None], (3, 8, 8))
    assert viz.render("rgb@224", image).getpixel((3, 3)) == (204, 51, 25)


def test_targets_the_conditions_determine_are_predicted_greedily_in_one_step_the_rest_sampled():
    predicted, generated = {"steps": 1, "temperature": 0.0}, {"steps": 8, "temperature": 1.0}
    assert runner.default_decoding("tok_depth@224", ["rgb@224"]) == predicted
    assert runner.default_decoding("caption", ["tok_rgb@224"]) == predicted
    assert runner.default_decoding("tok_rgb@224", ["rgb@224"]) == predicted
    assert runner.default_decoding("tok_normal@224", ["tok_depth@224"]) == predicted
    assert runner.default_decoding("tok_rgb@224", ["tok_depth@224"]) == generated
    assert runner.default_decoding("tok_depth@224", ["caption"]) == generated
    assert runner.default_decoding("det", ["caption", "det"]) == generated

    class _Model:
        decoder_embeddings = dict.fromkeys(["tok_rgb@224", "tok_depth@224", "caption"])

    specs = {s.name: s for s in runner.resolve_targets(_Model(), ["all"], ["rgb@224"])}
    assert (specs["tok_depth@224"].steps, specs["tok_depth@224"].temperature) == (1, 0.0)
    assert specs["caption"].temperature == 0.0 and specs["tok_rgb@224"].guidance == 1.0
    chosen = {s.name: s for s in runner.resolve_targets(_Model(), ["all"], ["rgb@224"], steps=4, temperature=0.5)}
    assert (chosen["tok_depth@224"].steps, chosen["tok_depth@224"].temperature, chosen["caption"].temperature) == (
        4, 0.5, 0.5)  # asked-for settings win
    from_words = {s.name: s for s in runner.resolve_targets(_Model(), ["tok_depth@224", "rgb"], ["caption"])}
    assert (from_words["tok_depth@224"].steps, from_words["tok_rgb@224"].temperature) == (8, 1.0)


def test_all_from_words_generates_geometry_first_then_rgb_then_sequences():
    class _Model:  # resolve_targets reads only the model's outputs
        decoder_embeddings = dict.fromkeys(["tok_rgb@224", "det", "tok_depth@224", "caption", "tok_semseg@224"])

    names = [s.name for s in runner.resolve_targets(_Model(), ["all"], ["caption"])]
    assert names == ["tok_depth@224", "tok_semseg@224", "tok_rgb@224", "det"]
    from_rgb = [s.name for s in runner.resolve_targets(_Model(), ["all"], ["tok_rgb@224"])]
    assert from_rgb == ["det", "tok_depth@224", "caption", "tok_semseg@224"]  # the model's order
    assert [s.name for s in runner.resolve_targets(_Model(), ["tok_rgb@224", "depth"], ["caption"])] == [
        "tok_rgb@224", "tok_depth@224"]  # an explicit order is kept
