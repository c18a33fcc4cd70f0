"""Masking statistics over many draws match the theory (issue 5, "Must show").

Budget means follow the Dirichlet mixture; budgets never exceed their caps; over 10,000 masked samples,
image inputs and targets never overlap, every sequence target starts with a sentinel and no budget is
exceeded; the vectorised "x0.9 while over budget" rule has the same distribution as the official loop.
"""

import numpy as np
import pytest

from masking_helpers import MOD7_ALL2ALL_RGB2ALL, official_sequential_keep
from open4m import modalities
from open4m.masking import SENTINEL_OFFSET, UnifiedMasking
from open4m.masking_ops import draw_keep, span_mask
from open4m.mixtures import MaskingConfig, Mixture

DRAWS = 10_000
SENTINELS = SENTINEL_OFFSET + np.arange(200)


def within(mean, expected, std, n, k=5.0):
    """|mean - expected| within k standard errors (alpha ~ 0 modalities: within 1e-6 of their tiny mean)."""
    return np.all(np.abs(np.asarray(mean) - expected) <= k * np.asarray(std) / np.sqrt(n) + 1e-6)


@pytest.fixture(scope="module", params=["per sample", "batched"])
def mod7_budgets(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("mix") / "mix_mod7_all2all_rgb2all_a0.5.yaml"
    path.write_text(MOD7_ALL2ALL_RGB2ALL)
    # 64 + 64 tokens: no image budget can reach its cap (196), so the theory is exact
    masking = UnifiedMasking(MaskingConfig.from_yaml(path, input_tokens=64, target_tokens=64))
    rng = np.random.default_rng(0)
    if request.param == "batched":
        draws = [masking.draw_budgets_batch(rng, 100) for _ in range(DRAWS // 100)]
        component = np.concatenate([d.component for d in draws])
        inputs = np.concatenate([d.input for d in draws])
        targets = np.concatenate([d.target for d in draws])
    else:
        draws = [masking.draw_budgets(rng) for _ in range(DRAWS)]
        component = np.array([d.component for d in draws])
        inputs = np.stack([d.input for d in draws])
        targets = np.stack([d.target for d in draws])
    return masking.mixture, component, inputs, targets


def test_components_follow_the_sampling_weights(mod7_budgets):
    _, component, _, _ = mod7_budgets
    assert within((component == 0).mean(), 0.5, 0.5, DRAWS)


def test_budget_means_follow_the_dirichlet_mixture(mod7_budgets):
    mixture, _, inputs, targets = mod7_budgets
    assert (inputs.sum(axis=1) == 64).all() and (targets.sum(axis=1) == 64).all()
    assert within(inputs.mean(axis=0), 64 * mixture.expected_share("input"), inputs.std(axis=0), DRAWS)
    assert within(targets.mean(axis=0), 64 * mixture.expected_share("target"), targets.std(axis=0), DRAWS)


def test_alpha_zero_modalities_get_nothing(mod7_budgets):
    mixture, component, inputs, targets = mod7_budgets
    rgb = mixture.names.index("rgb@224")
    rgb2all = component == 0
    assert (inputs[rgb2all, rgb] == 64).all() and (np.delete(inputs[rgb2all], rgb, axis=1) == 0).all()
    assert (targets[:, rgb] == 0).all()


def test_budget_spread_follows_the_beta_marginal(mod7_budgets):
    mixture, component, inputs, _ = mod7_budgets
    all2all = inputs[component == 1]
    # a Dir(0.5 x 8) share is Beta(0.5, 3.5): variance a(a0-a) / (a0^2 (a0+1)); floor + remainder barely change it
    variance = 64**2 * 0.5 * 3.5 / (4.0**2 * 5.0)
    assert np.allclose(all2all.var(axis=0), variance, rtol=0.15)
    assert within(all2all.mean(axis=0), 8.0, all2all.std(axis=0), len(all2all))


@pytest.mark.parametrize("batched", [False, True])
def test_budgets_never_exceed_their_caps(batched):
    # budgets large enough that every image modality (256 tokens) reaches its cap in some draws
    masking = UnifiedMasking(MaskingConfig.from_yaml("configs/mixtures/world.yaml", input_tokens=[0, 1500],
                                                     target_tokens=[0, 1500]))
    caps = np.array([modalities.get(n).max_tokens for n in masking.mixture.names])
    is_image = np.array([modalities.get(n).is_image for n in masking.mixture.names])
    rng = np.random.default_rng(1)
    if batched:
        draws = masking.draw_budgets_batch(rng, DRAWS)
        inputs, targets = draws.input, draws.target
    else:
        draws = [masking.draw_budgets(rng) for _ in range(DRAWS)]
        inputs, targets = np.stack([d.input for d in draws]), np.stack([d.target for d in draws])
    assert (inputs >= 0).all() and (targets >= 0).all()
    assert (inputs <= caps).all() and (targets <= caps).all()
    assert (inputs + targets <= caps)[:, is_image].all()
    assert (inputs == caps).any(axis=0)[is_image].all()  # image caps were reached, so the test exercised them


@pytest.mark.parametrize("num_samples", [2_000, pytest.param(DRAWS, marks=pytest.mark.slow)])
def test_masked_samples_keep_every_invariant(num_samples):
    masking = UnifiedMasking(MaskingConfig.from_yaml("configs/mixtures/world.yaml"))
    names = masking.mixture.names
    infos = [modalities.get(n) for n in names]
    rng = np.random.default_rng(2)
    sample = {}
    for info in infos:
        if info.kind == "image_tokens":
            sample[info.name] = rng.integers(0, info.vocab_size, info.max_tokens)
        elif info.kind == "pixels":
            sample[info.name] = np.zeros((3, info.image_size, info.image_size), np.float32)
    for i in range(num_samples):
        sample["caption@64"] = rng.integers(300, 1000, 5 + i % 40)
        sample["det@64"] = rng.integers(300, 1000, 5 * (i % 12))
        budgets = masking.draw_budgets(rng)
        out = masking.apply_budgets(sample, budgets, rng)
        for j, info in enumerate(infos):
            entry, n_in, n_out = out[info.name], budgets.input[j], budgets.target[j]
            is_input, is_target = ~entry["input_mask"], ~entry["target_mask"]
            if info.is_image:
                assert not (is_input & is_target).any()
                assert is_input.sum() == n_in
                assert is_target.sum() == (n_out if info.has_decoder else 0)
                assert entry["decoder_attention_mask"].sum() == is_target.sum()
            else:
                assert is_input.sum() <= n_in and is_target.sum() <= n_out
                assert not is_input[n_in:].any() and not is_target[:n_in].any()
                targets = entry["tensor"][is_target]
                assert len(targets) == 0 or targets[0] in SENTINELS
                assert (entry["decoder_attention_mask"] == is_target).all()


@pytest.mark.parametrize("budget", [3, 12, 30])
def test_vectorised_keep_prob_shrink_matches_the_official_loop(budget):
    n, draws = 40, 2000
    rng_ours, rng_ref = np.random.default_rng(3), np.random.default_rng(4)
    ones = np.ones(n, np.int64)
    ours, ref = [], []
    for _ in range(draws):
        p = rng_ours.random()
        ours.append(len(span_mask(np.arange(n), ones, draw_keep(rng_ours, ones, p, budget), SENTINELS)[0]))
        ref.append(len(span_mask(np.arange(n), ones, official_sequential_keep(rng_ref, n, rng_ref.random(), budget),
                                 SENTINELS)[0]))
    ours, ref = np.array(ours), np.array(ref)
    assert ours.max() <= budget and ref.max() <= budget
    assert abs(ours.mean() - ref.mean()) <= 5 * np.sqrt((ours.var() + ref.var()) / draws)
    cdf = [np.cumsum(np.bincount(x, minlength=budget + 1)) / draws for x in (ours, ref)]
    assert np.abs(cdf[0] - cdf[1]).max() < 1.95 * np.sqrt(2 / draws)  # two-sample KS test at p = 0.001


def test_random_keep_prob_keeps_half_the_tokens_on_average():
    masking = UnifiedMasking(MaskingConfig(Mixture.single({"caption": 1.0}, {"caption": 1.0}), 256, None))
    rng = np.random.default_rng(5)
    ids = rng.integers(300, 1000, 49)
    kept = []
    for _ in range(4000):
        tensor = masking({"caption": ids}, rng)["caption"]["tensor"]
        kept.append(np.isin(tensor[:256], ids).sum() / 49)  # input part holds kept tokens and sentinels
    kept = np.array(kept)
    # keep_prob ~ U(0, 1) and each token is kept with it: E[kept fraction] = 1/2, nothing is ever shrunk here
    assert within(kept.mean(), 0.5, kept.std(), len(kept))
    assert kept.min() < 0.05 and kept.max() > 0.95


def test_ten_thousand_batched_samples_keep_every_invariant():
    masking = UnifiedMasking(MaskingConfig.from_yaml("configs/mixtures/world.yaml"))
    infos = [modalities.get(n) for n in masking.mixture.names]
    rng = np.random.default_rng(6)
    for _ in range(DRAWS // 500):
        samples = []
        for i in range(500):
            sample = {"caption@64": rng.integers(300, 1000, 5 + i % 40),
                      "det@64": rng.integers(300, 1000, 5 * (i % 12))}
            for info in infos:
                if info.kind == "image_tokens":
                    sample[info.name] = np.zeros(info.max_tokens, np.int64)
                elif info.kind == "pixels":
                    sample[info.name] = np.zeros((3, info.image_size, info.image_size), np.float32)
            samples.append(sample)
        budgets = masking.draw_budgets_batch(rng, 500)
        batch = masking.apply_budgets_batch(samples, budgets, rng)
        for j, info in enumerate(infos):
            entry = {k: v.numpy() for k, v in batch[info.name].items()}
            is_input, is_target = ~entry["input_mask"], ~entry["target_mask"]
            n_in, n_out = budgets.input[:, j], budgets.target[:, j]
            if info.is_image:
                assert not (is_input & is_target).any()
                assert (is_input.sum(axis=1) == n_in).all()
                assert (is_target.sum(axis=1) == (n_out if info.has_decoder else 0)).all()
                assert (entry["decoder_attention_mask"].sum(axis=1) == is_target.sum(axis=1)).all()
            else:
                positions = np.arange(is_input.shape[1])
                assert (is_input.sum(axis=1) <= n_in).all() and (is_target.sum(axis=1) <= n_out).all()
                assert not (is_input & (positions >= n_in[:, None])).any()
                assert not (is_target & (positions < n_in[:, None])).any()
                has_target = is_target.any(axis=1)
                first = entry["tensor"][np.arange(500), is_target.argmax(axis=1)]
                assert np.isin(first[has_target], SENTINELS).all()
                assert (entry["decoder_attention_mask"] == is_target).all()
