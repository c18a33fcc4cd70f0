"""What a quickstart run makes and how long each stage should take: :class:`Settings` from the time budget,
the training config built from the world recipe, and the up-front time estimates.

The recipe is ``configs/train/world.yaml`` (every world modality as input and target, the world masking
mixture, lr 2e-3 with warm-up, cosine to 1e-5, clip 1.0), scaled down to a CPU budget: a smaller ``tiny_gelu``
(``dim`` / ``depth`` below), a small batch, and as many steps as the budget leaves after a calibration of a few
steps (:func:`steps_for`). The precision is fp32 or bf16 autocast, whichever the calibration measures faster on the
machine at hand (:func:`choose_dtype`; ``Settings.dtype`` can fix it): on the 2-core development machine (bf16
matrix units) a default-size step calibrated at 0.54 s in bf16 against 0.80 s in fp32, so the same budget trains
~1.5x as many steps; on a CPU without bf16 units autocast is slower and fp32 is kept.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from open4m.train_config import TrainConfig, from_dict

FAST_MINUTES = 3.0
DEFAULT_MINUTES = 30.0
SHARD_SIZE = 128
WORLD_INPUTS = ["rgb@64", "tok_rgb@64", "tok_depth@64", "tok_normal@64", "tok_semseg@64", "caption@64", "det@64"]
WORLD_OUTPUTS = ["tok_rgb@64", "tok_depth@64", "tok_normal@64", "tok_semseg@64", "caption@64", "det@64"]
MIN_STEPS = 20
# ``--fast`` trains at least this many steps, however slow the machine: what CI checks (metrics beating the
# untrained model) depends on the steps, not on the minutes. Measured: 939 steps beat it on 15 of 18 metrics,
# 744 on 12 and 649 on 10 (the same 2-core machine at different hours).
FAST_MIN_STEPS = 900
DTYPES = ("auto", "fp32", "bf16")
BF16_MIN_SPEEDUP = 1.1  # bf16 autocast is chosen only when a step is at least this much faster than fp32
# Priors for the up-front estimate, measured on the 2-core development machine under load (the train stage
# replaces the training and evaluation priors by a calibration on the machine at hand).
PRIOR_RENDER_S_PER_SCENE = 0.01
PRIOR_TOKENIZE_S_PER_SCENE = 0.05
PRIOR_EVAL_S_PER_SCENE = 1.0  # per evaluated model, dim 128, 4 MaskGIT steps
PRIOR_STARTUP_S = 10.0  # per library stage: imports, model / tokenizer loading
# Seconds per training step of the ``--fast`` size (dim 128, 2+2 blocks, batch 16) on 2 cores: measured 0.14-0.24
# on AVX-512 hosts, 0.32 (fp32) on an AVX2-only AMD EPYC; other sizes scale it by batch x dim x depth. Only the
# estimate of a run whose ``min_steps`` outlast the budget uses it (``--fast``); the calibration replaces it.
PRIOR_FAST_STEP_S = 0.25
PRIOR_CALIBRATION_S = 2 * PRIOR_STARTUP_S  # the calibration runs (start-up + 20 steps each)
TOKENIZER_TRAIN_S = 15 * 60  # one image tokenizer with configs/tokenizers/*.yaml on 2 CPU cores


@dataclass(frozen=True)
class Settings:
    """Everything that decides what a run makes; stored in ``stages.json`` (a rerun must match it).

    ``steps``: training steps, or None to size them to the budget after calibration. ``tokenizer_steps``:
    with ``train_tokenizers``, override the steps of each tokenizer config (None = as the config says).
    ``dtype``: the training precision, ``"fp32"``, ``"bf16"`` (autocast) or ``"auto"`` (the faster one in the
    calibration; fp32 when ``steps`` is fixed and nothing is calibrated). ``min_steps``: the fewest steps the
    calibration may size (``--fast``: :data:`FAST_MIN_STEPS`, even if that overruns the budget).
    """

    minutes: float
    train_scenes: int
    val_scenes: int
    eval_scenes: int
    sample_scenes: int
    dim: int
    depth: int
    num_heads: int
    batch_size: int
    lr: float = 2.0e-3
    eval_steps: int = 4
    eval_batch_size: int = 8
    train_tokenizers: bool = False
    tokenizer_steps: int | None = None
    steps: int | None = None
    seed: int = 0
    dtype: str = "auto"
    min_steps: int = MIN_STEPS

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> Settings:
        """Clear errors for sizes that cannot run; returns self."""
        for key in ("train_scenes", "val_scenes", "eval_scenes", "sample_scenes", "dim", "depth", "num_heads",
                    "batch_size", "eval_steps", "eval_batch_size", "min_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"quickstart settings: {key} must be >= 1, got {getattr(self, key)}")
        for key in ("eval_scenes", "sample_scenes", "batch_size"):
            if getattr(self, key) > self.val_scenes:
                raise ValueError(f"quickstart settings: {key} ({getattr(self, key)}) needs at least as many "
                                 f"held-out scenes, but val_scenes is {self.val_scenes}")
        if self.batch_size > self.train_scenes:
            raise ValueError(f"quickstart settings: batch_size {self.batch_size} > train_scenes {self.train_scenes}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"quickstart settings: steps must be >= 1 or None, got {self.steps}")
        if self.dtype not in DTYPES:
            raise ValueError(f"quickstart settings: dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        return self


def with_defaults(stored: dict) -> dict:
    """Settings stored by an earlier version of open4m, with the defaults of the settings added since: a run
    folder made before ``dtype`` existed continues with ``dtype="auto"`` and its training plan in fp32; an earlier
    ``--fast`` folder differs in ``min_steps`` (now :data:`FAST_MIN_STEPS`) and is refused without overwrite."""
    added = {f.name: f.default for f in dataclasses.fields(Settings)
             if f.name not in stored and f.default is not dataclasses.MISSING}
    return {**stored, **added}


def plan_settings(minutes: float | None = None, fast: bool = False, train_tokenizers: bool = False,
                  dtype: str = "auto") -> Settings:
    """The settings of ``open4m quickstart`` for a budget of ``minutes`` (default 30) or ``--fast`` (3).

    Scenes, evaluation size and model size grow with the budget; the training steps (and with ``dtype="auto"``
    the precision) are decided later, by a calibration. Raises ValueError for a budget that is not a positive
    number, for ``fast`` together with ``minutes`` or for an unknown ``dtype``.
    """
    if fast and minutes is not None:
        raise ValueError("--fast sets the budget (about 3 minutes); give either --fast or --minutes, not both")
    minutes = FAST_MINUTES if fast else DEFAULT_MINUTES if minutes is None else minutes
    if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not math.isfinite(minutes) \
            or minutes <= 0:
        raise ValueError(f"--minutes must be a positive number of minutes, got {minutes!r}")
    small = minutes < 10
    scenes = SHARD_SIZE * max(2, min(80, round(minutes * 100 / SHARD_SIZE)))
    return Settings(
        minutes=float(minutes),
        train_scenes=scenes,
        val_scenes=16 if small else 64,
        eval_scenes=8 if small else 32,
        sample_scenes=4,
        dim=128 if small else 192 if minutes < 60 else 256,
        depth=2 if small else 3 if minutes < 60 else 4,
        num_heads=4,
        batch_size=16 if small else 32,
        train_tokenizers=train_tokenizers,
        dtype=dtype,
        min_steps=FAST_MIN_STEPS if fast else MIN_STEPS,
    ).validate()


def train_config(s: Settings, train_tokens: Path, val_tokens: Path, tokenizers: Path, out_dir: Path,
                 steps: int, dtype: str = "fp32") -> TrainConfig:
    """The world recipe (configs/train/world.yaml) at the quickstart's size, training for ``steps`` steps in
    ``dtype`` ("fp32" or "bf16")."""
    return from_dict({
        "model": "tiny_gelu",
        "model_overrides": {"dim": s.dim, "num_heads": s.num_heads, "encoder_depth": s.depth,
                            "decoder_depth": s.depth, "mlp_ratio": 2.5},
        "domains_in": WORLD_INPUTS,
        "domains_out": WORLD_OUTPUTS,
        "masking": str(world_mixture_path()),
        "input_tokens": 128,
        "target_tokens": 128,
        "text_tokenizer": str(tokenizers),
        "train_data": [{"shards": str(train_tokens)}],
        "val_data": [{"shards": str(val_tokens)}],
        "steps": steps,
        "batch_size": s.batch_size,
        "lr": s.lr,
        "min_lr": 1.0e-5,
        "warmup_steps": min(100, steps // 10),
        "weight_decay": 0.05,
        "clip_grad": 1.0,
        "dtype": dtype,
        "workers": 1,
        "shuffle_buffer": 256,
        "save_every": max(10, steps // 10),
        "keep_last": 1,
        "val_every": 0,
        "val_batches": max(1, min(2, s.val_scenes // s.batch_size)),
        "log_every": 1,
        "seed": s.seed,
        "out_dir": str(out_dir),
        "progress": True,
        "plot": True,
    }, source="quickstart training config")


def choose_dtype(seconds_per_step: dict[str, float]) -> str:
    """The training precision from calibrated seconds per step (``{"fp32": ..., "bf16": ...}``, either may be
    missing): bf16 when it is at least :data:`BF16_MIN_SPEEDUP` times faster than fp32, else fp32 (bf16 rounds
    the matrix products, so it has to pay for itself in steps)."""
    if "bf16" not in seconds_per_step:
        return "fp32"
    if "fp32" not in seconds_per_step:
        return "bf16"
    return "bf16" if seconds_per_step["fp32"] >= BF16_MIN_SPEEDUP * seconds_per_step["bf16"] else "fp32"


def world_mixture_path() -> Path:
    """``configs/mixtures/world.yaml`` of the source checkout; FileNotFoundError when this install lacks it."""
    path = configs_dir() / "mixtures" / "world.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"the world masking mixture {path} is missing; the quickstart runs from a source "
                                "checkout of open4m (pip install -e .)")
    return path


def configs_dir() -> Path:
    """The project's ``configs/`` folder (next to ``src/``)."""
    return Path(__file__).resolve().parents[2] / "configs"


