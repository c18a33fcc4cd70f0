"""The 4M training loop: one process or torchrun (DDP / FSDP2), checkpoints with exact resume, feedback.

Per step (OFFICIAL-4M-SPEC §7): the learning rate of a linear warm-up from 0 then a cosine to
``min_lr`` is written into the optimizer; ``accum_steps`` micro-batches are run forward (bf16 autocast
when ``dtype: bf16``) and backward (``no_sync`` under DDP but for the last); the gradients are clipped
by global norm when ``clip_grad`` > 0; AdamW (official decay groups, fused) steps. In one process the
encoder's token embeddings get sparse gradients (:meth:`open4m.model.FourM.use_sparse_embedding_grads`:
less memory, the same update). Losses are averaged
over micro-batches and ranks. Every ``save_every`` steps and at the end a checkpoint is written
(:mod:`open4m.train_state`); ``resume=True`` continues from the newest complete one exactly: same
per-step losses, bit for bit, as a run that was never stopped (CPU fp32).

Feedback: a tqdm bar (loss, tokens/s, ETA), ``metrics.jsonl`` in ``out_dir`` (one line per logged
step and per validation), TensorBoard events when ``tensorboard`` is installed, and ``loss.png`` at
the end when matplotlib is installed.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from open4m import distributed, modalities, train_state
from open4m.data.loader import (
    POSITION_KEY,
    DatasetSpec,
    MaskedBatches,
    count_samples,
    expand_shards,
    make_loader,
    validation_batches,
)
from open4m.mixtures import MaskingConfig, _register_declared
from open4m.model import FourM, preset
from open4m.optim import StepInBackward, adamw, clip_grad_norm_
from open4m.runtime import tune_cpu
from open4m.train_config import TrainConfig


def lr_at(step: int, c: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up from 0, then cosine to ``min_lr``."""
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    progress = (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps)
    return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1 + math.cos(math.pi * progress))


def masking_config(c: TrainConfig) -> MaskingConfig:
    """The mixture (a YAML path or an inline mapping) with the config's token budgets; the modalities the
    config declares (``modalities:``) are registered first."""
    if c.modalities:
        _register_declared(c.modalities, "config modalities")
    if isinstance(c.masking, dict):
        return MaskingConfig.from_dict(c.masking, c.input_tokens, c.target_tokens, source="config masking")
    return MaskingConfig.from_yaml(c.masking, c.input_tokens, c.target_tokens)


def build_model(c: TrainConfig, log=print) -> FourM:
    """The model of the config (tied decoder embeddings, as the official trainer); ``pretrained`` weights
    load where names and shapes match, the rest stays initialised and is reported by name. With
    ``grow_pretrained`` the pretrained model (a release folder) first grows to the config's encoder / decoder
    depth by :func:`open4m.model.grow.deepen`, so the model starts out predicting exactly what it did."""
    config = preset(c.model, c.domains_in, c.domains_out, tie_decoder_embeddings=True,
                    use_act_checkpoint=c.act_checkpoint, **c.model_overrides)
    model = FourM(config)
    if c.pretrained:
        from open4m.model.checkpoint import expand_compact, read_safetensors

        path = Path(c.pretrained)
        weights = path / "model.safetensors" if path.is_dir() else path
        if not weights.is_file():
            raise FileNotFoundError(f"pretrained: {weights} does not exist")
        if c.grow_pretrained:
            state = _grown_state(path, model, log)
        else:
            state, metadata = read_safetensors(weights)
            state = expand_compact(state, metadata, model, str(weights), partial=True)
        own = model.state_dict()
        loaded = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
        model.load_state_dict(loaded, strict=False)
        fresh = sorted(k for k in own if k not in loaded)
        unused = sorted(k for k in state if k not in loaded)
        log(f"pretrained {path}: loaded {len(loaded)} tensors; initialised {len(fresh)}: {fresh}; "
            f"unused from the file {len(unused)}: {unused}")
    return model


def _grown_state(path: Path, model: FourM, log) -> dict[str, torch.Tensor]:
    """The state of the release folder ``path``'s model grown to ``model``'s encoder / decoder depth."""
    from open4m.model import from_pretrained
    from open4m.model.grow import deepen

    if not path.is_dir():
        raise ValueError(f"grow_pretrained: pretrained must be a model folder (config.json + model.safetensors), "
                         f"got the file {path}")
    source = from_pretrained(path, tie_decoder_embeddings=True)
    want = model.config
    have = source.config
    if want.encoder_depth < have.encoder_depth or want.decoder_depth < have.decoder_depth:
        raise ValueError(f"grow_pretrained: {path} has {have.encoder_depth} + {have.decoder_depth} encoder + decoder "
                         f"blocks, more than the config's {want.encoder_depth} + {want.decoder_depth}; a model can "
                         "only grow deeper")
    log(f"pretrained {path}: grown from {have.encoder_depth} + {have.decoder_depth} to {want.encoder_depth} + "
        f"{want.decoder_depth} encoder + decoder blocks")
    return deepen(source, want.encoder_depth, want.decoder_depth).state_dict()


