"""The training loop: it learns, its schedule, checkpoints in the release format, fine-tuning, variants."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from open4m import train_state
from open4m.model import from_pretrained, save_pretrained
from open4m.train import build_model, lr_at, make_optimizers, train
from open4m.train_config import TrainConfig
from train_helpers import tiny_config


def test_validation_loss_falls_well_below_what_ignoring_the_inputs_allows(tmp_path):
    """150 steps of batch 16 on the copy task: copy_dst is predictable only from the inputs (8 classes), so a
    model that ignores them cannot get below ln 8 = 2.08 nats; untrained it pays ~ln 32 = 3.47."""
    config = tiny_config(tmp_path, "steps=150", "batch_size=16", "val_every=50", "val_batches=4", "plot=true",
                         "threads=1", "warmup_steps=20", "log_every=10")
    result = train(config)
    first, last = result["val"][0], result["val"][-1]
    assert [v["step"] for v in result["val"]] == [50, 100, 150]
    assert last["val_loss/copy_dst"] < 1.2 < math.log(8)
    assert first["val_loss"] - last["val_loss"] > 0.8
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(10, 151, 10))
    assert all(r["tokens_per_s"] > 0 and "loss/copy_dst" in r for r in records if "loss" in r)
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_schedule_is_linear_warmup_then_cosine_to_min_lr():
    c = TrainConfig(steps=110, warmup_steps=10, lr=1e-3, min_lr=1e-5)
    assert [lr_at(s, c) for s in (0, 4, 9)] == pytest.approx([1e-4, 5e-4, 1e-3])
    assert lr_at(10, c) == pytest.approx(1e-3)
    assert lr_at(60, c) == pytest.approx((1e-3 + 1e-5) / 2)
    assert lr_at(109, c) == pytest.approx(1e-5 + 0.5 * 0.99e-3 * (1 + math.cos(0.99 * math.pi)))
    assert lr_at(109, c) < 1.1e-5
    assert all(lr_at(s, c) >= lr_at(s + 1, c) for s in range(10, 109))


def test_checkpoint_is_release_format_plus_state_without_pickle(tmp_path):
    result = train(tiny_config(tmp_path, "steps=4", "save_every=2", "keep_last=1", "clip_grad=1.0"))
    ckpt = result["checkpoint"]
    assert [p.name for p in train_state.list_checkpoints(tmp_path / "run")] == ["step-00000004"]
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.safetensors", "optimizer.safetensors",
                                                      "state.json"]
    model = from_pretrained(ckpt, tie_decoder_embeddings=True)
    assert sorted(model.config.domains_in) == ["copy_src", "copy_txt"]
    optim = load_file(str(ckpt / "optimizer.safetensors"))
    names = {n for n, _ in model.named_parameters()}
    assert {k.rsplit(".", 1)[0] for k in optim if not k.startswith("rng.")} == names
    assert all(optim[f"{n}.exp_avg"].shape == p.shape for n, p in model.named_parameters())
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 4 and state["data"]["batches"] == 4 and state["config"]["steps"] == 4
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(lr_at(3, TrainConfig(
        steps=4, warmup_steps=2, lr=state["config"]["lr"])))


def test_finetuning_loads_matching_weights_and_reports_the_rest(tmp_path, capsys):
    first = train(tiny_config(tmp_path / "a", "steps=2"))["checkpoint"]
    capsys.readouterr()
    config = tiny_config(tmp_path / "b", "steps=1", "warmup_steps=1", f"pretrained={first}",
                         "domains_in=[copy_src, copy_dst]", "domains_out=[copy_dst]")
    train(config)
    out = capsys.readouterr().out
    report = next(line for line in out.splitlines() if line.startswith("pretrained"))
    fresh = report.split("initialised ")[1].split("; unused")[0]
    unused = report.split("unused from the file")[1]
    assert fresh == ("3: ['encoder_embeddings.copy_dst.mod_emb', 'encoder_embeddings.copy_dst.pos_emb', "
                     "'encoder_embeddings.copy_dst.token_emb.weight']")  # the new input modality
    assert "encoder_embeddings.copy_txt.token_emb.weight" in unused and "encoder.0" not in unused
    model = from_pretrained(first, tie_decoder_embeddings=True)
    tuned = from_pretrained(tmp_path / "b" / "run" / "checkpoints" / "step-00000001", tie_decoder_embeddings=True)
    # the shared trunk started from the pretrained weights: after one small step it is still close to them
    before, after = model.state_dict()["encoder.0.mlp.fc1.weight"], tuned.state_dict()["encoder.0.mlp.fc1.weight"]
    assert (after - before).abs().max() < 0.01 < (after - torch.randn_like(after) * 0.02).abs().max()


@pytest.mark.parametrize("int8", [False, True])
def test_finetuning_from_a_compact_release_file_loads_every_tensor(tmp_path, capsys, int8):
    """A compact file (the shipped model's format) stores tied heads and shared modality embeddings once and
    leaves computed position buffers out; fine-tuning from it must restore them, not re-initialise them (and
    dequantize int8 weights, each within half a quantization step)."""
    first = train(tiny_config(tmp_path / "a", "steps=2"))["checkpoint"]
    model = from_pretrained(first, tie_decoder_embeddings=True)
    compact = save_pretrained(model, tmp_path / "compact", compact=True, int8=int8)
    capsys.readouterr()
    loaded = build_model(tiny_config(tmp_path / "b", f"pretrained={compact}"))
    report = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("pretrained"))
    assert "initialised 0: []" in report and "unused from the file 0: []" in report
    buffers = dict(model.named_buffers())  # computed sin-cos tables: never stored, so never quantized
    for key, value in model.state_dict().items():
        got = loaded.state_dict()[key]
        if int8 and key not in buffers and value.is_floating_point() and value.ndim >= 2 and value.numel() >= 4096:
            assert not torch.equal(got, value) and (got - value).abs().max() <= value.abs().max() / 254 + 1e-6, key
        else:
            assert torch.equal(got, value), key


def test_grow_pretrained_starts_from_the_trained_model_grown_deeper(tmp_path, capsys):
    """``grow_pretrained``: a 2 + 2 block checkpoint fine-tuned as 4 + 3 blocks keeps its trained blocks (in order,
    a new identity block after each) and every other tensor, and the first training loss equals the trained
    model's loss on the same batch; without it, the blocks would load by name (0, 1) beside random ones."""
    first = train(tiny_config(tmp_path / "a", "steps=3"))["checkpoint"]
    trained = from_pretrained(first, tie_decoder_embeddings=True)
    capsys.readouterr()
    deeper = ["model_overrides.encoder_depth=4", "model_overrides.decoder_depth=3", f"pretrained={first}",
              "grow_pretrained=true"]
    grown = build_model(tiny_config(tmp_path / "b", *deeper))
    out = capsys.readouterr().out
    assert "grown from 2 + 2 to 4 + 3 encoder + decoder blocks" in out
    assert "initialised 0: []" in out and "unused from the file 0: []" in out
    old, new = trained.state_dict(), grown.state_dict()
    position = {"encoder": [0, 2], "decoder": [0, 2]}  # 2 -> 4: [0, new, 1, new]; 2 -> 3: [0, new, 1]
    for key, value in old.items():
        stack, _, rest = key.partition(".")
        if stack in position:
            index, _, name = rest.partition(".")
            key = f"{stack}.{position[stack][int(index)]}.{name}"
        assert torch.equal(new[key], value), key
    for key in ("encoder.1.attn.proj.weight", "encoder.3.mlp.fc2.bias", "decoder.1.cross_attn.proj.weight"):
        assert not new[key].any(), key
    # the same first batch: the grown model's first loss is the trained model's loss
    same = ["steps=1", "warmup_steps=1", "lr=1e-12", "seed=5"]
    grown_loss = train(tiny_config(tmp_path / "b", *deeper, *same))["losses"][0]
    plain_loss = train(tiny_config(tmp_path / "c", f"pretrained={first}", *same))["losses"][0]
    assert grown_loss == pytest.approx(plain_loss, rel=1e-5)
    with pytest.raises(ValueError, match="has 2 \\+ 2 encoder \\+ decoder blocks, more than the config's 1 \\+ 2"):
        build_model(tiny_config(tmp_path / "d", "model_overrides.encoder_depth=1", f"pretrained={first}",
                                "grow_pretrained=true"))
    with pytest.raises(ValueError, match="must be a model folder"):
        build_model(tiny_config(tmp_path / "e", *deeper[:2], f"pretrained={first / 'model.safetensors'}",
                                "grow_pretrained=true"))


def test_step_in_backward_gives_the_same_training_as_adamw(tmp_path):
    plain = train(tiny_config(tmp_path / "a", "steps=4", "clip_grad=0"))["losses"]
    sib = train(tiny_config(tmp_path / "b", "steps=4", "clip_grad=0", "step_in_backward=true"))["losses"]
    assert sib == pytest.approx(plain, rel=1e-5)


def test_activation_checkpointing_and_accumulation_keep_the_numbers(tmp_path):
    plain = train(tiny_config(tmp_path / "a", "steps=3"))["losses"]
    ckpt = train(tiny_config(tmp_path / "b", "steps=3", "act_checkpoint=true"))["losses"]
    assert ckpt == pytest.approx(plain, rel=1e-6)
    accum = train(tiny_config(tmp_path / "c", "steps=3", "batch_size=2", "accum_steps=2"))["losses"]
    assert all(math.isfinite(v) for v in accum) and len(accum) == 3


def test_bf16_autocast_trains_on_cpu(tmp_path):
    fp32 = train(tiny_config(tmp_path / "a", "steps=3"))["losses"]
    bf16 = train(tiny_config(tmp_path / "b", "steps=3", "dtype=bf16"))["losses"]
    assert bf16 != fp32  # it really ran in reduced precision ...
    assert bf16 == pytest.approx(fp32, rel=0.05)  # ... and computes the same thing


@pytest.mark.parametrize("in_backward", [False, True])
def test_checkpoint_restores_model_optimizer_and_rng(tmp_path, in_backward):
    config = tiny_config(tmp_path, "steps=2", "clip_grad=0", f"step_in_backward={str(in_backward).lower()}")
    ckpt = train(config)["checkpoint"]
    model = build_model(config, log=lambda *a: None)
    optimizers = make_optimizers(model, config, "none")
    torch.manual_seed(123)
    state = train_state.load_checkpoint(ckpt, model, optimizers)
    saved = load_file(str(ckpt / "optimizer.safetensors"))
    assert state["step"] == 2 and torch.equal(torch.get_rng_state(), saved["rng.torch"])
    assert torch.equal(model.state_dict()["encoder.0.mlp.fc1.weight"],
                       from_pretrained(ckpt).state_dict()["encoder.0.mlp.fc1.weight"])
    names = {id(p): n for n, p in model.named_parameters()}
    checked = 0
    for opt in optimizers:
        for group in opt.param_groups:
            assert group["lr"] == pytest.approx(lr_at(1, config))
            for p in group["params"]:
                for key in ("exp_avg", "exp_avg_sq"):
                    assert torch.equal(opt.state[p][key], saved[f"{names[id(p)]}.{key}"])
                checked += 1
    assert checked == len(names)
