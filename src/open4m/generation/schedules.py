"""Decoding schedules: how many tokens each step writes, at which temperature and guidance scale.

The formulas are the official ones (OFFICIAL-4M-SPEC §5.2, ``fourm/utils/generation.py``):

- tokens ``cosine``: differences of ``0.5 (1 + cos(pi i / steps))`` times n, rounded, the remainder in the last step;
- tokens ``linear``: an even split in descending order (ROAR always uses it);
- temperature ``constant``, ``linear`` (decays with the tokens still to write) and ``onex:{min_t}:{power}``;
- guidance ``constant`` only (a scale, or one weight per condition for multi-condition guidance).

Unlike the official builder, a schedule that would write nothing in some step (more steps than
tokens) is an error, not a silently shorter schedule.
"""

from __future__ import annotations

import math

SCHEMES = ("maskgit", "roar", "autoregressive")
TOKEN_SCHEDULES = ("cosine", "linear")


def cosine_tokens(steps: int, n: int) -> list[int]:
    """Tokens per step (sum n) on the official cosine schedule."""
    _check_steps(steps, n)
    alpha = [0.5 * (1 + math.cos(math.pi * i / steps)) for i in range(steps)]
    counts = [round(n * (alpha[i] - alpha[i + 1])) for i in range(steps - 1)]
    return counts + [n - sum(counts)]


def linear_tokens(steps: int, n: int) -> list[int]:
    """Tokens per step (sum n): ``n`` split as evenly as possible, larger steps first."""
    _check_steps(steps, n)
    edges = [(i * n) // steps for i in range(steps + 1)]
    return sorted((edges[i + 1] - edges[i] for i in range(steps)), reverse=True)


def token_schedule(name: str, steps: int, n: int) -> list[int]:
    """``cosine`` or ``linear`` tokens per step; every step writes at least one token."""
    if name == "cosine":
        counts = cosine_tokens(steps, n)
    elif name == "linear":
        counts = linear_tokens(steps, n)
    else:
        raise ValueError(f"token schedule must be one of {TOKEN_SCHEDULES}, got {name!r}")
    if min(counts) <= 0:
        raise ValueError(f"{name} schedule of {steps} steps over {n} tokens leaves a step empty: {counts}; "
                         "use fewer steps")
    return counts


def temperature_schedule(name: str, temperature: float, counts: list[int]) -> list[float]:
    """One temperature per step for the token counts ``counts``: ``constant``, ``linear`` or ``onex:MIN_T:POWER``."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    total = sum(counts)
    done = [sum(counts[: i + 1]) / total for i in range(len(counts))]
    if name == "constant":
        return [float(temperature)] * len(counts)
    if name == "linear":
        return [max(temperature * (1 - d), 1e-9) for d in [0.0] + done[:-1]]
    if name.startswith("onex"):
        parts = name.split(":")
        try:
            min_t, power = float(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            raise ValueError(f"temperature schedule 'onex' must be written onex:MIN_T:POWER, got {name!r}") from None
        # The official curve: 1/x^power on linspace(1, 100, total), normalised to [0, 1]; its first
        # len(counts) values (a quirk kept as is), times the fraction still to write.
        xs = [1 + 99 * i / (total - 1) for i in range(total)] if total > 1 else [1.0]
        ys = [x**-power for x in xs]
        lo, hi = min(ys), max(ys)
        ys = [(y - lo) / (hi - lo) if hi > lo else 0.0 for y in ys]
        pairs = zip(ys[: len(done)], done, strict=True)
        return [max(min_t + (temperature - min_t) * (1 - d) * y, 1e-9) for y, d in pairs]
    raise ValueError(f"temperature schedule must be constant, linear or onex:MIN_T:POWER, got {name!r}")


def _check_steps(steps: int, n: int) -> None:
    if not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"the number of decoding steps must be a positive int, got {steps!r}")
    if n <= 0:
        raise ValueError(f"nothing to generate: {n} tokens")
    if steps > n:
        raise ValueError(f"{steps} decoding steps for only {n} tokens: at most one step per token")
