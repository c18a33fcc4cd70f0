"""Pseudo-labelling a folder of images (open4m.data.pseudo_label, `open4m label`) with the shipped world model."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from open4m.cli import main
from open4m.data.loader import DatasetSpec, decode_sample, validation_batches
from open4m.data.pretokenize import pretokenize
from open4m.data.pseudo_label import (
    MANIFEST,
    PREVIEW,
    Labeller,
    label_folder,
    label_images,
    list_images,
    load_image,
)
from open4m.data.shards import iter_shard, list_shards, write_shard
from open4m.data.world import render_scene
from open4m.data.world.config import SHAPES
from open4m.evaluation.run import load_model_and_tokenizers
from open4m.mixtures import MaskingConfig
from open4m.model import FourM, preset
from open4m.shipped import world_model_dir

SEEDS = [10**9 + 200 + i for i in range(5)]


@pytest.fixture(scope="module")
def shipped():
    model, tokenizers = load_model_and_tokenizers(world_model_dir())
    return model.eval(), tokenizers


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Five world scenes as image files (PNG and JPEG, one in a subfolder, one hidden copy), and a broken file."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    (root / ".cache").mkdir()
    for i, seed in enumerate(SEEDS):
        image = Image.fromarray(render_scene(seed)["rgb"])
        image.save(root / ("sub" if i == 3 else "") / f"scene{i}.png")
    Image.fromarray(render_scene(1)["rgb"]).save(root / ".cache" / "hidden.png")
    (root / "notes.txt").write_text("not an image")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.fixture(scope="module")
def labelled(photos, shipped, tmp_path_factory):
    """``photos`` labelled into shards of 4 images, batches of 3: (output folder, report)."""
    out = tmp_path_factory.mktemp("labelled") / "labels"
    return out, _run(photos, out, shipped)


def _labeller(shipped, **kwargs):
    return Labeller.for_model(*shipped, **kwargs)


def _run(photos, out, shipped, **kwargs):
    labeller = _labeller(shipped, min_box_score=kwargs.pop("min_box_score", 0.5))
    return label_folder(photos, out, labeller, model_sha256="m", tokenizers_sha256={"t": "1"},
                        **{"shard_size": 4, "batch_size": 3, **kwargs})


def test_images_are_listed_sorted_recursively_without_hidden_files(photos, tmp_path):
    assert list_images(photos) == ["broken.jpg", "scene0.png", "scene1.png", "scene2.png", "scene4.png",
                                   "sub/scene3.png"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "missing")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="no images"):
        list_images(tmp_path)


def test_an_image_is_centre_cropped_and_resized(tmp_path):
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, 20:40] = [255, 0, 0]  # the centre square is red, the sides black
    Image.fromarray(wide).save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png", 8)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert (out[..., 0] > 200).all() and (out[..., 1:] < 30).all()
    tall = np.zeros((8, 4, 3), np.uint8)
    tall[:4] = 255  # top half white; stored on its side with EXIF "rotate 90 CW to show" (orientation 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(tall))).save(tmp_path / "phone.png", exif=exif)
    upright = load_image(tmp_path / "phone.png", 4)  # centre square of the upright 8x4 image: rows 2..5
    assert upright[0].min() > 200 and upright[-1].max() < 50
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.png is not an image"):
        load_image(tmp_path / "bad.png", 8)


def test_the_labeller_finds_what_the_model_predicts(shipped):
    labeller = _labeller(shipped)
    assert labeller.rgb_input == "rgb@64" and labeller.size == 64
    assert labeller.images == {"depth": "tok_depth@64", "normal": "tok_normal@64", "semseg": "tok_semseg@64"}
    assert (labeller.caption, labeller.det) == ("caption@64", "det@64")
    assert labeller.members == ["caption.txt", "depth.npy", "det.json", "normal.npy", "rgb.png", "semseg.png",
                                "source.txt"]
    with pytest.raises(ValueError, match="min_box_score"):
        _labeller(shipped, min_box_score=1.5)
    with pytest.raises(ValueError, match=r"expected uint8 images \(B, 64, 64, 3\)"):
        labeller.label(np.zeros((1, 32, 32, 3), np.uint8))


def test_a_model_without_rgb_input_or_labelled_outputs_is_refused(shipped):
    _, tokenizers = shipped
    small = {"dim": 32, "encoder_depth": 1, "decoder_depth": 1, "num_heads": 2}
    no_rgb = FourM(preset("tiny_gelu", ["caption@64"], ["tok_depth@64"], **small))
    with pytest.raises(ValueError, match="takes no RGB input"):
        Labeller.for_model(no_rgb, tokenizers)
    no_labels = FourM(preset("tiny_gelu", ["rgb@64"], ["tok_rgb@64"], **small))
    with pytest.raises(ValueError, match="predicts none of"):
        Labeller.for_model(no_labels, tokenizers)


def test_a_folder_is_labelled_into_world_format_shards(photos, labelled):
    out, report = labelled
    assert (report.written, report.skipped, report.labelled) == (2, 0, 5)
    assert list(report.unreadable) == ["broken.jpg"] and "not an image" in report.unreadable["broken.jpg"]
    samples = [s for i in range(2) for s in iter_shard(out / f"pseudo-00000{i}.tar")]
    # keys are the images' indices in the sorted list (the broken file, index 0, has no sample)
    assert [s["__key__"] for s in samples] == [f"{i:010d}" for i in range(1, 6)]
    sources = [s["source.txt"] for s in samples]
    assert sources == list_images(photos)[1:]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["files"] == list_images(photos) and manifest["unreadable"] == report.unreadable
    with Image.open(out / PREVIEW) as preview:  # rgb, depth, normal, semseg, det; the first shard's 3 images
        assert preview.size == (5 * 128, 14 + 3 * (128 + 40))
    assert {k: v["samples"] for k, v in manifest["shards"].items()} == {"pseudo-000000.tar": 3,
                                                                        "pseudo-000001.tar": 2}
    for sample in samples:
        seed = SEEDS[int(sample["source.txt"].split("scene")[1][0])]
        truth = render_scene(seed)
        assert np.array_equal(sample["rgb.png"], truth["rgb"])
        assert sample["depth.npy"].dtype == np.float32 and sample["normal.npy"].dtype == np.float16
        # the shipped model's labels of world images are close to the world's ground truth
        valid = truth["depth"] > 0
        ratio = np.maximum(sample["depth.npy"][valid] / truth["depth"][valid],
                           truth["depth"][valid] / np.maximum(sample["depth.npy"][valid], 1e-6))
        assert (ratio < 1.25).mean() > 0.8
        assert (sample["semseg.png"] == truth["semseg"]).mean() > 0.8
        assert all(b["class"] in SHAPES and b["score"] >= 0.5 for b in sample["det.json"])
        assert isinstance(sample["caption.txt"], str) and sample["caption.txt"]


def test_labels_equal_the_labellers_predictions_and_scores_filter_boxes(photos, tmp_path, shipped):
    out = tmp_path / "labels"
    _run(photos, out, shipped, min_box_score=0.0, shard_size=8, batch_size=8)
    first = next(iter_shard(out / "pseudo-000000.tar"))
    rgb = load_image(photos / first["source.txt"], 64)
    rows = _labeller(shipped, min_box_score=0.0).label(rgb[None], seed=1)
    assert np.array_equal(first["semseg.png"], rows[0]["semseg"]) and first["caption.txt"] == rows[0]["caption"]
    _assert_same_boxes(first["det.json"], rows[0]["det"])  # batch 8 vs 1: equal up to float rounding
    # every label comes from the image alone, not from a chain through the labels before it
    from open4m.generation.prompt import generate
    from open4m.generation.sampler import TargetSpec
    from open4m.pixels import to_model_pixels

    model, tokenizers = shipped
    for name, raw in (("tok_normal@64", "normal"), ("caption@64", "caption")):
        alone = generate(model, {"rgb@64": to_model_pixels(rgb[None])}, [TargetSpec(name, steps=1, temperature=0.0)],
                         tokenizers=tokenizers.image, text_tokenizer=tokenizers.text, seed=1).decoded[name][0]
        assert np.array_equal(np.asarray(alone), np.asarray(rows[0][raw]))
    strict = _labeller(shipped, min_box_score=0.9).label(rgb[None], seed=1)[0]["det"]
    assert strict == [b for b in rows[0]["det"] if b["score"] >= 0.9] and len(strict) < len(rows[0]["det"])


def _assert_same_boxes(a, b):
    assert [x["class"] for x in a] == [x["class"] for x in b]
    np.testing.assert_allclose([x["box"] + [x["score"]] for x in a], [x["box"] + [x["score"]] for x in b],
                               atol=1e-5)


def test_a_rerun_continues_and_other_settings_are_refused(photos, tmp_path, shipped):
    out = tmp_path / "labels"
    _run(photos, out, shipped)
    first = (out / "pseudo-000000.tar").read_bytes()
    again = _run(photos, out, shipped)
    assert (again.written, again.skipped, again.labelled) == (0, 2, 0)
    (out / "pseudo-000001.tar").unlink()
    (out / ".pseudo-000001.tar.partial").write_bytes(b"partial")  # what a killed writer leaves
    resumed = _run(photos, out, shipped)
    assert (resumed.written, resumed.skipped) == (1, 1) and (out / "pseudo-000000.tar").read_bytes() == first
    assert not list(out.glob(".*.partial"))
    with pytest.raises(ValueError, match=r"settings \(min_box_score: 0.5 there, 0.3 now\).*--overwrite"):
        _run(photos, out, shipped, min_box_score=0.3)
    redone = _run(photos, out, shipped, min_box_score=0.3, overwrite=True)
    assert redone.written == 2 and json.loads((out / MANIFEST).read_text())["settings"]["min_box_score"] == 0.3
    assert _run(photos, out, shipped, min_box_score=0.3, overwrite=True).written == 2  # same settings: again


def test_shards_without_a_manifest_are_not_overwritten(photos, tmp_path, shipped):
    out = tmp_path / "labels"
    out.mkdir()
    write_shard(out / "pseudo-000000.tar", [{"__key__": "x", "caption.txt": "mine"}])
    with pytest.raises(ValueError, match="no labels.json"):
        _run(photos, out, shipped)
    assert next(iter_shard(out / "pseudo-000000.tar"))["caption.txt"] == "mine"


def test_labels_pretokenize_into_training_samples(labelled, shipped, tmp_path):
    report = pretokenize(labelled[0], tmp_path / "tokens")
    assert (report.written, report.samples) == (2, 5)
    needs = ["rgb@64", "tok_rgb@64", "tok_depth@64", "tok_normal@64", "tok_semseg@64", "caption@64", "det@64"]
    for raw in iter_shard(tmp_path / "tokens" / "pseudo-000000.tar"):
        sample = decode_sample(raw, needs, "labels")
        assert sample["rgb@64"].shape == (3, 64, 64) and sample["tok_depth@64"].shape == (16, 16)
        assert isinstance(sample["det@64"], str) and isinstance(sample["caption@64"], str)
    # ... and the world mixture's batches of them train a 4M over every world modality
    masking = MaskingConfig.from_yaml("configs/mixtures/world.yaml")
    spec = DatasetSpec(shards=[str(p) for p in list_shards(tmp_path / "tokens")], name="pseudo")
    batch = validation_batches([spec], masking, batch_size=5, max_batches=1, tokenizer=shipped[1].text)[0]
    torch.manual_seed(0)
    model = FourM(preset("tiny_gelu", needs, needs[1:], dim=32, encoder_depth=1, decoder_depth=1, num_heads=2))
    loss, per_modality = model(batch, masking.input_tokens[1], masking.target_tokens[1])  # (min, max) budgets
    loss.backward()
    assert torch.isfinite(loss) and set(per_modality) <= set(needs[1:]) and len(per_modality) >= 3


def test_cli_labels_a_folder_and_names_bad_input(photos, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["label", "--images", str(photos), "--out", str(out), "--shard-size", "8", "--image-boxes-only"]) == 0
    printed = capsys.readouterr().out
    assert "labelled 5 images into 1 shards" in printed and "skipped broken.jpg" in printed
    assert json.loads((out / MANIFEST).read_text())["settings"]["box_views"] == "image"
    assert main(["label", "--images", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "image folder" in capsys.readouterr().err
    assert main(["label", "--images", str(photos), "--out", str(out), "--model", str(tmp_path / "nomodel")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_label_images_defaults_to_the_shipped_model(photos, tmp_path):
    report = label_images(photos, tmp_path / "shipped", shard_size=16, batch_size=8)
    assert report.labelled == 5
    manifest = json.loads((tmp_path / "shipped" / MANIFEST).read_text())
    assert len(manifest["model_sha256"]) == 64 and "tok_depth@64" in manifest["tokenizers_sha256"]


def test_the_preview_grid_shows_the_columns_every_sample_has():
    from open4m.data.world.preview import COLUMNS, samples_grid

    full = render_scene(SEEDS[0])
    assert samples_grid([full], cell=32).size == (len(COLUMNS) * 32, 14 + 32 + 40)
    partial = {k: full[k] for k in ("rgb", "depth", "det")}  # no caption: an empty text line
    assert samples_grid([full, partial], cell=32).size == (3 * 32, 14 + 2 * (32 + 40))
    with pytest.raises(ValueError, match="at least one sample"):
        samples_grid([])


def test_a_model_that_takes_rgb_tokens_labels_from_the_tokenized_image(shipped, photos, tmp_path):
    _, tokenizers = shipped
    torch.manual_seed(0)
    model = FourM(preset("tiny_gelu", ["tok_rgb@64"], ["tok_depth@64", "det@64"], dim=32, encoder_depth=1,
                         decoder_depth=1, num_heads=2)).eval()
    labeller = Labeller.for_model(model, tokenizers, min_box_score=0.0)
    assert labeller.rgb_input == "tok_rgb@64" and labeller.settings["box_views"] == "image"
    assert labeller.members == ["depth.npy", "det.json", "rgb.png", "source.txt"]
    rgb = np.stack([load_image(photos / "scene0.png", 64)] * 2)
    rows = labeller.label(rgb)
    assert [sorted(r) for r in rows] == [["depth", "det", "rgb"]] * 2 and rows[0]["depth"].shape == (64, 64)


def test_boxes_from_the_image_alone_are_its_greedy_decode(shipped, photos):
    from open4m.generation.boxes import detect
    from open4m.pixels import to_model_pixels

    model, tokenizers = shipped
    labeller = Labeller.for_model(model, tokenizers, min_box_score=0.0, all_views=False)
    assert labeller.settings["box_views"] == "image"
    rgb = np.stack([load_image(photos / f"scene{i}.png", 64) for i in (0, 1)])
    boxes = [row["det"] for row in labeller.label(rgb, seed=3)]
    alone = detect(model, {"rgb@64": to_model_pixels(rgb)}, "det@64", text_tokenizer=tokenizers.text,
                   tokenizers=tokenizers.image, samples=0, seed=[3, 4])
    for got, want in zip(boxes, alone, strict=True):
        _assert_same_boxes(got, want)
