import subprocess
import sys
from pathlib import Path

import pytest
import torch

from open4m import modalities
from open4m.batch import make_batch
from open4m.model import FourM, FourMConfig
from open4m.optim import AdamW, StepInBackward, adamw, clip_grad_norm_, init_state, no_weight_decay, param_groups

IMG = modalities.image_tokens("tok_opt@32", 64, 32, 8).name
SEQ = modalities.sequence("seq_opt", 100, 10).name


def tiny_model():
    torch.manual_seed(0)
    return FourM(FourMConfig(domains_in=[IMG, SEQ], domains_out=[IMG, SEQ], dim=32, num_heads=4, encoder_depth=1,
                             decoder_depth=1, tie_decoder_embeddings=True))


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    tokens = {IMG: torch.randint(0, 64, (2, 16), generator=g), SEQ: torch.randint(7, 100, (2, 22), generator=g)}
    return make_batch(tokens, inputs={IMG: [0, 1, 2], SEQ: [0, 1]}, targets={IMG: [5, 6, 7], SEQ: list(range(10, 16))})


def test_official_weight_decay_groups():
    model = tiny_model()
    decay, no_decay = (dict.fromkeys(id(p) for p in g["params"]) for g in param_groups(model, 0.05))
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in no_decay} == {n for n in names.values() if no_weight_decay(n)}
    assert "mask_token" in {names[i] for i in decay}
    assert any(".token_emb." in names[i] for i in decay)
    assert all("norm" in names[i] or names[i].endswith(".bias") for i in no_decay)
    with pytest.raises(ValueError, match="learning rate must be > 0"):
        adamw(model, lr=0.0)


def test_step_in_backward_equals_the_standard_loop():
    plain, hooked = tiny_model(), tiny_model()
    opt = adamw(plain, lr=1e-2)
    in_backward = StepInBackward(hooked, lr=1e-2)
    for step in range(3):
        plain(batch(step), 8, 16)[0].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        hooked(batch(step), 8, 16)[0].backward()
        assert all(p.grad is None for p in hooked.parameters())
    for (name, a), b in zip(plain.named_parameters(), hooked.parameters(), strict=True):
        assert torch.equal(a, b), name
    in_backward.remove()


@pytest.mark.parametrize("fused", [False, True])
def test_state_created_up_front_gives_the_same_training_as_torch_lazy_state(fused):
    eager_model, lazy_model = tiny_model(), tiny_model()
    eager = adamw(eager_model, lr=1e-2, fused=fused)
    lazy = torch.optim.AdamW(param_groups(lazy_model, 0.05), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, fused=fused)
    params = list(eager_model.parameters())
    assert all(torch.equal(eager.state[p]["exp_avg"], torch.zeros_like(p)) for p in params)
    assert not lazy.state  # torch would create it only in the first step
    for step in range(3):
        for model, opt in ((eager_model, eager), (lazy_model, lazy)):
            model(batch(step), 8, 16)[0].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (name, a), b in zip(eager_model.named_parameters(), lazy_model.parameters(), strict=True):
        assert torch.equal(a, b), name
    for p, q in zip(params, lazy_model.parameters(), strict=True):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert eager.state[p][key].dtype == lazy.state[q][key].dtype
            assert torch.equal(eager.state[p][key], lazy.state[q][key]), key


def test_init_state_keeps_loaded_state():
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = next(model.parameters())
    opt.state[first] = {"step": torch.tensor(5.0), "exp_avg": torch.ones_like(first),
                        "exp_avg_sq": torch.ones_like(first)}
    init_state(opt)
    assert opt.state[first]["step"].item() == 5.0
    assert all(len(opt.state[p]) == 3 for p in model.parameters())


def test_step_in_backward_frees_each_gradient_while_backward_runs():
    model = tiny_model()
    in_backward = StepInBackward(model, lr=1e-2)
    params = list(model.parameters())
    alive = []
    for p in params:  # registered after StepInBackward's hooks, so these run after its step
        p.register_post_accumulate_grad_hook(lambda p: alive.append(sum(q.grad is not None for q in params)))
    model(batch(0), 8, 16)[0].backward()
    assert len(alive) == len(params)
    assert max(alive) == 0  # no gradient outlives its own step
    in_backward.remove()


def _train(model, opt, steps=3, clip=None):
    for step in range(steps):
        model(batch(step), 8, 16)[0].backward()
        if clip is not None:
            clip(model.parameters())
        opt.step()
        opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("fused", [False, True])
