"""The training config: one flat dataclass, loaded from YAML plus ``key=value`` overrides, checked up front.

Every key has a type and a default; an unknown key or a value of the wrong type is an error naming the
key (with the closest known key as a hint). ``configs/train/*.yaml`` are small overrides of these
defaults. Override values are parsed as YAML (``lr=3e-4``, ``domains_in=[a,b]``); a dotted key sets an
entry of a dict field (``model_overrides.dim=128``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class TrainConfig:
    """What to train, on what, and how. ``batch_size`` is per rank and per micro-step; the global batch is
    ``batch_size * accum_steps * world``. ``clip_grad`` 0 turns clipping off. ``distributed``: ``auto``
    (DDP under torchrun, else none), ``none``, ``ddp`` or ``fsdp`` (FSDP2 ``fully_shard``)."""

    # model
    model: str = "tiny_gelu"
    model_overrides: dict = field(default_factory=dict)
    domains_in: list[str] = field(default_factory=list)
    domains_out: list[str] = field(default_factory=list)
    modalities: dict = field(default_factory=dict)
    pretrained: str | None = None
    grow_pretrained: bool = False  # a shallower pretrained model grows to the config's depth (model.grow.deepen)
    # data and masking
    train_data: list[dict] = field(default_factory=list)
    val_data: list[dict] = field(default_factory=list)
    masking: str | dict = ""
    input_tokens: int | list[int] = 128
    target_tokens: int | list[int] = 128
    fill_empty: list[str] = field(default_factory=list)
    text_tokenizer: str | None = None  # tokenizer.json, a tokenizer-set folder, or "world" (shipped)
    shuffle_buffer: int = 256
    workers: int = 0
    # optimisation
    steps: int = 1000
    batch_size: int = 8
    accum_steps: int = 1
    lr: float = 1e-4
    min_lr: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    clip_grad: float = 0.0
    step_in_backward: bool = False
    loss_type: str = "mod"
    dtype: str = "fp32"
    act_checkpoint: bool = False
    # runtime
    distributed: str = "auto"
    device: str = "auto"
    threads: int = 0
    timeout_min: float = 30.0
    seed: int = 0
    # outputs
    out_dir: str = "runs/train"
    save_every: int = 0
    keep_last: int = 3
    val_every: int = 0
    val_batches: int = 8
    log_every: int = 10
    progress: bool = True
    plot: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _matches(value: Any, annotation: str) -> bool:
    for option in (a.strip() for a in annotation.split("|")):
        if option == "None" and value is None:
            return True
        if option == "bool" and isinstance(value, bool):
            return True
        if isinstance(value, bool):
            continue
        if option == "int" and isinstance(value, int):
            return True
        if option == "float" and isinstance(value, (int, float)):
            return True
        if option in ("str", "dict") and isinstance(value, {"str": str, "dict": dict}[option]):
            return True
        if option.startswith("list[") and isinstance(value, list):
            inner = option[5:-1]
            if all(_matches(v, inner) for v in value):
                return True
    return False


def _as_float(value: Any) -> Any:
    """Ints and numeric strings as floats (YAML reads ``2e-3`` without a dot as a string); else unchanged."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def check_key(key: str, source: str) -> None:
    if key not in FIELDS:
        hint = difflib.get_close_matches(key, FIELDS, n=1)
        raise ValueError(f"{source}: unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                         + f"; known keys: {', '.join(FIELDS)}")


def from_dict(data: dict, source: str = "config") -> TrainConfig:
    """Build and validate a config from a mapping; ValueError naming the key on any problem."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
    values = {}
    for key, value in data.items():
        check_key(key, source)
        annotation = str(FIELDS[key].type)
        if annotation == "float":
            value = _as_float(value)
        if not _matches(value, annotation):
            raise ValueError(f"{source}: key {key!r} must be {annotation}, got {value!r} ({type(value).__name__})")
        values[key] = value
    config = TrainConfig(**values)
    validate(config, source)
    return config


def parse_overrides(overrides: list[str], source: str = "overrides") -> dict:
    """``["lr=3e-4", "model_overrides.dim=64"]`` → ``{"lr": 3e-4, "model_overrides": {"dim": 64}}``."""
    out: dict = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{source}: override {item!r} must look like key=value")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError as err:
            raise ValueError(f"{source}: override {item!r}: value is not valid YAML: {err}") from None
        top, _, sub = key.partition(".")
        check_key(top, source)
        if sub:
            out.setdefault(top, {})[sub] = value
        else:
            out[top] = value
    return out


def load(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """The YAML file ``path`` (or the defaults when None) with ``overrides`` applied, validated."""
    data: dict = {}
    source = "config"
    if path is not None:
        path, source = Path(path), str(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config {source!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{source}: not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a mapping of keys to values")
        base = Path(path).parent
        data = _resolve_paths(data, base)
    for key, value in parse_overrides(list(overrides)).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict) and key == "model_overrides":
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return from_dict(data, source)


def _resolve_paths(data: dict, base: Path) -> dict:
    """A masking file given relative to the config's folder resolves there when it exists there."""
    masking = data.get("masking")
    if isinstance(masking, str) and masking and not Path(masking).exists() and (base / masking).exists():
        data = {**data, "masking": str(base / masking)}
    return data


def validate(c: TrainConfig, source: str = "config") -> None:
    """Value checks beyond types: clear errors for settings that cannot train."""
    def bad(key: str, why: str) -> ValueError:
        return ValueError(f"{source}: key {key!r} {why}, got {getattr(c, key)!r}")

    if not (c.lr > 0 and math.isfinite(c.lr)):
        raise bad("lr", "(the learning rate) must be > 0")
    if c.min_lr < 0 or c.min_lr > c.lr:
        raise bad("min_lr", f"must be in [0, lr={c.lr}]")
    for key in ("steps", "batch_size", "accum_steps", "val_batches", "log_every"):
        if getattr(c, key) <= 0:
            raise bad(key, "must be > 0")
    for key in ("warmup_steps", "save_every", "keep_last", "val_every", "workers", "threads", "clip_grad",
                "weight_decay"):
        if getattr(c, key) < 0:
            raise bad(key, "must be >= 0")
    if c.warmup_steps > c.steps:
        raise bad("warmup_steps", f"must be <= steps ({c.steps})")
    if len(c.betas) != 2 or not all(0 <= b < 1 for b in c.betas):
        raise bad("betas", "must be two numbers in [0, 1)")
    choices = {"dtype": ("fp32", "bf16"), "distributed": ("auto", "none", "ddp", "fsdp"),
               "device": ("auto", "cpu", "cuda"), "loss_type": ("mod", "token")}
    for key, allowed in choices.items():
        if getattr(c, key) not in allowed:
            raise bad(key, f"must be one of {list(allowed)}")
    if c.step_in_backward and (c.clip_grad > 0 or c.accum_steps > 1 or c.distributed == "fsdp"):
        raise bad("step_in_backward", "needs clip_grad 0, accum_steps 1 and no FSDP (the step runs inside "
                  "backward, before all gradients exist)")
    if c.grow_pretrained and not c.pretrained:
        raise bad("grow_pretrained", "needs pretrained (the release folder of the model to grow)")
    if not c.domains_in or not c.domains_out:
        raise bad("domains_in" if not c.domains_in else "domains_out", "must list at least one modality")
    if not c.masking:
        raise bad("masking", "must name a mixture YAML file or hold a mixture mapping")
    if not c.train_data:
        raise bad("train_data", "must list at least one dataset ({shards: [...], weight: 1.0})")
    for key in ("train_data", "val_data"):
        for i, entry in enumerate(getattr(c, key)):
            unknown = set(entry) - {"shards", "weight", "modalities", "name"}
            if unknown:
                raise ValueError(f"{source}: {key}[{i}] has unknown keys {sorted(unknown)}; "
                                 "allowed: shards, weight, modalities, name")
            shards = entry.get("shards")
            if not shards or not (isinstance(shards, str) or (isinstance(shards, list)
                                                              and all(isinstance(s, str) for s in shards))):
                raise ValueError(f"{source}: {key}[{i}].shards must be a non-empty path/pattern or list of them, "
                                 f"got {shards!r}")
