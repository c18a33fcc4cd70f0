"""Masking behaviour: images, span masking, layout, tokenizers, empty modalities, collate, determinism, errors."""

import numpy as np
import pytest
import torch

from masking_helpers import IMG, SENTINELS, SEQ, S, caption_ids, make_masking, merge, sample_for, split_sequence
from open4m import modalities
from open4m.masking import (
    EOS_ID,
    PAD_ID,
    Budgets,
    UnifiedMasking,
    collate,
    empty_entry,
)
from open4m.masking_batch import image_masks_batch
from open4m.masking_ops import image_masks, span_mask, truncate_target
from open4m.mixtures import MaskingConfig

# --- images ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_in,n_out", [(0, 0), (0, 196), (196, 0), (50, 70), (120, 76), (1, 1)])
def test_image_masks_are_disjoint_and_match_budgets(n_in, n_out):
    rng = np.random.default_rng(n_in * 1000 + n_out)
    input_mask, target_mask, dam = image_masks(rng, 196, n_in, n_out)
    assert (~input_mask).sum() == n_in and (~target_mask).sum() == n_out
    assert not np.any(~input_mask & ~target_mask)
    if n_out:
        first = np.flatnonzero(~target_mask)[0]
        assert dam[first] == n_out and np.count_nonzero(dam) == 1
    else:
        assert not dam.any()


def test_image_target_budget_none_means_all_non_inputs():
    input_mask, target_mask, dam = image_masks(np.random.default_rng(0), 64, 10, None)
    np.testing.assert_array_equal(target_mask, ~input_mask)
    assert dam.sum() == 54


def test_image_positions_are_uniform():
    rng = np.random.default_rng(1)
    hits = np.zeros(16)
    for _ in range(4000):
        input_mask, _, _ = image_masks(rng, 16, 4, 4)
        hits += ~input_mask
    # each position is an input with probability 4/16; 5 standard errors
    assert np.abs(hits / 4000 - 0.25).max() < 5 * np.sqrt(0.25 * 0.75 / 4000)


# --- span masking ---------------------------------------------------------------------------------------

def test_span_mask_known_pattern():
    ids = np.array([10, 11, 12, 13, 14])
    keep = np.array([True, False, False, True, False])
    inputs, target, sentinel_pos = span_mask(ids, np.ones(5, np.int64), keep, SENTINELS)
    assert inputs.tolist() == [10, S + 1, 13, S + 2]
    assert target.tolist() == [S + 1, 11, 12, S + 2, 14, S + 3]
    assert sentinel_pos.tolist() == [0, 3, 5]


def test_span_mask_fully_masked_and_fully_kept():
    ids = np.array([10, 11, EOS_ID])
    ones = np.ones(3, np.int64)
    inputs, target, _ = span_mask(ids, ones, np.zeros(3, bool), SENTINELS)
    assert inputs.tolist() == [S + 1] and target.tolist() == [S + 1, 10, 11, EOS_ID, S + 2]
    inputs, target, _ = span_mask(ids, ones, np.ones(3, bool), SENTINELS)
    assert inputs.tolist() == [10, 11, EOS_ID] and target.tolist() == [S + 1]


def test_chunk_span_mask_keeps_chunks_whole():
    ids = np.array([20, 21, 22, 23, 24, EOS_ID])
    lens = np.array([2, 2, 1, 1])
    inputs, target, _ = span_mask(ids, lens, np.array([False, True, False, False]), SENTINELS)
    assert inputs.tolist() == [S + 1, 22, 23, S + 2]
    assert target.tolist() == [S + 1, 20, 21, S + 2, 24, EOS_ID, S + 3]


def test_truncate_target_rules():
    target = np.array([S + 1, 30, 31, 32, S + 2, 33, S + 3])
    pos = np.array([0, 4, 6])
    assert truncate_target(np.random.default_rng(0), target, pos, None) is target
    assert truncate_target(np.random.default_rng(0), target, pos, 7) is target
    assert truncate_target(np.random.default_rng(0), target, pos, 0).tolist() == []
    outcomes = {tuple(truncate_target(np.random.default_rng(seed), target, pos, 4).tolist()) for seed in range(40)}
    # start at [S_1] (4 tokens fit) or at [S_2], whose suffix is too short, so the earliest fitting sentinel: [S_2]
    assert outcomes == {(S + 1, 30, 31, 32), (S + 2, 33, S + 3)}


