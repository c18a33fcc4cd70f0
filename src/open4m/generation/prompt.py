"""The typed prompt API: conditions as data, targets as names or :class:`TargetSpec`, results decoded.

Conditions, by modality kind (B = batch; a single prompt may omit the batch axis):

- image tokens: an integer tensor/array (h, w), (N,), (B, h, w) or (B, N); or raw data (a float array /
  tensor, a PIL image) when ``tokenizers[name]`` is given (``encode(raw) -> (B, h, w)`` ids);
- pixels (``rgb@224``): a float tensor (3, H, W) or (B, 3, H, W), normalised as the model expects;
- sequences: a string (``caption``), a box list / palette / metadata dict (serialised with
  :func:`open4m.sequences.to_text`), a list of token ids, or a list of those per row;
- embeddings: a float tensor (L, E) or (B, L, E).

:class:`Partial` marks a modality that is given in part and generated for the rest (in-painting): image
tokens with a ``known`` mask (True = given, kept exactly), or a sequence that is continued (a prefix) or
filled in: a sequence holding the sentinels ``[S_1]`` .. ``[S_k]`` (in order, e.g. the text
``"a [S_1] sphere left of a [S_2] cube"``) has each sentinel replaced by the span the model writes for it,
as in training's span masking. A partial modality must also be listed as a target.

Image tokenizers plug in through ``tokenizers``: any object with ``encode(raw) -> tokens (B, h, w)`` and
``decode(tokens (B, h, w)) -> raw``. Outputs come back as tokens and, where a tokenizer is given (the text
tokenizer for sequences), decoded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from open4m import modalities, sequences
from open4m.batch import ModDict, attention_codes, validate_batch
from open4m.generation.sampler import Sampler, StepInfo, TargetSpec


@dataclass
class Partial:
    """A modality given in part. ``value``: as for a condition; ``known``: for image tokens a bool mask
    (h, w), (N,) or with a batch axis, True = given; None for a sequence prefix to continue."""

    value: object
    known: object = None


@dataclass
class GenerationResult:
    """``tokens``: name → (B, h, w) int64 for images, list of id lists for sequences (targets only);
    ``decoded``: name → decoded output where a tokenizer was available (str / boxes / raw images); generated
    boxes carry ``"score"``, the probability the model gave their class token (Pix2Seq's confidence);
    ``scores``: sequence target name → per row, one entry per id of ``tokens[name][row]``: the probability
    the generated token was drawn with (guidance and temperature included), None for a given token;
    ``state``: the final ModDict (every condition and target as inputs)."""

    tokens: dict[str, object]
    decoded: dict[str, object] = field(default_factory=dict)
    scores: dict[str, list[list[float | None]]] = field(default_factory=dict)
    state: ModDict = field(default_factory=dict)


def generate(
    model,
    conditions: Mapping[str, object],
    targets: Sequence[str | TargetSpec],
    *,
    tokenizers: Mapping[str, object] | None = None,
    text_tokenizer=None,
    batch_size: int | None = None,
    seed: int | Sequence[int] | None = None,
    top_k: int | float = 0,
    top_p: float = 0.0,
    use_cache: bool = True,
    on_step=None,
) -> GenerationResult:
    """Generate ``targets`` (in order, each joining the conditions of the next) from ``conditions``.

    Everything is checked before the model runs; bad input raises a ValueError naming the modality.
    """
    tokenizers = dict(tokenizers or {})
    specs = [t if isinstance(t, TargetSpec) else TargetSpec(t) for t in targets]
    specs = [_limited_to_tokenizer(spec, tokenizers.get(spec.name)) for spec in specs]
    if not specs:
        raise ValueError("no targets to generate")
    target_names = [s.name for s in specs]
    for name in target_names:
        modalities.get(name)
        if name not in model.decoder_embeddings:
            raise ValueError(f"the model cannot generate {name!r}; it generates: {sorted(model.decoder_embeddings)}")
    for name, value in conditions.items():
        if isinstance(value, Partial) and name not in target_names:
            raise ValueError(f"{name!r} is given in part (Partial), so it must also be a target")
        if not isinstance(value, Partial) and name in target_names:
            raise ValueError(f"{name!r} is both a full condition and a target; give it as Partial to in-paint")
    device = model.mask_token.device
    entries = {name: _condition(name, value, tokenizers, text_tokenizer) for name, value in conditions.items()}
    b = _batch_size(entries, batch_size)
    state: ModDict = {}
    for name, entry in entries.items():
        state[name] = {k: _expand(v, b, name).to(device) for k, v in entry.items()}
    for spec in specs:
        if spec.name not in state:
            state[spec.name] = {k: v.to(device) for k, v in _empty_target(spec.name, b, text_tokenizer).items()}
    validate_batch(state)
    sampler = Sampler(model, text_tokenizer, use_cache=use_cache)
    final = sampler.generate(state, specs, seed=seed, top_k=top_k, top_p=top_p, on_step=on_step)
    return _result(final, target_names, tokenizers, text_tokenizer, sampler.token_scores)


def _limited_to_tokenizer(spec: TargetSpec, tokenizer) -> TargetSpec:
    """``spec`` sampling only ids the image tokenizer can decode, when its vocabulary is the smaller one."""
    size = getattr(tokenizer, "vocab_size", None)
    if spec.vocab_size is not None or size is None or size >= modalities.get(spec.name).vocab_size:
        return spec
    return replace(spec, vocab_size=size)


# ---------------------------------------------------------------------------------------- conditions
def _condition(name: str, value, tokenizers, text_tokenizer) -> dict:
    mod = modalities.get(name)
    known = None
    partial = isinstance(value, Partial)
    if partial:
        value, known = value.value, value.known
    if mod.kind == "image_tokens":
        return _image_condition(mod, value, known, partial, tokenizers.get(name))
    if mod.kind == "pixels":
        x = torch.as_tensor(value)
        if x.ndim == 3:
            x = x[None]
        if partial:
            raise ValueError(f"{name!r}: pixels cannot be generated, so they cannot be Partial")
        if x.ndim != 4 or x.shape[1] != mod.num_channels or tuple(x.shape[2:]) != (mod.image_size,) * 2:
            raise ValueError(
                f"{name!r}: expected a normalised image ({mod.num_channels}, {mod.image_size}, {mod.image_size}) "
                f"or with a batch axis, got shape {tuple(x.shape)}"
            )
        n = mod.num_positions
        b = x.shape[0]
        return _entry(x.float(), torch.zeros(b, n, dtype=torch.bool), torch.ones(b, n, dtype=torch.bool))
    if mod.kind == "embeddings":
        x = torch.as_tensor(value, dtype=torch.float32)
        x = x[None] if x.ndim == 2 else x
        if x.ndim != 3 or x.shape[2] != mod.embedding_dim or x.shape[1] > mod.max_tokens:
            raise ValueError(
                f"{name!r}: expected vectors (L<={mod.max_tokens}, {mod.embedding_dim}) or with a batch axis, "
                f"got shape {tuple(x.shape)}"
            )
        length = x.shape[1]
        x = torch.nn.functional.pad(x, (0, 0, 0, mod.max_tokens - length))
        input_mask = torch.arange(mod.max_tokens)[None].expand(x.shape[0], -1) >= length
        return _entry(x, input_mask, torch.ones_like(input_mask))
    return _sequence_condition(mod, value, partial, text_tokenizer)


def _image_condition(mod, value, known, partial: bool, tokenizer) -> dict:
    name, g = mod.name, mod.grid_size
    if _is_token_ids(value):
        tokens = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value).long()
    else:
        if tokenizer is None:
            raise ValueError(
                f"{name!r}: raw data needs an image tokenizer (tokenizers={{{name!r}: ...}}), or give token ids"
            )
        tokens = torch.as_tensor(tokenizer.encode(value)).long()
    if tokens.ndim in (1, 2) and tuple(tokens.shape[-2:]) in ((g, g),) or tokens.shape == (g * g,):
        tokens = tokens[None]
    if tokens.ndim == 3 and tuple(tokens.shape[1:]) == (g, g):
        tokens = tokens.reshape(tokens.shape[0], g * g)
    if tokens.ndim != 2 or tokens.shape[1] != g * g:
        raise ValueError(f"{name!r}: expected token ids ({g}, {g}), ({g * g},) or with a batch axis, "
                         f"got shape {tuple(tokens.shape)}")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= mod.vocab_size):
        raise ValueError(f"{name!r}: token ids must lie in [0, {mod.vocab_size}), got [{tokens.min()}, {tokens.max()}]")
    b = tokens.shape[0]
    if not partial:
        return _entry(tokens, torch.zeros(b, g * g, dtype=torch.bool), torch.ones(b, g * g, dtype=torch.bool))
    mask = torch.as_tensor(np.asarray(known) if not isinstance(known, torch.Tensor) else known)
    if mask.dtype != torch.bool:
        raise ValueError(f"{name!r}: the known mask of a Partial image must be bool (True = given), got {mask.dtype}")
    if mask.shape in ((g, g), (g * g,)):
        mask = mask.reshape(1, g * g)
    elif mask.ndim == 3 and tuple(mask.shape[1:]) == (g, g) or mask.ndim == 2 and mask.shape[1] == g * g:
        mask = mask.reshape(mask.shape[0], g * g)
    else:
        raise ValueError(f"{name!r}: the known mask must be ({g}, {g}) or ({g * g},) (with an optional batch axis), "
                         f"got shape {tuple(mask.shape)}")
    b = max(b, mask.shape[0])
    tokens, mask = _expand(tokens, b, name), _expand(mask, b, name)
    return _entry(tokens.masked_fill(~mask, 0), ~mask, mask)


def _is_token_ids(value) -> bool:
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point()
    if isinstance(value, np.ndarray):
        return np.issubdtype(value.dtype, np.integer)
    return False


def _sequence_condition(mod, value, partial: bool, text_tokenizer) -> dict:
    name = mod.name
    per_row = isinstance(value, list) and value and not _is_id_list(value) and _is_row_list(mod, value)
    rows = value if per_row else [value]
    ids_rows = []
    for row in rows:
        if _is_id_list(row):
            ids = [int(t) for t in row]
        else:
            if text_tokenizer is None:
                raise ValueError(f"{name!r}: text needs a text tokenizer (text_tokenizer=...), or give token ids")
            text = row if isinstance(row, str) else sequences.to_text(name, row)
            ids = text_tokenizer.encode(text)
        ids_rows.append(ids)
    n = mod.num_positions
    b = len(ids_rows)
    tensor = torch.zeros(b, n, dtype=torch.long)
    input_mask = torch.ones(b, n, dtype=torch.bool)
    target_mask = torch.ones(b, n, dtype=torch.bool)
    for i, ids in enumerate(ids_rows):
        if partial:
            if text_tokenizer is None:
                raise ValueError(f"{name!r}: a Partial sequence needs a text tokenizer (sentinel ids)")
            given, target = _partial_sequence(name, ids, mod.max_tokens, text_tokenizer)
        else:
            given, target = ids + [_eos(text_tokenizer)], []
        if len(given) > mod.max_tokens:
            raise ValueError(f"{name!r}: {len(ids)} tokens is too long; the modality allows {mod.max_tokens - 1} "
                             "plus [EOS]")
        if ids and (min(ids) < 0 or max(ids) >= mod.vocab_size):
            raise ValueError(f"{name!r}: token ids must lie in [0, {mod.vocab_size})")
        tensor[i, : len(given)] = torch.tensor(given)
        input_mask[i, : len(given)] = False
        if target:
            tensor[i, len(given) : len(given) + len(target)] = torch.tensor(target)
            target_mask[i, len(given) : len(given) + len(target)] = False
    return _entry(tensor, input_mask, target_mask, kind="sequence")


def _partial_sequence(name: str, ids: list[int], max_tokens: int, text_tokenizer) -> tuple[list[int], list[int]]:
    """``(input ids, target layout)`` of a Partial sequence: a prefix to continue (``ids [S_1]`` in,
    ``[S_1] [PAD]... [S_2]`` out), or, when ``ids`` hold ``[S_1]`` .. ``[S_k]``, spans to fill in
    (``ids [EOS]`` in, ``[S_1] [PAD]... [S_{k+1}]`` out; each span ends where the model writes the next
    sentinel)."""
    found = [t for t in ids if text_tokenizer.is_sentinel(t)]
    if not found:
        s1, s2 = text_tokenizer.sentinel_id(1), text_tokenizer.sentinel_id(2)
        return ids + [s1], [s1] + [0] * (max_tokens - len(ids)) + [s2]
    expected = [text_tokenizer.sentinel_id(k) for k in range(1, len(found) + 1)]
    if found != expected:
        index = {v: k for k, v in text_tokenizer.sentinel_ids.items()}
        shown = " ".join(f"[S_{index[t]}]" for t in found)
        raise ValueError(f"{name!r}: the sentinels of a sequence to fill in must be [S_1] .. [S_{len(found)}], each "
                         f"once and in order; got {shown}")
    return ids + [_eos(text_tokenizer)], (
        [expected[0]] + [0] * (max_tokens - len(ids)) + [text_tokenizer.sentinel_id(len(found) + 1)])


def _is_id_list(value) -> bool:
    if isinstance(value, torch.Tensor | np.ndarray):
        return np.asarray(value).ndim == 1 and not np.issubdtype(np.asarray(value).dtype, np.floating)
    return isinstance(value, list | tuple) and bool(value) and all(isinstance(t, int | np.integer) for t in value)


def _is_row_list(mod, value: list) -> bool:
    """Whether a list holds one value per batch row (strings, id lists, box lists) rather than one value."""
    if mod.name.split("@")[0] == "det":
        return all(isinstance(v, list) for v in value)
    return all(isinstance(v, str) or _is_id_list(v) for v in value)


def _eos(text_tokenizer) -> int:
    return text_tokenizer.eos_id if text_tokenizer is not None else 3


def _empty_target(name: str, b: int, text_tokenizer) -> dict:
    """A target with nothing given: all image positions, or ``[S_1]`` input + ``[S_1] [PAD]... [S_2]`` target."""
    mod = modalities.get(name)
    if mod.kind == "sequence":
        if text_tokenizer is None:
            raise ValueError(f"target {name!r}: sequence targets need a text tokenizer (sentinel ids)")
        s1, s2 = text_tokenizer.sentinel_id(1), text_tokenizer.sentinel_id(2)
        n = mod.num_positions
        tensor = torch.zeros(b, n, dtype=torch.long)
        tensor[:, 0], tensor[:, 1], tensor[:, mod.max_tokens + 1] = s1, s1, s2
        input_mask = torch.ones(b, n, dtype=torch.bool)
        input_mask[:, 0] = False
        target_mask = torch.ones(b, n, dtype=torch.bool)
        target_mask[:, 1 : mod.max_tokens + 2] = False
        return _entry(tensor, input_mask, target_mask, kind="sequence")
    n = mod.num_positions
    return _entry(torch.zeros(b, n, dtype=torch.long), torch.ones(b, n, dtype=torch.bool),
                  torch.zeros(b, n, dtype=torch.bool))


def _entry(tensor, input_mask, target_mask, kind: str = "image_tokens") -> dict:
    return {"tensor": tensor, "input_mask": input_mask, "target_mask": target_mask,
            "decoder_attention_mask": attention_codes(~target_mask, kind)}


def _batch_size(entries: dict, batch_size: int | None) -> int:
    sizes = {name: e["input_mask"].shape[0] for name, e in entries.items()}
    big = {s for s in sizes.values() if s != 1}
    if len(big) > 1:
        raise ValueError(f"conditions disagree on the batch size: {sizes}")
    b = big.pop() if big else 1
    if batch_size is not None:
        if big and b != batch_size or batch_size <= 0:
            raise ValueError(f"batch_size={batch_size} but the conditions have batch sizes {sizes}")
        b = batch_size
    return b


def _expand(x: torch.Tensor, b: int, name: str) -> torch.Tensor:
    if x.shape[0] == b:
        return x
    if x.shape[0] != 1:
        raise ValueError(f"{name!r}: batch of {x.shape[0]} cannot be broadcast to {b}")
    return x.expand(b, *x.shape[1:]).clone()


# ---------------------------------------------------------------------------------------- results
def _result(state: ModDict, targets: list[str], tokenizers, text_tokenizer,
            token_scores: dict[str, list[list[float | None]]]) -> GenerationResult:
    tokens, decoded, scores = {}, {}, {}
    for name in targets:
        mod = modalities.get(name)
        d = state[name]
        if mod.kind == "sequence":
            rows, row_scores = [], []
            for i in range(d["tensor"].shape[0]):
                ids = d["tensor"][i][~d["input_mask"][i]].tolist()
                probs = token_scores[name][i] if name in token_scores else [None] * len(ids)
                kept = [j for j, t in enumerate(ids) if t not in (0, _eos(text_tokenizer))]
                rows.append([ids[j] for j in kept])
                row_scores.append([probs[j] for j in kept])
            tokens[name], scores[name] = rows, row_scores
            if text_tokenizer is not None:
                texts = [text_tokenizer.decode(r) for r in rows]
                if name.split("@")[0] == "caption":
                    decoded[name] = texts
                else:
                    decoded[name] = [_parse(name, t, text_tokenizer, r, rs)
                                     for t, r, rs in zip(texts, rows, row_scores, strict=True)]
        else:
            g = mod.grid_size
            tokens[name] = d["tensor"].reshape(-1, g, g).cpu()
            if name in tokenizers:
                decoded[name] = tokenizers[name].decode(tokens[name])
    return GenerationResult(tokens, decoded, scores, state)


def _parse(name: str, text: str, text_tokenizer, ids: list[int], token_scores: list[float | None]):
    """A generated structured sequence read back (a det string: boxes scored by their class tokens);
    the text itself when it does not parse."""
    try:
        if name.split("@")[0] == "det":
            scored = any(s is not None for s in token_scores)
            word_scores = [token_scores[k] for k in text_tokenizer.word_starts(ids)] if scored else None
            return sequences.text_to_boxes(text, text_tokenizer.class_names or None, word_scores)[0]
        return sequences.from_text(name, text, text_tokenizer.class_names or None)[0]
    except ValueError:
        return text


__all__ = ["GenerationResult", "Partial", "StepInfo", "TargetSpec", "generate"]
