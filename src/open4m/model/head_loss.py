"""A logits head and its cross-entropy in one step, with the gradients computed in the forward pass.

The plain way -- ``F.cross_entropy(x @ W.T, target)`` -- keeps an (n, V) matrix of log-probabilities
from the forward pass to the backward pass and builds two more of the same size in backward (the
gradient of the log-softmax and its cast), on top of the (V, D) weight gradient. For 4M's heads V is
8k-30k, so these are the largest transient tensors of a training step, and they arrive at its peak:
the end of the forward pass and the start of backward, when every activation is alive.

:func:`linear_cross_entropy` instead computes, for row chunks of ``x``: the logits, the loss, and
the gradient of the mean loss with respect to the logits (``softmax - onehot``); turns the latter at
once into the gradients of ``x`` (n, D) and ``W`` (V, D) and keeps only those until backward, where
they are scaled by the incoming gradient. No (n, V) matrix outlives a chunk. The FLOPs are the same
as the plain way (one product forward, two "backward" products), so nothing is recomputed; the
weight gradient merely exists from the forward pass on instead of from the start of backward.

Precision follows autocast as the plain path does: under CPU/CUDA autocast the products run in the
autocast dtype and the softmax in float32; gradients come back in the dtypes of ``x`` and ``W``.
Values equal the plain path's to float rounding (the scale is applied after the products rather
than before them). Backward may run once (``retain_graph`` re-use raises a clear error).
"""

from __future__ import annotations

import torch

# Rows of x processed at once: bounds the transient (rows, V) float32 logits (1024 x 30k: 123 MB).
CHUNK_ROWS = 1024


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, n: int, chunk_rows: int,
                grads: bool):
        need_x, need_w = grads and ctx.needs_input_grad[0], grads and ctx.needs_input_grad[1]
        cdt = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            xc, wc = x.to(cdt), weight.to(cdt)
            grad_x = torch.empty_like(x) if need_x else None
            grad_w = None
            total = torch.zeros((), dtype=torch.float32, device=x.device)
            for start in range(0, x.shape[0], chunk_rows):
                stop = min(start + chunk_rows, x.shape[0])
                real = max(0, min(stop, n) - start)  # rows of this chunk that are not padding
                logits = (xc[start:stop] @ wc.t()).float()  # (c, V)
                lse = torch.logsumexp(logits[:real], dim=1)
                tgt = target[start: start + real, None]
                total += (lse - logits[:real].gather(1, tgt).squeeze(1)).sum()
                if not (need_x or need_w):
                    continue
                # d(sum of losses)/d(logits) = softmax - onehot, in place; padding rows get no gradient
                g = logits
                g[:real].sub_(lse[:, None]).exp_()
                g[:real].scatter_add_(1, tgt, g.new_full((real, 1), -1.0))
                g[real:].zero_()
                g = g.to(cdt)
                if need_x:
                    grad_x[start:stop] = g @ wc
                if need_w:
                    if grad_w is None:
                        grad_w = (g.t() @ xc[start:stop]).float()
                    elif cdt == torch.float32:  # accumulate in place (out= form: counted by FlopCounterMode)
                        torch.addmm(grad_w, g.t(), xc[start:stop], out=grad_w)
                    else:
                        grad_w += g.t() @ xc[start:stop]
                del logits, g
        ctx.grads = (grad_x, None if grad_w is None else grad_w.to(weight.dtype))
        ctx.n = n
        return total / n

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.grads is None:
            raise RuntimeError("linear_cross_entropy: backward ran twice through the same loss; its gradients "
                               "were computed in the forward pass and handed out once (no retain_graph re-use)")
        grad_x, grad_w = ctx.grads
        ctx.grads = None
        scale = grad / ctx.n
        if grad_x is not None:
            grad_x.mul_(scale.to(grad_x.dtype))
        if grad_w is not None:
            grad_w.mul_(scale.to(grad_w.dtype))
        return grad_x, grad_w, None, None, None, None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, n: int | None = None,
                         chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """Mean cross-entropy of the logits ``x @ weight.T`` against ``target``, as ``F.cross_entropy``.

    x: (R, D) rows; weight: (V, D); target: (n,) class ids in [0, V) for the first ``n`` rows (default R).
    Rows past ``n`` are padding (e.g. to keep matrix shapes repeating for oneDNN): their logits are
    computed but they add nothing to the loss or the gradients. Returns a float32 scalar.

    With gradients needed, the (V, D) weight gradient and the (R, D) input gradient are built during
    this call (module docstring); without, only the loss is computed.
    """
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: x (R, D) and weight (V, D) must share D, got x "
                         f"{tuple(x.shape)} and weight {tuple(weight.shape)}")
    n = x.shape[0] if n is None else n
    if not 0 < n <= x.shape[0] or target.shape != (n,):
        raise ValueError(f"linear_cross_entropy: need 0 < n <= {x.shape[0]} rows and target of shape ({n},), "
                         f"got n={n}, target {tuple(target.shape)}")
    if chunk_rows < 1:
        raise ValueError(f"linear_cross_entropy: chunk_rows must be >= 1, got {chunk_rows}")
    grads = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    return _LinearCrossEntropy.apply(x, weight, target.long(), n, chunk_rows, grads)