def test_adamw_updates_bitwise_as_torch_adamw(fused):
    ours_model, torch_model = tiny_model(), tiny_model()
    ours = AdamW(param_groups(ours_model, 0.05), lr=1e-2, betas=(0.9, 0.95), fused=fused)
    theirs = torch.optim.AdamW(param_groups(torch_model, 0.05), lr=1e-2, betas=(0.9, 0.95), fused=fused)
    _train(ours_model, ours)
    _train(torch_model, theirs)
    for (name, a), b in zip(ours_model.named_parameters(), torch_model.parameters(), strict=True):
        assert torch.equal(a, b), name
    restored = torch.optim.AdamW(param_groups(tiny_model(), 0.05), lr=1e-2, fused=fused)
    restored.load_state_dict(ours.state_dict())  # the state dict is torch's format
    assert restored.state_dict()["state"].keys() == theirs.state_dict()["state"].keys()


@pytest.mark.parametrize("in_backward", [False, True])
def test_sparse_embedding_gradients_give_the_dense_update_bitwise(in_backward):
    dense_model, sparse_model = tiny_model(), tiny_model()
    assert sorted(sparse_model.use_sparse_embedding_grads()) == sorted([IMG, SEQ])
    sparse_model(batch(0), 8, 16)[0].backward()
    table = sparse_model.encoder_embeddings[SEQ].token_emb.weight
    assert table.grad.is_sparse and table.grad._nnz() <= 2 * 22  # the looked-up rows only
    sparse_model.zero_grad(set_to_none=True)
    if in_backward:
        hooked = [StepInBackward(dense_model, lr=1e-2), StepInBackward(sparse_model, lr=1e-2)]
        for step in range(3):
            dense_model(batch(step), 8, 16)[0].backward()
            sparse_model(batch(step), 8, 16)[0].backward()
        for opt in hooked:
            opt.remove()
    else:
        _train(dense_model, adamw(dense_model, lr=1e-2))
        _train(sparse_model, adamw(sparse_model, lr=1e-2))
    for (name, a), b in zip(dense_model.named_parameters(), sparse_model.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_sparse_gradients_stay_until_zero_grad_and_one_table_is_dense_at_a_time():
    model = tiny_model()
    model.use_sparse_embedding_grads()
    opt = adamw(model, lr=1e-2)
    model(batch(0), 8, 16)[0].backward()
    before = {p: p.grad for p in model.parameters() if p.grad is not None}
    dense_grads_seen = []
    original = AdamW._step

    def spy(self, closure=None):
        dense_grads_seen.append(sum(p.grad is not None for g in self.param_groups for p in g["params"]))
        return original(self, closure)

    AdamW._step = spy
    try:
        opt.step()
    finally:
        AdamW._step = original
    assert dense_grads_seen[1:] == [1, 1]  # after the dense step, each sparse table steps alone
    assert {p: p.grad for p in model.parameters() if p.grad is not None} == before
    with pytest.raises(ValueError, match="closure"):
        opt.step(lambda: 0.0)


def test_clip_grad_norm_takes_sparse_gradients():
    dense_model, sparse_model = tiny_model(), tiny_model()
    sparse_model.use_sparse_embedding_grads()
    for m in (dense_model, sparse_model):
        m(batch(0), 8, 16)[0].backward()
    expected = torch.nn.utils.clip_grad_norm_(dense_model.parameters(), 0.1)
    total = clip_grad_norm_(sparse_model.parameters(), 0.1)
    assert expected > 0.1  # the clip is active
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=0)
    for (name, a), b in zip(dense_model.named_parameters(), sparse_model.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(b.grad.to_dense() if b.grad.is_sparse else b.grad, a.grad, rtol=1e-6,
                                       atol=1e-9, msg=name)
    dense_again = tiny_model()
    dense_again(batch(0), 8, 16)[0].backward()
    assert torch.equal(clip_grad_norm_(dense_again.parameters(), 0.1), expected)  # all dense: torch's function


def test_training_does_not_load_the_compiler():
    code = (
        "import sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_optim import batch, tiny_model\n"
        "from open4m.optim import StepInBackward, adamw\n"
        "model = tiny_model(); model.use_sparse_embedding_grads(); opt = adamw(model, lr=1e-2)\n"
        "model(batch(0), 8, 16)[0].backward(); opt.step(); opt.zero_grad()\n"
        "opt.load_state_dict(opt.state_dict())\n"
        "hooked = StepInBackward(tiny_model(), lr=1e-2)\n"
        "print('torch._dynamo' in sys.modules, 'sympy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stderr
