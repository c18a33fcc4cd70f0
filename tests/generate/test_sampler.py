"""The token-level sampler: KV cache, reproducibility, in-painting, guidance, chains, sampling filters."""

import pytest
import torch

from generation_helpers import caption_state, image_state, small_model, text_tokenizer
from open4m.generation import Sampler, TargetSpec
from open4m.generation.sampling import filter_logits, make_generators, sample


@pytest.fixture(scope="module")
def tok():
    return text_tokenizer()


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def rgb():
    return torch.randint(0, 16384, (3, 196), generator=torch.Generator().manual_seed(3))


def _caption_rows(state, tok):
    d = state["caption"]
    return [d["tensor"][i][~d["input_mask"][i]].tolist() for i in range(d["tensor"].shape[0])]


def test_kv_cached_decoding_equals_uncached_on_rows_of_different_lengths(model, tok, rgb):
    # Greedy captions without a reachable stop token, to pick per-row stop tokens at different depths.
    free = Sampler(model, tok, use_cache=False).generate(
        caption_state(tok, rgb, [3, 9, 0]), [TargetSpec("caption", temperature=0.0, max_new_tokens=20)]
    )
    rows = [r[:-1] for r in _caption_rows(free, tok)]  # drop the appended [EOS]
    stops, lengths = [], []
    for row in rows:  # the token whose first occurrence comes latest, different for every row
        firsts = {t: row.index(t) for t in row}
        candidates = sorted(firsts.items(), key=lambda kv: -kv[1])
        token, index = next((t, i) for t, i in candidates if i not in lengths)
        stops.append(token)
        lengths.append(index)
    assert len(set(lengths)) == 3, lengths
    state = caption_state(tok, rgb, [3, 9, 0], stop=stops)
    spec = [TargetSpec("caption", temperature=0.0, max_new_tokens=20)]
    cached = Sampler(model, tok, use_cache=True).generate(state, spec)
    uncached = Sampler(model, tok, use_cache=False).generate(state, spec)
    assert _caption_rows(cached, tok) == _caption_rows(uncached, tok)
    # Every row stops right at its own stop token: the merged span ends before it, then [EOS].
    for row, free_row, index in zip(_caption_rows(cached, tok), rows, lengths, strict=True):
        assert row == free_row[: index + 1] + [tok.eos_id]


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                    reason="greedy steps are screened on x86 CPUs")
def test_greedy_cached_steps_screen_the_head_and_equal_uncached_decoding(model, tok, rgb, monkeypatch):
    from open4m.model import incremental

    calls = []
    screen = incremental._ScreenedHead.__call__
    monkeypatch.setattr(incremental._ScreenedHead, "__call__", lambda self, x: calls.append(1) or screen(self, x))
    state = caption_state(tok, rgb, [3, 9, 0])
    spec = [TargetSpec("caption", temperature=0.0, max_new_tokens=12)]
    cached_sampler, uncached_sampler = Sampler(model, tok, use_cache=True), Sampler(model, tok, use_cache=False)
    cached = cached_sampler.generate(state, spec)
    assert len(calls) == 12  # one screened head per step
    uncached = uncached_sampler.generate(state, spec)
    assert _caption_rows(cached, tok) == _caption_rows(uncached, tok)
    for a, b in zip(cached_sampler.token_scores["caption"], uncached_sampler.token_scores["caption"], strict=True):
        assert [x is None for x in a] == [x is None for x in b]
        torch.testing.assert_close(torch.tensor([x for x in a if x is not None]),
                                   torch.tensor([x for x in b if x is not None]), rtol=1e-2, atol=0)


def test_kv_cached_decoding_equals_uncached_with_guidance_and_sampling(model, tok, rgb):
    state = caption_state(tok, rgb, [3, 9, 0])
    spec = [TargetSpec("caption", temperature=0.7, guidance=2.5, max_new_tokens=12)]
    cached = Sampler(model, tok, use_cache=True).generate(state, spec, seed=11)
    uncached = Sampler(model, tok, use_cache=False).generate(state, spec, seed=11)
    assert _caption_rows(cached, tok) == _caption_rows(uncached, tok)


