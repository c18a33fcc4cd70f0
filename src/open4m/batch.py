"""The batch format (ModDict) every 4M model consumes: the official one (OFFICIAL-4M-SPEC §4.5).

A batch maps modality names to dicts of four tensors (B = batch size, N = the modality's
``num_positions`` from the registry)::

    batch[name] = {
        "tensor": ...,                  # the data, see below
        "input_mask": (B, N) bool,      # True = NOT given to the encoder
        "target_mask": (B, N) bool,     # True = NOT a decoder target
        "decoder_attention_mask": (B, N) int32,  # compressed decoder self-attention codes
    }

``tensor`` by modality kind:

- ``image_tokens``: int (B, N) or (B, h, w) token ids, ``N = h * w``.
- ``pixels``: float (B, C, H, W), normalised; masks have ``(H/P)*(W/P)`` positions. Input only.
- ``sequence``: int (B, 2*(max_tokens+1)), padded with ``[PAD]`` = 0. Inputs (with sentinels) sit at
  the start, targets start at the input budget.
- ``embeddings``: float (B, L, E) vectors. Input only.

``decoder_attention_mask`` codes: for images the number of targets at the first target position and 0
elsewhere (targets of one image attend to each other); for sequences 1 at each target position
(causal attention). Modalities absent from a sample are present with all masks True.

Per-sample entries (as :mod:`open4m.masking` produces them before :func:`open4m.masking.collate`) are the
same without the leading batch axis, as numpy arrays. Embeddings rows of sentinels are zero vectors.

Masks use True = excluded, exactly like the official code, so official recipes and checkpoints
drop in. :func:`make_batch` builds a batch from tokens and positions without any masking code, and
:func:`validate_batch` checks one against the registry with errors that name what is wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from open4m import modalities

MASK_KEYS = ("input_mask", "target_mask", "decoder_attention_mask")
ModDict = dict[str, dict[str, torch.Tensor]]


def _positions_to_mask(spec, batch_size: int, n: int, name: str, what: str) -> torch.Tensor:
    """Positions given as None / "all" / a list of ints / a (B, N) bool tensor → (B, N) bool, True = chosen."""
    if spec is None:
        return torch.zeros(batch_size, n, dtype=torch.bool)
    if isinstance(spec, str):
        if spec != "all":
            raise ValueError(
                f"modality {name!r}: {what} positions must be 'all', a list of ints or a mask, got {spec!r}"
            )
        return torch.ones(batch_size, n, dtype=torch.bool)
    if isinstance(spec, torch.Tensor) and spec.dtype == torch.bool:
        if tuple(spec.shape) != (batch_size, n):
            raise ValueError(
                f"modality {name!r}: {what} mask has shape {tuple(spec.shape)}, expected ({batch_size}, {n})"
            )
        return spec.clone()
    idx = torch.as_tensor(list(spec) if not isinstance(spec, torch.Tensor) else spec, dtype=torch.long)
    if idx.numel() and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"modality {name!r}: {what} positions must lie in [0, {n}), got {idx.tolist()}")
    chosen = torch.zeros(batch_size, n, dtype=torch.bool)
    chosen[:, idx] = True
    return chosen


def attention_codes(targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Compressed decoder attention codes for chosen targets (B, N) bool → (B, N) int32."""
    if kind == "sequence":
        return targets.to(torch.int32)
    codes = torch.zeros(targets.shape, dtype=torch.int32)
    counts = targets.sum(dim=1).to(torch.int32)
    first = targets.to(torch.int8).argmax(dim=1)
    rows = counts > 0
    codes[rows, first[rows]] = counts[rows]
    return codes


