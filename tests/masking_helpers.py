"""Helpers shared by the masking tests (not a test module): mixtures, samples, and reference rules."""

import numpy as np

from open4m import modalities
from open4m.masking import SENTINEL_OFFSET, UnifiedMasking
from open4m.mixtures import MaskingConfig, Mixture

# A copy of the official cfgs/default/4m/alphas_mixture/main/mix_mod7_all2all_rgb2all_a0.5.yaml (flat format),
# written by the tests so that no official file is committed.
MOD7_ALL2ALL_RGB2ALL = """\
# Half of all samples from this mixture are rgb2all, half are all2all
rgb@224:
  input_alphas: [1000.0, 0.5]
  target_alphas: [0., 0.]  # RGB is not a target
tok_rgb@224:
  input_alphas: [0., 0.5]
  target_alphas: [0.5, 0.5]
tok_depth@224:
  input_alphas: [0., 0.5]
  target_alphas: [0.5, 0.5]
tok_semseg@224:
  input_alphas: [0., 0.5]
  target_alphas: [0.5, 0.5]
tok_normal@224:
  input_alphas: [0., 0.5]
  target_alphas: [0.5, 0.5]
tok_clip@224:
  input_alphas: [0., 0.5]
  target_alphas: [0.5, 0.5]
caption:
  input_alphas: [0., 0.5]
  target_alphas: [0.5, 0.5]
  keep: ['random', 'random']
det:
  input_alphas: [0., 0.5]
  target_alphas: [0.5, 0.5]
  keep: ['random', 'random']
"""

# The official cfgs/default/4m/alphas_mixture/main/mix_mod21_all2allmix_rgb2all_capT5bias.yaml (nested format).
MOD21_ALL2ALLMIX_RGB2ALL_CAPT5BIAS = """\
# Mixture of alphas:
# - all2all with input and target alphas 0.01, 0.1, 1.0, 10.0
# - rgb2all with target alpha 0.5
# - caption and T5 embedding bias (each weighted half)

sampling_weights: [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5]

alphas_mixture:
  rgb@224:
    input_alphas: [0.01, 0.1, 1.0, 10.0, 1000.0, 0.05, 0.05]
    target_alphas: [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
  caption:
    input_alphas: [0.01, 0.1, 1.0, 10.0, 0.0, 5.0, 0.0]
    target_alphas: [0.01, 0.1, 1.0, 10.0, 0.5, 0.0, 0.5]
    keep: ['random', 'random', 'random', 'random', 'random', 'all', 'random']
  t5_caption:
    input_alphas: [0.01, 0.1, 1.0, 10.0, 0.0, 0.0, 5.0]
    target_alphas: [0.01, 0.1, 1.0, 10.0, 0.5, 0.5, 0.0]
    keep: ['random', 'random', 'random', 'random', 'random', 'random', 'all']
  det:
    input_alphas: [0.01, 0.1, 1.0, 10.0, 0.0, 0.05, 0.05]
    target_alphas: [0.01, 0.1, 1.0, 10.0, 0.5, 0.5, 0.5]
    keep: ['random', 'random', 'random', 'random', 'random', 'random', 'random']
  tok_rgb@224:
    input_alphas: [0.01, 0.1, 1.0, 10.0, 0.0, 0.05, 0.05]
    target_alphas: [0.01, 0.1, 1.0, 10.0, 0.5, 0.5, 0.5]
  tok_normal@224:
    input_alphas: [0.01, 0.1, 1.0, 10.0, 0.0, 0.05, 0.05]
    target_alphas: [0.01, 0.1, 1.0, 10.0, 0.5, 0.5, 0.5]
  tok_depth@224:
    input_alphas: [0.01, 0.1, 1.0, 10.0, 0.0, 0.05, 0.05]
    target_alphas: [0.01, 0.1, 1.0, 10.0, 0.5, 0.5, 0.5]
  tok_semseg@224:
    input_alphas: [0.01, 0.1, 1.0, 10.0, 0.0, 0.05, 0.05]
    target_alphas: [0.01, 0.1, 1.0, 10.0, 0.5, 0.5, 0.5]
  tok_clip@224:
    input_alphas: [0.01, 0.1, 1.0, 10.0, 0.0, 0.05, 0.05]
    target_alphas: [0.01, 0.1, 1.0, 10.0, 0.5, 0.5, 0.5]
  human_poses:
    input_alphas: [0.01, 0.1, 1.0, 10.0, 0.0, 0.05, 0.05]
    target_alphas: [0.01, 0.1, 1.0, 10.0, 0.5, 0.5, 0.5]
    keep: ['random', 'random', 'random', 'random', 'random', 'random', 'random']
  tok_dinov2@224:
    input_alphas: [0.01, 0.1, 1.0, 10.0, 0.0, 0.05, 0.05]
    target_alphas: [0.01, 0.1, 1.0, 10.0, 0.5, 0.5, 0.5]
  tok_dinov2_global:
    input_alphas: [0.01, 0.1, 1.0, 10.0, 0.0, 0.05, 0.05]
    target_alphas: [0.01, 0.1, 1.0, 10.0, 0.5, 0.5, 0.5]
  tok_imagebind@224:
    input_alphas: [0.01, 0.1, 1.0, 10.0, 0.0, 0.05, 0.05]
    target_alphas: [0.01, 0.1, 1.0, 10.0, 0.5, 0.5, 0.5]
  tok_imagebind_global:
    input_alphas: [0.01, 0.1, 1.0, 10.0, 0.0, 0.05, 0.05]
    target_alphas: [0.01, 0.1, 1.0, 10.0, 0.5, 0.5, 0.5]
  tok_canny_edge@224:
    input_alphas: [0.01, 0.1, 1.0, 10.0, 0.0, 0.05, 0.05]
    target_alphas: [0.01, 0.1, 1.0, 10.0, 0.5, 0.5, 0.5]
  tok_sam_edge@224:
    input_alphas: [0.01, 0.1, 1.0, 10.0, 0.0, 0.05, 0.05]
    target_alphas: [0.01, 0.1, 1.0, 10.0, 0.5, 0.5, 0.5]
  color_palette:
    input_alphas: [0.01, 0.1, 1.0, 10.0, 0.0, 0.05, 0.05]
    target_alphas: [0.01, 0.1, 1.0, 10.0, 0.5, 0.5, 0.5]
    keep: ['binary', 'binary', 'binary', 'binary', 'binary', 'binary', 'binary']
  metadata:
    input_alphas: [0.01, 0.1, 1.0, 10.0, 0.0, 0.05, 0.05]
    target_alphas: [0.01, 0.1, 1.0, 10.0, 0.5, 0.5, 0.5]
    keep: ['random', 'random', 'random', 'random', 'random', 'random', 'random']
  sam_instance:
    input_alphas: [0.01, 0.1, 1.0, 10.0, 0.0, 0.05, 0.05]
    target_alphas: [0.01, 0.1, 1.0, 10.0, 0.5, 0.5, 0.5]
    keep: ['random', 'random', 'random', 'random', 'random', 'random', 'random']
"""

