"""Sample sources: the toy scenes follow the world sample contract; npz folders and --data specs."""

import numpy as np
import pytest

from open4m.vq.samples import npz_samples, open_samples, synthetic_sample


def test_toy_scenes_follow_the_world_contract_and_are_deterministic():
    s = synthetic_sample(3, image_size=32, num_classes=6, seed=5)
    assert s["rgb"].shape == (32, 32, 3) and s["rgb"].dtype == np.uint8
    assert s["depth"].dtype == np.float32 and s["normal"].shape == (32, 32, 3) and s["normal"].dtype == np.float32
    sky = s["semseg"] == 0
    assert sky.any() and (s["depth"][sky] == 0).all() and (s["normal"][sky] == 0).all()
    assert (s["depth"][~sky] > 0).all()
    np.testing.assert_allclose(np.linalg.norm(s["normal"][~sky], axis=-1), 1.0, atol=1e-5)
    assert s["semseg"].max() < 6 and set(np.unique(s["edges"])) <= {0, 255}
    assert (s["edges"][:, :-1][s["semseg"][:, :-1] != s["semseg"][:, 1:]] == 255).all()  # class borders are edges
    again = synthetic_sample(3, image_size=32, num_classes=6, seed=5)
    assert all(np.array_equal(s[k], again[k]) for k in s)
    assert not np.array_equal(s["rgb"], synthetic_sample(4, image_size=32, num_classes=6, seed=5)["rgb"])


def test_npz_folder_and_data_specs(tmp_path):
    for i in range(3):
        np.savez(tmp_path / f"{i:03d}.npz", **synthetic_sample(i, image_size=16))
    loaded = npz_samples(tmp_path)
    assert len(loaded) == 3 and np.array_equal(loaded[1]["depth"], synthetic_sample(1, image_size=16)["depth"])
    assert len(open_samples(str(tmp_path))) == 3
    stream = open_samples("synthetic:2", image_size=16)
    first = next(iter(stream))
    assert np.array_equal(first["rgb"], synthetic_sample(0, image_size=16, seed=2)["rgb"])
    assert np.array_equal(next(iter(stream))["rgb"], first["rgb"])  # iterating again starts over
    with pytest.raises(ValueError, match="synthetic:SEED with an integer seed"):
        open_samples("synthetic:x")
    with pytest.raises(FileNotFoundError, match="no \\*.npz samples"):
        npz_samples(tmp_path / "empty")
