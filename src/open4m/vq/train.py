"""Train an image tokenizer: a plain loop over batches of world samples.

    tokenizer = train_tokenizer(TokenizerConfig(modality="depth"), samples, "runs/depth", train=TrainConfig())

``samples`` is any iterable of world-contract sample dicts (it is iterated again when it runs out, so
lists and re-iterable datasets give epochs). Under ``torchrun`` (``WORLD_SIZE > 1``) each process joins
a gloo process group, takes its slice of every global batch and averages gradients with DDP; the VQ
codebook statistics are all-reduced inside the quantizer.

The output folder holds the tokenizer (``config.json`` + ``model.safetensors``, loadable with
:meth:`ImageTokenizer.load`), ``checkpoint.safetensors`` (model, optimizer moments and RNG state; the
JSON training state in its metadata), ``preview.png`` (inputs above reconstructions) and
``train_summary.json``. Every file is written atomically. ``resume=True`` continues from the
checkpoint exactly: same data position, same optimizer and RNG state, so the result equals an
uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from open4m.atomic import write_atomic, write_json_atomic
from open4m.distributed import close_group
from open4m.runtime import tune_cpu
from open4m.vq.adapters import ModalityAdapter
from open4m.vq.autoencoder import Autoencoder, TokenizerConfig, dataclass_from_dict
from open4m.vq.losses import reconstruction_loss
from open4m.vq.quantizers import CosineVQ
from open4m.vq.tokenizer import ImageTokenizer

CHECKPOINT_FILE, PREVIEW_FILE, SUMMARY_FILE = "checkpoint.safetensors", "preview.png", "train_summary.json"


@dataclass
class TrainConfig:
    """Optimisation settings. ``batch_size`` is global (split across torchrun processes)."""

    steps: int = 2000
    batch_size: int = 32
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    dead_code_coef: float = 32.0  # VQ: a code is dead below (tokens per step / K) / coef assignments (EMA)
    edge_pos_weight: float = 1.0
    seed: int = 0
    bf16: bool = False  # autocast the network to bfloat16 (the quantizer always runs in float32)
    channels_last: bool = False
    threads: int = 0  # torch.set_num_threads during training when > 0
    device: str = "cpu"  # "cuda" trains on a GPU (exact resume is guaranteed on CPU)
    checkpoint_every: int = 200
    preview_every: int = 200
    log_every: int = 50  # steps between entries of the loss / codebook-usage history in train_summary.json

    def lr_at(self, step: int) -> float:
        """Linear warmup to ``lr``, then cosine decay to ``min_lr`` at ``steps``."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        t = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        if "betas" in d:
            d = {**d, "betas": tuple(d["betas"])}
        return dataclass_from_dict(cls, d, "train config")


def load_config(path: str | Path, modality: str | None = None) -> tuple[TokenizerConfig, TrainConfig, dict]:
    """Read a ``configs/tokenizers/*.yaml``: its ``tokenizer``, ``train`` and ``target`` sections.

    ``modality`` (the CLI's ``--modality``) fills in a missing ``tokenizer.modality`` and must agree
    with a present one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer config {path} not found")
    doc = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(doc) - {"tokenizer", "train", "target"})
    if unknown:
        raise ValueError(f"tokenizer config {path}: unknown sections {unknown}; expected tokenizer, train, target")
    tok = dict(doc.get("tokenizer") or {})
    if modality is not None:
        if tok.setdefault("modality", modality) != modality:
            raise ValueError(f"tokenizer config {path} is for modality {tok['modality']!r}, not {modality!r}")
    return TokenizerConfig.from_dict(tok), TrainConfig.from_dict(doc.get("train") or {}), dict(doc.get("target") or {})


def _cycle_batches(samples: Iterable[dict], key: str, size: int, skip: int) -> Iterator[list[np.ndarray]]:
    """Consecutive lists of ``size`` arrays ``sample[key]``, after skipping ``skip`` samples; cycles ``samples``."""
    batch: list[np.ndarray] = []
    seen = 0
    while True:
        count = 0
        for sample in samples:
            count += 1
            seen += 1
            if seen <= skip:
                continue
            if key not in sample:
                raise ValueError(f"training sample {seen - 1} has no {key!r} (keys: {sorted(sample)})")
            batch.append(sample[key])
            if len(batch) == size:
                yield batch
                batch = []
        if count == 0:
            raise ValueError(f"the training data ran out after {seen} samples (a one-shot iterator?); "
                             "pass a list or a re-iterable dataset, or an endless stream")


def _save_checkpoint(path: Path, model: Autoencoder, opt: torch.optim.Optimizer, state: dict) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    for pid, slots in opt_state["state"].items():
        tensors.update({f"optim.{pid}.{k}": v.detach().cpu().contiguous() for k, v in slots.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {"state": json.dumps({**state, "param_groups": opt_state["param_groups"]})}
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _load_checkpoint(path: Path, model: Autoencoder, opt: torch.optim.Optimizer) -> dict:
    """Restore model, optimizer and RNG from ``path``; return the training state. The tokenizer config must match."""
    with safe_open(str(path), framework="pt") as f:
        state = json.loads(f.metadata()["state"])
        if state["tokenizer"] != model.config.to_dict():
            raise ValueError(f"cannot resume {path.parent}: its tokenizer config differs from the given one "
                             f"(saved {state['tokenizer']})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            slots.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": slots, "param_groups": state.pop("param_groups")})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return state


def _save_preview(path: Path, tokenizer: ImageTokenizer, raw: np.ndarray) -> None:
    """Inputs (top row) above their reconstructions (bottom row), as one PNG."""
    pic = tokenizer.adapter.to_picture
    rows = [np.concatenate(list(pic(raw)), axis=1), np.concatenate(list(pic(tokenizer.reconstruct(raw))), axis=1)]
    image = Image.fromarray(np.concatenate(rows, axis=0))
    write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))


def _train_step(
    net: torch.nn.Module,
    model: Autoencoder,
    opt: torch.optim.Optimizer,
    adapter: ModalityAdapter,
    raw: np.ndarray,
    train: TrainConfig,
) -> tuple[float, dict[str, float], dict[str, float]]:
    """One optimiser step on this process's raw batch; returns (loss, loss parts, quantizer stats)."""
    device = next(model.parameters()).device
    x = adapter.to_input(raw).to(device)
    if train.channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=train.bf16):
        pred, q = net(x)
    target = {k: v.to(device) for k, v in adapter.to_target(raw).items()}
    loss, parts = reconstruction_loss(adapter.name, pred, target, edge_pos_weight=train.edge_pos_weight)
    loss = loss + q.aux_loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
    opt.step()
    return float(loss.detach()), parts, q.stats