@pytest.mark.parametrize("scheme", ["maskgit", "roar"])
def test_iterative_schemes_reproducible_with_seed(model, rgb, scheme):
    sampler = Sampler(model)
    spec = [TargetSpec("tok_depth@224", scheme=scheme, steps=6, temperature=1.0)]
    a = sampler.generate(image_state(rgb), spec, seed=5)["tok_depth@224"]
    b = sampler.generate(image_state(rgb), spec, seed=5)["tok_depth@224"]
    c = sampler.generate(image_state(rgb), spec, seed=6)["tok_depth@224"]
    assert torch.equal(a["tensor"], b["tensor"])
    assert not torch.equal(a["tensor"], c["tensor"])
    assert not a["input_mask"].any() and a["target_mask"].all()  # every token written and now an input


def test_sampling_leaves_global_rng_alone(model, rgb):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Sampler(model).generate(image_state(rgb), [TargetSpec("tok_depth@224", steps=4)], seed=1)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("scheme", ["maskgit", "roar"])
def test_inpainting_keeps_every_given_token(model, rgb, scheme):
    gen = torch.Generator().manual_seed(0)
    given = torch.randint(0, 8192, (3, 196), generator=gen)
    known = torch.rand(3, 196, generator=gen) < torch.tensor([[0.2], [0.5], [0.9]])  # rows differ in count
    written = []
    out = Sampler(model).generate(
        image_state(rgb, known=known, given=given), [TargetSpec("tok_depth@224", scheme=scheme, steps=4)], seed=0,
        on_step=lambda info: written.append(info.written),
    )["tok_depth@224"]
    assert torch.equal(out["tensor"][known], given[known])
    total = torch.stack(written).sum(dim=0)
    assert torch.equal(total, (~known).long())  # each missing position written exactly once, given ones never


def test_guidance_scale_one_equals_no_guidance(model, tok, rgb):
    # scale 1 through the full guidance path (conditional and unconditional branches) vs no guidance
    plain = [TargetSpec("tok_depth@224", steps=4, temperature=0.0)]
    guided = [TargetSpec("tok_depth@224", steps=4, temperature=0.0, guidance={"tok_rgb@224": 1.0})]
    a = Sampler(model).generate(image_state(rgb), plain)["tok_depth@224"]["tensor"]
    b = Sampler(model).generate(image_state(rgb), guided)["tok_depth@224"]["tensor"]
    assert torch.equal(a, b)
    logits = torch.randn(2 * 3, 5, 7)
    combined = Sampler._combine(logits, [1.0], 3)
    torch.testing.assert_close(combined, logits[:3])


def test_multi_condition_guidance_with_one_condition_equals_plain_guidance(model, tok, rgb):
    state = caption_state(tok, rgb, [3, 9, 4])
    plain = [TargetSpec("caption", temperature=1.0, guidance=3.0, guided=["det"], max_new_tokens=10)]
    multi = [TargetSpec("caption", temperature=1.0, guidance={"det": 3.0}, max_new_tokens=10)]
    none = [TargetSpec("caption", temperature=1.0, max_new_tokens=10)]
    a = _caption_rows(Sampler(model, tok).generate(state, plain, seed=2), tok)
    b = _caption_rows(Sampler(model, tok).generate(state, multi, seed=2), tok)
    c = _caption_rows(Sampler(model, tok).generate(state, none, seed=2), tok)
    assert a == b
    assert a != c  # guidance changes the result


def test_multi_condition_guidance_weights_combine_per_condition():
    cond_a, cond_b, uncond = torch.randn(3, 2, 4, 9).unbind(0)
    logits = torch.cat([cond_a, cond_b, uncond])
    out = Sampler._combine(logits, [2.0, -0.5], 2)
    torch.testing.assert_close(out, uncond + 2.0 * (cond_a - uncond) - 0.5 * (cond_b - uncond))


def test_negative_weight_runs_and_differs(model, tok, rgb):
    state = caption_state(tok, rgb, [3, 9, 4])
    pos = [TargetSpec("tok_depth@224", steps=3, temperature=0.0, guidance={"tok_rgb@224": 2.0, "det": 1.5})]
    neg = [TargetSpec("tok_depth@224", steps=3, temperature=0.0, guidance={"tok_rgb@224": 2.0, "det": -1.5})]
    state.update(image_state(rgb))
    a = Sampler(model, tok).generate(state, pos)["tok_depth@224"]["tensor"]
    b = Sampler(model, tok).generate(state, neg)["tok_depth@224"]["tensor"]
    assert not torch.equal(a, b)


