"""The sampler on the official tiny checkpoint follows the official semantics (OFFICIAL-4M-SPEC §5.3).

The references below re-derive each step from the model's training-style forward pass
(``FourM.forward_logits``, itself checked against the official forward): MaskGIT writes, each step, the
``k`` most confident still-masked positions with the encoder seeing every token written so far; greedy
captioning feeds the prefix by teacher forcing and stops at the final target token.
"""

import pytest
import torch

from generation_helpers import FIXTURES, text_tokenizer
from open4m.batch import make_batch
from open4m.generation import Sampler, TargetSpec
from open4m.generation.schedules import token_schedule
from open4m.model import from_pretrained


@pytest.fixture(scope="module")
def model():
    path = FIXTURES / "official-tiny"
    if not path.exists():
        pytest.skip("official tiny checkpoint not available (../shared/fixtures/official-tiny)")
    return from_pretrained(path).eval()


@pytest.fixture(scope="module")
def rgb():
    return torch.randint(0, 16384, (2, 196), generator=torch.Generator().manual_seed(0))


def _forward(model, batch):
    n_enc = int(torch.cat([~d["input_mask"] for d in batch.values()], 1).sum(1).max())
    n_dec = int(sum((~d["target_mask"]).sum(1) for d in batch.values()).max())
    return model.forward_logits(batch, n_enc, n_dec)


def test_temperature_zero_maskgit_writes_the_official_positions(model, rgb):
    target = "tok_depth@224"
    counts = token_schedule("cosine", 5, 196)
    tokens = torch.zeros(2, 196, dtype=torch.long)
    known = torch.zeros(2, 196, dtype=torch.bool)
    expected = []
    with torch.no_grad():
        for k in counts:
            batch = make_batch({"tok_rgb@224": rgb, target: tokens}, inputs={"tok_rgb@224": "all", target: known},
                               targets={target: ~known})
            conf, best = _forward(model, batch)[target].float().softmax(-1).max(-1)  # slots = open positions, ascending
            written = torch.zeros_like(known)
            for i in range(2):
                open_pos = (~known[i]).nonzero().squeeze(1)
                top = conf[i, : open_pos.numel()].topk(k).indices
                written[i, open_pos[top]] = True
                tokens[i, open_pos[top]] = best[i, top]
            expected.append(written)
            known = known | written
    steps = []
    state = make_batch({"tok_rgb@224": rgb, target: torch.zeros(2, 196, dtype=torch.long)},
                       inputs={"tok_rgb@224": "all"}, targets={target: "all"})
    out = Sampler(model).generate(state, [TargetSpec(target, steps=5, temperature=0.0)],
                                  on_step=lambda info: steps.append(info.written))
    assert len(steps) == len(counts)
    for got, want, k in zip(steps, expected, counts, strict=True):
        assert torch.equal(got, want) and (got.sum(1) == k).all()
    assert torch.equal(out[target]["tensor"], tokens)


def _greedy_reference(model, tok, rgb, limit, stop):
    """Teacher-forced greedy decoding, one full forward per token; returns per-row generated tokens."""
    out = [[tok.sentinel_id(1)] for _ in range(rgb.shape[0])]
    finished = [False] * rgb.shape[0]
    n = 2 * 257
    with torch.no_grad():
        for _ in range(limit):
            t = len(out[0])
            cap = torch.zeros(rgb.shape[0], n, dtype=torch.long)
            cap[:, 0] = tok.sentinel_id(1)
            cap[:, 1 : 1 + t] = torch.tensor(out)
            inputs = torch.zeros(rgb.shape[0], n, dtype=torch.bool)
            inputs[:, 0] = True
            targets = torch.zeros(rgb.shape[0], n, dtype=torch.bool)
            targets[:, 1 : 2 + t] = True
            batch = make_batch({"tok_rgb@224": rgb, "caption": cap},
                               inputs={"tok_rgb@224": "all", "caption": inputs}, targets={"caption": targets})
            nxt = _forward(model, batch)["caption"][:, t - 1].argmax(-1)
            for i in range(rgb.shape[0]):
                out[i].append(int(nxt[i]))
                finished[i] = finished[i] or int(nxt[i]) == stop[i]
            if all(finished):
                break
    return out


def _caption_state(tok, rgb, stop):
    n = 2 * 257
    cap = torch.zeros(rgb.shape[0], n, dtype=torch.long)
    cap[:, 0] = cap[:, 1] = tok.sentinel_id(1)
    cap[:, 40] = torch.tensor(stop)
    inputs = torch.zeros(rgb.shape[0], n, dtype=torch.bool)
    inputs[:, 0] = True
    targets = torch.zeros(rgb.shape[0], n, dtype=torch.bool)
    targets[:, 1:41] = True
    return make_batch({"tok_rgb@224": rgb, "caption": cap},
                      inputs={"tok_rgb@224": "all", "caption": inputs}, targets={"caption": targets})


def test_greedy_captioning_follows_the_official_loop_and_stops_per_row(model, rgb):
    tok = text_tokenizer()
    s2 = tok.sentinel_id(2)
    free = _greedy_reference(model, tok, rgb, 12, [s2, s2])
    # Stop tokens the model reaches at different steps in the two rows (the final target token stops a row).
    stop = [free[0][3], next(t for t in free[1][1:] if t != free[0][3])]
    depth = [free[0].index(stop[0], 1), free[1].index(stop[1], 1)]
    want = _greedy_reference(model, tok, rgb, 12, stop)
    for cache in (True, False):
        got = Sampler(model, tok, use_cache=cache).generate(
            _caption_state(tok, rgb, stop), [TargetSpec("caption", temperature=0.0, max_new_tokens=12)]
        )["caption"]
        for i in range(2):
            row = got["tensor"][i][~got["input_mask"][i]].tolist()
            # merged: the span after [S_1] up to and including the stop token, then [EOS]
            assert row == want[i][1 : depth[i] + 1] + [tok.eos_id]
    # with an unreachable stop token decoding runs to the length limit
    got = Sampler(model, tok).generate(_caption_state(tok, rgb, [s2, s2]),
                                       [TargetSpec("caption", temperature=0.0, max_new_tokens=12)])["caption"]
    assert got["tensor"][0][~got["input_mask"][0]].tolist() == free[0][1:13] + [tok.eos_id]
