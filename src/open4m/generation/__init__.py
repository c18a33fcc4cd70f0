"""Any-to-any generation with a 4M model.

- :mod:`~open4m.generation.schedules`: tokens / temperature per step (official formulas);
- :mod:`~open4m.generation.sampling`: top-k / top-p and sampling with per-row generators;
- :mod:`~open4m.generation.sampler`: :class:`Sampler` (MaskGIT, ROAR, autoregressive with KV cache, guidance,
  chains) on a ModDict state;
- :mod:`~open4m.generation.prompt`: :func:`generate` — typed conditions in, tokens and decoded outputs out.
"""

from open4m.generation.prompt import GenerationResult, Partial, generate
from open4m.generation.sampler import Sampler, StepInfo, TargetSpec

__all__ = ["GenerationResult", "Partial", "Sampler", "StepInfo", "TargetSpec", "generate"]
