"""The batched masking path equals the per-sample one: exactly for given random choices, in distribution otherwise."""

import numpy as np
import pytest

from masking_helpers import (
    MOD21_ALL2ALLMIX_RGB2ALL_CAPT5BIAS,
    SENTINELS,
    make_masking,
    merge,
    official_sequential_keep,
    sample_for,
)
from open4m.masking import EOS_ID, UnifiedMasking, collate
from open4m.masking_batch import draw_keep_batch, layout_sequences_batch, span_mask_batch, target_windows
from open4m.masking_ops import cut_target, span_mask
from open4m.mixtures import MaskingConfig


def random_rows(rng, num=200, max_len=30):
    lengths = rng.integers(1, max_len + 1, num)
    ids = np.zeros((num, max_len), np.int64)
    keep = np.zeros((num, max_len), bool)
    for r, n in enumerate(lengths):
        ids[r, :n] = rng.integers(300, 1000, n)
        keep[r, :n] = rng.random(n) < rng.random()
    return ids, lengths, keep


def test_span_mask_batch_equals_span_mask_row_by_row():
    ids, lengths, keep = random_rows(np.random.default_rng(0))
    inputs, input_lengths, targets, target_lengths, is_sentinel = span_mask_batch(ids, lengths, keep, SENTINELS)
    for r, n in enumerate(lengths):
        want_in, want_target, want_pos = span_mask(ids[r, :n], np.ones(n, np.int64), keep[r, :n], SENTINELS)
        assert inputs[r, :input_lengths[r]].tolist() == want_in.tolist()
        assert targets[r, :target_lengths[r]].tolist() == want_target.tolist()
        assert np.flatnonzero(is_sentinel[r]).tolist() == want_pos.tolist()


@pytest.mark.parametrize("budget_kind", ["none", "random"])
def test_target_windows_equal_cut_target_row_by_row(budget_kind):
    rng = np.random.default_rng(1)
    ids, lengths, keep = random_rows(rng)
    _, _, targets, target_lengths, is_sentinel = span_mask_batch(ids, lengths, keep, SENTINELS)
    budgets = None if budget_kind == "none" else rng.integers(0, target_lengths + 3)
    choices = (rng.random(len(ids)) * np.maximum(1, is_sentinel.sum(axis=1) - 1)).astype(np.int64)
    start, end = target_windows(target_lengths, is_sentinel, budgets, choices)
    for r in range(len(ids)):
        full = targets[r, :target_lengths[r]]
        if budgets is None or target_lengths[r] <= budgets[r]:
            want = full
        else:
            want = cut_target(full, np.flatnonzero(is_sentinel[r]), int(budgets[r]), int(choices[r]))
        assert targets[r, start[r]:end[r]].tolist() == want.tolist()


def test_layout_sequences_batch_places_inputs_and_target_windows():
    inputs = np.array([[10, 11, 0], [12, 0, 0]])
    targets = np.array([[S1 := SENTINELS[1], 20, 21, SENTINELS[2]], [S1, 22, SENTINELS[2], 0]])
    tensor, input_mask, target_mask, dam = layout_sequences_batch(
        inputs, np.array([2, 0]), targets, (np.array([0, 0]), np.array([4, 3])), np.array([3, 1]), 10, pad_id=0)
    assert tensor.tolist() == [[10, 11, 0, S1, 20, 21, SENTINELS[2], 0, 0, 0],
                               [0, S1, 22, SENTINELS[2], 0, 0, 0, 0, 0, 0]]
    assert (~input_mask).sum(axis=1).tolist() == [2, 0]
    assert np.flatnonzero(~target_mask[0]).tolist() == [3, 4, 5, 6] == np.flatnonzero(dam[0]).tolist()
    assert np.flatnonzero(~target_mask[1]).tolist() == [1, 2, 3]


