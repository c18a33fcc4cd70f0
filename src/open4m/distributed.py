"""Process-group setup for one process or torchrun: the backend from the device, a sane timeout, model wrapping.

Unlike the official trainer (OFFICIAL-4M-SPEC §9.4) nothing assumes CUDA: without torchrun's
environment the trainer runs as one plain process; under torchrun it uses gloo on CPU and nccl on
GPU, and the process-group timeout is minutes (the official one is 4800 days).
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

DEFAULT_TIMEOUT_MIN = 30


@dataclass(frozen=True)
class Dist:
    """Where this process stands: ``rank`` of ``world`` processes, its ``device``, and whether a group is up."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: this rank's GPU when CUDA is available, else CPU; or ``"cpu"`` / ``"cuda"`` explicitly."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(device: str = "auto", timeout_min: float = DEFAULT_TIMEOUT_MIN) -> Dist:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (env:// rendezvous), else a single process.

    The backend is nccl for CUDA devices and gloo for CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world <= 1:
        return Dist(device=dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_min), rank=rank, world_size=world,
                                device_id=dev if dev.type == "cuda" else None)
    return Dist(rank=rank, world=world, local_rank=local_rank, device=dev, initialized=True)


def teardown(state: Dist, finished: bool = True) -> None:
    """Leave the process group this process joined.

    ``finished``: the run ended normally on every rank, so wait at a barrier first -- no rank closes its
    connections while another is still writing its last checkpoint or finishing a collective. After an
    error no barrier is attempted (the other ranks may never arrive); the group is simply destroyed.
    """
    if state.initialized and dist.is_initialized():
        close_group(finished)


def close_group(finished: bool = True) -> None:
    """Barrier (when ``finished``), then collect garbage that may still hold the group (module wrappers
    in reference cycles), then destroy the default process group."""
    if finished:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def wrap(model: nn.Module, strategy: str, state: Dist) -> nn.Module:
    """``"none"``: as is; ``"ddp"``: DistributedDataParallel; ``"fsdp"``: FSDP2 ``fully_shard`` of every
    encoder/decoder block, then of the whole model (parameters become sharded DTensors)."""
    if strategy == "none" or not state.initialized:
        if strategy != "none" and state.world > 1:
            raise ValueError(f"distributed '{strategy}' needs an initialised process group")
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [state.device.index] if state.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in [*model.encoder, *model.decoder]:
            fully_shard(block)
        fully_shard(model)
        return model
    raise ValueError(f"distributed must be 'auto', 'none', 'ddp' or 'fsdp', got {strategy!r}")


def all_reduce_mean(values: torch.Tensor, state: Dist) -> torch.Tensor:
    """Mean of ``values`` over all ranks (identity in one process)."""
    if state.initialized:
        values = values.clone()
        dist.all_reduce(values)
        values /= state.world
    return values
