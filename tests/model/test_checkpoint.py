"""Official release format: loading, saving, strictness, and the state-dict layout of the released models."""

import json
import os
import warnings

import pytest
import torch
from safetensors import safe_open

from open4m.model import CheckpointMismatch, FourM, FourMConfig, from_pretrained, preset, save_pretrained
from open4m.model.checkpoint import parse_metadata


@pytest.fixture(scope="module")
def official_dir(fixture_path):
    return fixture_path("official-tiny")


@pytest.fixture(scope="module")
def official(official_dir):
    return from_pretrained(official_dir)


def _file_tensors(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_load_is_exact_and_shares_modality_embeddings(official, official_dir):
    tensors, _ = _file_tensors(official_dir / "model.safetensors")
    state = official.state_dict()
    assert set(state) == set(tensors)
    for key, value in tensors.items():
        assert torch.equal(state[key], value), key
    # share_modality_embeddings: encoder and decoder mod_emb are one parameter
    assert official.encoder_embeddings["caption"].mod_emb is official.decoder_embeddings["caption"].mod_emb
    # the hub wrapper's layout: heads untied
    head = official.decoder_embeddings["caption"]
    assert head.to_logits.weight.data_ptr() != head.token_emb.weight.data_ptr()


def test_sincos_tables_equal_the_stored_buffers(official_dir):
    """We recompute sin-cos tables ourselves; they must equal the official buffers bit for bit."""
    tensors, _ = _file_tensors(official_dir / "model.safetensors")
    config = json.loads((official_dir / "config.json").read_text())
    fresh = FourM(FourMConfig.from_dict(config)).state_dict()
    for key in tensors:
        if key.endswith("pos_emb"):
            torch.testing.assert_close(fresh[key], tensors[key], atol=1e-6, rtol=0)


def test_save_reload_bit_exact_same_format(official, official_dir, tmp_path):
    out = save_pretrained(official, tmp_path / "copy")
    ours, ours_meta = _file_tensors(out / "model.safetensors")
    theirs, their_meta = _file_tensors(official_dir / "model.safetensors")
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert all(torch.equal(ours[k], theirs[k]) and ours[k].dtype == theirs[k].dtype for k in theirs)
    assert ours_meta == their_meta  # str(value) of every config entry, same keys and spellings
    ours_config = json.loads((out / "config.json").read_text())
    their_config = json.loads((official_dir / "config.json").read_text())
    assert list(ours_config) == list(their_config) + [k for k in ours_config if k not in their_config]
    assert {k: ours_config[k] for k in their_config} == their_config
    reloaded = from_pretrained(out)
    for key, value in official.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value)


def test_config_from_safetensors_metadata_only(official_dir, tmp_path):
    (tmp_path / "model.safetensors").write_bytes((official_dir / "model.safetensors").read_bytes())
    model = from_pretrained(tmp_path)
    assert model.config.dim == 16 and model.config.domains_in[0] == "rgb@224"


def test_parse_metadata_uses_yaml_semantics():
    parsed = parse_metadata({"dim": "768", "qkv_bias": "False", "domains_in": "['rgb@224', 'caption']",
                             "act_layer": "SiLU", "x": "None", "bad": "[unclosed"})
    assert parsed == {"dim": 768, "qkv_bias": False, "domains_in": ["rgb@224", "caption"], "act_layer": "SiLU",
                      "x": None, "bad": "[unclosed"}


@pytest.mark.parametrize("manifest_name", ["tiny_dim64", "4M-7_B_CC12M"])
def test_state_dict_layout_matches_released_models(fixture_path, manifest_name):
    manifest = json.loads(fixture_path("official-state-dict-manifests.json").read_text())[manifest_name]
    with torch.device("meta"):
        model = FourM(FourMConfig.from_dict(manifest["config"]))
    state = model.state_dict(keep_vars=True)
    assert len(state) == manifest["num_state_dict_keys"]
    buffers = {name for name, _ in model.named_buffers()}
    for key, info in manifest["keys"].items():
        assert key in state, key
        assert list(state[key].shape) == info["shape"], key
        assert (key in buffers) == (info["kind"] == "buffer"), key
    assert set(state) == set(manifest["keys"])
    unique = sum(p.numel() for p in model.parameters())
    assert unique == manifest["num_unique_parameters"]
    assert sum(t.numel() for t in state.values()) == manifest["num_state_dict_elements"]
    for a, b in manifest["shared_parameters (same tensor under two keys)"]:
        assert state[a] is state[b]


def test_base_preset_is_the_released_4m7_b(fixture_path):
    manifest = json.loads(fixture_path("official-state-dict-manifests.json").read_text())["4M-7_B_CC12M"]
    cfg = manifest["config"]
    with torch.device("meta"):
        model = FourM(preset("base_swiglu_nobias", cfg["domains_in"], cfg["domains_out"]))
    state = model.state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == {k: v["shape"] for k, v in manifest["keys"].items()}
    assert sum(p.numel() for p in model.parameters()) == manifest["num_unique_parameters"]


# ------------------------------------------------------------------ bad input

def test_strict_load_names_missing_unexpected_and_wrong_shapes(official, official_dir, tmp_path):
    from safetensors.torch import save_file

    tensors, meta = _file_tensors(official_dir / "model.safetensors")
    del tensors["encoder.0.attn.qkv.weight"]
    tensors["encoder.9.extra"] = torch.zeros(3)
    tensors["mask_token"] = torch.zeros(1, 1, 17)
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata=meta)
    with pytest.raises(CheckpointMismatch) as err:
        from_pretrained(tmp_path)
    message = str(err.value)
    assert "encoder.0.attn.qkv.weight" in message and "encoder.9.extra" in message
    assert "mask_token (file (1, 1, 17), model (1, 1, 16))" in message


