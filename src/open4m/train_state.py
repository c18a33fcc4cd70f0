"""Training checkpoints without pickle: the model in the release format plus the training state, written atomically.

A checkpoint is a directory ``<out_dir>/checkpoints/step-00000100/`` holding

- ``config.json`` + ``model.safetensors``: the model, as :func:`open4m.model.save_pretrained` writes it
  (loadable by :func:`open4m.model.from_pretrained` and by the official code);
- ``optimizer.safetensors``: every optimizer state tensor, flattened to ``"<param name>.<key>"``
  (e.g. ``"encoder.0.attn.qkv.weight.exp_avg"``), plus the torch CPU RNG state (``"rng.torch"``) and the
  CUDA ones when present;
- ``state.json``: step, the optimizer's param groups (hyper-parameters), Python and NumPy RNG states, the
  data position (:mod:`open4m.data.loader`), and the training config.

It is written into a hidden ``.tmp-step-...`` directory, flushed, then renamed with ``os.replace``; a run
killed while writing leaves only the hidden directory, which :func:`latest_checkpoint` never picks and
:func:`remove_stale` deletes. ``state.json`` is written last, so a directory without it is incomplete.
Optimizer state is saved by parameter *name*, so it survives FSDP2 (full tensors gathered on save and
re-sharded on load) and changes of the parameter order.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from open4m.model import save_pretrained

STATE_NAME, OPTIM_NAME, PREFIX, TMP_PREFIX = "state.json", "optimizer.safetensors", "step-", ".tmp-step-"


def checkpoint_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (directories ``step-N`` with a ``state.json``), oldest first."""
    root = checkpoint_dir(out_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE_NAME).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def remove_stale(out_dir: str | os.PathLike) -> list[Path]:
    """Delete the hidden temporary directories of checkpoints whose writing was interrupted."""
    root = checkpoint_dir(out_dir)
    stale = sorted(p for p in root.glob(f"{TMP_PREFIX}*") if p.is_dir()) if root.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    """Python / NumPy RNG states as JSON, torch CPU (and CUDA) RNG states as tensors."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    json_state = {"python": [version, list(internal), gauss],
                  "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    return json_state, tensors


def set_rng_state(json_state: dict, tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = json_state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = json_state["numpy"]
    np.random.set_state((kind, np.array(keys, np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _named_optimizer_state(model: nn.Module, optimizers: list[torch.optim.Optimizer], fsdp: bool) -> tuple:
    """(tensors ``{"<param>.<key>": tensor}``, JSON ``{"param_groups": [...], "scalars": {...}}``)."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = get_optimizer_state_dict(model, optimizers[0], options=StateDictOptions(full_state_dict=True,
                                                                                       cpu_offload=True))
        if not full:  # ranks other than 0 receive nothing with cpu_offload
            return {}, {}
        per_param, groups = full["state"], full["param_groups"]
    else:
        names = {id(p): n for n, p in getattr(model, "module", model).named_parameters()}
        per_param, groups = {}, []
        for opt in optimizers:
            for group in opt.param_groups:
                groups.append({**{k: v for k, v in group.items() if k != "params"},
                               "params": [names[id(p)] for p in group["params"]]})
                for p in group["params"]:
                    if p in opt.state:
                        per_param[names[id(p)]] = opt.state[p]
    tensors, scalars = {}, {}
    for name, state in per_param.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{name}.{key}"] = value
    return tensors, {"param_groups": groups, "scalars": scalars}


def save_checkpoint(out_dir: str | os.PathLike, step: int, model: nn.Module, optimizers: list[torch.optim.Optimizer],
                    extra: dict, fsdp: bool = False, is_main: bool = True, keep_last: int = 0) -> Path | None:
    """Write checkpoint ``step`` atomically (rank 0 writes; with FSDP every rank takes part in gathering).

    ``extra`` (JSON-serialisable: data position, config, ...) is stored in ``state.json``. Keeps the
    newest ``keep_last`` checkpoints (0: all). Returns the directory on rank 0, else None.
    """
    tensors, optim_json = _named_optimizer_state(model, optimizers, fsdp)
    model_state = None
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        model_state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main:
        return None
    rng_json, rng_tensors = rng_state()
    root = checkpoint_dir(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f"{TMP_PREFIX}{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained(_unsharded(model, model_state), tmp)
    save_file({**tensors, **rng_tensors}, str(tmp / OPTIM_NAME))
    state = {"step": step, "optimizer": optim_json, "rng": rng_json, **extra}
    (tmp / STATE_NAME).write_text(json.dumps(state))
    for path in tmp.iterdir():
        with open(path, "rb") as file:
            os.fsync(file.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep_last > 0:
        for old in list_checkpoints(out_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _unsharded(model: nn.Module, full_state: dict | None) -> nn.Module:
    """The plain FourM to save: ``model`` itself, or (FSDP) a CPU copy filled with the gathered state."""
    inner = getattr(model, "module", model)
    if full_state is None:
        return inner
    from open4m.model import FourM

    copy = FourM(inner.config)
    copy.load_state_dict(full_state)
    return copy


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizers: list[torch.optim.Optimizer],
                    fsdp: bool = False) -> dict:
    """Restore model, optimizer and RNG states from checkpoint ``path``; returns ``state.json``'s dict."""
    from open4m.model.checkpoint import load_state_dict_strict, read_safetensors

    path = Path(path)
    state = json.loads((path / STATE_NAME).read_text())
    weights, _ = read_safetensors(path / "model.safetensors")
    tensors = load_file(str(path / OPTIM_NAME))
    optim_json = state["optimizer"]
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, weights, options=options)
        set_optimizer_state_dict(model, optimizers[0], _nested(tensors, optim_json), options=options)
    else:
        inner = getattr(model, "module", model)
        load_state_dict_strict(inner, weights, str(path))
        _load_plain_optimizers(inner, optimizers, tensors, optim_json)
    set_rng_state(state["rng"], tensors)
    return state


def _nested(tensors: dict[str, torch.Tensor], optim_json: dict) -> dict:
    names = {n for g in optim_json["param_groups"] for n in g["params"]}
    per_param: dict[str, dict] = {}
    for key, value in [*tensors.items(), *optim_json["scalars"].items()]:
        name, _, field = key.rpartition(".")
        if name in names:
            per_param.setdefault(name, {})[field] = value
    return {"state": per_param, "param_groups": optim_json["param_groups"]}


def _load_plain_optimizers(model: nn.Module, optimizers: list[torch.optim.Optimizer],
                           tensors: dict[str, torch.Tensor], optim_json: dict) -> None:
    nested = _nested(tensors, optim_json)
    groups = iter(optim_json["param_groups"])
    names = {id(p): n for n, p in model.named_parameters()}
    for opt in optimizers:
        state, saved_groups, offset = {}, [], 0
        for index, group in enumerate(opt.param_groups):
            saved = next(groups, None)
            own = [names[id(p)] for p in group["params"]]
            if saved is None or saved["params"] != own:
                raise ValueError(f"checkpoint optimizer group {index} does not hold this model's parameters "
                                 f"(expected {own[:3]}...)")
            saved_groups.append({**saved, "params": list(range(offset, offset + len(own)))})
            for i, name in enumerate(own):
                if name in nested["state"]:
                    state[offset + i] = nested["state"][name]
            offset += len(own)
        opt.load_state_dict({"state": state, "param_groups": saved_groups})
