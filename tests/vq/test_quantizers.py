"""Quantizers: the shared interface, FSQ's exact id <-> code mapping, cosine VQ's nearest-code search,
EMA codebook learning and dead-code restarts."""

import math

import pytest
import torch
import torch.nn.functional as F

from open4m.vq.quantizers import FSQ, CosineVQ, build_quantizer


def _latents(b=2, d=4, h=3, w=5, scale=3.0, seed=0):
    return torch.randn(b, d, h, w, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize("quantizer", [FSQ([8, 5, 5, 5]), CosineVQ(64, 4)])
def test_interface_shapes_and_straight_through_gradient(quantizer):
    z = _latents().requires_grad_(True)
    quantizer.train()
    out = quantizer(z)
    assert out.z_q.shape == z.shape and out.ids.shape == (2, 3, 5) and out.ids.dtype == torch.int64
    assert out.ids.min() >= 0 and out.ids.max() < quantizer.codebook_size
    assert out.aux_loss.shape == ()
    (out.z_q.sum() + out.aux_loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    quantizer.eval()
    again = quantizer(z.detach())
    assert torch.allclose(quantizer.codes_from_ids(again.ids), again.z_q, atol=1e-6)


@pytest.mark.parametrize("quantizer", [FSQ([8, 5, 5, 5]), CosineVQ(64, 4)])
def test_wrong_latent_width_is_a_clear_error(quantizer):
    with pytest.raises(ValueError, match=r"expected latents \(B, 4, h, w\)"):
        quantizer(torch.zeros(1, 3, 2, 2))


def test_fsq_codebook_is_the_level_grid_and_ids_round_trip():
    fsq = FSQ([8, 5, 5, 5])
    assert fsq.codebook_size == 1000 and fsq.dim == 4 and not list(fsq.parameters())
    all_ids = torch.arange(1000).reshape(1, 10, 100)
    codes = fsq.codes_from_ids(all_ids)  # (1, 4, 10, 100)
    flat = codes.permute(0, 2, 3, 1).reshape(-1, 4)
    assert len({tuple(c.tolist()) for c in flat}) == 1000  # a bijection onto the grid
    for channel, levels in enumerate([8, 5, 5, 5]):
        half = levels // 2
        expected = sorted((k - half) / half for k in range(levels))
        assert sorted(set(flat[:, channel].tolist())) == pytest.approx(expected)
    # Feeding each code's pre-image back through the quantizer gives the same id: place the latent at
    # atanh of the target level so that the bound maps it onto that level.
    half_l = (fsq.levels - 1) * (1 + fsq.eps) / 2
    offset = torch.where(fsq.levels % 2 == 0, 0.5, 0.0)
    level_values = flat * torch.div(fsq.levels, 2, rounding_mode="floor")
    pre = torch.atanh((level_values + offset) / half_l) - torch.atanh(offset / half_l)
    ids = fsq(pre.reshape(1, 10, 100, 4).permute(0, 3, 1, 2)).ids
    assert torch.equal(ids, all_ids)


def test_fsq_has_no_auxiliary_loss_and_uses_many_codes():
    out = FSQ([8, 5, 5, 5]).train()(_latents(b=8, h=16, w=16, scale=1.5))
    assert float(out.aux_loss) == 0.0
    assert out.stats["batch_usage"] > 0.5  # 2048 spread-out latents hit most of the 1000 cells


def test_vq_picks_the_code_of_highest_cosine_similarity():
    vq = CosineVQ(16, 4).eval()
    z = _latents(scale=1.0)
    ids = vq(z).ids
    flat = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, 4), dim=-1)
    brute = torch.tensor([max(range(16), key=lambda k: float(v @ vq.embed[k])) for v in flat])
    assert torch.equal(ids.flatten(), brute)


def test_vq_eval_mode_leaves_the_codebook_alone():
    vq = CosineVQ(16, 4).eval()
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq(_latents())
    assert all(torch.equal(before[k], v) for k, v in vq.state_dict().items())


def test_vq_ema_moves_a_used_code_to_its_latents_and_leaves_unused_codes():
    torch.manual_seed(0)
    vq = CosineVQ(2, 3, decay=0.9, dead_code_threshold=0.0).train()
    vq.initted.fill_(True)
    start = F.normalize(torch.tensor([[1.0, 0.2, 0.0], [-1.0, 0.0, 0.0]]), dim=-1)
    vq.embed.copy_(start)
    vq.embed_sum.copy_(start)
    target = F.normalize(torch.tensor([1.0, 1.0, 0.0]), dim=0)
    z = target.view(1, 3, 1, 1).expand(4, 3, 2, 2).contiguous()
    cos_before = float(vq.embed[0] @ target)
    for _ in range(50):
        vq(z)
    assert float(vq.embed[0] @ target) > 0.999 > cos_before
    assert torch.equal(vq.embed[1], start[1])  # never assigned, never moved


def test_vq_dead_codes_are_restarted_from_batch_latents():
    torch.manual_seed(0)
    vq = CosineVQ(8, 4, dead_code_threshold=0.5).train()
    z = _latents(b=4, h=4, w=4)
    vq(z)  # initialises from the batch
    vq.cluster_size[3] = 0.0
    out = vq(_latents(b=4, h=4, w=4, seed=1))
    assert out.stats["restarts"] >= 1
    batch = F.normalize(_latents(b=4, h=4, w=4, seed=1).permute(0, 2, 3, 1).reshape(-1, 4), dim=-1)
    assert torch.isclose(batch @ vq.embed[3], torch.tensor(1.0), atol=1e-5).any()  # code 3 is a batch latent
    assert vq.cluster_size[3] >= 0.5


def test_vq_codebook_usage_grows_from_a_collapsed_codebook():
    """All codes start near one direction; restarts and EMA spread them over 32 data clusters."""
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(32, 8), dim=-1)
    vq = CosineVQ(32, 8, decay=0.9, dead_code_threshold=0.5).train()
    vq.initted.fill_(True)
    collapsed = centres[0].expand(32, 8).clone()
    vq.embed.copy_(collapsed)
    vq.embed_sum.copy_(collapsed)

    def batch():
        idx = torch.randint(0, 32, (512,))
        return (centres[idx] + 0.05 * torch.randn(512, 8)).T.reshape(1, 8, 16, 32)

    vq.eval()
    usage_before = vq(batch()).stats["batch_usage"]
    vq.train()
    for _ in range(100):
        vq(batch())
    vq.eval()
    usage_after = vq(batch()).stats["batch_usage"]
    assert usage_before < 0.2 and usage_after > 0.9


def test_build_quantizer_names():
    assert isinstance(build_quantizer("vq", codebook_size=8, dim=2, fsq_levels=[]), CosineVQ)
    assert build_quantizer("fsq", codebook_size=0, dim=0, fsq_levels=[5, 3]).codebook_size == 15
    with pytest.raises(ValueError, match="unknown quantizer 'pq'"):
        build_quantizer("pq", codebook_size=8, dim=2, fsq_levels=[])
    with pytest.raises(ValueError, match="levels must be"):
        FSQ([1, 4])
    assert math.prod([8, 5, 5, 5]) == FSQ([8, 5, 5, 5]).codebook_size