def test_truncated_targets_always_start_with_a_sentinel():
    rng = np.random.default_rng(2)
    for _ in range(500):
        n = int(rng.integers(1, 40))
        ids = rng.integers(300, 400, n)
        _, target, pos = span_mask(ids, np.ones(n, np.int64), rng.random(n) < 0.5, SENTINELS)
        budget = int(rng.integers(0, len(target) + 2))
        cut = truncate_target(rng, target, pos, budget)
        assert len(cut) <= budget
        if len(cut):
            assert cut[0] in SENTINELS
            start = int(np.flatnonzero(target == cut[0])[0])
            np.testing.assert_array_equal(target[start:start + len(cut)], cut)


# --- sequences in a sample ------------------------------------------------------------------------------

def test_sequence_layout_and_reconstruction():
    masking = make_masking({SEQ: 1.0, IMG: 1.0}, {SEQ: 1.0, IMG: 1.0}, target_tokens=None)
    rng = np.random.default_rng(3)
    for _ in range(300):
        sample = sample_for(masking, rng)
        budgets = masking.draw_budgets(rng)
        entry = masking.apply_budgets(sample, budgets, rng)[SEQ]
        in_budget = int(budgets.input[masking.mixture.names.index(SEQ)])
        n_in = int((~entry["input_mask"]).sum())
        assert n_in <= in_budget
        assert not entry["input_mask"][:n_in].any() and entry["input_mask"][n_in:].all()
        target_pos = np.flatnonzero(~entry["target_mask"])
        assert target_pos[0] == in_budget and np.all(np.diff(target_pos) == 1)
        np.testing.assert_array_equal(np.flatnonzero(entry["decoder_attention_mask"]), target_pos)
        assert set(entry["decoder_attention_mask"][target_pos]) == {1}
        used = ~entry["input_mask"] | ~entry["target_mask"]
        assert (entry["tensor"][~used] == PAD_ID).all()
        inputs, targets = split_sequence(entry, in_budget)
        assert targets[0] in SENTINELS
        assert merge(inputs, targets) == sample[SEQ].tolist() + [EOS_ID]


def test_keep_all_with_room_keeps_the_whole_sequence():
    masking = make_masking({SEQ: 1.0}, {SEQ: 1.0}, input_tokens=100, target_tokens=100, keep={SEQ: "all"})
    rng = np.random.default_rng(4)
    ids = caption_ids(rng)
    entry = masking({SEQ: ids}, rng)[SEQ]
    inputs, targets = split_sequence(entry, 100)
    assert inputs.tolist() == ids.tolist() + [EOS_ID]
    assert targets.tolist() == [S + 1]
    assert np.flatnonzero(~entry["target_mask"]).tolist() == [100]


def test_keep_binary_gives_all_or_nothing():
    masking = make_masking({SEQ: 1.0}, {SEQ: 1.0}, input_tokens=100, target_tokens=100, keep={SEQ: "binary"})
    rng = np.random.default_rng(5)
    ids = caption_ids(rng, 10)
    seen = set()
    for _ in range(40):
        inputs, targets = split_sequence(masking({SEQ: ids}, rng)[SEQ], 100)
        seen.add(len(inputs))
        assert (inputs.tolist(), targets.tolist()) in [
            (ids.tolist() + [EOS_ID], [S + 1]), ([S + 1], [S + 1, *ids.tolist(), EOS_ID, S + 2])]
    assert seen == {1, 11}


def test_zero_input_budget_masks_everything():
    masking = make_masking({IMG: 1.0}, {SEQ: 1.0}, input_tokens=10, target_tokens=100)
    rng = np.random.default_rng(6)
    ids = caption_ids(rng, 5)
    entry = masking({SEQ: ids, IMG: rng.integers(0, 8192, 196)}, rng)[SEQ]
    inputs, targets = split_sequence(entry, 0)
    assert inputs.tolist() == [] and targets.tolist() == [S + 1, *ids.tolist(), EOS_ID, S + 2]


