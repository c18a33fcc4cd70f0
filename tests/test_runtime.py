"""Process-level CPU settings (open4m.runtime)."""

import pytest


def test_flush_denormals_turns_subnormal_results_into_zero():
    import torch

    from open4m.runtime import flush_denormals, tune_cpu

    if not flush_denormals():
        pytest.skip("this CPU cannot flush denormals")
    tiny = torch.tensor([1e-30], dtype=torch.float32)
    assert (tiny * 1e-10).item() == 0.0  # 1e-40 is subnormal in float32
    assert (tiny * 1e-5).item() > 0.0  # normal numbers are untouched
    tune_cpu()
