"""AdamW as 4M trains with it: the official weight-decay groups, and an optional step inside backward.

Weight decay (OFFICIAL-4M-SPEC §7): every parameter decays except those whose name contains
``norm.`` / ``.norm`` or ends in ``.bias``; token embeddings, modality embeddings, the mask token and
learned position embeddings *are* decayed, as in the official recipe.

:class:`StepInBackward` applies the AdamW update to each parameter as soon as its gradient is
complete during ``backward()`` and frees that gradient at once, so the gradients of the whole model
never exist together. The update is the same AdamW update, applied per tensor; it cannot be combined
with gradient clipping by global norm or with gradient accumulation, which need every gradient before
any step. It lowers the memory at the end of backward (all gradients, ~360 MB for the tiny benchmark
model in fp32), not the step's peak, which for 4M comes earlier: at the end of the forward pass and the
start of backward, with every activation alive and few gradients yet.

:class:`AdamW` is torch's AdamW (the fused kernel, the same updates and state dict) that also takes sparse
gradients, made dense one parameter at a time inside ``step`` (see
:meth:`open4m.model.FourM.use_sparse_embedding_grads`), and that leaves torch's compiler stack unloaded;
:func:`clip_grad_norm_` clips such gradients.

Both optimizers create their state (``exp_avg``, ``exp_avg_sq``: two float32 copies of every
parameter) when built, as torch would at the first step, with the same zeros. Built lazily inside the
first step, these long-lived tensors land between that step's activations and gradients, and the holes
they leave in the heap raise the process's peak memory on every later step.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import torch
from torch import nn


def _undecorated(method, *args):
    """Call torch's ``method`` without its compiler guard while the compiler is not loaded.

    ``torch.optim.Optimizer`` marks ``add_param_group``, ``zero_grad``, ``state_dict``, ``load_state_dict`` and
    (through ``step``'s grad-mode wrapper) ``step`` so that ``torch.compile`` does not trace them; the guard
    imports ``torch._dynamo`` on first call, which pulls in sympy and ~830 modules (~45 MB resident,
    1.3 s) even in a process that never compiles. Nothing can be compiling before ``torch._dynamo`` is
    imported, so until then the undecorated function (``__wrapped__``) is the same call.
    """
    inner = getattr(method, "__wrapped__", None)
    if inner is None or "torch._dynamo" in sys.modules:
        return method(*args)
    return inner(*args)


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` (same arguments, same updates) that takes sparse gradients and leaves the compiler
    unloaded.

    Sparse gradients (:meth:`open4m.model.FourM.use_sparse_embedding_grads`) are made dense one parameter
    at a time after the dense parameters have stepped, and each dense copy is freed after its update:
    the update is the one torch computes from the dense gradient, bit for bit, while the process never
    holds more than one such (V, D) copy. The sparse gradients stay on the parameters until ``zero_grad``.

    Compiler: see :func:`_undecorated`. Once something imports ``torch._dynamo`` (``torch.compile``,
    distributed checkpointing, ...), every method is torch's own again.
    """

    def add_param_group(self, param_group: dict) -> None:
        _undecorated(torch.optim.Optimizer.add_param_group, self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _undecorated(torch.optim.Optimizer.zero_grad, self, set_to_none)

    def state_dict(self) -> dict:
        return _undecorated(torch.optim.Optimizer.state_dict, self)

    def load_state_dict(self, state_dict: dict) -> None:
        _undecorated(torch.optim.Optimizer.load_state_dict, self, state_dict)

    def step(self, closure=None):
        with_grad = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        sparse = [p for p in with_grad if p.grad.is_sparse]
        if not sparse:
            return self._step(closure)
        if closure is not None:
            raise ValueError("AdamW.step: a closure cannot be combined with sparse gradients")
        grads = {p: p.grad for p in with_grad}
        for p in sparse:
            p.grad = None
        self._step()
        for p in with_grad:  # below, one parameter at a time has a gradient
            p.grad = None
        try:
            for p in sparse:
                p.grad = grads[p].to_dense()
                self._step()
                p.grad = None
        finally:
            for p, g in grads.items():
                p.grad = g

    def _step(self, closure=None):
        with torch.set_grad_enabled(self.defaults["differentiable"]):  # what torch's step wrapper sets itself
            return _undecorated(torch.optim.AdamW.step, self, closure)


def clip_grad_norm_(parameters, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (2-norm) that also takes sparse gradients; returns the total norm.

    All-dense gradients go to torch's function unchanged. A sparse gradient's norm is that of its dense
    form (made one parameter at a time and dropped), so the total equals torch's on the dense gradients;
    scaling multiplies its values, which agrees with scaling the dense form to rounding.
    """
    params = [p for p in parameters if p.grad is not None]
    if not any(p.grad.is_sparse for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    norms = [torch.linalg.vector_norm(p.grad.to_dense() if p.grad.is_sparse else p.grad) for p in params]
    total = torch.linalg.vector_norm(torch.stack(norms))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for p in params:
        (p.grad._values() if p.grad.is_sparse else p.grad).mul_(coef)
    return total


def no_weight_decay(name: str) -> bool:
    """The official rule: norms and biases are not decayed."""
    return "norm." in name or ".norm" in name or name.endswith(".bias")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups (decayed, not decayed) over the trainable parameters, each listed once."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if no_weight_decay(name) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(model: nn.Module, lr: float, weight_decay: float = 0.05, betas=(0.9, 0.95), eps: float = 1e-8,
          fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; the fused kernel when the parameters' device supports it."""
    if lr <= 0:
        raise ValueError(f"learning rate must be > 0, got {lr}")
    groups = param_groups(model, weight_decay)
    if fused is None:
        fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return init_state(AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused))


def init_state(opt: torch.optim.AdamW) -> torch.optim.AdamW:
    """Create the AdamW state of every parameter now, exactly as torch's first ``step()`` would (same zeros).

    Parameters that already have state (e.g. loaded with ``load_state_dict``) are left alone.
    """
    for group in opt.param_groups:
        if group["amsgrad"]:
            raise ValueError("init_state does not create amsgrad state")
        for p in group["params"]:
            if opt.state[p]:
                continue
            on_device = group["capturable"] or group["fused"]
            float64 = not group["fused"] and torch.get_default_dtype() == torch.float64
            step = torch.zeros((), dtype=torch.float64 if float64 else torch.float32,
                               device=p.device if on_device else "cpu")
            opt.state[p] = {"step": step, "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
    return opt


class StepInBackward:
    """AdamW applied parameter by parameter during ``backward()``; gradients are freed right after.

    Usage::

        opt = StepInBackward(model, lr=1e-4)
        loss.backward()          # every parameter is updated here
        opt.set_lr(new_lr)       # schedules change the rate between steps

    The hooks stay attached until :meth:`remove`.
    """

    def __init__(self, model: nn.Module, lr: float, weight_decay: float = 0.05, betas=(0.9, 0.95),
                 eps: float = 1e-8) -> None:
        if lr <= 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        self.optimizers: dict[nn.Parameter, torch.optim.AdamW] = {}
        self.handles = []
        for group in param_groups(model, weight_decay):
            for p in group["params"]:
                fused = p.device.type in ("cpu", "cuda")
                self.optimizers[p] = init_state(AdamW([p], lr=lr, betas=betas, eps=eps,
                                                      weight_decay=group["weight_decay"], fused=fused))
                self.handles.append(p.register_post_accumulate_grad_hook(self._step))

    def _step(self, p: nn.Parameter) -> None:
        self.optimizers[p].step()
        p.grad = None

    def set_lr(self, lr: float) -> None:
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr

    def __iter__(self) -> Iterator[torch.optim.AdamW]:
        return iter(self.optimizers.values())

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