def test_chunked_sequences_are_masked_by_whole_chunks():
    masking = make_masking({"metadata": 1.0}, {"metadata": 1.0}, input_tokens=[0, 40], target_tokens=None)
    rng = np.random.default_rng(7)
    chunks = [[1204 + i, 204 + i] for i in range(10)]  # "v1=<type> v0=<value>" pairs
    for _ in range(200):
        inputs, targets = split_sequence(masking({"metadata": chunks}, rng)["metadata"], 0)
        assert merge(inputs, targets) == [t for c in chunks for t in c] + [EOS_ID]
        for part in (inputs, targets):
            plain = [int(t) for t in part if t not in SENTINELS and t != EOS_ID]
            pairs = np.array(plain).reshape(-1, 2)  # whole "v1= v0=" chunks only
            assert ((pairs[:, 0] >= 1204) & (pairs[:, 0] < 1214) & (pairs[:, 1] == pairs[:, 0] - 1000)).all()


def test_chunks_beyond_max_tokens_are_dropped_whole_when_truncating():
    masking = make_masking({"metadata": 1.0}, {"metadata": 1.0}, input_tokens=40, target_tokens=None, truncate=True)
    rng = np.random.default_rng(8)
    chunks = [[1204 + i, 204 + i] for i in range(25)]  # 50 tokens + EOS > 40
    inputs, targets = split_sequence(masking({"metadata": chunks}, rng)["metadata"], 40)
    assert merge(inputs, targets) == [t for c in chunks[:20] for t in c]  # 20 chunks = 40 tokens; EOS would be 41st


def test_odd_length_sequences_with_alternating_runs_have_enough_sentinels():
    modalities.sequence("test_three_tokens", 1000, 3)
    masking = make_masking({"test_three_tokens": 1.0, "t5_caption": 1.0}, {}, input_tokens=[0, 80], target_tokens=10)
    rng = np.random.default_rng(14)
    seen = set()
    for _ in range(300):
        out = masking({"test_three_tokens": [300, 301], "t5_caption": np.ones((5, 4096), "f4")}, rng)
        entry = out["test_three_tokens"]
        inputs = entry["tensor"][~entry["input_mask"]].tolist()
        seen.add(tuple(inputs))
    # [300, 301, EOS] as dropped, kept, dropped: input [S_1] 301 [S_2], target [S_1] 300 [S_2] EOS [S_3]
    assert (S + 1, 301, S + 2) in seen


class WordTokenizer:
    """A tiny stand-in text tokenizer with a non-official id layout."""

    eos_id, pad_id = 7, 9

    def __init__(self):
        self.vocab = {}

    def encode(self, text):
        return [self.vocab.setdefault(w, 500 + len(self.vocab)) for w in text.split()]

    def sentinel_id(self, k):
        return 1000 + k


def test_raw_strings_use_the_tokenizer_ids_and_are_truncated():
    tok = WordTokenizer()
    masking = make_masking({SEQ: 1.0}, {SEQ: 1.0}, input_tokens=300, target_tokens=None, keep={SEQ: "binary"},
                           tokenizer=tok)
    text = " ".join(f"w{i}" for i in range(300))
    rng = np.random.default_rng(9)
    for _ in range(10):
        entry = masking({SEQ: text}, rng)[SEQ]
        tensor = entry["tensor"]
        assert (tensor[entry["input_mask"] & entry["target_mask"]] == 9).all()
        inputs, targets = tensor[~entry["input_mask"]], tensor[~entry["target_mask"]]
        if len(inputs) > 1:  # kept whole: official truncation of ids + EOS to max_tokens drops the EOS
            assert inputs.tolist() == tok.encode(text)[:256]
        else:
            assert inputs.tolist() == [1001] and targets[0] == 1001 and targets[-1] == 1002
            assert targets[1:-1].tolist() == tok.encode(text)[:256]


def test_chunk_strings_with_tokenizer():
    tok = WordTokenizer()
    masking = make_masking({"metadata": 1.0}, {"metadata": 1.0}, input_tokens=40, target_tokens=None,
                           keep={"metadata": "all"}, tokenizer=tok)
    entry = masking({"metadata": ["a b", "c d"]}, np.random.default_rng(0))["metadata"]
    assert entry["tensor"][~entry["input_mask"]].tolist() == tok.encode("a b c d") + [7]


# --- embeddings and pixels ------------------------------------------------------------------------------

