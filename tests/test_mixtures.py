"""Mixture YAML loading: the official alphas files unchanged, our format, and clear errors."""

import numpy as np
import pytest

from masking_helpers import MOD7_ALL2ALL_RGB2ALL, MOD21_ALL2ALLMIX_RGB2ALL_CAPT5BIAS
from open4m import modalities
from open4m.mixtures import MaskingConfig, Mixture

# The nested format (sampling_weights + alphas_mixture), as the official 4M-21 file, shortened to three modalities.
NESTED = """\
sampling_weights: [1.0, 1.0, 0.5]
alphas_mixture:
  rgb@224:
    input_alphas: [0.01, 1000.0, 0.05]
    target_alphas: [0.0, 0.0, 0.0]
  caption:
    input_alphas: [0.01, 0.0, 5.0]
    target_alphas: [0.01, 0.5, 0.0]
    keep: ['random', 'random', 'all']
  t5_caption:
    input_alphas: [0.01, 0.0, 0.0]
    target_alphas: [0.01, 0.5, 0.5]
    keep: ['random', 'random', 'binary']
"""


def write(tmp_path, text, name="mix.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_official_flat_file_loads_unchanged(tmp_path):
    cfg = MaskingConfig.from_yaml(write(tmp_path, MOD7_ALL2ALL_RGB2ALL), input_tokens=128, target_tokens=128)
    mix = cfg.mixture
    assert mix.names == tuple(sorted(modalities.FOURM7_DOMAINS_IN))
    assert mix.num_components == 2
    np.testing.assert_allclose(mix.sampling_weights, [0.5, 0.5])
    rgb = mix.names.index("rgb@224")
    np.testing.assert_array_equal(mix.input_alphas[:, rgb], [1000.0, 0.5])
    np.testing.assert_array_equal(mix.target_alphas[:, rgb], [0.0, 0.0])
    others = [i for i in range(len(mix.names)) if i != rgb]
    np.testing.assert_array_equal(mix.input_alphas[0, others], 0.0)
    np.testing.assert_array_equal(mix.target_alphas[:, others], 0.5)
    assert mix.keep == {"caption": ("random", "random"), "det": ("random", "random")}
    assert cfg.input_tokens == (128, 128) and cfg.target_tokens == (128, 128)


def test_official_nested_file_loads_with_weights_and_keep(tmp_path):
    cfg = MaskingConfig.from_yaml(write(tmp_path, NESTED), input_tokens=[64, 128], target_tokens=128)
    mix = cfg.mixture
    assert mix.names == ("caption", "rgb@224", "t5_caption")
    np.testing.assert_allclose(mix.sampling_weights, [0.4, 0.4, 0.2])
    assert mix.keep["caption"] == ("random", "random", "all")
    assert mix.keep["t5_caption"] == ("random", "random", "binary")
    assert cfg.input_tokens == (64, 128)


def test_expected_share_of_the_official_mod7_mixture(tmp_path):
    mix = MaskingConfig.from_yaml(write(tmp_path, MOD7_ALL2ALL_RGB2ALL), input_tokens=128).mixture
    share = mix.expected_share("input")
    rgb = mix.names.index("rgb@224")
    # rgb2all gives rgb everything, all2all gives each of 8 modalities 1/8
    assert share[rgb] == pytest.approx(0.5 + 0.5 / 8)
    assert np.delete(share, rgb) == pytest.approx(np.full(7, 0.5 / 8))
    assert mix.expected_share("target") == pytest.approx(np.where(np.arange(8) == rgb, 0.0, 1 / 7), abs=1e-9)


def test_world_mixture_uses_the_registered_world_modalities():
    cfg = MaskingConfig.from_yaml("configs/mixtures/world.yaml")
    assert cfg.input_tokens == (64, 64) and cfg.target_tokens == (64, 64)
    assert modalities.get("tok_depth@64").grid_size == 16
    assert modalities.get("rgb@64").kind == "pixels"
    assert cfg.mixture.num_components == 3


def test_declared_modalities_are_registered_once(tmp_path):
    path = tmp_path / "mix.yaml"
    path.write_text("input_tokens: 8\ntarget_tokens: 8\nmodalities:\n"
                    "  tok_declared@32: {kind: image_tokens, vocab_size: 64, image_size: 32, patch_size: 8}\n"
                    "alphas_mixture:\n  tok_declared@32:\n    input_alphas: [1.0]\n    target_alphas: [1.0]\n")
    cfg = MaskingConfig.from_yaml(path)
    assert modalities.get("tok_declared@32").grid_size == 4
    # loading again is a no-op for the registry; a conflicting declaration is a clear error
    assert MaskingConfig.from_yaml(path).mixture.names == cfg.mixture.names
    path.write_text(path.read_text().replace("vocab_size: 64", "vocab_size: 65"))
    with pytest.raises(ValueError, match="tok_declared@32"):
        MaskingConfig.from_yaml(path)


def test_arguments_override_file_budgets():
    cfg = MaskingConfig.from_yaml("configs/mixtures/world.yaml", input_tokens=[8, 16], target_tokens=32)
    assert cfg.input_tokens == (8, 16) and cfg.target_tokens == (32, 32)


def test_single_component_constructor():
    mix = Mixture.single({"rgb@224": 1.0, "caption": 1.0}, {"caption": 0.5, "tok_depth@224": 0.5})
    assert mix.names == ("caption", "rgb@224", "tok_depth@224")
    np.testing.assert_array_equal(mix.input_alphas, [[1.0, 1.0, 0.0]])
    np.testing.assert_array_equal(mix.target_alphas, [[0.5, 0.0, 0.5]])
    assert mix.keep == {"caption": ("random",)}


@pytest.mark.parametrize("text,message", [
    ("caption:\n  input_alphas: [0.5, 0.5]\n  target_alphas: [0.5]\n", "caption.target_alphas has 1 values"),
    ("caption:\n  input_alphas: [0.5]\n  target_alphas: [0.5]\ndet:\n  input_alphas: [1, 1]\n  target_alphas: [1, 1]\n",
     "det.input_alphas has 2 values"),
    ("tok_nothing@224:\n  input_alphas: [1]\n  target_alphas: [1]\n", "unknown modality 'tok_nothing@224'"),
    ("caption:\n  input_alphas: [-1]\n  target_alphas: [1]\n", "must be finite and >= 0"),
    ("caption:\n  input_alphas: [a]\n  target_alphas: [1]\n", "must be numbers"),
    ("caption:\n  input_alphas: [1]\n  target_alphas: [1]\n  keep: [sometimes]\n", "unknown schemes ['sometimes']"),
    ("caption:\n  input_alphas: [1, 1]\n  target_alphas: [1, 1]\n  keep: [all]\n", "caption.keep must be a list of 2"),
    ("tok_rgb@224:\n  input_alphas: [1]\n  target_alphas: [1]\n  keep: [all]\n", "keep schemes apply to sequences"),
    ("caption:\n  input_alphas: [1]\n  target_alphas: [1]\n  alpha: 3\n", "unknown keys ['alpha']"),
    ("sampling_weights: [1, 2]\ncaption:\n  input_alphas: [1]\n  target_alphas: [1]\n", "sampling_weights has 2"),
    ("sampling_weights: [0]\ncaption:\n  input_alphas: [1]\n  target_alphas: [1]\n", "must not all be 0"),
    ("alphas_mixture:\n  caption:\n    input_alphas: [1]\n    target_alphas: [1]\nbatch: 3\n",
     "unknown top-level keys"),
    ("input_tokens: [9, 3]\ncaption:\n  input_alphas: [1]\n  target_alphas: [1]\n", "0 <= min <= max"),
    ("input_tokens: 1.5\ncaption:\n  input_alphas: [1]\n  target_alphas: [1]\n", "input_tokens must be an int"),
    ("- 1\n- 2\n", "expected a mapping at the top level"),
    ("modalities:\n  x@8: {kind: pixels, image_size: 8}\ncaption:\n  input_alphas: [1]\n  target_alphas: [1]\n",
     "modalities.x@8"),
    ("modalities:\n  caption: {kind: sequence, vocab_size: 5, max_tokens: 3}\n", "already registered"),
])
def test_bad_mixture_files_name_the_problem(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match="mix.yaml") as err:
        MaskingConfig.from_yaml(path, input_tokens=None if "input_tokens" in text else 8, target_tokens=8)
    assert message in str(err.value)


def test_official_file_without_budgets_asks_for_them(tmp_path):
    with pytest.raises(ValueError, match="no input_tokens"):
        MaskingConfig.from_yaml(write(tmp_path, MOD7_ALL2ALL_RGB2ALL))


def test_missing_and_invalid_yaml_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        MaskingConfig.from_yaml(tmp_path / "nope.yaml", 8, 8)
    with pytest.raises(ValueError, match="not valid YAML"):
        MaskingConfig.from_yaml(write(tmp_path, "a: [1, 2\n"), 8, 8)


def test_domains_select_a_subset_of_a_shared_alphas_file(tmp_path):
    path = write(tmp_path, MOD7_ALL2ALL_RGB2ALL)
    cfg = MaskingConfig.from_yaml(path, input_tokens=64, target_tokens=64, domains=["caption", "tok_rgb@224"])
    assert cfg.mixture.names == ("caption", "tok_rgb@224")
    np.testing.assert_array_equal(cfg.mixture.input_alphas, [[0.0, 0.0], [0.5, 0.5]])
    with pytest.raises(ValueError, match=r"domains \['metadata'\] have no alphas in this file"):
        MaskingConfig.from_yaml(path, input_tokens=64, domains=["caption", "metadata"])


def test_to_dict_round_trips_through_yaml(tmp_path):
    import yaml

    cfg = MaskingConfig.from_yaml("configs/mixtures/world.yaml", input_tokens=[32, 64])
    path = write(tmp_path, yaml.safe_dump(cfg.to_dict()))
    again = MaskingConfig.from_yaml(path)
    assert again.input_tokens == (32, 64) and again.target_tokens == cfg.target_tokens
    assert again.mixture.names == cfg.mixture.names and dict(again.mixture.keep) == dict(cfg.mixture.keep)
    for field in ("input_alphas", "target_alphas", "sampling_weights"):
        np.testing.assert_allclose(getattr(again.mixture, field), getattr(cfg.mixture, field))


def test_official_4m21_file_loads_unchanged(tmp_path):
    cfg = MaskingConfig.from_yaml(write(tmp_path, MOD21_ALL2ALLMIX_RGB2ALL_CAPT5BIAS), input_tokens=256,
                                  target_tokens=256)
    mix = cfg.mixture
    assert set(mix.names) == set(modalities.FOURM21_DOMAINS_IN) and mix.num_components == 7
    np.testing.assert_allclose(mix.sampling_weights, np.array([1, 1, 1, 1, 1, 0.5, 0.5]) / 6)
    assert mix.keep["color_palette"] == ("binary",) * 7
    assert mix.keep["caption"][5] == "all" and mix.keep["t5_caption"][6] == "all"
    assert mix.input_alphas[4, mix.names.index("rgb@224")] == 1000.0