def test_chain_each_finished_target_conditions_the_next(model, tok, rgb):
    state = caption_state(tok, rgb, [3, 9, 4])
    state.update(image_state(rgb))
    chain = [TargetSpec("caption", temperature=0.0, max_new_tokens=8), TargetSpec("tok_depth@224", steps=3,
                                                                                 temperature=0.0)]
    out = Sampler(model, tok).generate(state, chain)
    # The caption is an input-only sequence ending in [EOS]; the depth is fully decoded.
    assert out["caption"]["target_mask"].all() and _caption_rows(out, tok)[0][-1] == tok.eos_id
    # The depth equals generating it alone from the state that already holds the generated caption.
    alone = {n: d for n, d in out.items() if n != "tok_depth@224"}
    alone.update(image_state(rgb))
    again = Sampler(model, tok).generate(alone, [chain[1]])
    assert torch.equal(again["tok_depth@224"]["tensor"], out["tok_depth@224"]["tensor"])
    # ...and differs from depth without that caption (the caption is really an input).
    without = {n: d for n, d in alone.items() if n != "caption"}
    other = Sampler(model, tok).generate(without, [chain[1]])
    assert not torch.equal(other["tok_depth@224"]["tensor"], out["tok_depth@224"]["tensor"])


def test_top_k_and_top_p_filtering():
    logits = torch.tensor([[[4.0, 3.0, 2.0, 1.0, 0.0]]])
    assert torch.isfinite(filter_logits(logits, top_k=2)).sum() == 2
    assert torch.isfinite(filter_logits(logits, top_k=0.4)).sum() == 2  # a fraction of V, as officially
    probs = logits.softmax(-1)[0, 0]
    # smallest set reaching p: the top token alone has ~0.64 < 0.8, so two tokens are kept
    kept = torch.isfinite(filter_logits(logits, top_p=0.8))[0, 0]
    assert kept.tolist() == [True, True, False, False, False] and probs[:1].sum() < 0.8 <= probs[:2].sum()
    gens = make_generators(0, 1)
    tokens = torch.stack([sample(logits, 1.0, gens, top_k=2)[0] for _ in range(50)])
    assert set(tokens.flatten().tolist()) <= {0, 1}


def test_per_row_generators_make_rows_independent_of_the_batch():
    logits = torch.randn(1, 6, 50)
    alone, _ = sample(logits, 1.0, make_generators([7], 1))
    pair, _ = sample(logits.expand(2, -1, -1), 1.0, make_generators([3, 7], 2))
    assert torch.equal(pair[1], alone[0])


def test_bad_sampler_input_fails_before_compute(model, tok, rgb):
    sampler = Sampler(model, tok)
    state = image_state(rgb)
    with pytest.raises(ValueError, match="cannot generate 'tok_normal@224'"):
        sampler.check(state, [TargetSpec("tok_normal@224")])
    with pytest.raises(ValueError, match="positive int"):
        sampler.check(state, [TargetSpec("tok_depth@224", steps=0)])
    with pytest.raises(ValueError, match="300 decoding steps for only 196 tokens"):
        sampler.check(state, [TargetSpec("tok_depth@224", steps=300)])
    with pytest.raises(ValueError, match="cannot be decoded with 'autoregressive'"):
        sampler.check(state, [TargetSpec("tok_depth@224", scheme="autoregressive")])
    with pytest.raises(ValueError, match="not conditions"):
        sampler.check(state, [TargetSpec("tok_depth@224", guidance={"caption": 2.0})])


def test_sampling_follows_the_distribution_and_never_picks_filtered_tokens():
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    logits = probs.log().expand(1, 20000, 4)
    tokens, conf = sample(logits, 1.0, make_generators(0, 1))
    freq = torch.bincount(tokens.flatten(), minlength=4).float() / tokens.numel()
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)
    torch.testing.assert_close(conf, probs[tokens])
    hot, _ = sample(logits, 0.25, make_generators(0, 1))  # low temperature sharpens towards the mode
    assert (hot == 0).float().mean() > 0.8
