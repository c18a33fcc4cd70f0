"""Pretokenization (open4m.data.pretokenize, `open4m tokenize`): raw world shards -> token shards."""

import contextlib
import json
import shutil

import numpy as np
import pytest
import torch

import open4m.data.pretokenize as pretokenize_module
from open4m.cli import main
from open4m.data.loader import DatasetSpec, MaskedBatches, validation_batches
from open4m.data.pretokenize import FORMAT, MANIFEST, pretokenize, read_manifest
from open4m.data.shards import iter_shard, list_shards, write_shard
from open4m.data.world.sample import iter_world_samples
from open4m.data.world.writer import write_world
from open4m.mixtures import MaskingConfig
from open4m.pixels import to_model_pixels
from open4m.sequences import to_text
from open4m.shipped import world_tokenizers_dir
from open4m.tokenizer_set import TokenizerSet, file_sha256

IMAGE = {"tok_rgb@64": "rgb", "tok_depth@64": "depth", "tok_normal@64": "normal", "tok_semseg@64": "semseg"}
MEMBERS = ["caption@64.txt", "det@64.json", "rgb@64.png", "tok_depth@64.npy", "tok_normal@64.npy",
           "tok_rgb@64.npy", "tok_semseg@64.npy"]


@pytest.fixture(scope="module")
def tokenizers():
    return TokenizerSet.load(world_tokenizers_dir())


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """Two raw shards: 3 + 2 scenes."""
    path = tmp_path_factory.mktemp("raw")
    write_world(path, 5, shard_size=3)
    return path


@pytest.fixture(scope="module")
def clean(raw, tmp_path_factory):
    """A clean one-worker run over ``raw``."""
    out = tmp_path_factory.mktemp("clean") / "tok"
    report = pretokenize(raw, out, batch_size=2)
    assert (report.written, report.skipped, report.samples) == (2, 0, 5)
    return out


