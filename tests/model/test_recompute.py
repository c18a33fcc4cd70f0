"""Blocks keep norm outputs and merged attention heads out of the saved tensors (open4m.model.layers.recompute_saved)
and still give bitwise the outputs and gradients of plain autograd."""

import contextlib

import pytest
import torch

from open4m.model.layers import Block, DecoderBlock, recompute_saved

from .test_mlp_memory import _saved_storages


def _plain_saving():
    """Identity saved-tensor hooks: recompute_saved steps aside under any other scheme, so this is plain autograd."""
    return torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)


def _run(block, inputs, plain: bool, autocast: bool):
    block.zero_grad(set_to_none=True)
    for t in inputs:
        t.grad = None
    with _plain_saving() if plain else contextlib.nullcontext():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = block(*inputs)
    (y.float().square().sum() + y.float().sum()).backward()
    return [y.detach(), *(t.grad for t in inputs), *(p.grad for p in block.parameters())]


def _blocks():
    torch.manual_seed(0)
    enc = Block(32, 4, qkv_bias=True)
    dec = DecoderBlock(32, 4, qkv_bias=True)
    x = torch.randn(2, 6, 32, requires_grad=True)
    context = torch.randn(2, 5, 32, requires_grad=True)
    return (enc, (x,)), (dec, (x, context))


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("which", [0, 1], ids=["encoder", "decoder"])
def test_blocks_give_plain_autograd_results_bitwise(which, autocast):
    block, inputs = _blocks()[which]
    ours = _run(block, inputs, plain=False, autocast=autocast)
    plain = _run(block, inputs, plain=True, autocast=autocast)
    for a, b in zip(ours, plain, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("which", [0, 1], ids=["encoder", "decoder"])
def test_norm_outputs_and_merged_heads_are_not_kept_for_backward(which):
    block, inputs = _blocks()[which]
    kept = []  # strong references: addresses stay unique while the test looks for them
    norms = [m for name, m in block.named_modules() if name in ("norm1", "norm2", "query_norm", "context_norm")]
    handles = [m.register_forward_hook(lambda module, args, out: kept.append(out)) for m in norms]
    projs = [m.proj for m in block.modules() if hasattr(m, "proj") and hasattr(m, "num_heads")]
    handles += [m.register_forward_hook(lambda module, args, out: kept.append(args[0])) for m in projs]
    ours = block(*inputs)
    ours_kept, kept[:] = list(kept), []
    with _plain_saving():
        plain = block(*inputs)
    for handle in handles:  # reading the saved tensors below reruns the norms
        handle.remove()
    assert len(ours_kept) == len(kept) == len(norms) + len(projs)
    plain_saved, ours_saved = _saved_storages(plain), _saved_storages(ours)
    assert all(t.untyped_storage().data_ptr() in plain_saved for t in kept)  # autograd keeps them by default
    # merged heads that are a view of the attention output (SDPA's layout for some shapes) share the storage
    # that the attention op keeps; a copy must not be kept
    assert not any(t.untyped_storage().data_ptr() in ours_saved for t in ours_kept if t._base is None)


def test_recipes_step_aside_under_other_saved_tensor_hooks_and_without_grad():
    h = torch.randn(3, requires_grad=True)
    out = h * 2

    def hooked(*recipes) -> bool:
        return not isinstance(recompute_saved(*recipes), contextlib.nullcontext)

    assert hooked((out, lambda t: t * 2, h))
    with _plain_saving():
        assert not hooked((out, lambda t: t * 2, h))  # activation checkpointing's hooks must see every tensor
    with recompute_saved((out, lambda t: t * 2, h)):
        assert hooked((out, lambda t: t * 2, h))  # its own contexts nest
    with torch.no_grad():
        assert not hooked((out, lambda t: t * 2, h))
    assert not hooked((out.detach(), lambda t: t * 2, h))  # nothing that needs a gradient
