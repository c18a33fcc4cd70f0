"""The official 4M release format: a directory with ``config.json`` + ``model.safetensors``.

- ``config.json``: the flat config dict written with ``json.dumps`` (official keys only, so the
  official ``FM(config)`` accepts it). Models using modalities outside the official registry add a
  ``modality_specs`` entry describing them (the official code cannot load those anyway).
- ``model.safetensors``: every state-dict key, buffers included (sin-cos tables, zero LayerNorm
  biases), shared tensors stored once per key, fp32 unless saved otherwise; its ``__metadata__``
  holds ``str(value)`` of each config entry, which :func:`parse_metadata` reads back with YAML
  semantics like the official ``load_safetensors``.

Loading is strict by default: a mismatch raises a :class:`CheckpointMismatch` that lists missing
keys, unexpected keys and wrong shapes by name. Nothing here unpickles anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from open4m import modalities
from open4m.atomic import write_atomic
from open4m.model.config import FourMConfig
from open4m.model.fourm import FourM
from open4m.model.int8 import dequantize_int8, int8_candidates, quantize_int8

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_OFFICIAL_NAMES = frozenset(modalities.names())


class CheckpointMismatch(ValueError):
    """A state dict that does not fit the model: lists the keys by name."""

    def __init__(self, source: str, missing: list[str], unexpected: list[str], wrong_shape: list[str]) -> None:
        self.missing, self.unexpected, self.wrong_shape = missing, unexpected, wrong_shape
        lines = [f"{source} does not match the model:"]
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong_shape)):
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
                lines.append(f"  {label}: {shown}")
        super().__init__("\n".join(lines))


def parse_metadata(metadata: dict[str, str]) -> dict:
    """safetensors ``__metadata__`` (str → str) → config dict, parsing values as the official loader does."""
    config = {}
    for key, value in metadata.items():
        if len(value) < 10_000:
            try:
                config[key] = yaml.safe_load(value.replace("None", "null"))
                continue
            except yaml.YAMLError:
                pass
        config[key] = value
    return config


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read every tensor and the metadata of a safetensors file, with clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from None
    return tensors, metadata


def _load_config(directory: Path) -> dict:
    config_path = directory / CONFIG_NAME
    if config_path.is_file():
        try:
            return json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_path} is not valid JSON: {err}") from None
    weights = directory / WEIGHTS_NAME
    if weights.is_file():
        try:
            with safe_open(str(weights), framework="pt") as f:
                metadata = f.metadata() or {}
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{weights} is not a readable safetensors file (truncated or corrupt?): {err}") from None
        if metadata:
            return parse_metadata(metadata)
    raise FileNotFoundError(
        f"{directory} has no {CONFIG_NAME} and no config in {WEIGHTS_NAME} metadata; is it a 4M model directory?"
    )


def _register_specs(config: dict) -> None:
    for spec in config.get("modality_specs", {}).values():
        modalities.register(modalities.Modality(**spec))


def config_from_dict(config: dict, source: str, tie_decoder_embeddings: bool | None = None) -> FourMConfig:
    """A FourMConfig from a release config dict; registers any ``modality_specs`` and warns about unknown keys."""
    config = dict(config)
    _register_specs(config)
    config.pop("modality_specs", None)
    if tie_decoder_embeddings is not None:
        config["tie_decoder_embeddings"] = tie_decoder_embeddings
    cfg = FourMConfig.from_dict(config, source)
    if cfg.unknown:
        warnings.warn(f"{source}: ignoring unknown config keys {sorted(cfg.unknown)}", stacklevel=3)
    return cfg


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True):
    """Copy ``state`` into ``model``; with ``strict``, any missing/unexpected key or shape mismatch raises.

    Returns (missing, unexpected) key lists (non-empty only when ``strict=False``).
    """
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    wrong = sorted(
        f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in own.keys() & state.keys()
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if wrong or (strict and (missing or unexpected)):
        raise CheckpointMismatch(source, missing, unexpected, wrong)
    _warn_on_diverging_copies(model, state, source)
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return missing, unexpected


def _warn_on_diverging_copies(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Shared tensors (mod_emb, tied heads) are stored once per key; say so if the copies differ."""
    seen: dict[int, str] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        ptr = tensor.data_ptr()
        if ptr in seen and key in state and seen[ptr] in state and not torch.equal(state[key], state[seen[ptr]]):
            warnings.warn(f"{source}: {key} and {seen[ptr]} are one tensor in the model but differ in the file; "
                          f"using {key}", stacklevel=4)
        seen.setdefault(ptr, key)


