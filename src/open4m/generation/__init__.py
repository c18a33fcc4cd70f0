"""Any-to-any generation with a 4M model: schedules, sampling, the token-level sampler and the prompt API."""

from open4m.generation.sampler import Sampler, StepInfo, TargetSpec

__all__ = ["Sampler", "StepInfo", "TargetSpec"]