def make_batch(
    tensors: Mapping[str, torch.Tensor],
    inputs: Mapping[str, object] | None = None,
    targets: Mapping[str, object] | None = None,
) -> ModDict:
    """Build a batch from plain tensors and the positions that are inputs and targets.

    Args:
        tensors: name → data as described in the module docstring; sequences may be shorter than the
            padded length and are right-padded with ``[PAD]`` (0).
        inputs: name → positions given to the encoder: ``"all"``, a list of positions (same for every
            row) or a (B, N) bool mask (True = input). Missing names have no inputs.
        targets: name → positions to predict, in the same forms.

    Returns:
        A :data:`ModDict`. Decoder attention codes follow the official rules (see module docstring).
    """
    inputs, targets = dict(inputs or {}), dict(targets or {})
    for name in list(inputs) + list(targets):
        if name not in tensors:
            raise ValueError(f"modality {name!r} has positions but no tensor; tensors given: {sorted(tensors)}")
    batch: ModDict = {}
    for name, tensor in tensors.items():
        mod = modalities.get(name)
        tensor = torch.as_tensor(tensor)
        b = tensor.shape[0]
        n = mod.num_positions
        if mod.kind == "sequence":
            if tensor.ndim != 2 or tensor.shape[1] > n:
                raise ValueError(f"modality {name!r}: expected token ids (B, L<={n}), got shape {tuple(tensor.shape)}")
            tensor = torch.nn.functional.pad(tensor.long(), (0, n - tensor.shape[1])).to(torch.int32)
        elif mod.kind == "pixels":
            n = (tensor.shape[-2] // mod.patch_size) * (tensor.shape[-1] // mod.patch_size)
        inp = _positions_to_mask(inputs.get(name), b, n, name, "input")
        tgt = _positions_to_mask(targets.get(name), b, n, name, "target")
        if mod.is_image and (inp & tgt).any():
            raise ValueError(f"modality {name!r}: a position cannot be both an input and a target")
        if not mod.has_decoder and tgt.any():
            raise ValueError(f"modality {name!r} ({mod.kind}) cannot be a target")
        batch[name] = {
            "tensor": tensor,
            "input_mask": ~inp,
            "target_mask": ~tgt,
            "decoder_attention_mask": attention_codes(tgt, mod.kind),
        }
    validate_batch(batch)
    return batch


def validate_batch(batch: Mapping[str, Mapping[str, torch.Tensor]], needs_targets: Iterable[str] = ()) -> int:
    """Check a batch against the registry; return the batch size.

    Raises a ValueError naming the modality and what was expected for: unknown names, missing keys,
    wrong shapes or dtypes, token ids outside the vocabulary, images that do not fit the patch grid.
    ``needs_targets`` lists modalities whose ``decoder_attention_mask`` must be present.
    """
    if not isinstance(batch, Mapping) or not batch:
        raise ValueError("a batch must be a non-empty dict: modality name -> {'tensor', 'input_mask', ...}")
    needs_targets = set(needs_targets)
    batch_size = None
    for name, d in batch.items():
        mod = modalities.get(name)
        if not isinstance(d, Mapping):
            raise ValueError(f"modality {name!r}: expected a dict with 'tensor' and masks, got {type(d).__name__}")
        required = ["tensor", "input_mask", "target_mask"]
        if name in needs_targets:
            required.append("decoder_attention_mask")
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"modality {name!r}: batch entry is missing {missing} (has {sorted(d)})")
        tensor = d["tensor"]
        b = tensor.shape[0]
        if batch_size is None:
            batch_size = b
        elif b != batch_size:
            raise ValueError(f"modality {name!r}: batch size {b} differs from the other modalities' {batch_size}")
        n = _check_tensor(mod, tensor)
        for key in MASK_KEYS:
            if key not in d:
                continue
            m = d[key]
            if tuple(m.shape) != (b, n):
                raise ValueError(f"modality {name!r}: {key} has shape {tuple(m.shape)}, expected ({b}, {n})")
            if key != "decoder_attention_mask" and m.dtype != torch.bool:
                raise ValueError(f"modality {name!r}: {key} must be bool (True = excluded), got {m.dtype}")
    return batch_size


def _check_tensor(mod: modalities.Modality, tensor: torch.Tensor) -> int:
    """Validate a modality's data tensor; return its number of positions."""
    name, shape = mod.name, tuple(tensor.shape)
    if mod.kind == "pixels":
        if tensor.ndim != 4 or shape[1] != mod.num_channels:
            raise ValueError(f"modality {name!r}: expected an image (B, {mod.num_channels}, H, W), got shape {shape}")
        if not tensor.is_floating_point():
            raise ValueError(f"modality {name!r}: pixels must be floating point (normalised), got {tensor.dtype}")
        if shape[2:] != (mod.image_size, mod.image_size):
            raise ValueError(
                f"modality {name!r}: image is {shape[2]}x{shape[3]}, expected {mod.image_size}x{mod.image_size} "
                f"({mod.grid_size}x{mod.grid_size} patches of {mod.patch_size} px)"
            )
        return mod.num_positions
    if mod.kind == "embeddings":
        if tensor.ndim != 3 or shape[1:] != (mod.max_tokens, mod.embedding_dim):
            raise ValueError(
                f"modality {name!r}: expected vectors (B, {mod.max_tokens}, {mod.embedding_dim}), got shape {shape}"
            )
        return mod.max_tokens
    if tensor.is_floating_point() or tensor.dtype == torch.bool:
        raise ValueError(f"modality {name!r}: token ids must be integers, got {tensor.dtype}")
    n = mod.num_positions
    g = mod.grid_size if mod.is_image else None
    if not (shape[1:] == (n,) or (g and shape[1:] == (g, g))):
        expected = f"(B, {n}) or (B, {g}, {g})" if g else f"(B, {n})"
        raise ValueError(f"modality {name!r}: expected token ids {expected}, got shape {shape}")
    if tensor.numel():
        lo, hi = int(tensor.min()), int(tensor.max())
        if lo < 0 or hi >= mod.vocab_size:
            raise ValueError(
                f"modality {name!r}: token ids must lie in [0, {mod.vocab_size}), found values in [{lo}, {hi}]"
            )
    return n
