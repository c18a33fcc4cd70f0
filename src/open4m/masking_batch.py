"""Batched 4M masking: budgets, image positions and span masking for ``B`` samples at once.

Each function has the distribution of its per-sample counterpart in :mod:`open4m.masking_ops`
(OFFICIAL-4M-SPEC §4.2-4.4) but draws and computes with whole-batch numpy operations instead of one
call per sample. Sequences are padded to ``(B, L)`` with their true lengths alongside.
"""

from __future__ import annotations

import numpy as np

from open4m.masking_ops import KEEP_PROB_DECAY, RETRY_BLOCK
from open4m.mixtures import ALPHA_EPS


def split_budget_batch(rng: np.random.Generator, alphas: np.ndarray, components: np.ndarray, totals: np.ndarray,
                       caps: np.ndarray) -> np.ndarray:
    """:func:`~open4m.masking_ops.split_budget` for ``B`` samples: ``(B, M)`` int64 budgets.

    ``alphas`` is ``(K, M)`` (one row per mixture component), ``components`` ``(B,)`` picks a row per
    sample, ``totals`` is ``(B,)`` and ``caps`` ``(B, M)``. Samples of one component share each draw call.
    """
    num, mods = len(components), alphas.shape[1]
    budget = np.zeros((num, mods), np.int64)
    for k in np.unique(components):
        rows = np.flatnonzero(components == k)
        row_alphas = np.maximum(alphas[k], ALPHA_EPS)
        shares = rng.dirichlet(row_alphas, size=len(rows))
        budget[rows] = np.floor(shares * totals[rows, None]).astype(np.int64)
        remainder = totals[rows] - budget[rows].sum(axis=1)
        if remainder.sum() > 0:
            winners = rng.dirichlet(row_alphas, size=int(remainder.sum())).argmax(axis=1)
            owner = np.repeat(rows, remainder)
            np.add.at(budget, (owner, winners), 1)
    return np.minimum(budget, caps)