@contextlib.contextmanager
def one_thread():
    """Pretokenization encodes with one torch thread per worker; near-tie codes (about 1 in 1,000 depth tokens
    here) can flip with the thread count, so direct encodes for comparison use one thread too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def file_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_token_shards_hold_the_encoded_raw_samples(raw, clean, tokenizers):
    assert [p.name for p in list_shards(clean)] == [p.name for p in list_shards(raw)]
    with one_thread():
        check_shards(raw, clean, tokenizers)


def check_shards(raw, clean, tokenizers, batch_size=2):
    """The token shards in ``clean`` hold the set's encodes of each raw shard's images, made in batches of
    ``batch_size`` as the run did (a convolution may round a near-tie differently for a lone image: on one AMD
    host one token of 256 of an image differed between its batch-of-2 and its batch-of-1 encodes)."""
    for raw_shard in list_shards(raw):
        raw_samples = list(iter_world_samples([raw_shard]))
        token_samples = list(iter_shard(clean / raw_shard.name))
        assert [s["__key__"] for s in token_samples] == [s["__key__"] for s in raw_samples]
        expected = {}
        for name, key in IMAGE.items():
            tokenizer = tokenizers.image[name]
            saved, tokenizer.batch_size = tokenizer.batch_size, batch_size
            try:
                expected[name] = tokenizer.encode(np.stack([source[key] for source in raw_samples]))
            finally:
                tokenizer.batch_size = saved
        for i, (sample, source) in enumerate(zip(token_samples, raw_samples, strict=True)):
            assert sorted(k for k in sample if k != "__key__") == MEMBERS
            for name in IMAGE:
                tokens = sample[f"{name}.npy"]
                assert tokens.dtype == np.int16 and tokens.shape == (16, 16)
                np.testing.assert_array_equal(tokens, expected[name][i])
            np.testing.assert_array_equal(sample["rgb@64.png"], source["rgb"])
            assert sample["caption@64.txt"] == source["caption"]
            assert sample["det@64.json"] == source["det"]


def test_manifest_records_tokenizers_counts_and_members(raw, clean, tokenizers):
    manifest = read_manifest(clean)
    assert manifest == json.loads((clean / MANIFEST).read_text())
    assert manifest["format"] == FORMAT
    assert manifest["source"] == str(raw.resolve())
    assert manifest["tokenizers"] == str(world_tokenizers_dir().resolve())
    assert manifest["sha256"] == tokenizers.sha256
    assert manifest["members"] == MEMBERS
    assert manifest["shards"] == {
        p.name: {"samples": n, "sha256": file_sha256(clean / p.name), "source_sha256": file_sha256(p)}
        for p, n in zip(list_shards(raw), (3, 2), strict=True)}


def test_rerun_skips_finished_shards(raw, clean, tmp_path):
    out = tmp_path / "tok"
    shutil.copytree(clean, out)
    before = file_bytes(out)
    report = pretokenize(raw, out)
    assert (report.written, report.skipped, report.samples) == (0, 2, 0)
    assert file_bytes(out) == before


def test_resume_after_a_crash_matches_a_clean_run(raw, clean, tmp_path):
    out = tmp_path / "tok"
    shutil.copytree(clean, out)
    first, second = sorted(p.name for p in list_shards(out))
    # The crash: shard 2 was being written (a temporary left behind), shard 1 is finished but the manifest
    # update after it never happened.
    (out / second).unlink()
    (out / f".{second}.12345.partial").write_bytes(clean.joinpath(second).read_bytes()[:1000])
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["shards"][first], manifest["shards"][second]
    (out / MANIFEST).write_text(json.dumps(manifest))
    report = pretokenize(raw, out, batch_size=2)
    assert (report.written, report.skipped) == (1, 1)
    assert file_bytes(out) == file_bytes(clean)


def test_a_changed_shard_listed_in_the_manifest_is_redone(raw, clean, tmp_path):
    out = tmp_path / "tok"
    shutil.copytree(clean, out)
    name = list_shards(out)[0].name
    write_shard(out / name, [{"__key__": "x", "rgb@64.png": np.zeros((64, 64, 3), np.uint8)}], overwrite=True)
    report = pretokenize(raw, out, batch_size=2)
    assert (report.written, report.skipped) == (1, 1)
    assert file_bytes(out) == file_bytes(clean)


def test_a_changed_raw_shard_is_tokenized_again(raw, tmp_path):
    shutil.copytree(raw, tmp_path / "raw")
    pretokenize(tmp_path / "raw", tmp_path / "tok")
    first = list_shards(tmp_path / "raw")[0]
    samples = list(iter_shard(first))[:2]
    write_shard(first, samples, overwrite=True)
    report = pretokenize(tmp_path / "raw", tmp_path / "tok")
    assert (report.written, report.skipped, report.samples) == (1, 1, 2)
    assert [s["__key__"] for s in iter_shard(tmp_path / "tok" / first.name)] == [s["__key__"] for s in samples]
    assert json.loads((tmp_path / "tok" / MANIFEST).read_text())["shards"][first.name]["samples"] == 2


def test_one_and_two_workers_write_identical_bytes(raw, clean, tmp_path):
    report = pretokenize(raw, tmp_path / "tok", workers=2, batch_size=2)
    assert (report.written, report.samples) == (2, 5)
    assert file_bytes(tmp_path / "tok") == file_bytes(clean)


def test_batch_size_does_not_change_the_tokens(raw, clean, tmp_path):
    pretokenize(raw, tmp_path / "tok", batch_size=64)
    for shard in list_shards(clean):
        for a, b in zip(iter_shard(shard), iter_shard(tmp_path / "tok" / shard.name), strict=True):
            for name in IMAGE:
                np.testing.assert_array_equal(a[f"{name}.npy"], b[f"{name}.npy"])


@pytest.fixture(scope="module")
def rgb_only_set(tmp_path_factory):
    """A set with just a (slightly changed) rgb tokenizer: another hash, fewer members."""
    rgb = TokenizerSet.load(world_tokenizers_dir(), only=["tok_rgb@64"]).image["tok_rgb@64"]
    with torch.no_grad():
        next(rgb.model.parameters()).add_(0.01)
    path = tmp_path_factory.mktemp("rgb_set") / "set"
    TokenizerSet({"tok_rgb@64": rgb}).save(path)
    return path


@pytest.fixture(scope="module")
def changed_rgb_set(tmp_path_factory):
    """The world set with a slightly changed rgb tokenizer: same members, one other hash."""
    changed = TokenizerSet.load(world_tokenizers_dir())
    with torch.no_grad():
        next(changed.image["tok_rgb@64"].model.parameters()).add_(0.01)
    return changed.save(tmp_path_factory.mktemp("changed_set") / "set", half=True)


def dying(*args, **kwargs):
    raise RuntimeError("killed")
    yield


def test_overwrite_with_other_tokenizers_redoes_every_shard(raw, clean, changed_rgb_set, tmp_path, monkeypatch):
    out = tmp_path / "tok"
    shutil.copytree(clean, out)
    with pytest.raises(ValueError, match=r"tokenizer hashes differ for \['tok_rgb@64'\]"):
        pretokenize(raw, out, tokenizers=changed_rgb_set)
    # --overwrite, but the run dies before tokenizing anything: resuming it must not adopt an old shard
    with monkeypatch.context() as patch:
        patch.setattr(pretokenize_module, "_run_jobs", dying)
        with pytest.raises(RuntimeError, match="killed"):
            pretokenize(raw, out, tokenizers=changed_rgb_set, overwrite=True)
    report = pretokenize(raw, out, tokenizers=changed_rgb_set)
    assert (report.written, report.skipped) == (2, 0)
    changed = TokenizerSet.load(changed_rgb_set)
    with one_thread():
        for shard in list_shards(raw):
            for sample, source, old in zip(iter_shard(out / shard.name), iter_world_samples([shard]),
                                           iter_shard(clean / shard.name), strict=True):
                expected = changed.image["tok_rgb@64"].encode(source["rgb"])[0]
                np.testing.assert_array_equal(sample["tok_rgb@64.npy"], expected)
                np.testing.assert_array_equal(sample["tok_depth@64.npy"], old["tok_depth@64.npy"])
    assert not np.array_equal(*(next(iter_shard(d / "world-train-000000.tar"))["tok_rgb@64.npy"] for d in (out, clean)))


def test_the_set_decides_which_modalities_are_written(raw, rgb_only_set, tmp_path):
    pretokenize(raw, tmp_path / "tok", tokenizers=rgb_only_set)
    changed = TokenizerSet.load(rgb_only_set)
    manifest = json.loads((tmp_path / "tok" / MANIFEST).read_text())
    assert manifest["members"] == ["rgb@64.png", "tok_rgb@64.npy"]
    assert manifest["sha256"] == changed.sha256
    for sample, source in zip(iter_shard(list_shards(tmp_path / "tok")[0]), iter_world_samples(list_shards(raw)[:1]),
                              strict=True):
        assert sorted(k for k in sample if k != "__key__") == ["rgb@64.png", "tok_rgb@64.npy"]
        with one_thread():
            expected = changed.image["tok_rgb@64"].encode(source["rgb"])[0]
        np.testing.assert_array_equal(sample["tok_rgb@64.npy"], expected)


def test_other_tokenizers_refuse_an_existing_output_unless_overwrite(raw, clean, rgb_only_set, tmp_path):
    out = tmp_path / "tok"
    shutil.copytree(clean, out)
    before = file_bytes(out)
    with pytest.raises(ValueError, match=r"tokenizer hashes differ for \[.*'tok_rgb@64'.*\].*--overwrite"):
        pretokenize(raw, out, tokenizers=rgb_only_set)
    assert file_bytes(out) == before
    report = pretokenize(raw, out, tokenizers=rgb_only_set, overwrite=True)
    assert report.written == 2
    assert json.loads((out / MANIFEST).read_text())["members"] == ["rgb@64.png", "tok_rgb@64.npy"]


def test_token_shards_feed_the_world_mixture(raw, clean, tokenizers):
    masking = MaskingConfig.from_yaml("configs/mixtures/world.yaml")
    spec = DatasetSpec(shards=[str(p) for p in list_shards(clean)], name="world")
    batches = validation_batches([spec], masking, batch_size=5, max_batches=1, tokenizer=tokenizers.text)
    batch = batches[0]
    assert sorted(batch) == sorted(masking.mixture.names)
    raw_samples = list(iter_world_samples(list_shards(raw)))
    pixels = batch["rgb@64"]["tensor"]
    assert pixels.dtype == torch.float32 and pixels.shape == (5, 3, 64, 64)
    np.testing.assert_allclose(pixels.numpy(), to_model_pixels(np.stack([s["rgb"] for s in raw_samples])))
    for name, key in IMAGE.items():
        with one_thread():
            expected = tokenizers.image[name].encode(np.stack([s[key] for s in raw_samples])).reshape(5, -1)
        np.testing.assert_array_equal(batch[name]["tensor"].numpy(), expected)
    text = tokenizers.text
    for name, key in (("caption@64", "caption"), ("det@64", "det")):
        seen = 0
        for row, source in zip(batch[name]["tensor"].tolist(), raw_samples, strict=True):
            words = {i for i in row if i > 3 and not text.is_sentinel(i)}  # not [PAD] [UNK] [SOS] [EOS] [S_k]
            assert words <= set(text.encode(to_text(name, source[key])))
            seen += len(words)
        assert seen > 0
    stream = iter(MaskedBatches([spec], masking, batch_size=4, seed=0, shuffle_buffer=4, tokenizer=tokenizers.text))
    for _ in range(3):
        batch = next(stream)
        assert batch["tok_rgb@64"]["tensor"].shape == (4, 256) and batch["rgb@64"]["tensor"].shape == (4, 3, 64, 64)


def test_bad_input_is_named(raw, clean, tmp_path):
    with pytest.raises(FileNotFoundError, match="raw data folder .*nope does not exist"):
        pretokenize(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no raw shards \(\*\.tar\) in .*empty"):
        pretokenize(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="is not a tokenizer set: no manifest.json"):
        pretokenize(raw, tmp_path / "out", tokenizers=tmp_path / "empty")
    with pytest.raises(ValueError, match="is the raw data folder"):
        pretokenize(raw, raw, overwrite=True)
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        pretokenize(raw, tmp_path / "out", workers=0)


def test_a_raw_sample_lacking_a_modality_is_named(raw, tmp_path):
    samples = list(iter_shard(list_shards(raw)[0]))
    del samples[1]["depth.npy"]
    (tmp_path / "raw").mkdir()
    write_shard(tmp_path / "raw" / "broken.tar", samples)
    key = samples[1]["__key__"]
    with pytest.raises(ValueError, match=rf"broken\.tar: sample '{key}' lacks depth\.npy \(needed for tok_depth@64\)"):
        pretokenize(tmp_path / "raw", tmp_path / "out")
    assert list_shards(tmp_path / "out") == []


def test_a_folder_without_a_token_manifest_is_named(raw, tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no manifest.json"):
        read_manifest(raw)
    (tmp_path / MANIFEST).write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="is not an open4m-token-shards/1 manifest"):
        read_manifest(tmp_path)
    with pytest.raises(ValueError, match="is not an open4m-token-shards/1 manifest"):
        pretokenize(raw, tmp_path)


def test_foreign_files_in_the_output_are_not_overwritten(raw, clean, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(list_shards(raw)[0], out)
    before = file_bytes(out)
    with pytest.raises(ValueError, match="but no manifest.json; refusing to overwrite"):
        pretokenize(raw, out)
    assert file_bytes(out) == before
    other = tmp_path / "other"
    shutil.copytree(clean, other)
    shutil.copy(list_shards(raw)[0], other / "unrelated.tar")
    with pytest.raises(ValueError, match=r"holds shards that are not in the source .*\['unrelated.tar'\]"):
        pretokenize(raw, other, overwrite=True)


def test_cli_tokenize(raw, clean, tmp_path, capsys):
    out = tmp_path / "tok"
    assert main(["tokenize", "--data", str(raw), "--out", str(out), "--batch-size", "2"]) == 0
    assert "tokenized 2 shards (5 scenes)" in capsys.readouterr().out
    assert file_bytes(out) == file_bytes(clean)
    assert main(["tokenize", "--data", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "open4m tokenize: error: raw data folder" in capsys.readouterr().err
