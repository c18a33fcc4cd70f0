"""Fixtures of the vq tests (helpers live in vq_helpers.py)."""

import pytest

from open4m.vq.samples import synthetic_sample


@pytest.fixture(scope="session")
def tiny_samples() -> list[dict]:
    """64 toy scenes at 16 px."""
    return [synthetic_sample(i, image_size=16) for i in range(64)]