def test_embeddings_are_input_only_span_masked_rows():
    masking = make_masking({"t5_caption": 1.0}, {"t5_caption": 1.0}, input_tokens=[0, 77], target_tokens=20)
    rng = np.random.default_rng(10)
    emb = rng.standard_normal((20, 4096)).astype("f4") + 5.0  # no all-zero rows
    for _ in range(50):
        entry = masking({"t5_caption": emb}, rng)["t5_caption"]
        assert entry["tensor"].shape == (77, 4096) and entry["target_mask"].all()
        assert not entry["decoder_attention_mask"].any()
        rows = entry["tensor"][~entry["input_mask"]]
        is_sentinel = ~rows.any(axis=1)
        kept = rows[~is_sentinel]
        # kept rows are original rows, in order, and no two sentinels are adjacent
        idx = [int(np.flatnonzero((emb == r).all(axis=1))[0]) for r in kept]
        assert idx == sorted(idx)
        assert not np.any(is_sentinel[1:] & is_sentinel[:-1])
        assert not entry["tensor"][entry["input_mask"]].any()


def test_pixels_pass_through_and_are_never_targets():
    masking = make_masking({"rgb@224": 1.0}, {"rgb@224": 1.0, IMG: 1.0}, input_tokens=50, target_tokens=196)
    rng = np.random.default_rng(11)
    sample = sample_for(masking, rng)
    out = masking(sample, rng)
    np.testing.assert_array_equal(out["rgb@224"]["tensor"], sample["rgb@224"])
    assert (~out["rgb@224"]["input_mask"]).sum() == 50
    assert out["rgb@224"]["target_mask"].all()


# --- empty modalities, collate, determinism -------------------------------------------------------------

@pytest.mark.parametrize("name,shape,dtype", [
    ("tok_rgb@224", (196,), np.int64), ("rgb@224", (3, 224, 224), np.float32),
    ("caption", (514,), np.int32), ("metadata", (82,), np.int32), ("t5_caption", (77, 4096), np.float32)])
def test_empty_entries(name, shape, dtype):
    entry = empty_entry(name)
    n = modalities.get(name).num_positions
    assert entry["tensor"].shape == shape and entry["tensor"].dtype == dtype and not entry["tensor"].any()
    assert entry["input_mask"].shape == (n,) and entry["input_mask"].all() and entry["target_mask"].all()
    assert entry["decoder_attention_mask"].dtype == np.int32 and not entry["decoder_attention_mask"].any()


def test_fill_empty_and_collate_fill_absent_modalities():
    masking = make_masking({SEQ: 1.0, IMG: 1.0}, {SEQ: 1.0, IMG: 1.0}, fill_empty=["det", IMG])
    rng = np.random.default_rng(12)
    out = masking(sample_for(masking, rng), rng)
    assert set(out) == {SEQ, IMG, "det"} and out["det"]["input_mask"].all()
    only_caption = make_masking({SEQ: 1.0}, {SEQ: 1.0})
    batch = collate([out, only_caption({SEQ: caption_ids(rng)}, rng)], modalities=[SEQ, IMG, "det"])
    assert batch[IMG]["tensor"].shape == (2, 196) and batch[IMG]["tensor"].dtype == torch.int64
    assert batch[IMG]["input_mask"][1].all() and batch[IMG]["target_mask"][1].all()
    assert batch[SEQ]["tensor"].dtype == torch.int32 and batch[SEQ]["input_mask"].dtype == torch.bool
    assert batch[SEQ]["decoder_attention_mask"].dtype == torch.int32
    np.testing.assert_array_equal(batch[SEQ]["tensor"][0].numpy(), out[SEQ]["tensor"])


def test_same_seed_same_batch_and_different_seed_different_batch(tmp_path):
    masking = UnifiedMasking(MaskingConfig.from_yaml("configs/mixtures/world.yaml"))
    data_rng = np.random.default_rng(13)
    samples = [sample_for(masking, data_rng) for _ in range(8)]

    def batch(seed):
        rng = np.random.default_rng(seed)
        return collate([masking(s, rng) for s in samples])

    a, b, c = batch(0), batch(0), batch(1)
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key])
    assert any(not torch.equal(a[n]["input_mask"], c[n]["input_mask"]) for n in a)


def test_masking_leaves_the_global_rngs_alone():
    masking = make_masking({SEQ: 1.0, IMG: 1.0}, {SEQ: 1.0, IMG: 1.0})
    sample = sample_for(masking, np.random.default_rng(0))
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    masking(sample, 0)
    assert (np.random.get_state()[1] == np_state).all() and torch.equal(torch.get_rng_state(), torch_state)


# --- bad input ------------------------------------------------------------------------------------------

def bad(masking, sample, message):
    with pytest.raises(ValueError, match=message):
        masking(sample, np.random.default_rng(0))


