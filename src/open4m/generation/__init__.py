"""Any-to-any generation with a 4M model.

- :mod:`~open4m.generation.schedules`: tokens / temperature per step (official formulas);
- :mod:`~open4m.generation.sampling`: top-k / top-p and sampling with per-row generators;
- :mod:`~open4m.generation.sampler`: :class:`Sampler` (MaskGIT, ROAR, autoregressive with KV cache, guidance,
  chains) on a ModDict state;
- :mod:`~open4m.generation.prompt`: :func:`generate` — typed conditions in, tokens and decoded outputs out;
- :mod:`~open4m.generation.boxes`: box IoU and :func:`~open4m.generation.boxes.detect` (several decodes of a
  det target, optionally on the mirrored image too, fused into one scored box list);
- :mod:`~open4m.generation.segmentation`: label maps refined by the model's own boxes
  (:func:`~open4m.generation.segmentation.segment`).
"""

from open4m.generation.prompt import GenerationResult, Partial, generate
from open4m.generation.sampler import Sampler, StepInfo, TargetSpec

__all__ = ["GenerationResult", "Partial", "Sampler", "StepInfo", "TargetSpec", "generate"]
