"""Token and temperature schedules against the official formulas (OFFICIAL-4M-SPEC §5.2)."""

import math

import numpy as np
import pytest

from open4m.generation import schedules


def official_cosine(steps, n):
    alpha = np.array([0.5 * (1 + math.cos(math.pi * i / steps)) for i in range(steps)])
    counts = [round(n * d) for d in (alpha[:-1] - alpha[1:])]
    return counts + [n - sum(counts)]


def official_linear(steps, n):
    counts = np.diff(np.linspace(0, n, steps + 1, dtype=int))[::-1]
    return sorted(counts.tolist(), reverse=True)


def official_onex(max_t, min_t, counts, power):
    x = np.linspace(1, 100, num=sum(counts))
    y = 1 / (x**power)
    y = (y - y.min()) / (y - y.min()).max()
    cs = np.cumsum(counts) / np.sum(counts)
    return np.array([min_t + (max_t - min_t) * (1 - c) * u for u, c in zip(y, cs, strict=False)]).clip(min=1e-9)


@pytest.mark.parametrize("steps,n", [(8, 196), (12, 256), (1, 196), (25, 784), (3, 16)])
def test_token_schedules_match_official(steps, n):
    assert schedules.cosine_tokens(steps, n) == official_cosine(steps, n)
    assert schedules.linear_tokens(steps, n) == official_linear(steps, n)
    assert sum(schedules.token_schedule("cosine", steps, n)) == n


def test_temperature_schedules_match_official():
    counts = schedules.token_schedule("linear", 8, 196)
    assert schedules.temperature_schedule("constant", 3.0, counts) == [3.0] * 8
    official_linear_t = np.concatenate([[3.0], (3.0 * (196 - np.cumsum(counts)) / 196)[:-1]])
    np.testing.assert_allclose(schedules.temperature_schedule("linear", 3.0, counts), official_linear_t)
    np.testing.assert_allclose(
        schedules.temperature_schedule("onex:0.5:0.5", 3.0, counts), official_onex(3.0, 0.5, counts, 0.5)
    )


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: schedules.token_schedule("cosine", 0, 196), "positive int"),
        (lambda: schedules.token_schedule("linear", 200, 196), "200 decoding steps for only 196 tokens"),
        (lambda: schedules.token_schedule("cosine", 150, 196), "leaves a step empty"),
        (lambda: schedules.token_schedule("square", 8, 196), "token schedule must be one of"),
        (lambda: schedules.temperature_schedule("onex:0.5", 1.0, [4, 4]), "onex:MIN_T:POWER"),
        (lambda: schedules.temperature_schedule("constant", -1.0, [4]), "temperature must be >= 0"),
    ],
)
def test_bad_schedules_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