def test_bad_samples_name_the_problem():
    masking = make_masking({SEQ: 1.0, IMG: 1.0, "rgb@224": 1.0, "t5_caption": 1.0}, {SEQ: 1.0, IMG: 1.0})
    good = sample_for(masking, np.random.default_rng(0))
    bad(masking, {k: v for k, v in good.items() if k != IMG}, r"lacks modalities \['tok_depth@224'\]")
    bad(masking, {**good, IMG: good[IMG][:100]}, r"'tok_depth@224': expected 196 integer tokens")
    bad(masking, {**good, IMG: good[IMG].astype("f4")}, r"'tok_depth@224': expected 196 integer tokens")
    bad(masking, {**good, IMG: good[IMG] + 9000}, r"'tok_depth@224': token ids must lie in \[0, 8192\)")
    bad(masking, {**good, SEQ: np.arange(256)}, "'caption': 256 tokens \\+ EOS exceed max_tokens 256")
    bad(masking, {**good, SEQ: "a caption"}, "'caption': raw text needs a tokenizer")
    bad(masking, {**good, SEQ: [1.5, 2.5]}, "'caption': expected a 1-D list of integer token ids")
    bad(masking, {**good, SEQ: [[300], []]}, "'caption': chunk 1 is empty")
    bad(masking, {**good, "rgb@224": good["rgb@224"][:, :100]}, r"'rgb@224': expected float pixels of shape")
    bad(masking, {**good, "t5_caption": good["t5_caption"][:, :10]}, r"'t5_caption': expected float embeddings")
    bad(masking, {**good, "t5_caption": np.zeros((78, 4096), "f4")}, "78 embeddings exceed max_tokens 77")


def test_grid_shaped_image_tokens_are_accepted():
    masking = make_masking({IMG: 1.0}, {IMG: 1.0})
    grid = np.arange(196).reshape(14, 14)
    out = masking({IMG: torch.from_numpy(grid)}, 0)
    np.testing.assert_array_equal(out[IMG]["tensor"], np.arange(196))


def test_bad_constructor_and_collate_inputs():
    with pytest.raises(KeyError, match="unknown modality 'nope'"):
        make_masking({SEQ: 1.0}, {SEQ: 1.0}, fill_empty=["nope"])

    class FewSentinels(WordTokenizer):
        def sentinel_id(self, k):
            return {0: 1000, 1: 1001}[k]

    with pytest.raises(ValueError, match="must provide sentinels"):
        make_masking({SEQ: 1.0}, {SEQ: 1.0}, tokenizer=FewSentinels())
    masking = make_masking({SEQ: 1.0}, {SEQ: 1.0})
    one = masking({SEQ: [300]}, 0)
    with pytest.raises(ValueError, match="at least one sample"):
        collate([])
    with pytest.raises(ValueError, match="sample 1 lacks modality 'caption'"):
        collate([one, {}])
    with pytest.raises(ValueError, match=r"not in the batch list"):
        collate([one, {**one, "det": empty_entry("det")}])


def test_budgets_dataclass_round_trip():
    masking = make_masking({SEQ: 1.0, IMG: 1.0}, {SEQ: 1.0, IMG: 1.0}, input_tokens=20, target_tokens=30)
    budgets = Budgets(0, np.array([0, 20]), np.array([0, 30]))
    out = masking.apply_budgets(sample_for(masking, np.random.default_rng(0)), budgets, np.random.default_rng(0))
    assert (~out[IMG]["input_mask"]).sum() == 20 and (~out[IMG]["target_mask"]).sum() == 30
    assert (~out[SEQ]["input_mask"]).sum() == 0 and (~out[SEQ]["target_mask"]).sum() == 0


# --- the batch path -------------------------------------------------------------------------------------

def test_image_masks_batch_rows_are_disjoint_and_match_budgets():
    rng = np.random.default_rng(15)
    n_in = np.array([0, 0, 196, 50, 120, 1, 7])
    n_out = np.array([0, 196, 0, 70, 76, 1, 0])
    input_mask, target_mask, dam = image_masks_batch(rng, 196, n_in, n_out)
    np.testing.assert_array_equal((~input_mask).sum(axis=1), n_in)
    np.testing.assert_array_equal((~target_mask).sum(axis=1), n_out)
    assert not (~input_mask & ~target_mask).any()
    for row in range(len(n_in)):
        targets = np.flatnonzero(~target_mask[row])
        expected = np.zeros(196, np.int32)
        if targets.size:
            expected[targets[0]] = targets.size
        np.testing.assert_array_equal(dam[row], expected)
    input_mask, target_mask, _ = image_masks_batch(rng, 196, n_in, None)
    np.testing.assert_array_equal(target_mask, ~input_mask)


