"""Writing the world: shards and folders decode to exactly what render_scene gives, runs resume, the CLI."""

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from open4m.cli import main
from open4m.data.shards import list_shards
from open4m.data.world import EXTENSIONS, MODALITIES, WorldConfig, iter_world_samples, render_scene, seed_for
from open4m.data.world.writer import write_world

SRC = Path(__file__).resolve().parents[2] / "src"
LOSSLESS = ["rgb", "depth", "semseg", "instance", "edges"]


def assert_same_sample(decoded: dict, expected: dict) -> None:
    for name in LOSSLESS:
        assert decoded[name].dtype == expected[name].dtype, name
        np.testing.assert_array_equal(decoded[name], expected[name], err_msg=name)
    assert decoded["normal"].dtype == np.float32
    np.testing.assert_allclose(decoded["normal"], expected["normal"], atol=1e-3)
    for name in ("det", "caption", "color_palette", "metadata", "scene"):
        assert decoded[name] == expected[name], name


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in list_shards(folder)}


def test_shards_decode_to_the_sample_contract(tmp_path):
    report = write_world(tmp_path, 7, split="val", shard_size=3)
    assert (report.rendered, report.skipped) == (7, 0)
    assert [p.name for p in report.paths] == [f"world-val-00000{i}.tar" for i in range(3)]
    samples = list(iter_world_samples(report.paths))
    assert [s["__key__"] for s in samples] == [f"{seed_for('val', i):010d}" for i in range(7)]
    for i, sample in enumerate(samples):
        assert_same_sample(sample, render_scene(seed_for("val", i)))
    assert set(samples[0]) == {*MODALITIES, "__key__"}


def test_writing_is_deterministic_and_independent_of_workers(tmp_path):
    write_world(tmp_path / "a", 8, shard_size=2)
    write_world(tmp_path / "b", 8, shard_size=2, workers=2)
    assert digests(tmp_path / "a") == digests(tmp_path / "b") and len(digests(tmp_path / "a")) == 4


def test_splits_do_not_share_scenes(tmp_path):
    keys = {}
    for split in ("train", "val", "test"):
        paths = write_world(tmp_path / split, 4, split=split).paths
        keys[split] = {s["__key__"] for s in iter_world_samples(paths)}
        assert len(keys[split]) == 4
    assert not keys["train"] & keys["val"] and not keys["val"] & keys["test"] and not keys["train"] & keys["test"]


def test_killed_run_resumes_without_corrupt_shards(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "open4m.cli", "world", "render", "--out", str(out), "--num", "120",
               "--shard-size", "4", "--split", "test"]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and len(list_shards(out) if out.exists() else []) < 2:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = list_shards(out)
    assert 2 <= len(finished) < 30, "the run was killed in the middle"
    (out / ".world-test-000029.tar.4242.partial").write_bytes(b"half a shard")  # as a kill mid-write leaves
    for path in finished:
        assert len(list(iter_world_samples([path]))) == 4
    report = write_world(out, 120, split="test", shard_size=4)
    assert report.skipped >= 8 and report.rendered + report.skipped == 120
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]
    write_world(tmp_path / "clean", 120, split="test", shard_size=4)
    assert digests(out) == digests(tmp_path / "clean")


def test_damaged_or_short_shards_are_rewritten(tmp_path):
    write_world(tmp_path, 6, shard_size=4)
    first = tmp_path / "world-train-000000.tar"
    good = first.read_bytes()
    first.write_bytes(good[:5000])
    report = write_world(tmp_path, 10, shard_size=4)  # also extends the short last shard (2 -> 4 scenes)
    assert (report.rendered, report.skipped) == (10, 0)
    assert first.read_bytes() == good
    assert [len(list(iter_world_samples([p]))) for p in report.paths] == [4, 4, 2]