def steps_for(seconds: float, seconds_per_step: float, startup: float, min_steps: int = MIN_STEPS) -> int:
    """How many training steps fit in ``seconds`` at ``seconds_per_step`` after ``startup`` (at least
    ``min_steps``)."""
    return max(min_steps, int((seconds - startup) / max(seconds_per_step, 1e-6)))


def estimate(s: Settings, workers: int) -> dict[str, float]:
    """Seconds each stage should take before anything is measured: training gets what the budget leaves, or
    what its ``min_steps`` take at :data:`PRIOR_FAST_STEP_S` if that is more; training tokenizers comes on top of
    the budget."""
    scenes = s.train_scenes + s.val_scenes
    out = {
        "world": PRIOR_STARTUP_S / 2 + scenes * PRIOR_RENDER_S_PER_SCENE / workers,
        "tokenizers": 4 * TOKENIZER_TRAIN_S if s.train_tokenizers else 0.0,
        "tokenize": PRIOR_STARTUP_S + scenes * PRIOR_TOKENIZE_S_PER_SCENE / workers,
        "export": 2.0,
        "evaluate": PRIOR_STARTUP_S / 2 + 2 * s.eval_scenes * PRIOR_EVAL_S_PER_SCENE,
        "samples": PRIOR_STARTUP_S / 2 + s.sample_scenes * PRIOR_EVAL_S_PER_SCENE,
        "report": 1.0,
    }
    step = PRIOR_FAST_STEP_S * (s.batch_size / 16) * (s.dim / 128) * (s.depth / 2)
    floor = PRIOR_CALIBRATION_S + s.min_steps * step
    out["train"] = max(30.0, floor, s.minutes * 60 - sum(v for k, v in out.items() if k != "tokenizers"))
    return out
