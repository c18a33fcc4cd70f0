"""Edges, colour palettes and metadata checked against values recomputed from the other modalities."""

import numpy as np
import pytest

from open4m.data.world import render_scene
from open4m.data.world.labels import color_palette


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_edges_mark_every_surface_boundary_and_crease_only(seed):
    sample = render_scene(seed)
    edges = sample["edges"] > 0
    label = sample["semseg"].astype(int) * 256 + sample["instance"]
    normal = sample["normal"]
    expected = np.zeros_like(edges)
    for a, b in (((slice(None), slice(0, -1)), (slice(None), slice(1, None))),
                 ((slice(0, -1), slice(None)), (slice(1, None), slice(None)))):
        boundary = label[a] != label[b]
        crease = ((normal[a] * normal[b]).sum(-1) < np.cos(np.radians(30))) & (label[a] > 0)
        expected[a] |= boundary | crease
        expected[b] |= boundary | crease
    np.testing.assert_array_equal(edges, expected)
    for k in np.unique(sample["instance"])[1:]:
        rows, cols = np.nonzero(sample["instance"] == k)
        assert edges[rows.min(), cols[rows == rows.min()]].all(), "an object's top outline is an edge"
    assert edges.mean() < 0.3


def test_palette_of_flat_colours_is_exact_and_ordered():
    image = np.zeros((10, 10, 3), dtype=np.uint8)
    image[:] = (200, 30, 30)
    image[:3] = (20, 20, 220)
    image[0, 0] = (0, 255, 0)  # 1 % of the pixels: kept at the default 1 % share
    assert color_palette(image, 7) == [[200, 30, 30], [20, 20, 220], [0, 255, 0]]
    assert color_palette(image, 1) == [[200, 30, 30]]


def test_palette_colours_are_present_in_the_image():
    for seed in range(5):
        sample = render_scene(seed)
        pixels = sample["rgb"].reshape(-1, 3).astype(int)
        for colour in sample["color_palette"]:
            close = np.abs(pixels - colour).max(axis=1) <= 64
            assert close.mean() >= 0.01, (seed, colour)


@pytest.mark.parametrize("seed", [0, 6, 12])
def test_metadata_is_recomputed_from_the_image(seed):
    sample = render_scene(seed)
    meta, rgb = sample["metadata"], sample["rgb"].astype(float) / 255
    luma = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    visible = [sample["scene"]["objects"][k - 1] for k in np.unique(sample["instance"]) if k]
    assert meta["n_objects"] == len(visible) == len(sample["det"])
    assert meta["n_objects_total"] == len(sample["scene"]["objects"])
    assert meta["n_shapes"] == len({o["shape"] for o in visible})
    assert meta["n_colors"] == len({o["color"] for o in visible})
    assert meta["semantic_diversity"] == len(np.unique(sample["semseg"]))
    assert meta["brightness"] == pytest.approx(luma.mean(), abs=1e-6)
    assert meta["contrast"] == pytest.approx(luma.std(), abs=1e-6)
    assert meta["object_coverage"] == pytest.approx((sample["instance"] > 0).mean(), abs=1e-6)
    assert meta["caption_n_words"] == len(sample["caption"].split())
    assert meta["width"] == meta["height"] == 64
    assert 0 <= meta["saturation"] <= 1 and 0 <= meta["colorfulness"] and 0 <= meta["entropy"] <= 8