def test_incomplete_samples_are_reported(tmp_path):
    from open4m.data.shards import write_shard

    write_shard(tmp_path / "x.tar", [{"__key__": "0000000001", "rgb.png": np.zeros((2, 2, 3), np.uint8)}])
    with pytest.raises(ValueError, match=r"sample '0000000001' of shard .*x.tar lacks modalities \['depth'"):
        list(iter_world_samples([tmp_path / "x.tar"]))


def test_folder_layout_follows_the_official_convention(tmp_path):
    report = write_world(tmp_path, 3, split="val", layout="folders")
    assert report.rendered == 3
    for i in range(3):
        seed = seed_for("val", i)
        expected = render_scene(seed)
        for name in MODALITIES:
            assert (tmp_path / name / "val" / f"{seed:010d}.{EXTENSIONS[name]}").is_file(), name
        rgb = np.asarray(Image.open(tmp_path / "rgb" / "val" / f"{seed:010d}.png"))
        np.testing.assert_array_equal(rgb, expected["rgb"])
        depth = np.load(tmp_path / "depth" / "val" / f"{seed:010d}.npy", allow_pickle=False)
        np.testing.assert_array_equal(depth, expected["depth"])
        caption = (tmp_path / "caption" / "val" / f"{seed:010d}.txt").read_text()
        assert caption == expected["caption"]
    (tmp_path / "det" / "val" / f"{seed_for('val', 1):010d}.json").unlink()
    again = write_world(tmp_path, 3, split="val", layout="folders")
    assert (again.rendered, again.skipped) == (1, 2)


def test_bad_writer_arguments(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        write_world(tmp_path / "file", 1)
    assert (tmp_path / "file").read_text() == "mine"
    for kwargs, message in [({"num": -1}, "non-negative integer"), ({"workers": 0}, "workers must be"),
                            ({"layout": "zip"}, "unknown layout"), ({"split": "dev"}, "unknown split"),
                            ({"shard_size": 0}, "shard_size must be"), ({"num": 2 * 10**6, "split": "val"},
                                                                         "outside split 'val'")]:
        with pytest.raises(ValueError, match=message):
            write_world(tmp_path / "out", **{"num": 1, **kwargs})
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "world-train-000000.tar").write_bytes(b"someone else's")
    with pytest.raises(ValueError, match="already holds world-train-000000.tar but no world.json"):
        write_world(tmp_path / "foreign", 1)
    assert (tmp_path / "foreign" / "world-train-000000.tar").read_bytes() == b"someone else's"
    write_world(tmp_path / "out", 1)
    with pytest.raises(ValueError, match="resolution: 64 there, 32 now"):
        write_world(tmp_path / "out", 1, config=dataclasses.replace(WorldConfig(), resolution=32))


def test_cli_render_preview_and_errors(tmp_path, capsys):
    assert main(["world", "render", "--out", str(tmp_path / "w"), "--num", "3", "--split", "val",
                 "--resolution", "32"]) == 0
    assert "rendered 3 scenes" in capsys.readouterr().out
    sample = next(iter_world_samples(list_shards(tmp_path / "w")))
    assert sample["rgb"].shape == (32, 32, 3)
    assert json.loads((tmp_path / "w" / "world.json").read_text())["resolution"] == 32

    assert main(["world", "render", "--out", str(tmp_path / "x"), "--num", "1", "--resolution", "0"]) == 2
    assert "resolution must be an integer in 1..2048" in capsys.readouterr().err
    assert main(["world", "render", "--out", str(tmp_path / "x"), "--num", "-5"]) == 2
    assert "non-negative" in capsys.readouterr().err
    (tmp_path / "taken").write_text("")
    assert main(["world", "render", "--out", str(tmp_path / "taken"), "--num", "1"]) == 2
    assert "not a directory" in capsys.readouterr().err

    grid = tmp_path / "grid.png"
    assert main(["world", "preview", "--out", str(grid), "--num", "2", "--resolution", "32"]) == 0
    image = Image.open(grid)
    assert image.width == 7 * 128 and image.height > 2 * 128
    assert main(["world", "preview", "--out", str(tmp_path), "--num", "2"]) == 2
    assert "is a directory" in capsys.readouterr().err
