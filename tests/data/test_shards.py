"""WebDataset shard primitives: round trips, determinism, atomicity and clear errors."""

import hashlib
import io
import tarfile

import numpy as np
import pytest

from open4m.data.shards import (
    iter_shard,
    list_shards,
    remove_partial_shards,
    shard_keys,
    write_bytes_atomic,
    write_shard,
)


def make_samples(n: int = 3) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{
        "__key__": f"{i:04d}",
        "rgb.png": rng.integers(0, 256, (5, 7, 3), dtype=np.uint8),
        "mask.png": rng.integers(0, 256, (5, 7), dtype=np.uint8),
        "deep.png": rng.integers(0, 65536, (4, 4), dtype=np.uint16),
        "tokens.npy": rng.integers(-5, 5, (2, 9), dtype=np.int16),
        "depth.npy": rng.standard_normal((3, 3)).astype(np.float32),
        "meta.json": {"a": i, "b": [1.5, "x"]},
        "caption.txt": f"sample number {i} \u2713",
        "blob.bin": bytes([i, 1, 2]),
    } for i in range(n)]


def test_round_trip_is_lossless(tmp_path):
    samples = make_samples()
    write_shard(tmp_path / "a.tar", samples)
    back = list(iter_shard(tmp_path / "a.tar"))
    assert [s["__key__"] for s in back] == ["0000", "0001", "0002"]
    for original, decoded in zip(samples, back, strict=True):
        assert set(decoded) == set(original)
        for key, value in original.items():
            if isinstance(value, np.ndarray):
                assert decoded[key].dtype == value.dtype and decoded[key].shape == value.shape, key
                np.testing.assert_array_equal(decoded[key], value)
            else:
                assert decoded[key] == value, key
    assert shard_keys(tmp_path / "a.tar") == ["0000", "0001", "0002"]


def test_member_names_follow_webdataset(tmp_path):
    write_shard(tmp_path / "a.tar", make_samples(1))
    with tarfile.open(tmp_path / "a.tar") as tar:
        names = tar.getnames()
        assert all(m.mtime == 0 for m in tar.getmembers())
    assert "0000.rgb.png" in names and "0000.caption.txt" in names and len(names) == 8


def test_writing_is_deterministic(tmp_path):
    write_shard(tmp_path / "a.tar", make_samples())
    write_shard(tmp_path / "b.tar", make_samples())
    digest = [hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("a.tar", "b.tar")]
    assert digest[0] == digest[1]


def test_existing_shard_is_not_overwritten_silently(tmp_path):
    path = write_shard(tmp_path / "a.tar", make_samples(1))
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        write_shard(path, make_samples(2))
    assert path.read_bytes() == before
    write_shard(path, make_samples(2), overwrite=True)
    assert shard_keys(path) == ["0000", "0001"]


def test_failed_write_leaves_nothing_behind(tmp_path):
    bad = make_samples(2)
    bad[1]["rgb.png"] = np.zeros((4, 4, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="member 'rgb.png': png needs uint8"):
        write_shard(tmp_path / "a.tar", bad)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key", ["", "a.b", "x/y", None])
def test_bad_keys(tmp_path, key):
    with pytest.raises(ValueError, match="sample key"):
        write_shard(tmp_path / "a.tar", [{"__key__": key, "x.txt": "hi"}])


def test_bad_entries(tmp_path):
    with pytest.raises(ValueError, match="duplicate sample key"):
        write_shard(tmp_path / "a.tar", [{"__key__": "k", "x.txt": "a"}, {"__key__": "k", "x.txt": "b"}])
    with pytest.raises(ValueError, match="'x.txt': expected a str"):
        write_shard(tmp_path / "a.tar", [{"__key__": "k", "x.txt": 3}])
    with pytest.raises(ValueError, match="'x.npy': object arrays"):
        write_shard(tmp_path / "a.tar", [{"__key__": "k", "x.npy": np.array([{}], dtype=object)}])
    with pytest.raises(ValueError, match="'x.zzz': no encoder"):
        write_shard(tmp_path / "a.tar", [{"__key__": "k", "x.zzz": 3}])


def test_truncated_and_missing_shards_give_clear_errors(tmp_path):
    path = write_shard(tmp_path / "a.tar", make_samples())
    data = path.read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(ValueError, match="cut.tar is truncated"):
        list(iter_shard(tmp_path / "cut.tar"))
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 10)
    with pytest.raises(ValueError, match="junk.tar is truncated or not a tar"):
        list(iter_shard(tmp_path / "junk.tar"))
    with pytest.raises(FileNotFoundError, match="nope.tar does not exist"):
        list(iter_shard(tmp_path / "nope.tar"))


def test_shard_cut_between_members_is_detected(tmp_path):
    """tarfile alone stops silently at a member boundary; the missing end-of-archive marker gives it away."""
    path = write_shard(tmp_path / "a.tar", make_samples())
    with tarfile.open(path) as tar:
        boundary = tar.getmembers()[12].offset  # header of a member of the second sample
    (tmp_path / "cut.tar").write_bytes(path.read_bytes()[:boundary])
    with pytest.raises(ValueError, match="cut.tar is truncated: no end-of-archive marker"):
        list(iter_shard(tmp_path / "cut.tar"))
    with pytest.raises(ValueError, match="truncated"):
        shard_keys(tmp_path / "cut.tar")


def test_non_contiguous_samples_are_rejected(tmp_path):
    path = tmp_path / "mixed.tar"
    with tarfile.open(path, "w") as tar:
        for name in ("a.x.txt", "b.x.txt", "a.y.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"z"))
    with pytest.raises(ValueError, match="sample 'a' are not contiguous"):
        list(iter_shard(path))


def test_listing_skips_and_cleaning_removes_temporaries(tmp_path):
    write_shard(tmp_path / "s-000001.tar", make_samples(1))
    write_shard(tmp_path / "s-000000.tar", make_samples(1))
    (tmp_path / ".s-000002.tar.999.partial").write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("keep me")
    assert [p.name for p in list_shards(tmp_path)] == ["s-000000.tar", "s-000001.tar"]
    removed = remove_partial_shards(tmp_path)
    assert [p.name for p in removed] == [".s-000002.tar.999.partial"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "s-000000.tar", "s-000001.tar"]


def test_write_bytes_atomic_replaces_whole_files(tmp_path):
    path = write_bytes_atomic(tmp_path / "f.bin", b"one")
    write_bytes_atomic(path, b"two")
    assert path.read_bytes() == b"two" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]