def _datasets(entries: list[dict], what: str) -> list[DatasetSpec]:
    return [DatasetSpec(shards=expand_shards(e["shards"], f"{what}[{i}]"), weight=float(e.get("weight", 1.0)),
                        modalities=e.get("modalities"), name=e.get("name", f"{what}[{i}]"))
            for i, e in enumerate(entries)]


def _load_tokenizer(c: TrainConfig):
    """``text_tokenizer``: a tokenizer.json file, a tokenizer-set folder, or ``world`` (the shipped world set)."""
    if not c.text_tokenizer:
        return None
    from open4m.text import TextTokenizer

    if c.text_tokenizer == "world" or Path(c.text_tokenizer, "manifest.json").is_file():
        from open4m.shipped import world_tokenizers_dir
        from open4m.tokenizer_set import load_text_tokenizer

        return load_text_tokenizer(world_tokenizers_dir() if c.text_tokenizer == "world" else c.text_tokenizer)
    return TextTokenizer.load(c.text_tokenizer)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {name: {k: v.to(device, non_blocking=True) for k, v in entry.items()}
            for name, entry in batch.items() if name != POSITION_KEY}


def _gather_json(value, state: distributed.Dist) -> list:
    """Every rank's JSON-serialisable ``value`` on every rank (bytes over the process group, no pickle)."""
    if not state.initialized:
        return [value]
    data = torch.tensor(list(json.dumps(value).encode()), dtype=torch.uint8)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(state.world)]
    dist.all_gather(sizes, torch.tensor([data.numel()]))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[: data.numel()] = data
    out = [torch.zeros(longest, dtype=torch.uint8) for _ in range(state.world)]
    dist.all_gather(out, padded)
    return [json.loads(bytes(t[: int(s.item())].tolist())) for t, s in zip(out, sizes, strict=True)]


