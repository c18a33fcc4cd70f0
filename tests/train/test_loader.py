"""Token-shard loading: rank/worker splits, resumable positions, corrupt shards, mixtures, missing modalities."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

from open4m.data.copy_task import MIXTURE, make_sample, register, write_copy_shards
from open4m.data.loader import (
    POSITION_KEY,
    DatasetSpec,
    MaskedBatches,
    ReadErrors,
    SampleStream,
    decode_sample,
    expand_shards,
    make_loader,
)
from open4m.data.shards import write_shard
from open4m.mixtures import MaskingConfig

register()
MASKING = MaskingConfig.from_dict(MIXTURE)


def _epoch_keys(shards, reader, readers):
    stream = SampleStream(shards, 0, reader, readers, seed=5, shuffle_buffer=8, errors=ReadErrors())
    keys = []
    while stream.epoch == 0:
        keys.append(stream.next()["__key__"])
    return keys[:-1]  # the last draw already belongs to epoch 1


@pytest.mark.parametrize("num_shards", [8, 2])  # >= readers: split by shard; fewer: split by sample
def test_readers_see_every_sample_once_per_epoch(tmp_path, num_shards):
    shards = [str(p) for p in write_copy_shards(tmp_path, num_shards, 6)]
    per_reader = [_epoch_keys(shards, r, 4) for r in range(4)]  # 2 ranks x 2 workers
    everything = list(itertools.chain.from_iterable(per_reader))
    assert len(everything) == len(set(everything)) == num_shards * 6
    assert all(per_reader)
    again = [_epoch_keys(shards, r, 4) for r in range(4)]
    assert again == per_reader  # deterministic
    assert per_reader[0] != sorted(per_reader[0])  # shuffled


def test_stream_restores_from_its_position(tmp_path):
    shards = [str(p) for p in write_copy_shards(tmp_path, 3, 5)]
    stream = SampleStream(shards, 0, 0, 1, seed=1, shuffle_buffer=4, errors=ReadErrors())
    for _ in range(22):  # into the second epoch
        stream.next()
    epoch, taken = stream.position()
    assert (epoch, taken) == (1, 7)
    restored = SampleStream(shards, 0, 0, 1, seed=1, shuffle_buffer=4, errors=ReadErrors(), epoch=epoch, taken=taken)
    assert [restored.next()["__key__"] for _ in range(12)] == [stream.next()["__key__"] for _ in range(12)]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[m][k], b[m][k]) for m in a if m != POSITION_KEY for k in a[m])


def test_loader_with_two_workers_resumes_mid_round(tmp_path):
    shards = [str(p) for p in write_copy_shards(tmp_path, 4, 8)]
    spec = [DatasetSpec(shards)]
    loader = make_loader(MaskedBatches(spec, MASKING, 4, seed=3, num_workers=2, shuffle_buffer=8))
    first = list(itertools.islice(iter(loader), 7))
    assert [b[POSITION_KEY]["worker"] for b in first] == [0, 1, 0, 1, 0, 1, 0]
    positions = {b[POSITION_KEY]["worker"]: b[POSITION_KEY] for b in first[:3]}
    resumed = make_loader(MaskedBatches(spec, MASKING, 4, seed=3, num_workers=2, shuffle_buffer=8,
                                        positions=positions, rotation=3))
    rest = list(itertools.islice(iter(resumed), 4))
    assert all(_same(a, b) for a, b in zip(rest, first[3:], strict=True))
    assert not _same(first[0], first[1])


def test_truncated_and_corrupt_shards_are_skipped_and_counted(tmp_path):
    shards = [str(p) for p in write_copy_shards(tmp_path, 3, 4)]
    data = open(shards[1], "rb").read()
    open(shards[1], "wb").write(data[: len(data) // 2])
    (tmp_path / "junk.tar").write_bytes(b"not a tar file at all" * 50)
    errors = ReadErrors()
    stream = SampleStream([*shards, str(tmp_path / "junk.tar")], 0, 0, 1, seed=0, shuffle_buffer=1, errors=errors)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keys = []
        while stream.epoch == 0:
            keys.append(stream.next()["__key__"])
    keys = keys[:-1]
    # both bad shards reported in epoch 0 (epoch 1 has begun reading again, so the count may be higher)
    assert errors.count >= 2 and set(errors.shards) == {shards[1], str(tmp_path / "junk.tar")}
    assert any("truncated" in str(w.message) for w in caught)
    assert len(set(keys)) == len(keys)
    whole = {f"copy{s:03d}x{i:05d}" for s in (0, 2) for i in range(4)}
    assert {k for k in keys if not k.startswith("copy001")} == whole
    assert 8 <= len(keys) < 12  # shards 0 and 2 whole, and what of shard 1 precedes the cut


def test_a_missing_modality_is_named_or_filled_empty_and_weights_are_followed(tmp_path):
    rng = np.random.default_rng(0)
    no_txt = [{k: v for k, v in make_sample(rng, f"b{i}").items() if not k.startswith("copy_txt")}
              for i in range(40)]
    write_shard(tmp_path / "b.tar", no_txt)
    full = [str(p) for p in write_copy_shards(tmp_path / "a", 2, 20)]
    with pytest.raises(ValueError, match=r"lacks modalities \['copy_txt'\]"):
        MaskedBatches([DatasetSpec([str(tmp_path / "b.tar")], modalities=["copy_src", "copy_dst"])], MASKING, 4)
    stream = iter(MaskedBatches([DatasetSpec([str(tmp_path / "b.tar")])], MASKING, 4))
    with pytest.raises(ValueError, match="has no modality 'copy_txt'"):
        next(stream)
    specs = [DatasetSpec(full, weight=3.0), DatasetSpec([str(tmp_path / "b.tar")], weight=1.0,
                                                        modalities=["copy_src", "copy_dst"])]
    batches = list(itertools.islice(iter(MaskedBatches(specs, MASKING, 16, fill_empty=["copy_txt"])), 20))
    txt_empty = torch.cat([b["copy_txt"]["input_mask"].all(1) & b["copy_txt"]["target_mask"].all(1) for b in batches])
    share = txt_empty.float().mean().item()  # rows from dataset b: 1/4 expected; 320 draws -> sd 0.024
    assert 0.25 - 0.08 < share < 0.25 + 0.08
    assert all(not b["copy_dst"]["target_mask"].all() for b in batches)


def test_decode_sample_handles_npy_txt_and_json():
    raw = {"__key__": "k", "copy_src.npy": np.zeros((4, 4), np.int64), "caption.txt": "a red cube",
           "det.json": [{"box": [0.1, 0.2, 0.3, 0.4], "class": "cube"}]}
    out = decode_sample(raw, ["copy_src", "caption", "det"], "test")
    assert out["caption"] == "a red cube" and out["copy_src"].shape == (4, 4)
    assert out["det"].split()[-1] == "cube" and out["det"].startswith("v0=")
    with pytest.raises(ValueError, match="expected integer token ids"):
        decode_sample({"__key__": "k", "copy_src.npy": np.zeros(16, np.float32)}, ["copy_src"], "test")


def test_shard_patterns_expand_and_empty_lists_fail(tmp_path):
    write_copy_shards(tmp_path, 3, 2)
    assert len(expand_shards(str(tmp_path / "copy-{0000..0002}.tar"))) == 3
    assert len(expand_shards(str(tmp_path))) == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="shard list is empty"):
        expand_shards(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        expand_shards(str(tmp_path / "nope-{0..1}.tar"))


def test_remote_urls_stream_like_local_files(tmp_path):
    shards = [str(p) for p in write_copy_shards(tmp_path, 2, 5)]
    local = _epoch_keys(shards, 0, 1)
    remote = _epoch_keys([f"pipe:cat {s}" for s in shards], 0, 1)
    assert remote == local and len(local) == 10
    assert expand_shards(["pipe:cat {a,b}.tar", "https://host/x-{0..1}.tar"]) == [
        "pipe:cat a.tar", "pipe:cat b.tar", "https://host/x-0.tar", "https://host/x-1.tar"]


def test_raw_text_is_tokenised_with_the_config_tokenizer(tmp_path):
    from open4m.text import TextTokenizer

    tokenizer = TextTokenizer.train(["a red cube on a blue sphere"] * 20, 4300, show_progress=False)
    rng = np.random.default_rng(0)
    samples = [{"__key__": f"t{i}", "copy_src.npy": rng.integers(0, 32, (4, 4)), "caption.txt": "a red cube"}
               for i in range(8)]
    write_shard(tmp_path / "text.tar", samples)
    config = MaskingConfig.from_dict({"input_tokens": 8, "target_tokens": 8, "alphas_mixture": {
        "copy_src": {"input_alphas": [1.0], "target_alphas": [0.0]},
        "caption": {"input_alphas": [1.0], "target_alphas": [1.0]}}})
    batch = next(iter(MaskedBatches([DatasetSpec([str(tmp_path / "text.tar")])], config, 8, tokenizer=tokenizer)))
    ids = set(batch["caption"]["tensor"].flatten().tolist())
    words = set(tokenizer.encode("a red cube"))
    assert words <= ids  # every word lands in the inputs or the targets of some row
    specials = {0, tokenizer.eos_id} | {tokenizer.sentinel_id(k) for k in range(8)}
    assert ids <= words | specials