def from_pretrained(
    name_or_path: str | os.PathLike,
    strict: bool = True,
    tie_decoder_embeddings: bool | None = None,
    map_location: str | torch.device = "cpu",
) -> FourM:
    """Load a 4M model from a release directory (or a Hugging Face Hub id when online).

    Args:
        name_or_path: a directory with ``config.json`` and/or ``model.safetensors``, or a Hub id such as
            ``"EPFL-VILAB/4M-7_B_CC12M"`` (needs ``huggingface_hub`` and a network).
        strict: raise on any missing/unexpected key or shape mismatch (the default).
        tie_decoder_embeddings: tie each decoder head to its token embedding (as for training); by default
            the heads are loaded untied, like the official hub wrapper.
    """
    directory = Path(name_or_path)
    if not directory.exists():
        directory = _download(str(name_or_path))
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory; expected a 4M model directory with {WEIGHTS_NAME}")
    config = config_from_dict(_load_config(directory), str(directory / CONFIG_NAME), tie_decoder_embeddings)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME}: nothing to load the weights from")
    state, metadata = read_safetensors(weights)
    model = FourM(config)
    state = expand_compact(state, metadata, model, str(weights))
    load_state_dict_strict(model, state, str(weights), strict)
    return model.to(map_location)


def _download(repo_id: str) -> Path:
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        raise FileNotFoundError(f"{repo_id} is neither a model directory nor a Hugging Face Hub id (owner/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(
            f"{repo_id} is not a local directory, and loading from the Hub needs huggingface_hub "
            "(pip install 'open4m[hub]')"
        ) from None
    try:
        path = snapshot_download(repo_id, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME])
    except Exception as err:  # offline, unknown repo, ... — all mean "cannot get it"
        raise FileNotFoundError(
            f"could not fetch {repo_id!r} from the Hugging Face Hub ({type(err).__name__}: {err}). "
            "Offline? Download the directory elsewhere and pass its path."
        ) from None
    return Path(path)


SHARED_KEY, COMPUTED_KEY, INT8_KEY = "open4m_shared", "open4m_computed", "open4m_int8"
INT8_SCALE_SUFFIX = ".open4m_int8_scale"


def shared_aliases(model: torch.nn.Module) -> dict[str, str]:
    """``{key: first key}`` for every state-dict key whose tensor is shared with an earlier key."""
    first: dict[int, str] = {}
    aliases = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        ptr = tensor.data_ptr()
        if ptr in first:
            aliases[key] = first[ptr]
        else:
            first[ptr] = key
    return aliases


def computed_buffers(model: FourM) -> list[str]:
    """State-dict keys of buffers a freshly built model of the same config holds with the same values."""
    fresh = dict(FourM(model.config).named_buffers())
    return sorted(key for key, buffer in model.named_buffers()
                  if key in fresh and fresh[key].shape == buffer.shape and torch.equal(fresh[key], buffer.cpu()))