def image_masks_batch(rng: np.random.Generator, num_positions: int, input_budgets: np.ndarray,
                      target_budgets: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`~open4m.masking_ops.image_masks` for ``B`` images: ``(B, N)`` input_mask, target_mask, dam.

    Each row draws uniform noise per position: the ``input_budget`` lowest are inputs, the next
    ``target_budget`` (``None``: all the rest) targets, i.e. the same uniformly random disjoint subsets.
    """
    num = len(input_budgets)
    noise = rng.random((num, num_positions))
    ordered = np.sort(noise, axis=1)
    ordered = np.concatenate([np.full((num, 1), -1.0), ordered], axis=1)  # column 0: threshold of "none"
    rows = np.arange(num)
    is_input = noise <= ordered[rows, input_budgets][:, None]
    end = num_positions if target_budgets is None else input_budgets + target_budgets
    is_target = ~is_input & (noise <= ordered[rows, end][:, None])
    dam = np.zeros((num, num_positions), np.int32)
    counts = is_target.sum(axis=1).astype(np.int32)
    hit = np.flatnonzero(counts)
    dam[hit, is_target[hit].argmax(axis=1)] = counts[hit]
    return ~is_input, ~is_target, dam


def draw_keep_batch(rng: np.random.Generator, lengths: np.ndarray, keep_probs: np.ndarray,
                    input_budgets: np.ndarray) -> np.ndarray:
    """:func:`~open4m.masking_ops.draw_keep` for ``B`` plain sequences: ``(B, L)`` bool, False past each length.

    Every row draws 16 attempts at a time (keep probabilities p, 0.9p, ...) and takes the first whose
    input (kept tokens + one sentinel per dropped run) fits its budget; rows that found none draw again.
    """
    num, width = len(lengths), int(lengths.max(initial=0))
    valid = np.arange(width) < lengths[:, None]
    keep = np.zeros((num, width), bool)
    rows = np.flatnonzero(input_budgets > 0)
    probs = keep_probs[rows].astype(float)
    decay = KEEP_PROB_DECAY ** np.arange(RETRY_BLOCK)
    while rows.size:
        row_valid = valid[rows][:, None, :]
        attempts = (rng.random((rows.size, RETRY_BLOCK, width)) <= (probs[:, None] * decay)[:, :, None]) & row_valid
        run_starts = ~attempts & row_valid
        run_starts[:, :, 1:] &= attempts[:, :, :-1]
        fits = attempts.sum(axis=2) + run_starts.sum(axis=2) <= input_budgets[rows][:, None]
        done = fits.any(axis=1)
        keep[rows[done]] = attempts[done, fits[done].argmax(axis=1)]
        rows, probs = rows[~done], probs[~done] * KEEP_PROB_DECAY**RETRY_BLOCK
    return keep


def span_mask_batch(ids: np.ndarray, lengths: np.ndarray, keep: np.ndarray,
                    sentinels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`~open4m.masking_ops.span_mask` for ``B`` plain sequences padded to ``(B, L)``.

    Returns ``inputs`` ``(B, L)`` and ``input_lengths`` ``(B,)``, ``targets`` ``(B, T)``,
    ``target_lengths`` ``(B,)`` and ``is_sentinel`` ``(B, T)`` (where the targets hold sentinels);
    entries past a row's length are 0 / False.
    """
    num, width = ids.shape
    valid = np.arange(width) < lengths[:, None]
    run_start = ~keep & valid
    run_start[:, 1:] &= keep[:, :-1]
    run_id = np.cumsum(run_start, axis=1)
    num_runs = run_id[:, -1] if width else np.zeros(num, np.int64)
    emitted = keep | run_start
    rows, cols = np.nonzero(emitted)
    inputs = np.zeros((num, width), ids.dtype)
    values = np.where(keep, ids, sentinels[run_id])
    inputs[rows, np.cumsum(emitted, axis=1)[rows, cols] - 1] = values[rows, cols]
    dropped = ~keep & valid
    target_pos = np.cumsum(dropped, axis=1) - 1 + run_id  # where each dropped token lands in its target
    target_lengths = dropped.sum(axis=1) + num_runs + 1
    targets = np.zeros((num, int(target_lengths.max(initial=0))), ids.dtype)
    is_sentinel = np.zeros(targets.shape, bool)
    rows, cols = np.nonzero(dropped)
    targets[rows, target_pos[rows, cols]] = ids[rows, cols]
    rows, cols = np.nonzero(run_start)
    targets[rows, target_pos[rows, cols] - 1] = sentinels[run_id[rows, cols]]
    is_sentinel[rows, target_pos[rows, cols] - 1] = True
    last = np.arange(num), target_lengths - 1
    targets[last] = sentinels[num_runs + 1]
    is_sentinel[last] = True
    return inputs, emitted.sum(axis=1), targets, target_lengths, is_sentinel


def target_windows(target_lengths: np.ndarray, is_sentinel: np.ndarray, budgets: np.ndarray | None,
                   choices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~open4m.masking_ops.cut_target` for ``B`` targets: the kept ``[start, end)`` per row.

    ``choices`` ``(B,)`` picks each row's random sentinel (an index below ``max(1, sentinels - 1)``);
    rows within budget (or ``budgets`` None) keep everything.
    """
    start, end = np.zeros_like(target_lengths), target_lengths.copy()
    if budgets is None:
        return start, end
    positions = np.arange(is_sentinel.shape[1])
    rank = np.cumsum(is_sentinel, axis=1) - 1
    chosen = (is_sentinel & (rank == choices[:, None])).argmax(axis=1)
    earliest = (is_sentinel & (target_lengths[:, None] - positions <= budgets[:, None])).argmax(axis=1)
    long_enough = target_lengths - chosen >= budgets
    cut = target_lengths > budgets
    start = np.where(cut, np.where(long_enough, chosen, earliest), 0)
    end = np.where(cut, np.where(long_enough, chosen + budgets, target_lengths), target_lengths)
    return start, end


def layout_sequences_batch(inputs: np.ndarray, input_lengths: np.ndarray, targets: np.ndarray,
                           windows: tuple[np.ndarray, np.ndarray], input_budgets: np.ndarray, length: int,
                           pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The official padded layout for ``B`` rows: ``(B, length)`` tensor (int32), input_mask, target_mask, dam.

    Inputs at ``[0, input_length)``, the target window at ``[input_budget, input_budget + end - start)``.
    """
    num = len(inputs)
    start, end = windows
    tensor = np.full((num, length), pad_id, np.int32)
    rows, cols = np.nonzero(np.arange(inputs.shape[1]) < input_lengths[:, None])
    tensor[rows, cols] = inputs[rows, cols]
    t_cols = np.arange(targets.shape[1])
    rows, cols = np.nonzero((t_cols >= start[:, None]) & (t_cols < end[:, None]))
    tensor[rows, input_budgets[rows] + cols - start[rows]] = targets[rows, cols]
    positions = np.arange(length)
    is_target = (positions >= input_budgets[:, None]) & (positions < (input_budgets + end - start)[:, None])
    return tensor, positions >= input_lengths[:, None], ~is_target, is_target.astype(np.int32)
