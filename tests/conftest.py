import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

# The compatibility fixtures live beside the project, never inside it (../shared/fixtures).
FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def _fixture_path(name: str) -> Path:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"compatibility fixture {name} not available (../shared/fixtures)")
    return path


@pytest.fixture(scope="session")
def fixture_path():
    """fixture_path(name) -> Path of a file in ../shared/fixtures; skips the test when it is absent."""
    return _fixture_path


@pytest.fixture(scope="session")
def official_io():
    """The stored official forward pass: (tensors, info json, batch in the official dict order)."""
    tensors = load_file(str(_fixture_path("official-tiny-forward.safetensors")))
    info = json.loads(_fixture_path("official-tiny-forward.json").read_text())
    batch: dict = {}
    for key, value in tensors.items():
        if key.startswith("input."):
            _, name, field = key.split(".")
            batch.setdefault(name, {})[field] = value
    batch = {name: batch[name] for name in info["input_modality_order"]}
    return tensors, info, batch


@pytest.fixture(autouse=True)
def _ieee_floats_between_tests():
    """Entry points (train, generate, eval, quickstart) flush denormals for the whole process
    (open4m.runtime.tune_cpu); turn it off after each test so that the next one starts from IEEE floats
    (hypothesis, for one, refuses to run with flush-to-zero on)."""
    yield
    import torch

    torch.set_flush_denormal(False)