def test_image_masks_batch_positions_are_uniform():
    input_mask, target_mask, _ = image_masks_batch(np.random.default_rng(16), 16, np.full(4000, 4), np.full(4000, 4))
    for mask in (input_mask, target_mask):
        assert np.abs((~mask).mean(axis=0) - 0.25).max() < 5 * np.sqrt(0.25 * 0.75 / 4000)


def test_mask_batch_matches_the_collate_format_and_budgets():
    masking = UnifiedMasking(MaskingConfig.from_yaml("configs/mixtures/world.yaml"), fill_empty=["metadata"])
    rng = np.random.default_rng(17)
    samples = [sample_for(masking, rng) for _ in range(16)]
    budgets = masking.draw_budgets_batch(rng, 16)
    batch = masking.apply_budgets_batch(samples, budgets, rng)
    reference = collate([masking(s, rng) for s in samples])
    assert batch.keys() == reference.keys()
    for name in batch:
        for key in batch[name]:
            assert batch[name][key].shape == reference[name][key].shape
            assert batch[name][key].dtype == reference[name][key].dtype
    for j, name in enumerate(masking.mixture.names):
        entry = batch[name]
        n_in = (~entry["input_mask"]).sum(dim=1).numpy()
        n_out = (~entry["target_mask"]).sum(dim=1).numpy()
        if modalities.get(name).is_image:
            np.testing.assert_array_equal(n_in, budgets.input[:, j])
            expected_out = budgets.target[:, j] if modalities.get(name).has_decoder else 0
            np.testing.assert_array_equal(n_out, expected_out)
            np.testing.assert_array_equal(entry["tensor"].numpy(), np.stack([s[name] for s in samples]))
        else:
            assert (n_in <= budgets.input[:, j]).all() and (n_out <= budgets.target[:, j]).all()
            for row in range(16):
                target_pos = torch.nonzero(~entry["target_mask"][row]).ravel().numpy()
                if target_pos.size:
                    assert target_pos[0] == budgets.input[row, j] and entry["tensor"][row, target_pos[0]] in SENTINELS
    assert batch["metadata"]["input_mask"].all() and batch["metadata"]["target_mask"].all()


def test_mask_batch_same_seed_same_batch():
    masking = UnifiedMasking(MaskingConfig.from_yaml("configs/mixtures/world.yaml"))
    samples = [sample_for(masking, np.random.default_rng(i)) for i in range(8)]
    a, b, c = (masking.mask_batch(samples, seed) for seed in (0, 0, 1))
    assert all(torch.equal(a[n][k], b[n][k]) for n in a for k in a[n])
    assert any(not torch.equal(a[n]["input_mask"], c[n]["input_mask"]) for n in a)


def test_mask_batch_bad_input_names_the_sample():
    masking = make_masking({SEQ: 1.0, IMG: 1.0}, {SEQ: 1.0, IMG: 1.0})
    good = sample_for(masking, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"sample 1 lacks modalities \['caption'\]"):
        masking.mask_batch([good, {IMG: good[IMG]}], 0)
    with pytest.raises(ValueError, match="at least one sample"):
        masking.mask_batch([], 0)


def test_masking_can_be_sent_to_spawned_data_loader_workers():
    import copy
    import pickle

    masking = UnifiedMasking(MaskingConfig.from_yaml("configs/mixtures/world.yaml"), tokenizer=WordTokenizer())
    assert pickle.dumps(masking)  # spawn-started workers receive it pickled
    clone = copy.deepcopy(masking)
    sample = sample_for(masking, np.random.default_rng(0))
    a, b = masking(sample, 5), clone(sample, 5)
    assert all(np.array_equal(a[n][k], b[n][k]) for n in a for k in a[n])


def test_mask_batch_checks_token_ranges():
    masking = make_masking({IMG: 1.0}, {IMG: 1.0})
    with pytest.raises(ValueError, match=r"'tok_depth@224': token ids must lie in \[0, 8192\)"):
        masking.mask_batch([{IMG: np.zeros(196, np.int64)}, {IMG: np.full(196, 8192)}], 0)
