"""Determinism, the sample contract, splits and parameter validation of the world."""

import dataclasses
import json

import numpy as np
import pytest

from open4m.data.world import (
    COLORS,
    MATERIALS,
    SEMSEG_CLASSES,
    SHAPES,
    SIZES,
    SPLIT_SEEDS,
    Scene,
    WorldConfig,
    render_sample,
    render_scene,
    sample_scene,
    seed_for,
)

ARRAYS = {"rgb": (np.uint8, (64, 64, 3)), "depth": (np.float32, (64, 64)), "normal": (np.float32, (64, 64, 3)),
          "semseg": (np.uint8, (64, 64)), "instance": (np.uint8, (64, 64)), "edges": (np.uint8, (64, 64))}


def test_sample_contract():
    sample = render_scene(7)
    assert set(sample) == {*ARRAYS, "det", "caption", "color_palette", "metadata", "scene"}
    for name, (dtype, shape) in ARRAYS.items():
        assert sample[name].dtype == dtype and sample[name].shape == shape, name
    assert set(np.unique(sample["edges"])) <= {0, 255}
    assert sample["semseg"].max() < len(SEMSEG_CLASSES) and SEMSEG_CLASSES[:2] == ["background", "floor"]
    assert sample["instance"].max() <= len(sample["scene"]["objects"])
    assert isinstance(sample["caption"], str) and sample["caption"]
    assert 1 <= len(sample["color_palette"]) <= 7
    assert all(len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in sample["color_palette"])
    assert all(isinstance(v, int | float) for v in sample["metadata"].values())
    json.dumps(sample["scene"])
    json.dumps(sample["det"])


def test_scene_graph_round_trips_and_determines_the_rendering():
    sample = render_scene(21)
    scene = Scene.from_json(json.loads(json.dumps(sample["scene"])))
    again = render_sample(scene)
    for name in ARRAYS:
        np.testing.assert_array_equal(again[name], sample[name])
    assert again["caption"] == sample["caption"] and again["det"] == sample["det"]


def test_same_seed_gives_identical_bytes_and_other_seeds_differ():
    a, b = render_scene(123), render_scene(123)
    for name in ARRAYS:
        assert a[name].tobytes() == b[name].tobytes()
    assert json.dumps(a, default=lambda x: x.tolist()) == json.dumps(b, default=lambda x: x.tolist())
    rgbs = [render_scene(seed)["rgb"].tobytes() for seed in range(30)]
    scenes = [json.dumps(sample_scene(seed).to_json()["objects"]) for seed in range(30)]
    assert len(set(rgbs)) == 30 and len(set(scenes)) == 30


def test_scene_statistics_cover_the_vocabularies():
    scenes = [sample_scene(seed) for seed in range(300)]
    counts = [len(s.objects) for s in scenes]
    assert min(counts) == 1 and max(counts) == 6
    for attr, vocab in (("shape", SHAPES), ("color", COLORS), ("size", SIZES), ("material", MATERIALS)):
        assert {getattr(o, attr) for s in scenes for o in s.objects} == set(vocab)
    elevations = [np.degrees(np.arcsin((s.camera.position[1] - s.camera.target[1]) / np.linalg.norm(
        np.subtract(s.camera.position, s.camera.target)))) for s in scenes]
    assert 25 - 1e-3 <= min(elevations) and max(elevations) <= 55 + 1e-3


def test_splits_are_disjoint_seed_ranges():
    ranges = sorted(SPLIT_SEEDS.values())
    for (_, stop), (start, _) in zip(ranges, ranges[1:], strict=False):
        assert stop <= start
    assert seed_for("train", 0) == 0 and seed_for("val", 0) == 10**9
    assert seed_for("test", 0) == 10**9 + 10**6
    train_last = seed_for("train", SPLIT_SEEDS["train"][1] - 1)
    assert train_last < seed_for("val", 0)
    with pytest.raises(ValueError, match="outside split 'val'"):
        seed_for("val", 10**6)
    with pytest.raises(ValueError, match="unknown split"):
        seed_for("holdout", 0)


def test_config_restrictions_are_obeyed():
    config = dataclasses.replace(WorldConfig(), shapes=("cone",), colors=("cyan", "red"), min_objects=3,
                                 max_objects=3)
    for seed in range(10):
        objects = sample_scene(seed, config).objects
        assert len(objects) == 3
        assert all(o.shape == "cone" and o.color in ("cyan", "red") for o in objects)


def test_224_resolution_renders_the_same_scene():
    big = render_scene(5, dataclasses.replace(WorldConfig(), resolution=224))
    small = render_scene(5)
    assert big["rgb"].shape == (224, 224, 3)
    assert big["scene"] == small["scene"]
    assert {d["instance"] for d in big["det"]} >= {d["instance"] for d in small["det"]}


@pytest.mark.parametrize("changes,message", [
    ({"resolution": 0}, "resolution must be an integer in 1..2048"),
    ({"resolution": 100_000}, "resolution must be an integer in 1..2048"),
    ({"min_objects": -1}, "min_objects must be an integer"),
    ({"max_objects": -3}, "max_objects must be an integer"),
    ({"min_objects": 5, "max_objects": 2}, "min_objects .5. is larger than max_objects .2."),
    ({"shapes": ("sphere", "torus")}, r"unknown shape name\(s\) \['torus'\]"),
    ({"colors": ("red", "magenta")}, r"unknown color name\(s\) \['magenta'\]"),
    ({"sizes": ()}, "sizes must be a non-empty list"),
    ({"materials": ("glass",)}, r"unknown material name\(s\) \['glass'\]"),
    ({"fov_deg": 0.0}, "fov_deg must be in"),
    ({"camera_distance": (5.0, 2.0)}, "camera_distance must be a range"),
])
def test_bad_parameters_give_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        render_scene(0, dataclasses.replace(WorldConfig(), **changes))


def test_bad_seed_and_unplaceable_objects():
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        sample_scene(-4)
    crowded = dataclasses.replace(WorldConfig(), min_objects=12, max_objects=12, sizes=("large",),
                                  placement_extent=1.0)
    with pytest.raises(ValueError, match="could not place 12 objects"):
        sample_scene(0, crowded)


def test_config_round_trips_through_json():
    config = dataclasses.replace(WorldConfig(), resolution=96, shapes=("cube", "cone"))
    assert WorldConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown WorldConfig field"):
        WorldConfig.from_dict({"resolutoin": 64})


def test_sky_gradient_is_optional():
    from open4m.data.world.scene import Camera, Light, make_object

    low_camera = Scene(seed=1, objects=(make_object("cube", "red", "large", "matte", 0.0, 0.0, 10.0),),
                       camera=Camera((0.0, 1.5, 12.0), (0.0, 1.5, 0.0), 40.0), light=Light((0.0, 1.0, 0.0), 0.75, 0.35))
    with_sky = render_sample(low_camera)
    without = render_sample(low_camera, dataclasses.replace(WorldConfig(), sky=False))
    sky = with_sky["semseg"] == 0
    assert sky[:20].all() and not sky[-20:].any(), "upper half background, lower half floor"
    assert (without["rgb"][sky] == 0).all() and (with_sky["rgb"][sky] > 0).all()
    np.testing.assert_array_equal(without["rgb"][~sky], with_sky["rgb"][~sky])
    red = with_sky["rgb"][:20, :, 0].astype(int).mean(axis=1)
    assert red[0] < red[-1], "the gradient darkens from the horizon to the zenith"
