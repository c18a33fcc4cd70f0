"""The array operations of 4M masking: token budgets, image positions, span masking (OFFICIAL-4M-SPEC §4.2-4.4).

Pure functions of numpy arrays and an explicit ``numpy.random.Generator``, for one sample;
:mod:`open4m.masking_batch` has the batched versions and :mod:`open4m.masking` puts them together.
"""

from __future__ import annotations

import numpy as np

from open4m.mixtures import ALPHA_EPS

KEEP_PROB_DECAY = 0.9  # official: keep_prob shrinks by this factor while the input is over budget
RETRY_BLOCK = 16  # over-budget retries are drawn this many at a time


def split_budget(rng: np.random.Generator, alphas: np.ndarray, total: int, caps: np.ndarray) -> np.ndarray:
    """Split ``total`` tokens over ``M`` modalities: ``(M,)`` int64 budgets.

    ``floor(Dir(alphas) * total)``, then the remainder one token at a time to the argmax of fresh
    Dirichlet draws (so alpha ~ 0 modalities stay at 0), then clamped at ``caps``. The remainder is
    below ``M``, so all draws come from one ``(M, M)`` call.
    """
    alphas = np.maximum(alphas, ALPHA_EPS)
    draws = rng.dirichlet(alphas, size=len(alphas))
    budget = np.floor(draws[0] * total).astype(np.int64)
    remainder = total - int(budget.sum())
    if remainder > 0:
        extra = draws[1:1 + remainder]
        if remainder >= len(alphas):  # only through float rounding of sum(p) < 1
            extra = np.concatenate([extra, rng.dirichlet(alphas, size=remainder - len(extra))])
        budget += np.bincount(extra.argmax(axis=1), minlength=len(alphas))
    return np.minimum(budget, caps)


def image_masks(rng: np.random.Generator, num_positions: int, input_budget: int,
                target_budget: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint random input and target positions of an image: ``(N,)`` input_mask, target_mask, dam.

    One random permutation: its first ``input_budget`` entries are inputs, the next ``target_budget``
    targets (``None``: all the rest). dam (int32) holds the target count at the first target position.
    """
    order = rng.permutation(num_positions)
    input_mask = np.ones(num_positions, bool)
    input_mask[order[:input_budget]] = False
    end = num_positions if target_budget is None else input_budget + target_budget
    targets = order[input_budget:end]
    target_mask = np.ones(num_positions, bool)
    target_mask[targets] = False
    dam = np.zeros(num_positions, np.int32)
    if targets.size:
        dam[targets.min()] = targets.size
    return input_mask, target_mask, dam


def draw_keep(rng: np.random.Generator, chunk_lens: np.ndarray, keep_prob: float, input_budget: int) -> np.ndarray:
    """``(C,)`` bool: which chunks stay in the input (each kept with ``keep_prob``).

    While the input (kept tokens + one sentinel per dropped run) exceeds ``input_budget``, ``keep_prob``
    is multiplied by 0.9 and the draw redone with fresh randomness, as officially. The attempts are
    drawn 16 at a time (probabilities p, 0.9p, 0.81p, ...) and the first that fits is taken, which is
    the official sequential loop's distribution. ``input_budget`` 0 drops everything.
    """
    num_chunks = len(chunk_lens)
    if input_budget == 0 or num_chunks == 0:
        return np.zeros(num_chunks, bool)
    plain = int(chunk_lens.sum()) == num_chunks
    decay = KEEP_PROB_DECAY ** np.arange(RETRY_BLOCK)
    prob = keep_prob
    while True:
        keep = rng.random((RETRY_BLOCK, num_chunks)) <= (prob * decay)[:, None]
        run_starts = ~keep
        run_starts[:, 1:] &= keep[:, :-1]
        kept = keep.sum(axis=1) if plain else keep @ chunk_lens
        fits = np.flatnonzero(kept + run_starts.sum(axis=1) <= input_budget)
        if fits.size:
            return keep[fits[0]]
        prob *= KEEP_PROB_DECAY ** RETRY_BLOCK


def span_mask(ids: np.ndarray, chunk_lens: np.ndarray, keep: np.ndarray,
              sentinels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply a chunk keep mask: ``(input_ids, target_ids, sentinel positions in target)``.

    A maximal run of dropped chunks becomes one sentinel ``[S_k]`` (k = 1, 2, ...) in the input; the
    target holds ``[S_k]`` followed by the dropped tokens, and ends with ``[S_{K+1}]``.
    ``ids`` is ``(n,)``, ``chunk_lens`` ``(C,)`` with ``sum == n`` (all ones for plain sequences),
    ``sentinels[k]`` is the id of ``[S_k]``.
    """
    prev_kept = np.ones_like(keep)
    prev_kept[1:] = keep[:-1]
    run_start = ~keep & prev_kept
    run_id = np.cumsum(run_start)
    num_runs = int(run_id[-1]) if len(run_id) else 0
    if len(chunk_lens) == len(ids):  # one token per chunk: plain span masking
        tok_keep, tok_start, tok_run = keep, run_start, run_id
    else:
        first_token = np.zeros(len(ids), bool)
        first_token[np.cumsum(chunk_lens) - chunk_lens] = True
        tok_keep = np.repeat(keep, chunk_lens)
        tok_start = np.repeat(run_start, chunk_lens) & first_token
        tok_run = np.repeat(run_id, chunk_lens)
    emitted = tok_keep | tok_start
    input_ids = np.where(tok_keep, ids, sentinels[tok_run])[emitted]
    dropped = ~tok_keep
    rank_plus_run = np.arange(int(dropped.sum())) + tok_run[dropped]
    starts = tok_start[dropped]
    target = np.empty(len(rank_plus_run) + num_runs + 1, ids.dtype)
    target[rank_plus_run] = ids[dropped]
    sentinel_pos = np.append(rank_plus_run[starts] - 1, len(target) - 1)
    target[sentinel_pos] = sentinels[np.arange(1, num_runs + 2)]
    return input_ids, target, sentinel_pos


def truncate_target(rng: np.random.Generator, target: np.ndarray, sentinel_pos: np.ndarray,
                    budget: int | None) -> np.ndarray:
    """Cut a target to ``budget`` tokens so that it still starts with a sentinel (official rule).

    Start at a random sentinel (not the final one when there are several); if fewer than ``budget``
    tokens follow it, start instead at the earliest sentinel whose suffix fits.
    """
    if budget is None or len(target) <= budget:
        return target
    return cut_target(target, sentinel_pos, budget, int(rng.integers(max(1, len(sentinel_pos) - 1))))


def cut_target(target: np.ndarray, sentinel_pos: np.ndarray, budget: int, choice: int) -> np.ndarray:
    """:func:`truncate_target` with the random sentinel given: ``sentinel_pos[choice]``."""
    start = sentinel_pos[choice]
    if len(target) - start >= budget:
        return target[start:start + budget]
    return target[sentinel_pos[len(target) - sentinel_pos <= budget][0]:]


def sentinels_needed(length: int) -> int:
    """Sentinels [S_0]..[S_K] that span masking of ``length`` tokens may use: ceil(length / 2) runs, + 1, + [S_0]."""
    return (length + 1) // 2 + 2


def draw_keep_prob(rng: np.random.Generator, scheme: str) -> float:
    """The keep probability of one span masking: ``random`` ~ U(0, 1), ``all`` 1, ``binary`` 0 or 1."""
    if scheme == "random":
        return float(rng.random())
    if scheme == "all":
        return 1.0
    return float(rng.integers(2))  # "binary"
