import pytest
import torch

from open4m import modalities
from open4m.batch import make_batch
from open4m.model import FourM, FourMConfig
from open4m.optim import StepInBackward, adamw, init_state, no_weight_decay, param_groups

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
