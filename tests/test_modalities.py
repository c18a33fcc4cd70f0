import pytest

from open4m import modalities
from open4m.modalities import Modality

# Ids the official code computes (OFFICIAL-4M-SPEC §1.2), checked against our hash.
OFFICIAL_IDS = {
    "rgb@224": 20716, "caption": 32652, "det": 30982, "tok_rgb@224": 11606, "tok_depth@224": 20063,
    "tok_normal@224": 16656, "tok_semseg@224": 12515, "tok_clip@224": 11422, "t5_caption": 28551,
    "metadata": 1951, "human_poses": 30584, "color_palette": 12967, "sam_instance": 1938,
    "tok_canny_edge@224": 12520, "tok_sam_edge@224": 7842, "tok_dinov2@224": 26275,
    "tok_imagebind@224": 6200, "tok_dinov2_global": 29172, "tok_imagebind_global": 12099,
    "rgb@448": 27924, "tok_rgb@448": 1057,
}


@pytest.mark.parametrize("name,expected", sorted(OFFICIAL_IDS.items()))
def test_official_ids(name, expected):
    assert modalities.get(name).id == expected


def test_official_sizes():
    assert modalities.get("tok_rgb@224").vocab_size == 16384
    assert modalities.get("tok_semseg@224").vocab_size == 4096
    assert modalities.get("tok_dinov2@224").max_tokens == 256
    assert modalities.get("tok_dinov2_global").max_tokens == 16
    assert not modalities.get("tok_dinov2_global").sincos_pos_emb
    assert modalities.get("tok_rgb@448").max_tokens == 784
    # padded sequence lengths from the official masking code (OFFICIAL-4M-SPEC §4.5)
    lengths = {"caption": 514, "det": 514, "metadata": 82, "color_palette": 48, "human_poses": 552,
               "sam_instance": 582, "t5_caption": 77}
    assert {n: modalities.get(n).num_positions for n in lengths} == lengths
    assert not modalities.get("rgb@224").has_decoder
    assert not modalities.get("t5_caption").has_decoder
    for name in modalities.FOURM21_DOMAINS_IN + modalities.FOURM7_DOMAINS_IN:
        modalities.get(name)


def test_register_new_modality_and_conflicts():
    m = modalities.image_tokens("tok_test@64", 1024, 64, 8)
    assert m.grid_size == 8 and m.max_tokens == 64
    assert modalities.image_tokens("tok_test@64", 1024, 64, 8) is not None  # same record: fine
    with pytest.raises(ValueError, match="already registered"):
        modalities.image_tokens("tok_test@64", 2048, 64, 8)
    assert modalities.with_size("tok_depth@224", 448).max_tokens == 784


def test_clear_errors():
    with pytest.raises(KeyError, match="unknown modality 'tok_nope'"):
        modalities.get("tok_nope")
    with pytest.raises(ValueError, match="not a multiple"):
        Modality("bad", "image_tokens", 10, image_size=30, patch_size=16)
    with pytest.raises(ValueError, match="kind must be one of"):
        Modality("bad", "voxels", 10, max_tokens=3)
    with pytest.raises(ValueError, match="vocab_size"):
        Modality("bad", "sequence", None, max_tokens=3)
