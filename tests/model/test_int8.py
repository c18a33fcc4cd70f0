"""Int8 weight storage of compact release files: the quantizer's error bound, the file, and its bad forms."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fourm_helpers import caption_depth_model, depth_logits
from open4m.model import from_pretrained, save_pretrained
from open4m.model.checkpoint import INT8_KEY, INT8_SCALE_SUFFIX
from open4m.model.int8 import dequantize_int8, int8_candidates, quantize_int8


def test_quantize_round_trip_is_within_half_a_step_of_each_group():
    torch.manual_seed(0)
    weight = torch.randn(12, 256) * torch.linspace(0.01, 3.0, 12).unsqueeze(1)
    weight[3, 64:128] = 0  # an all-zero group
    weight[5, 10] = 40.0  # an outlier only widens its own group's step
    q, scale = quantize_int8(weight, group=64)
    assert q.dtype == torch.int8 and q.shape == weight.shape
    assert scale.dtype == torch.float16 and scale.shape == (12, 4)
    back = dequantize_int8(q, scale)
    step = scale.float().repeat_interleave(64, dim=1)
    assert torch.all((back - weight).abs() <= step / 2 + 1e-6)
    assert torch.equal(back[3, 64:128], torch.zeros(64))
    assert (back - weight)[5, 64:].abs().max() < 3.0 / 127  # the other groups of row 5 keep a fine step
    assert int(q.abs().max()) == 127


def test_columns_that_are_not_a_multiple_of_the_group_get_one_scale_per_row():
    weight = torch.randn(8, 3, 5, 5)  # e.g. a convolution: 75 columns per row
    q, scale = quantize_int8(weight, group=64)
    assert scale.shape == (8, 1) and q.shape == weight.shape
    assert torch.allclose(dequantize_int8(q, scale), weight, atol=float(scale.max()) / 2 + 1e-6)


def test_candidates_are_the_large_float_matrices():
    state = {"w": torch.zeros(64, 64), "b": torch.zeros(4096), "small": torch.zeros(4, 4),
             "ids": torch.zeros(64, 64, dtype=torch.long)}
    assert int8_candidates(state) == ["w"]
    with pytest.raises(ValueError, match="floating-point tensor of >= 2 dims"):
        quantize_int8(torch.zeros(4096))


def test_int8_compact_file_is_smaller_and_predicts_like_the_float_model(tmp_path):
    model = caption_depth_model(128)
    half = save_pretrained(model, tmp_path / "half", dtype=torch.float16, compact=True)
    int8 = save_pretrained(model, tmp_path / "int8", dtype=torch.float16, compact=True, int8=True)
    sizes = {d.name: (d / "model.safetensors").stat().st_size for d in (half, int8)}
    assert sizes["int8"] < 0.6 * sizes["half"]
    with safe_open(str(int8 / "model.safetensors"), framework="pt") as f:
        listed = json.loads(f.metadata()[INT8_KEY])
        assert listed and all(f.get_tensor(k).dtype == torch.int8 for k in listed)
        assert all(k + INT8_SCALE_SUFFIX in f.keys() for k in listed)
    loaded = from_pretrained(int8).eval()
    state = loaded.state_dict()
    assert all(state[k].dtype == torch.float32 for k in listed)
    for key in listed:  # each weight within half a quantization step of the original
        original = model.state_dict()[key].reshape(state[key].shape[0], -1)
        err = (state[key].reshape_as(original) - original).abs().max()
        assert err <= original.abs().max() / 254 + 1e-3, key
    reference, quantized = depth_logits(model), depth_logits(loaded)
    rel = (quantized - reference).norm() / reference.norm()
    assert rel < 0.02
    assert (quantized.argmax(-1) == reference.argmax(-1)).float().mean() > 0.9


def test_int8_needs_compact(tmp_path):
    with pytest.raises(ValueError, match="int8=True needs compact=True"):
        save_pretrained(caption_depth_model(128), tmp_path / "m", int8=True)
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_bad_int8_files_name_the_tensor(tmp_path):
    directory = save_pretrained(caption_depth_model(128), tmp_path / "m", compact=True, int8=True)
    path = directory / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key = json.loads(metadata[INT8_KEY])[0]

    broken = {k: v for k, v in tensors.items() if k != key + INT8_SCALE_SUFFIX}
    save_file(broken, str(path), metadata=metadata)
    with pytest.raises(ValueError, match=f"{key}.*lacks.*{INT8_SCALE_SUFFIX}"):
        from_pretrained(directory)

    broken = {**tensors, key + INT8_SCALE_SUFFIX: tensors[key + INT8_SCALE_SUFFIX][:1]}
    save_file(broken, str(path), metadata=metadata)
    with pytest.raises(ValueError, match=f"{key}: its int8 scale has shape"):
        from_pretrained(directory)

    broken = {**tensors, key: tensors[key].float()}
    save_file(broken, str(path), metadata=metadata)
    with pytest.raises(ValueError, match=f"{key}: stored as int8.*float32"):
        from_pretrained(directory)

    save_file(tensors, str(path), metadata={**metadata, INT8_KEY: "[not json"})
    with pytest.raises(ValueError, match=INT8_KEY):
        from_pretrained(directory)
