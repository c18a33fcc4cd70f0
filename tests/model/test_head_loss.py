"""The fused logits head + cross-entropy equals the plain head and F.cross_entropy, values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from open4m import modalities
from open4m.batch import make_batch
from open4m.model import FourM, FourMConfig
from open4m.model.head_loss import linear_cross_entropy

IMG = modalities.image_tokens("tok_hl@32", 96, 32, 8).name  # 4x4 grid
SEQ = modalities.sequence("seq_hl", 120, 10).name


def _inputs(rows=37, dim=24, vocab=301, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=g, requires_grad=True)
    w = torch.randn(vocab, dim, generator=g).mul_(0.3).requires_grad_()
    target = torch.randint(0, vocab, (rows,), generator=g)
    return x, w, target


def _grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("chunk_rows", [1024, 8, 1])
def test_fp32_loss_and_gradients_equal_the_plain_head(chunk_rows):
    x, w, target = _inputs()
    ref = F.cross_entropy(x @ w.t(), target)
    fused = linear_cross_entropy(x, w, target, chunk_rows=chunk_rows)
    torch.testing.assert_close(fused, ref, rtol=1e-6, atol=1e-6)
    # a non-unit incoming gradient is applied to both inputs' gradients
    for a, b in zip(_grads(3.0 * fused, x, w), _grads(3.0 * ref, x, w), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_padding_rows_add_nothing():
    x, w, target = _inputs(rows=40)
    n = 33
    ref = F.cross_entropy(x[:n] @ w.t(), target[:n])
    fused = linear_cross_entropy(x, w, target[:n], n=n, chunk_rows=16)
    torch.testing.assert_close(fused, ref, rtol=1e-6, atol=1e-6)
    gx, gw = _grads(fused, x, w)
    rx, rw = _grads(ref, x, w)
    torch.testing.assert_close(gx[:n], rx[:n], rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(gx[n:]) == 0
    torch.testing.assert_close(gw, rw, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_follows_the_plain_autocast_path():
    x, w, target = _inputs(rows=64, dim=32, vocab=500)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy((x @ w.t()).float(), target)
        fused = linear_cross_entropy(x, w, target)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, ref, rtol=1e-3, atol=1e-3)
    (gx, gw), (rx, rw) = _grads(fused, x, w), _grads(ref, x, w)
    assert gx.dtype == gw.dtype == torch.float32
    torch.testing.assert_close(gx, rx, rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(gw, rw, rtol=2e-2, atol=2e-3)


def test_frozen_weight_and_no_grad():
    x, w, target = _inputs()
    w.requires_grad_(False)
    (gx,) = _grads(linear_cross_entropy(x, w, target), x)
    (rx,) = _grads(F.cross_entropy(x @ w.t(), target), x)
    torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        loss = linear_cross_entropy(x, w, target)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, F.cross_entropy(x.detach() @ w.t(), target), rtol=1e-6, atol=1e-6)


def test_second_backward_raises_a_clear_error():
    x, w, target = _inputs()
    loss = linear_cross_entropy(x, w, target)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_bad_shapes_are_named():
    x, w, target = _inputs()
    with pytest.raises(ValueError, match=r"share D.*\(37, 24\).*\(301, 23\)"):
        linear_cross_entropy(x, w[:, :23], target)
    with pytest.raises(ValueError, match="target of shape"):
        linear_cross_entropy(x, w, target[:5])


@pytest.mark.parametrize("loss_type", ["mod", "token"])
def test_training_forward_gradients_equal_the_plain_heads_with_tied_embeddings(loss_type):
    """FourM's training loss (fused heads) gives every parameter the gradient that logits + F.cross_entropy
    give, tied decoder embeddings (head + teacher-forcing lookup of one weight) included."""
    torch.manual_seed(0)
    model = FourM(FourMConfig(domains_in=[IMG, SEQ], domains_out=[IMG, SEQ], dim=32, num_heads=4, encoder_depth=2,
                              decoder_depth=2, tie_decoder_embeddings=True)).train()
    g = torch.Generator().manual_seed(1)
    tensors = {IMG: torch.randint(0, 96, (3, 16), generator=g), SEQ: torch.randint(7, 120, (3, 22), generator=g)}
    batch = make_batch(tensors,
                       inputs={IMG: [0, 1, 2, 3, 9], SEQ: list(range(4))},
                       targets={IMG: [4, 5, 6, 7, 8, 15], SEQ: list(range(10, 17))})
    loss, _ = model(batch, 16, 40, loss_type=loss_type)
    loss.backward()
    fused = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    dec, y = model.forward_decoder_outputs(batch, 16, 40)
    flat_y, flat_mod, flat_tgt = y.reshape(-1, y.shape[-1]), dec.mod_ids.flatten(), dec.target_ids.flatten()
    losses, weights = [], []
    for name in (IMG, SEQ):
        rows = (flat_mod == modalities.get(name).id).nonzero().squeeze(1)
        logits = model.logits(flat_y[rows], name)
        losses.append(F.cross_entropy(logits, flat_tgt[rows]))
        weights.append(logits.numel())
    ref = (sum(w * v for w, v in zip(weights, losses, strict=True)) / sum(weights) if loss_type == "token"
           else sum(losses) / len(losses))
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    ref.backward()
    plain = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert plain.keys() == fused.keys()
    assert f"decoder_embeddings.{SEQ}.token_emb.weight" in fused  # the tied weight: head + lookup
    for k in plain:
        torch.testing.assert_close(fused[k], plain[k], rtol=1e-4, atol=1e-6, msg=k)


def test_tied_sequence_lookup_adds_its_rows_to_the_heads_dense_gradient():
    """A tied decoder embedding's teacher-forcing lookup hands autograd a sparse gradient, added into the head's
    dense one: the parameter's .grad is dense and equals head gradient + dense lookup gradient ([PAD] excluded)."""
    from open4m.model.embeddings import TokenDecoderEmbedding

    torch.manual_seed(0)
    emb = TokenDecoderEmbedding(modalities.get(SEQ), 16, tie=True)
    tensor = torch.tensor([[5, 0, 9, 9, 3], [0, 7, 7, 2, 1]])
    b, i = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 1, 2, 0, 1, 2])
    y = torch.randn(4, 16)
    scale = torch.randn(6, 16)
    loss = (emb(y) ** 2).sum() + (emb.content(tensor, b, i) * scale).sum()
    loss.backward()
    grad = emb.token_emb.weight.grad
    assert grad.layout == torch.strided

    w = emb.token_emb.weight.detach().clone().requires_grad_()
    ref = ((y @ w.t()) ** 2).sum() + (F.embedding(tensor[b, i], w, padding_idx=0) * scale).sum()
    ref.backward()
    torch.testing.assert_close(grad, w.grad, rtol=1e-6, atol=1e-6)
