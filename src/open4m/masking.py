"""Multimodal masking: a sample of aligned modalities -> a ModDict of inputs and targets (4M pretraining).

Per sample (OFFICIAL-4M-SPEC §4.2-4.5): draw a mixture component, split the input and target token
budgets across modalities (symmetric-Dirichlet scheme), pick disjoint input/target positions of each
image, span-mask each sequence with sentinels, and lay everything out in the official batch format.

The output is the batch format documented once in :mod:`open4m.batch` (a ModDict): per-sample entries
hold numpy arrays without the batch axis, :func:`collate` stacks them into torch tensors. A modality
absent from a dataset is an *empty* entry: zero tensor, all masks True, decoder attention codes 0.

Two paths with the same distribution: ``UnifiedMasking.mask_sample(sample, rng)`` (per sample, e.g. in
data-loader workers, then :func:`collate`) and ``UnifiedMasking.mask_batch(samples, rng)`` (budgets, image
positions and plain sequences masked for the whole batch at once with :mod:`open4m.masking_batch`;
chunked sequences and embeddings per sample; returns the collated batch, several times faster).

Differences from the official code, on purpose (the distributions are the same):

- One explicit ``numpy.random.Generator`` per call; no global RNG.
- Span masking is vectorised, and the "×0.9 while over budget" retries are drawn in blocks of
  independent attempts (each attempt still uses fresh randomness, so the accepted mask has the
  official distribution).
- No 100-try loop for budgets: with ``min_tokens`` 0 (every official modality) the first draw is
  always accepted, so it is computed directly.
- Modalities the model cannot predict (pixels, embeddings) never get targets even if their target
  alpha is non-zero; their budget is still drawn (and wasted), as officially.
- Token-id sequences longer than ``max_tokens`` (with EOS) raise unless ``truncate=True``; raw
  strings are truncated as officially. Empty image entries use int64 like real ones (official: int32).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from open4m.masking_batch import (
    draw_keep_batch,
    image_masks_batch,
    layout_sequences_batch,
    span_mask_batch,
    split_budget_batch,
    target_windows,
)
from open4m.masking_ops import (
    draw_keep,
    draw_keep_prob,
    image_masks,
    sentinels_needed,
    span_mask,
    split_budget,
    truncate_target,
)
from open4m.mixtures import MaskingConfig
from open4m.modalities import Modality
from open4m.modalities import get as get_modality

PAD_ID, EOS_ID, SENTINEL_OFFSET = 0, 3, 4  # official text layout: [PAD]=0, [EOS]=3, [S_k] = 4 + k

ModEntry = dict[str, np.ndarray]
ModDict = dict[str, ModEntry]
Batch = dict[str, dict[str, torch.Tensor]]
ENTRY_KEYS = ("tensor", "input_mask", "target_mask", "decoder_attention_mask")


class TextTokenizer(Protocol):
    """What masking needs from a text tokenizer (``pad_id`` is optional, default 0)."""

    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def sentinel_id(self, k: int) -> int: ...


@dataclass(frozen=True, eq=False)
class Budgets:
    """Budget draws: the mixture component and the token budget per modality.

    One sample: ``component`` an int, ``input`` / ``target`` ``(M,)`` int arrays (modalities in
    ``mixture.names`` order). A batch: ``component`` ``(B,)``, budgets ``(B, M)``. ``target`` is None
    when the config has no target budget (every non-input image token is a target).
    """

    component: int | np.ndarray
    input: np.ndarray
    target: np.ndarray | None


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def empty_entry(name: str) -> ModEntry:
    """The entry of a modality absent from a sample: zero tensor, all masks True, dam 0."""
    info = get_modality(name)
    length = info.num_positions
    if info.kind == "pixels":
        tensor = np.zeros((info.num_channels, info.image_size, info.image_size), np.float32)
    elif info.kind == "embeddings":
        tensor = np.zeros((info.max_tokens, info.embedding_dim), np.float32)
    elif info.kind == "sequence":
        tensor = np.zeros(length, np.int32)
    else:
        tensor = np.zeros(length, np.int64)
    return {"tensor": tensor, "input_mask": np.ones(length, bool), "target_mask": np.ones(length, bool),
            "decoder_attention_mask": np.zeros(length, np.int32)}


class UnifiedMasking:
    """Masks one sample per call: ``masking(sample, rng) -> ModDict`` (see the module docstring).

    Args:
        config: the mixture and token budgets.
        tokenizer: a text tokenizer; needed only for raw-string sequences. Sentinel, EOS and PAD ids
            come from it when given, else the official layout.
        fill_empty: extra modality names to add as empty entries (modalities other datasets provide).
        truncate: cut token-id sequences longer than ``max_tokens`` (with EOS) instead of raising.

    Sample values: image tokens ``(N,)`` or ``(grid, grid)`` ints; pixels ``(C, H, W)`` floats;
    sequences a list/array of token ids **without** EOS (masking appends it), a list of such chunks
    (span-masked chunk-wise, e.g. metadata), or a string / list of strings with a tokenizer;
    embeddings ``(L, D)`` floats. Keys not in the config are ignored.
    """

    def __init__(self, config: MaskingConfig, tokenizer: TextTokenizer | None = None,
                 fill_empty: Iterable[str] = (), truncate: bool = False) -> None:
        self.config = config
        self.mixture = config.mixture
        self.tokenizer = tokenizer
        self.truncate = truncate
        self.infos = [get_modality(n) for n in self.mixture.names]
        self.fill_empty = [n for n in dict.fromkeys(fill_empty) if n not in self.mixture.names]
        for name in self.fill_empty:
            get_modality(name)
        self._cum_weights = np.cumsum(self.mixture.sampling_weights)
        self.max_tokens = np.array([m.max_tokens for m in self.infos], np.int64)
        self.is_image = np.array([m.is_image for m in self.infos])
        self.pad_id = int(getattr(tokenizer, "pad_id", PAD_ID)) if tokenizer is not None else PAD_ID
        self.eos_id = int(tokenizer.eos_id) if tokenizer is not None else EOS_ID
        seq_max = max([m.max_tokens for m in self.infos if m.is_sequence_like], default=0)
        self.sentinels = self._sentinel_ids(sentinels_needed(seq_max))

    def _sentinel_ids(self, count: int) -> np.ndarray:
        if self.tokenizer is None:
            return SENTINEL_OFFSET + np.arange(count, dtype=np.int64)
        try:
            return np.array([self.tokenizer.sentinel_id(k) for k in range(count)], np.int64)
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"the text tokenizer must provide sentinels [S_0]..[S_{count - 1}] for span "
                             f"masking of these sequence lengths: {err}") from None

    def draw_budgets(self, rng: np.random.Generator) -> Budgets:
        """Draw the component and the per-modality input and target budgets (OFFICIAL-4M-SPEC §4.2)."""
        mix, cfg = self.mixture, self.config
        k = min(int(np.searchsorted(self._cum_weights, rng.random(), side="right")), mix.num_components - 1)
        n_in = int(rng.integers(cfg.input_tokens[0], cfg.input_tokens[1] + 1))
        inputs = split_budget(rng, mix.input_alphas[k], n_in, self.max_tokens)
        targets = None
        if cfg.target_tokens is not None:
            n_out = int(rng.integers(cfg.target_tokens[0], cfg.target_tokens[1] + 1))
            caps = np.where(self.is_image, self.max_tokens - inputs, self.max_tokens)
            targets = split_budget(rng, mix.target_alphas[k], n_out, caps)
        return Budgets(k, inputs, targets)

    def draw_budgets_batch(self, rng: np.random.Generator, num: int) -> Budgets:
        """:meth:`draw_budgets` for ``num`` samples at once: components ``(B,)``, budgets ``(B, M)``."""
        mix, cfg = self.mixture, self.config
        components = np.minimum(np.searchsorted(self._cum_weights, rng.random(num), side="right"),
                                mix.num_components - 1)
        n_in = rng.integers(cfg.input_tokens[0], cfg.input_tokens[1] + 1, size=num)
        caps = np.broadcast_to(self.max_tokens, (num, len(self.infos)))
        inputs = split_budget_batch(rng, mix.input_alphas, components, n_in, caps)
        targets = None
        if cfg.target_tokens is not None:
            n_out = rng.integers(cfg.target_tokens[0], cfg.target_tokens[1] + 1, size=num)
            caps = np.where(self.is_image, caps - inputs, caps)
            targets = split_budget_batch(rng, mix.target_alphas, components, n_out, caps)
        return Budgets(components, inputs, targets)

    def __call__(self, sample: Mapping[str, Any], rng: np.random.Generator | int) -> ModDict:
        """Mask one sample; ``rng`` is a Generator (or a seed). Same rng state -> same ModDict."""
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        return self.apply_budgets(sample, self.draw_budgets(rng), rng)

    mask_sample = __call__

    def apply_budgets(self, sample: Mapping[str, Any], budgets: Budgets, rng: np.random.Generator) -> ModDict:
        """Mask one sample with given budgets (``__call__`` = :meth:`draw_budgets` then this)."""
        self._check_present(sample)
        out: ModDict = {}
        for j, info in enumerate(self.infos):
            in_budget = int(budgets.input[j])
            tgt_budget = self._target_budget(info, budgets.target, j)
            value = sample[info.name]
            if info.is_image:
                tensor = self._image_tensor(info, value)
                input_mask, target_mask, dam = image_masks(rng, info.max_tokens, in_budget, tgt_budget)
                out[info.name] = {"tensor": tensor, "input_mask": input_mask, "target_mask": target_mask,
                                  "decoder_attention_mask": dam}
            else:
                out[info.name] = self._mask_sequence_like(info, value, rng, in_budget, tgt_budget, budgets.component)
        for name in self.fill_empty:
            out[name] = empty_entry(name)
        return out

    def mask_batch(self, samples: Sequence[Mapping[str, Any]], rng: np.random.Generator | int) -> Batch:
        """Mask ``B`` samples into a batch (as :func:`collate` returns), vectorised across the batch.

        Same distribution as :meth:`mask_sample` per sample, far fewer numpy calls; for the same seed
        the two paths give different (equally valid) draws.
        """
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        if not samples:
            raise ValueError("mask_batch needs at least one sample")
        return self.apply_budgets_batch(samples, self.draw_budgets_batch(rng, len(samples)), rng)

    def apply_budgets_batch(self, samples: Sequence[Mapping[str, Any]], budgets: Budgets,
                            rng: np.random.Generator) -> Batch:
        """Mask ``B`` samples with given batch budgets (``mask_batch`` = :meth:`draw_budgets_batch` then this)."""
        for i, sample in enumerate(samples):
            self._check_present(sample, f"sample {i}")
        num = len(samples)
        batch: dict[str, dict[str, np.ndarray]] = {}
        for j, info in enumerate(self.infos):
            if info.is_image:
                tensor = np.stack([self._image_tensor(info, s[info.name], check_ids=False) for s in samples])
                if info.kind == "image_tokens":
                    _check_ids(info, tensor)
                targets = None if budgets.target is None else budgets.target[:, j]
                if not info.has_decoder:
                    targets = np.zeros(num, np.int64)
                input_mask, target_mask, dam = image_masks_batch(rng, info.max_tokens, budgets.input[:, j], targets)
                batch[info.name] = {"tensor": tensor, "input_mask": input_mask, "target_mask": target_mask,
                                    "decoder_attention_mask": dam}
            elif info.kind == "sequence" and all(self._is_plain(s[info.name]) for s in samples):
                targets = None if budgets.target is None else budgets.target[:, j]
                batch[info.name] = self._mask_sequences_batch(info, [s[info.name] for s in samples], rng,
                                                              budgets.input[:, j], targets, budgets.component)
            else:
                out = np.zeros((num, info.max_tokens, info.embedding_dim), np.float32) \
                    if info.kind == "embeddings" else None  # filled in place: these tensors are large
                entries = [self._mask_sequence_like(info, s[info.name], rng, int(budgets.input[i, j]),
                                                    self._target_budget(info, budgets.target, (i, j)),
                                                    int(budgets.component[i]), None if out is None else out[i])
                           for i, s in enumerate(samples)]
                batch[info.name] = {key: np.stack([e[key] for e in entries]) for key in ENTRY_KEYS[1:]}
                batch[info.name]["tensor"] = np.stack([e["tensor"] for e in entries]) if out is None else out
        for name in self.fill_empty:
            empty = empty_entry(name)
            batch[name] = {key: np.broadcast_to(v, (num, *v.shape)).copy() for key, v in empty.items()}
        return {name: {key: torch.from_numpy(v) for key, v in entry.items()} for name, entry in batch.items()}

    @staticmethod
    def _is_plain(value: Any) -> bool:
        """A sequence given as one string or one list of ids (not chunks, which are masked per sample)."""
        if isinstance(value, str):
            return True
        return not (isinstance(value, (list, tuple)) and len(value) > 0 and not np.isscalar(value[0]))

    def _mask_sequences_batch(self, info: Modality, values: list, rng: np.random.Generator, in_budgets: np.ndarray,
                              tgt_budgets: np.ndarray | None, components: np.ndarray) -> dict[str, np.ndarray]:
        """Span-mask ``B`` plain sequences of one modality at once: entries with a leading ``B`` axis."""
        rows = [self._sequence_ids(info, v)[0] for v in values]
        lengths = np.array([len(r) for r in rows])
        flat = np.concatenate(rows)
        _check_ids(info, flat)
        ids = np.zeros((len(rows), lengths.max()), np.int64)
        ids[np.arange(ids.shape[1]) < lengths[:, None]] = flat
        schemes = np.array(self.mixture.keep[info.name])[components]
        uniform, coin = rng.random(len(rows)), rng.integers(0, 2, len(rows))
        keep_probs = np.where(schemes == "random", uniform, np.where(schemes == "all", 1.0, coin))
        keep = draw_keep_batch(rng, lengths, np.where(in_budgets > 0, keep_probs, 0.0), in_budgets)
        inputs, input_lengths, targets, target_lengths, is_sentinel = span_mask_batch(
            ids, lengths, keep, self.sentinels)
        input_lengths = np.where(in_budgets > 0, input_lengths, 0)  # budget 0: not even a sentinel (official)
        choices_of = np.maximum(1, is_sentinel.sum(axis=1) - 1)
        choices = np.minimum((rng.random(len(rows)) * choices_of).astype(np.int64), choices_of - 1)
        windows = target_windows(target_lengths, is_sentinel, tgt_budgets, choices)
        arrays = layout_sequences_batch(inputs, input_lengths, targets, windows, in_budgets, info.num_positions,
                                        self.pad_id)
        return dict(zip(ENTRY_KEYS, arrays, strict=True))

    def _check_present(self, sample: Mapping[str, Any], what: str = "sample") -> None:
        missing = [n for n in self.mixture.names if n not in sample]
        if missing:
            raise ValueError(f"{what} lacks modalities {missing} that the masking config requires "
                             f"(it has {sorted(sample)})")

    def _target_budget(self, info: Modality, targets: np.ndarray | None, index) -> int | None:
        if not info.has_decoder:
            return 0
        return None if targets is None else int(targets[index])

    def _image_tensor(self, info: Modality, value: Any, check_ids: bool = True) -> np.ndarray:
        """The validated image: ``(C, H, W)`` float32 pixels or ``(N,)`` int64 tokens (ids in range if checked)."""
        array = _as_array(value)
        if info.kind == "pixels":
            expected = (info.num_channels, info.image_size, info.image_size)
            if array.shape != expected or array.dtype.kind != "f":
                raise ValueError(f"modality {info.name!r}: expected float pixels of shape {expected}, "
                                 f"got {array.dtype} {array.shape}")
            return array.astype(np.float32, copy=False)
        n = info.max_tokens
        if array.shape not in ((n,), (info.grid_size, info.grid_size)) or array.dtype.kind not in "iu":
            raise ValueError(f"modality {info.name!r}: expected {n} integer tokens, shape ({n},) or "
                             f"({info.grid_size}, {info.grid_size}), got {array.dtype} {array.shape}")
        tensor = array.reshape(n).astype(np.int64, copy=False)
        if check_ids:
            _check_ids(info, tensor)
        return tensor

    def _mask_sequence_like(self, info: Modality, value: Any, rng: np.random.Generator, in_budget: int,
                            tgt_budget: int | None, component: int, out: np.ndarray | None = None) -> ModEntry:
        keep_prob = draw_keep_prob(rng, self.mixture.keep[info.name][component]) if in_budget else 0.0
        if info.kind == "embeddings":
            return self._mask_embeddings(info, value, rng, in_budget, keep_prob, out)
        return self._mask_sequence(info, value, rng, in_budget, tgt_budget, keep_prob)

    def _sequence_ids(self, info, value) -> tuple[np.ndarray, np.ndarray]:
        """Token ids with EOS ``(n,)`` and chunk lengths ``(C,)`` (ones unless chunked)."""
        is_list = isinstance(value, (list, tuple)) and len(value) > 0
        if isinstance(value, str) or (is_list and all(isinstance(v, str) for v in value)):
            if self.tokenizer is None:
                raise ValueError(f"modality {info.name!r}: raw text needs a tokenizer; pass tokenizer= or token ids")
            if isinstance(value, str):
                chunks = None
                ids = np.asarray(self.tokenizer.encode(value), np.int64)
            else:
                chunks = [np.asarray(self.tokenizer.encode(v), np.int64) for v in value]
            truncate = True
        elif is_list and not np.isscalar(value[0]):
            chunks = [_int_ids(info, c) for c in value]
            truncate = self.truncate
        else:
            chunks = None
            ids = _int_ids(info, value)
            truncate = self.truncate
        limit = info.max_tokens
        if chunks is None:
            if len(ids) + 1 > limit and not truncate:
                raise ValueError(f"modality {info.name!r}: {len(ids)} tokens + EOS exceed max_tokens {limit}")
            ids = np.append(ids, self.eos_id)[:limit]
            return ids, np.ones(len(ids), np.int64)
        chunks.append(np.array([self.eos_id], np.int64))
        lens = np.array([len(c) for c in chunks], np.int64)
        if (lens == 0).any():
            raise ValueError(f"modality {info.name!r}: chunk {int(np.argmax(lens == 0))} is empty")
        fits = np.cumsum(lens) <= limit
        if not fits.all() and not truncate:
            raise ValueError(f"modality {info.name!r}: {int(lens.sum()) - 1} tokens + EOS exceed max_tokens {limit}")
        ids = np.concatenate([c for c, ok in zip(chunks, fits, strict=True) if ok] or [np.zeros(0, np.int64)])
        return ids, lens[fits]

    def _mask_sequence(self, info, value, rng, in_budget: int, tgt_budget: int | None, keep_prob: float) -> ModEntry:
        ids, lens = self._sequence_ids(info, value)
        _check_ids(info, ids)
        keep = draw_keep(rng, lens, keep_prob, in_budget)
        input_ids, target, sentinel_pos = span_mask(ids, lens, keep, self.sentinels)
        if in_budget == 0:  # no input at all, not even the sentinel of the one dropped run (official)
            input_ids = input_ids[:0]
        target = truncate_target(rng, target, sentinel_pos, tgt_budget)
        length = info.num_positions
        tensor = np.full(length, self.pad_id, np.int32)
        input_mask = np.ones(length, bool)
        target_mask = np.ones(length, bool)
        dam = np.zeros(length, np.int32)
        tensor[:len(input_ids)] = input_ids
        input_mask[:len(input_ids)] = False
        span = slice(in_budget, in_budget + len(target))
        tensor[span] = target
        target_mask[span] = False
        dam[span] = 1
        return {"tensor": tensor, "input_mask": input_mask, "target_mask": target_mask, "decoder_attention_mask": dam}

    def _mask_embeddings(self, info, value, rng, in_budget: int, keep_prob: float,
                         out: np.ndarray | None = None) -> ModEntry:
        """Span-mask ``(L, D)`` embeddings into ``out`` (a zero ``(max_tokens, D)`` array, new if None)."""
        array = _as_array(value)
        if array.ndim != 2 or array.shape[1] != info.embedding_dim or array.dtype.kind != "f":
            raise ValueError(f"modality {info.name!r}: expected float embeddings (L, {info.embedding_dim}), "
                             f"got {array.dtype} {array.shape}")
        if len(array) > info.max_tokens and not self.truncate:
            raise ValueError(f"modality {info.name!r}: {len(array)} embeddings exceed max_tokens {info.max_tokens}")
        array = array[:info.max_tokens]
        rows = np.arange(len(array), dtype=np.int64)
        keep = draw_keep(rng, np.ones(len(rows), np.int64), keep_prob, in_budget)
        no_sentinel = np.full(sentinels_needed(len(rows)), -1, np.int64)
        input_rows, _, _ = span_mask(rows, np.ones(len(rows), np.int64), keep, no_sentinel)
        if in_budget == 0:
            input_rows = input_rows[:0]
        tensor = np.zeros((info.max_tokens, info.embedding_dim), np.float32) if out is None else out
        is_row = input_rows >= 0
        tensor[:len(input_rows)][is_row] = array[input_rows[is_row]]
        input_mask = np.ones(info.max_tokens, bool)
        input_mask[:len(input_rows)] = False
        return {"tensor": tensor, "input_mask": input_mask, "target_mask": np.ones(info.max_tokens, bool),
                "decoder_attention_mask": np.zeros(info.max_tokens, np.int32)}


def _int_ids(info: Modality, value: Any) -> np.ndarray:
    array = _as_array(value)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise ValueError(f"modality {info.name!r}: expected a 1-D list of integer token ids (or chunks of them), "
                         f"got {array.dtype} {array.shape}")
    return array.astype(np.int64, copy=False)


def _check_ids(info: Modality, ids: np.ndarray) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= info.vocab_size):
        raise ValueError(f"modality {info.name!r}: token ids must lie in [0, {info.vocab_size}), "
                         f"got range [{ids.min()}, {ids.max()}]")


def collate(mod_dicts: Sequence[ModDict], modalities: Iterable[str] | None = None) -> Batch:
    """Stack per-sample ModDicts into a batch of torch tensors (leading ``B`` axis).

    ``modalities`` names every modality the batch must hold; those a sample lacks are filled empty.
    Without it, every sample must hold the same modalities.
    """
    if not mod_dicts:
        raise ValueError("collate needs at least one sample")
    names = list(dict.fromkeys(modalities)) if modalities is not None else list(mod_dicts[0])
    batch = {}
    for name in names:
        entries = []
        for i, sample in enumerate(mod_dicts):
            if name in sample:
                entries.append(sample[name])
            elif modalities is not None:
                entries.append(empty_entry(name))
            else:
                raise ValueError(f"sample {i} lacks modality {name!r} that sample 0 has; pass the full list of "
                                 "modalities to fill absent ones as empty")
        batch[name] = {}
        for key in ENTRY_KEYS:
            arrays = [_as_array(e[key]) for e in entries]
            shapes = {a.shape for a in arrays}
            if len(shapes) > 1:
                raise ValueError(f"modality {name!r}: {key} shapes differ across samples: {sorted(shapes)}")
            batch[name][key] = torch.from_numpy(np.stack(arrays))
    extra = [n for s in mod_dicts for n in s if n not in batch]
    if extra:
        raise ValueError(f"samples hold modalities {sorted(set(extra))} not in the batch list {names}")
    return batch
