"""Growing a trained 4M model deeper without changing what it computes (function-preserving depth growth).

:func:`deepen` returns a copy of a model with more encoder and/or decoder blocks. The trained blocks keep their
weights and their order; the new blocks sit between them, spread evenly (4 → 8 puts one new block after each
trained one), and start as the identity: every branch that writes into the residual stream (attention and
cross-attention output projections, the MLP's last layer) has zero weights and biases, so ``x + branch(x) = x``.
The grown model therefore predicts exactly what the trained one did, and training moves the new blocks away from
zero (the gradients of the zero projections are not zero), adding capacity on top of what was learned instead of
starting over. Embeddings, norms, heads and every other tensor are copied unchanged.
"""

from __future__ import annotations

import dataclasses

import torch

from open4m.model.fourm import FourM

# The layers whose outputs are added to the residual stream, per block type: zeroed in new blocks.
_RESIDUAL_OUTPUTS = {"encoder": ("attn.proj", "mlp.fc2"),
                     "decoder": ("self_attn.proj", "cross_attn.proj", "mlp.fc2")}


def new_block_slots(old_depth: int, new_depth: int) -> list[int | None]:
    """For each block of the grown stack, the index of the trained block it copies, or None for a new block.

    Trained blocks keep their order; the ``new_depth - old_depth`` new ones follow them evenly, the earlier
    trained blocks getting one more when it does not divide (e.g. 4 → 6: ``[0, None, 1, None, 2, 3]``)."""
    if old_depth < 1 or new_depth < old_depth:
        raise ValueError(f"a model can only grow deeper: {old_depth} blocks -> {new_depth} blocks")
    extra, slots = new_depth - old_depth, []
    for i in range(old_depth):
        slots.append(i)
        slots += [None] * (extra // old_depth + (1 if i < extra % old_depth else 0))
    return slots


def deepen(model: FourM, encoder_depth: int | None = None, decoder_depth: int | None = None) -> FourM:
    """A copy of ``model`` with ``encoder_depth`` / ``decoder_depth`` blocks (None = unchanged) that computes the
    same outputs (see the module docstring). New blocks get the model's usual initialisation except their
    residual outputs, which are zero. Raises ValueError when asked for fewer blocks than the model has."""
    config = model.config
    encoder_depth = config.encoder_depth if encoder_depth is None else int(encoder_depth)
    decoder_depth = config.decoder_depth if decoder_depth is None else int(decoder_depth)
    slots = {"encoder": new_block_slots(config.encoder_depth, encoder_depth),
             "decoder": new_block_slots(config.decoder_depth, decoder_depth)}
    grown = FourM(dataclasses.replace(config, encoder_depth=encoder_depth, decoder_depth=decoder_depth))
    grown.to(next(model.parameters()).device)
    with torch.no_grad():
        for name, module in model.named_children():
            if name in slots:
                continue
            grown.get_submodule(name).load_state_dict(module.state_dict())
        for stack, stack_slots in slots.items():
            old, new = getattr(model, stack), getattr(grown, stack)
            for j, source in enumerate(stack_slots):
                if source is not None:
                    new[j].load_state_dict(old[source].state_dict())
                    continue
                for layer in _RESIDUAL_OUTPUTS[stack]:
                    linear = new[j].get_submodule(layer)
                    linear.weight.zero_()
                    if linear.bias is not None:
                        linear.bias.zero_()
        for name, param in model.named_parameters(recurse=False):
            grown.get_parameter(name).copy_(param)
    return grown.train(model.training)


__all__ = ["deepen", "new_block_slots"]