S = SENTINEL_OFFSET  # [S_k] = S + k in the official layout
SENTINELS = S + np.arange(200)  # [S_0]..[S_199] = ids 4..203, as the official tokenizer
IMG, SEQ = "tok_depth@224", "caption"


def make_masking(input_alphas, target_alphas, input_tokens=64, target_tokens=64, keep=None, **kw):
    entries = {n: {"input_alphas": [input_alphas.get(n, 0.0)], "target_alphas": [target_alphas.get(n, 0.0)]}
               for n in set(input_alphas) | set(target_alphas)}
    for name, scheme in (keep or {}).items():
        entries[name]["keep"] = [scheme]
    return UnifiedMasking(MaskingConfig(Mixture.from_dict(entries), input_tokens, target_tokens), **kw)


def caption_ids(rng, n=30):
    return rng.integers(300, 1000, n)


def sample_for(masking, rng, caption_len=30):
    sample = {}
    for name in masking.mixture.names:
        info = modalities.get(name)
        if info.kind == "image_tokens":
            sample[name] = rng.integers(0, info.vocab_size, info.max_tokens)
        elif info.kind == "pixels":
            sample[name] = rng.standard_normal((info.num_channels, info.image_size, info.image_size)).astype("f4")
        elif info.kind == "embeddings":
            sample[name] = rng.standard_normal((20, info.embedding_dim)).astype("f4")
        else:
            sample[name] = caption_ids(rng, min(caption_len, info.max_tokens - 1))
    return sample


def merge(input_ids, target_ids):
    """Rebuild the full sequence: each sentinel of the input is replaced by the target tokens after it."""
    spans, current = {}, None
    for t in target_ids:
        if t in SENTINELS:
            current = int(t)
            spans[current] = []
        else:
            spans[current].append(int(t))
    out = []
    for t in input_ids if len(input_ids) else [SENTINELS[1]]:  # no input at all: the target holds everything
        out.extend(spans[int(t)] if t in SENTINELS else [int(t)])
    return out


def split_sequence(entry, input_budget):
    tensor = entry["tensor"]
    inputs = tensor[~entry["input_mask"]]
    targets = tensor[~entry["target_mask"]]
    return inputs, targets


def official_sequential_keep(rng, n, keep_prob, input_budget):
    """The official loop, one token at a time: redraw with keep_prob * 0.9 while the input is too long."""
    while True:
        keep = rng.random(n) <= keep_prob
        length = keep.sum() + (~keep & np.append(True, keep[:-1])).sum()
        if length <= input_budget:
            return keep
        keep_prob *= 0.9