class MetricsLog:
    """``metrics.jsonl`` (rank 0): one JSON object per line; on resume the lines past the resumed step go."""

    def __init__(self, out_dir: Path, resume_step: int | None, enabled: bool) -> None:
        self.path, self.enabled, self.tb = out_dir / "metrics.jsonl", enabled, None
        if not enabled:
            return
        lines = []
        if resume_step is not None and self.path.exists():
            lines = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= resume_step]
        train_state_text = "".join(ln + "\n" for ln in lines)
        tmp = self.path.with_name(".metrics.jsonl.tmp")
        tmp.write_text(train_state_text)
        tmp.replace(self.path)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:
            self.tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as file:
            file.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_losses(metrics_path: Path, out_path: Path) -> str:
    """Write the training (and validation) loss curves as a PNG; returns a note of what happened."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no loss plot"
    records = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    for points, label in ((train, "train"), (val, "validation")):
        if points:
            ax.plot(*zip(*points, strict=True), label=label, marker="o" if label == "validation" else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    tmp = out_path.with_name(".loss.png.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out_path)
    return f"loss curve -> {out_path}"


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[dict], n_enc: int, n_dec: int, c: TrainConfig,
             state: distributed.Dist) -> dict[str, float]:
    """Mean validation loss and per-modality losses over ``batches`` and all ranks."""
    model.eval()
    totals: dict[str, float] = {}
    for batch in batches:
        with _autocast(c, state.device):
            loss, per_mod = model(_to_device(batch, state.device), n_enc, n_dec, c.loss_type)
        for key, value in {"val_loss": loss, **{f"val_loss/{k}": v for k, v in per_mod.items()}}.items():
            totals[key] = totals.get(key, 0.0) + float(value) / len(batches)
    model.train()
    for module in model.modules():  # FSDP2 keeps the root unsharded after a no-grad forward; the optimizer
        if hasattr(module, "reshard"):  # and the checkpoint need the sharded parameters back
            module.reshard()
    keys = sorted(totals)
    mean = distributed.all_reduce_mean(torch.tensor([totals[k] for k in keys], dtype=torch.float64), state)
    return dict(zip(keys, mean.tolist(), strict=True))


def _autocast(c: TrainConfig, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=c.dtype == "bf16")


def make_optimizers(model: nn.Module, c: TrainConfig, strategy: str) -> list[torch.optim.Optimizer]:
    """AdamW (official decay groups; fused unless FSDP2) as one optimizer, or one per parameter when the step
    runs inside backward (:class:`open4m.optim.StepInBackward`)."""
    if c.step_in_backward:
        return [*StepInBackward(model, c.lr, c.weight_decay, tuple(c.betas))]
    fused = False if strategy == "fsdp" else None
    return [adamw(model, c.lr, c.weight_decay, tuple(c.betas), fused=fused)]


def _restore(out_dir: Path, model: nn.Module, optimizers: list, strategy: str, state: distributed.Dist,
             workers: int, log) -> tuple[int, dict, int]:
    """Load the newest complete checkpoint: returns (step, this rank's loader positions, batches consumed)."""
    if state.is_main:
        removed = train_state.remove_stale(out_dir)
        if removed:
            log(f"removed {len(removed)} interrupted checkpoint(s): {[p.name for p in removed]}")
    latest = train_state.latest_checkpoint(out_dir)
    if latest is None:
        log(f"--resume: no checkpoint in {train_state.checkpoint_dir(out_dir)}; starting from step 0")
        return 0, {}, 0
    saved = train_state.load_checkpoint(latest, model, optimizers, fsdp=strategy == "fsdp")
    data = saved.get("data") or {}
    if data and (data["world"] != state.world or data["workers"] != workers):
        raise ValueError(f"checkpoint {latest} was written with {data['world']} rank(s) × {data['workers']} "
                         f"worker(s); resume with the same (now {state.world} × {workers})")
    positions = {int(w): p for w, p in (data.get("positions", [{}] * state.world)[state.rank]).items()}
    log(f"resumed from {latest} at step {saved['step']}")
    return saved["step"], positions, data.get("batches", 0)


def train(c: TrainConfig, resume: bool = False, batches: Iterable[dict] | None = None) -> dict:
    """Train as the config says; returns ``{"losses": [per-step loss of this run], "val": [...], "checkpoint",
    "out_dir", "rank", "unreadable_shards"}``.

    ``batches``: ready masked batches of this rank to use instead of ``train_data`` (their data position is
    not tracked, so such runs cannot resume exactly).
    """
    state = distributed.setup(c.device, c.timeout_min)
    finished = False
    try:
        result = _train(c, resume, batches, state)
        finished = True
        return result
    finally:
        distributed.teardown(state, finished)


def _train(c: TrainConfig, resume: bool, batches: Iterable[dict] | None, state: distributed.Dist) -> dict:
    tune_cpu()
    if c.threads:
        torch.set_num_threads(c.threads)
    log = print if state.is_main else (lambda *a, **k: None)
    masking = masking_config(c)
    if masking.target_tokens is None:
        raise ValueError("config: target_tokens must be set for training (the decoder needs a token budget)")
    n_enc, n_dec = masking.input_tokens[1], masking.target_tokens[1]
    needed = [n for n in [*c.domains_in, *c.domains_out] if n not in masking.mixture.names]
    if needed:
        raise ValueError(f"config: domains {sorted(set(needed))} are not in the masking mixture "
                         f"{masking.mixture.names}")
    for name in masking.mixture.names:
        modalities.get(name)
    strategy = c.distributed if c.distributed != "auto" else ("ddp" if state.world > 1 else "none")
    workers, tokenizer = max(1, c.workers), _load_tokenizer(c)

    train_sets = _datasets(c.train_data, "train_data") if batches is None else []
    if batches is None:
        known = [count_samples(d.shards, c.batch_size * state.world) for d in train_sets]
        if all(k is not None for k in known) and sum(known) < c.batch_size * state.world:
            raise ValueError(f"batch_size {c.batch_size} × {state.world} rank(s) is larger than the data: "
                             f"train_data holds {sum(known)} samples")
    val_sets = _datasets(c.val_data, "val_data") if c.val_data else []

    if c.step_in_backward and state.world > 1:
        raise ValueError("config: step_in_backward runs the optimizer inside backward, before DDP averages the "
                         "gradients; it works in one process only")
    seed_everything(c.seed)
    model = build_model(c, log).to(state.device)
    model.train()
    if strategy == "none":  # DDP / FSDP reduce dense gradients
        model.use_sparse_embedding_grads()
    model = distributed.wrap(model, strategy, state)
    optimizers = make_optimizers(model, c, strategy)
    sib = c.step_in_backward
    out_dir = Path(c.out_dir)
    start, positions, consumed = 0, {}, 0
    if resume:
        start, positions, consumed = _restore(out_dir, model, optimizers, strategy, state, workers, log)
    elif train_state.latest_checkpoint(out_dir) is not None:
        raise ValueError(f"{out_dir} already holds checkpoints; pass --resume to continue or choose another out_dir")
    if state.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    if batches is None:
        source = MaskedBatches(train_sets, masking, c.batch_size, seed=c.seed, rank=state.rank, world=state.world,
                               num_workers=c.workers, shuffle_buffer=c.shuffle_buffer, tokenizer=tokenizer,
                               fill_empty=c.fill_empty, positions=positions, rotation=consumed % workers)
        iterator: Iterator[dict] = iter(make_loader(source))
    else:
        iterator = iter(batches)
    val = (validation_batches(val_sets, masking, c.batch_size, c.val_batches, c.seed, state.rank, state.world,
                              tokenizer, c.fill_empty) if val_sets else [])

    metrics = MetricsLog(out_dir, start if resume else None, state.is_main)
    tokens_per_step = c.batch_size * (n_enc + n_dec) * c.accum_steps * state.world
    bar = _progress(c, state, start)
    losses, val_history, last_saved = [], [], None
    step_time = time.perf_counter()
    for step in range(start, c.steps):
        lr = lr_at(step, c)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        total = torch.zeros((), dtype=torch.float64)
        per_mod: dict[str, float] = {}
        for micro in range(c.accum_steps):
            batch = next(iterator)
            if POSITION_KEY in batch:
                positions[batch[POSITION_KEY]["worker"]] = batch[POSITION_KEY]
                consumed += 1
            sync = contextlib.nullcontext()
            if strategy == "ddp" and micro < c.accum_steps - 1:
                sync = model.no_sync()
            elif strategy == "fsdp":
                model.set_requires_gradient_sync(micro == c.accum_steps - 1)
            with sync:
                with _autocast(c, state.device):
                    loss, mods = model(_to_device(batch, state.device), n_enc, n_dec, c.loss_type)
                (loss / c.accum_steps).backward()
            total += loss.detach().double().cpu() / c.accum_steps
            for k, v in mods.items():
                per_mod[k] = per_mod.get(k, 0.0) + float(v.detach()) / c.accum_steps
        grad_norm = None
        if not sib:
            if c.clip_grad > 0:
                norm = clip_grad_norm_(model.parameters(), c.clip_grad)
                grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP2: a DTensor
            optimizers[0].step()
            optimizers[0].zero_grad(set_to_none=True)
        keys = sorted(per_mod)
        reduced = distributed.all_reduce_mean(torch.tensor([float(total)] + [per_mod[k] for k in keys],
                                                           dtype=torch.float64), state).tolist()
        step_loss = reduced[0]
        losses.append(step_loss)
        now = time.perf_counter()
        tokens_s = tokens_per_step / max(now - step_time, 1e-9)
        step_time = now
        done = step + 1
        if not math.isfinite(step_loss):
            raise ValueError(f"step {done}: the loss is {step_loss}; lower lr or enable clip_grad "
                             f"(the last checkpoint is {last_saved})")
        record = {"step": done, "loss": step_loss, "lr": lr, "tokens_per_s": tokens_s,
                  **{f"loss/{k}": v for k, v in zip(keys, reduced[1:], strict=True)}}
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        if positions:
            record["unreadable_shards"] = max(p["unreadable_shards"] for p in positions.values())
        if done % c.log_every == 0 or done == c.steps:
            metrics.write(record)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tokens_s:.0f}")
        if val and ((c.val_every and done % c.val_every == 0) or done == c.steps):
            result = {"step": done, **evaluate(model, val, n_enc, n_dec, c, state)}
            val_history.append(result)
            metrics.write(result)
            log(f"step {done}: val_loss {result['val_loss']:.4f}")
        if (c.save_every and done % c.save_every == 0) or done == c.steps:
            data = {"world": state.world, "workers": workers, "batches": consumed,
                    "positions": [{str(w): p for w, p in r.items()} for r in
                                  _gather_json({str(w): p for w, p in positions.items()}, state)]}
            last_saved = train_state.save_checkpoint(
                out_dir, done, model, optimizers, {"data": data, "config": c.to_dict()}, fsdp=strategy == "fsdp",
                is_main=state.is_main, keep_last=c.keep_last)
    if bar is not None:
        bar.close()
    metrics.close()
    if state.is_main and c.plot and metrics.path.exists():
        log(plot_losses(metrics.path, out_dir / "loss.png"))
    unreadable = max([p["unreadable_shards"] for p in positions.values()], default=0)
    if unreadable:
        log(f"warning: {unreadable} shard read(s) failed and were skipped (see the warnings above)")
    return {"losses": losses, "val": val_history, "checkpoint": last_saved, "out_dir": out_dir, "rank": state.rank,
            "unreadable_shards": unreadable}


def _progress(c: TrainConfig, state: distributed.Dist, start: int):
    if not (c.progress and state.is_main):
        return None
    from tqdm import tqdm

    return tqdm(total=c.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch global RNGs (dropout / drop-path use torch's)."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