@pytest.mark.parametrize("budget", [3, 12, 30])
def test_draw_keep_batch_matches_the_official_loop(budget):
    n, draws = 40, 2000
    rng = np.random.default_rng(2)
    lengths = np.full(draws, n)
    keep = draw_keep_batch(rng, lengths, rng.random(draws), np.full(draws, budget))
    ids = np.arange(n)[None].repeat(draws, axis=0)
    _, ours, _, _, _ = span_mask_batch(ids, lengths, keep, SENTINELS)
    ref_rng = np.random.default_rng(3)
    ref = np.array([len(span_mask(np.arange(n), np.ones(n, np.int64),
                                  official_sequential_keep(ref_rng, n, ref_rng.random(), budget), SENTINELS)[0])
                    for _ in range(draws)])
    assert ours.max() <= budget
    cdf = [np.cumsum(np.bincount(x, minlength=budget + 1)) / draws for x in (ours, ref)]
    assert np.abs(cdf[0] - cdf[1]).max() < 1.95 * np.sqrt(2 / draws)  # two-sample KS test at p = 0.001


def test_mask_batch_sequences_rebuild_the_originals_without_target_budget():
    masking = make_masking({"caption": 1.0, "tok_depth@224": 1.0}, {"caption": 1.0}, input_tokens=[0, 60],
                           target_tokens=None)
    rng = np.random.default_rng(4)
    samples = [{"caption": rng.integers(300, 1000, int(rng.integers(0, 50))),
                "tok_depth@224": rng.integers(0, 8192, 196)} for _ in range(64)]
    entry = masking.mask_batch(samples, rng)["caption"]
    for row, sample in enumerate(samples):
        tensor = entry["tensor"][row].numpy()
        inputs, targets = tensor[~entry["input_mask"][row].numpy()], tensor[~entry["target_mask"][row].numpy()]
        assert targets[0] in SENTINELS
        assert merge(inputs, targets) == sample["caption"].tolist() + [EOS_ID]


def test_mask_batch_keep_schemes():
    rng = np.random.default_rng(5)
    ids = rng.integers(300, 1000, 10)
    for scheme, allowed in (("all", {11}), ("binary", {1, 11})):
        masking = make_masking({"caption": 1.0}, {"caption": 1.0}, input_tokens=100, target_tokens=100,
                               keep={"caption": scheme})
        entry = masking.mask_batch([{"caption": ids}] * 64, rng)["caption"]
        assert set((~entry["input_mask"]).sum(dim=1).tolist()) == allowed


def test_mask_batch_embeddings_and_chunks_fall_back_per_sample():
    masking = make_masking({"t5_caption": 1.0, "metadata": 1.0}, {"metadata": 1.0}, input_tokens=[0, 60],
                           target_tokens=None)
    rng = np.random.default_rng(6)
    emb = [rng.standard_normal((int(rng.integers(1, 30)), 4096)).astype("f4") + 5.0 for _ in range(16)]
    chunks = [[1204 + i, 204 + i] for i in range(8)]
    batch = masking.mask_batch([{"t5_caption": e, "metadata": chunks} for e in emb], rng)
    t5 = batch["t5_caption"]
    assert t5["tensor"].shape == (16, 77, 4096) and t5["target_mask"].all()
    for row, original in enumerate(emb):
        used = t5["tensor"][row][~t5["input_mask"][row]].numpy()
        kept = used[used.any(axis=1)]
        assert all((original == r).all(axis=1).any() for r in kept)
        assert not t5["tensor"][row][t5["input_mask"][row]].any()
        meta = batch["metadata"]
        tensor = meta["tensor"][row].numpy()
        inputs, targets = tensor[~meta["input_mask"][row].numpy()], tensor[~meta["target_mask"][row].numpy()]
        assert merge(inputs, targets) == [t for c in chunks for t in c] + [EOS_ID]


def test_the_official_4m21_mixture_masks_every_modality_on_both_paths(tmp_path):
    path = tmp_path / "mix_mod21.yaml"
    path.write_text(MOD21_ALL2ALLMIX_RGB2ALL_CAPT5BIAS)
    masking = UnifiedMasking(MaskingConfig.from_yaml(path, input_tokens=256, target_tokens=256))
    rng = np.random.default_rng(7)
    samples = [sample_for(masking, rng) for _ in range(24)]
    for batch in (masking.mask_batch(samples, rng), collate([masking(s, rng) for s in samples])):
        assert set(batch) == set(masking.mixture.names)
        used_in = sum(int((~e["input_mask"]).sum()) for e in batch.values())
        used_out = sum(int((~e["target_mask"]).sum()) for e in batch.values())
        assert 0 < used_in <= 24 * 256 and 0 < used_out <= 24 * 256
        assert batch["t5_caption"]["target_mask"].all() and batch["rgb@224"]["target_mask"].all()