def test_non_strict_reports_but_loads(official_dir, tmp_path):
    from safetensors.torch import save_file

    tensors, meta = _file_tensors(official_dir / "model.safetensors")
    del tensors["encoder.0.attn.proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata=meta)
    model = from_pretrained(tmp_path, strict=False)
    assert torch.equal(model.state_dict()["mask_token"], tensors["mask_token"])


def test_truncated_and_corrupt_weights(official_dir, tmp_path):
    data = (official_dir / "model.safetensors").read_bytes()
    (tmp_path / "config.json").write_text((official_dir / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors.*truncated or corrupt"):
        from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        from_pretrained(tmp_path)


def test_missing_required_key_and_bad_types(official_dir, tmp_path):
    config = json.loads((official_dir / "config.json").read_text())
    del config["act_layer"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"missing required key\(s\) \['act_layer'\]"):
        from_pretrained(tmp_path)
    config["act_layer"] = "NotAnActivation"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="act_layer 'NotAnActivation'"):
        from_pretrained(tmp_path)
    config["act_layer"], config["dim"] = "SiLU", "sixteen"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'dim' must be int"):
        from_pretrained(tmp_path)
    config["dim"], config["domains_in"] = 16, ["rgb@224", "tok_unknown@224"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(KeyError, match="unknown modality 'tok_unknown@224'"):
        from_pretrained(tmp_path)


def test_unknown_config_keys_warn(official_dir, tmp_path):
    config = json.loads((official_dir / "config.json").read_text())
    config["some_future_key"] = 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((official_dir / "model.safetensors").read_bytes())
    with pytest.warns(UserWarning, match="some_future_key"):
        from_pretrained(tmp_path)


def test_directory_without_weights_and_missing_paths(official_dir, tmp_path):
    (tmp_path / "config.json").write_text((official_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a model directory nor a Hugging Face Hub id"):
        from_pretrained(tmp_path / "does" / "not" / "exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        from_pretrained(empty)


def test_hub_id_offline_fails_fast_with_a_clear_message(monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="could not fetch 'EPFL-VILAB/4M-7_B_CC12M'"):
        from_pretrained("EPFL-VILAB/4M-7_B_CC12M")


def test_save_never_overwrites_silently(official, tmp_path):
    save_pretrained(official, tmp_path)
    before = (tmp_path / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_pretrained(official, tmp_path)
    assert (tmp_path / "model.safetensors").stat().st_mtime_ns == before
    save_pretrained(official, tmp_path, overwrite=True)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_custom_modalities_round_trip(tmp_path):
    from open4m import modalities

    modalities.image_tokens("tok_ckpt_test@32", 64, 32, 8)
    model = FourM(FourMConfig(domains_in=["tok_ckpt_test@32"], domains_out=["tok_ckpt_test@32"], dim=32,
                              num_heads=2, encoder_depth=1, decoder_depth=1, tie_decoder_embeddings=True))
    save_pretrained(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["modality_specs"]["tok_ckpt_test@32"]["vocab_size"] == 64
    assert "tie_decoder_embeddings" not in config
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = from_pretrained(tmp_path, tie_decoder_embeddings=True)
    head = again.decoder_embeddings["tok_ckpt_test@32"]
    assert head.to_logits.weight is head.token_emb.weight
    assert torch.equal(head.to_logits.weight, model.decoder_embeddings["tok_ckpt_test@32"].to_logits.weight)


def test_compact_half_precision_files_are_smaller_and_load_back(tmp_path):
    import torch

    from open4m.model import FourM, from_pretrained, save_pretrained
    from open4m.model.config import preset

    config = preset("tiny_gelu", domains_in=["tok_depth@64", "caption@64"], domains_out=["tok_depth@64", "caption@64"],
                    dim=64, encoder_depth=1, decoder_depth=1, num_heads=2, tie_decoder_embeddings=True)
    model = FourM(config)
    save_pretrained(model, tmp_path / "full")
    save_pretrained(model, tmp_path / "small", dtype=torch.float16, compact=True)
    sizes = {k: (tmp_path / k / "model.safetensors").stat().st_size for k in ("full", "small")}
    assert sizes["small"] < 0.4 * sizes["full"]
    loaded = from_pretrained(tmp_path / "small")
    buffers = dict(model.named_buffers())
    for key, value in model.state_dict().items():  # sin-cos tables are recomputed exactly, weights rounded
        expected = value if key in buffers or not value.is_floating_point() else value.half().float()
        assert torch.equal(loaded.state_dict()[key].float(), expected.float()), key


def test_saved_files_get_the_usual_permissions_not_mkstemps_0600(tmp_path):
    import os

    from open4m.model import FourM, save_pretrained
    from open4m.model.config import preset

    model = FourM(preset("tiny_gelu", domains_in=["tok_depth@64"], domains_out=["tok_depth@64"], dim=32,
                         encoder_depth=1, decoder_depth=1, num_heads=1))
    umask = os.umask(0o022)
    try:
        save_pretrained(model, tmp_path / "m")
    finally:
        os.umask(umask)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "m" / name).stat().st_mode & 0o777 == 0o644, name