def _init_distributed() -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
        return dist.get_rank(), world, True
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    return 0, 1, False


def train_tokenizer(
    config: TokenizerConfig,
    samples: Iterable[dict],
    out_dir: str | Path,
    *,
    train: TrainConfig | None = None,
    resume: bool = False,
    progress: bool = True,
) -> ImageTokenizer:
    """Train a tokenizer for ``config.modality`` on ``samples`` and write it to ``out_dir``.

    Refuses to overwrite a folder that already holds a run unless ``resume`` is set; with ``resume``,
    the folder's checkpoint must exist and have the same tokenizer config. Returns the trained
    tokenizer (also saved in ``out_dir``).
    """
    train = train or TrainConfig()
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT_FILE
    if resume and not ckpt_path.is_file():
        raise FileNotFoundError(f"cannot resume: no {CHECKPOINT_FILE} in {out}")
    if not resume and (ckpt_path.exists() or (out / "model.safetensors").exists()):
        raise ValueError(f"{out} already holds a tokenizer run; pass resume (--resume) or choose another output")
    tune_cpu()
    rank, world, owns_group = _init_distributed()
    if train.batch_size % world:
        raise ValueError(f"batch_size {train.batch_size} is not divisible by the {world} torchrun processes")
    threads_before = torch.get_num_threads()
    if train.threads > 0:
        torch.set_num_threads(train.threads)
    torch.manual_seed(train.seed)
    model = Autoencoder(config).to(torch.device(train.device))
    if isinstance(model.quantizer, CosineVQ):
        tokens_per_step = train.batch_size * config.grid_size**2
        model.quantizer.dead_code_threshold = tokens_per_step / config.codebook_size / train.dead_code_coef
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr, betas=train.betas, weight_decay=train.weight_decay)
    state = {"step": 0, "samples_seen": 0, "elapsed_s": 0.0, "tokenizer": config.to_dict(), "history": []}
    if resume:
        state = _load_checkpoint(ckpt_path, model, opt)
    if train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = DistributedDataParallel(model, broadcast_buffers=False) if world > 1 else model
    tokenizer = ImageTokenizer(config, model)
    adapter = tokenizer.adapter
    per_rank = train.batch_size // world
    batches = _cycle_batches(samples, config.modality, train.batch_size, state["samples_seen"])
    bar = tqdm(total=train.steps, initial=state["step"], disable=not progress or rank != 0,
               desc=f"tokenizer {config.modality}", dynamic_ncols=True)
    parts: dict[str, float] = {}
    stats: dict[str, float] = {}
    start = time.perf_counter() - state["elapsed_s"]
    finished = False
    try:
        while state["step"] < train.steps:
            raw = np.concatenate([adapter.check(a) for a in next(batches)])
            local = raw[rank * per_rank : (rank + 1) * per_rank]
            for group in opt.param_groups:
                group["lr"] = train.lr_at(state["step"])
            loss, parts, stats = _train_step(net, model, opt, adapter, local, train)
            state["step"] += 1
            state["samples_seen"] += train.batch_size
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", usage=f"{stats['batch_usage']:.2f}", refresh=False)
            done = state["step"] == train.steps
            if state["step"] % train.log_every == 0 or done:
                state["history"].append({"step": state["step"], "loss": round(loss, 6),
                                         "batch_usage": round(stats["batch_usage"], 4)})
            if rank == 0 and (done or state["step"] % train.preview_every == 0):
                _save_preview(out / PREVIEW_FILE, tokenizer, raw[:8])
            if rank == 0 and (done or state["step"] % train.checkpoint_every == 0):
                state["elapsed_s"] = time.perf_counter() - start
                tokenizer.save(out)
                _save_checkpoint(ckpt_path, model, opt, state)
        finished = True
    finally:
        bar.close()
        torch.set_num_threads(threads_before)
        if owns_group:
            del net  # the DDP wrapper holds the group
            close_group(finished)
    if rank == 0:
        summary = {"modality": config.modality, "steps": state["step"], "train_seconds": state["elapsed_s"],
                   "batch_size": train.batch_size, "processes": world, "final_loss_parts": parts,
                   "final_batch_stats": stats, "parameters": sum(p.numel() for p in model.parameters()),
                   "history": state["history"]}
        write_json_atomic(out / SUMMARY_FILE, summary)
    tokenizer.model.eval()
    return tokenizer
