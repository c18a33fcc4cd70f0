"""The MLP keeps one hidden activation for backward (open4m.model.layers.Mlp) with unchanged results."""

import pytest
import torch
from torch import nn

from open4m.model.layers import Mlp


def _grads(fn, module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    module.zero_grad(set_to_none=True)
    x.grad = None
    y = fn()
    (y.float().square().sum() + y.float().sum()).backward()
    return [y.detach(), x.grad, *(p.grad for p in module.parameters())]


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("act", [nn.GELU, nn.SiLU])
def test_mlp_outputs_and_gradients_equal_the_plain_composition_bitwise(act, autocast):
    torch.manual_seed(0)
    mlp = Mlp(16, 64, act)
    x = torch.randn(3, 5, 16, requires_grad=True)

    def run(f):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return f()

    ours = _grads(lambda: run(lambda: mlp(x)), mlp, x)
    plain = _grads(lambda: run(lambda: mlp.fc2(mlp.act(mlp.fc1(x)))), mlp, x)
    for a, b in zip(ours, plain, strict=True):
        assert torch.equal(a, b)


def _saved_storages(y: torch.Tensor) -> set[int]:
    """Addresses of every tensor the autograd graph of ``y`` saved for backward."""
    found, seen, stack = set(), set(), [y.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for attr in dir(node):
            if attr.startswith("_saved_"):
                value = getattr(node, attr)
                for t in value if isinstance(value, tuple) else (value,):
                    if isinstance(t, torch.Tensor):
                        found.add(t.untyped_storage().data_ptr())
        stack.extend(fn for fn, _ in node.next_functions)
    return found


def test_the_activation_output_is_not_kept_for_backward():
    torch.manual_seed(0)
    mlp = Mlp(16, 64, nn.GELU)
    outputs = []  # strong references: the addresses stay unique while the test looks for them
    mlp.act.register_forward_hook(lambda module, inputs, out: outputs.append(out))
    x = torch.randn(2, 7, 16, requires_grad=True)

    ours = mlp(x)
    plain = mlp.fc2(mlp.act(mlp.fc1(x)))
    assert outputs[1].untyped_storage().data_ptr() in _saved_storages(plain)  # what autograd keeps by default
    assert outputs[0].untyped_storage().data_ptr() not in _saved_storages(ours)  # recomputed instead
    ours.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_without_grad_nothing_is_recomputed_or_hooked():
    mlp = Mlp(8, 32, nn.GELU)
    x = torch.randn(4, 8)
    with torch.no_grad():
        y = mlp(x)
    assert torch.equal(y, mlp.fc2(mlp.act(mlp.fc1(x))))
    assert y.grad_fn is None