def expand_compact(state: dict[str, torch.Tensor], metadata: dict[str, str], model: FourM,
                   source: str, partial: bool = False) -> dict[str, torch.Tensor]:
    """Restore what a ``compact`` file leaves out: shared keys (``open4m_shared``) and computed buffers
    (``open4m_computed``, taken from ``model``, freshly built from the same config), and turn its int8 weights
    (``open4m_int8``) back into float32. Other files unchanged.
    ``partial``: ``model`` may have other modalities than the file (fine-tuning); computed buffers it lacks
    are skipped instead of being an error."""
    try:
        aliases = json.loads(metadata.get(SHARED_KEY, "{}"))
        computed = json.loads(metadata.get(COMPUTED_KEY, "[]"))
        quantized = json.loads(metadata.get(INT8_KEY, "[]"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: metadata {SHARED_KEY!r} / {COMPUTED_KEY!r} / {INT8_KEY!r} is not valid JSON: "
                         f"{err}") from None
    state = dequantize_state(state, quantized, source)
    missing = sorted({kept for kept in aliases.values() if kept not in state})
    if missing:
        raise ValueError(f"{source}: shared tensors {missing} listed in {SHARED_KEY!r} are not in the file")
    own = model.state_dict()
    unknown = sorted(key for key in computed if key not in own)
    if unknown and not partial:
        raise ValueError(f"{source}: computed buffers {unknown} listed in {COMPUTED_KEY!r} are not in the model")
    computed = [key for key in computed if key in own]
    return {**state, **{key: state[kept] for key, kept in aliases.items()}, **{key: own[key] for key in computed}}


def dequantize_state(state: dict[str, torch.Tensor], quantized: list[str], source: str) -> dict[str, torch.Tensor]:
    """``state`` with each key of ``quantized`` (int8, scales under ``key + INT8_SCALE_SUFFIX``) dequantized to
    float32 and the scale entries removed; ValueError naming the key for a missing or mismatched one."""
    if not quantized:
        return state
    if not isinstance(quantized, list) or not all(isinstance(k, str) for k in quantized):
        raise ValueError(f"{source}: metadata {INT8_KEY!r} must be a JSON list of tensor names")
    out = dict(state)
    for key in quantized:
        scale_key = key + INT8_SCALE_SUFFIX
        absent = key if key not in state else scale_key if scale_key not in state else None
        if absent is not None:
            raise ValueError(f"{source}: {key!r} is listed in {INT8_KEY!r} but the file lacks {absent!r}")
        out[key] = dequantize_int8(state[key], out.pop(scale_key), f"{source}: {key}")
    return out


def state_dict_for_saving(model: FourM, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every state-dict key with its own contiguous tensor (shared tensors copied per key)."""
    out, seen = {}, set()
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        if tensor.data_ptr() in seen or not tensor.is_contiguous():
            tensor = tensor.clone().contiguous()
        seen.add(tensor.data_ptr())
        out[key] = tensor.cpu()
    return out


def official_config(model: FourM) -> dict:
    """The config.json dict of ``model`` (official keys, plus ``modality_specs`` for custom modalities)."""
    config = model.config.to_official_dict()
    custom = sorted(n for n in {*config["domains_in"], *config["domains_out"]} if n not in _OFFICIAL_NAMES)
    if custom:
        config["modality_specs"] = {n: dataclasses.asdict(modalities.get(n)) for n in custom}
    return config


def save_pretrained(model: FourM, directory: str | os.PathLike, overwrite: bool = False,
                    dtype: torch.dtype | None = None, compact: bool = False, int8: bool = False) -> Path:
    """Write ``model`` as ``directory/config.json`` + ``directory/model.safetensors``, each atomically.

    ``dtype`` casts floating-point weights (e.g. ``torch.float16`` to ship a model at half the size).
    ``compact`` stores each shared tensor (tied heads, shared modality embeddings) under one key only and
    leaves out the buffers the model computes itself (the fixed sin-cos position tables), listing both in the
    file's ``open4m_shared`` / ``open4m_computed`` metadata, which :func:`from_pretrained` restores; the
    default stores every key, as the official release files do. ``int8`` (with ``compact`` only) also stores
    the large weight matrices as int8 with float16 scales per group of 64 columns (:mod:`open4m.model.int8`,
    listed in ``open4m_int8``; about half a float16 file), which :func:`from_pretrained` dequantizes; like
    ``compact``, an open4m extension the official loader cannot read. Refuses to replace an existing model
    there unless ``overwrite=True``.
    """
    if int8 and not compact:
        raise ValueError("int8=True needs compact=True: int8 storage is an open4m extension of the compact format, "
                         "not the official release format")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} exists and is not a directory")
    if not overwrite and ((directory / WEIGHTS_NAME).exists() or (directory / CONFIG_NAME).exists()):
        raise FileExistsError(f"{directory} already holds a model; pass overwrite=True to replace it")
    directory.mkdir(parents=True, exist_ok=True)
    config = official_config(model)
    metadata = {key: str(value) for key, value in config.items() if key != "modality_specs"}
    state = state_dict_for_saving(model, dtype)
    if compact:
        aliases, computed = shared_aliases(model), computed_buffers(model)
        state = {k: v for k, v in state.items() if k not in aliases and k not in computed}
        metadata[SHARED_KEY] = json.dumps(aliases, sort_keys=True)
        metadata[COMPUTED_KEY] = json.dumps(computed)
    if int8:
        quantized = int8_candidates(state)
        for key in quantized:
            state[key], state[key + INT8_SCALE_SUFFIX] = quantize_int8(state[key])
        metadata[INT8_KEY] = json.dumps(quantized)
    write_atomic(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata=metadata))
    write_atomic(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config)))
    return directory

