"""Process-level CPU settings that make training and generation faster; called by entry points, never on import.

Denormals: once a model has learned, softmax outputs over large vocabularies (and attention weights) hold
many values below float32's normal range (~1e-38); the CPU handles such subnormal numbers in microcode, 10-100x
slower. An 80-step run of a small world model took 124 s instead of 53 s this way, its steps slowing as it
learned; :func:`flush_denormals` (flush-to-zero, as GPUs do by default) gives the 53 s with identical losses.

glibc returns freed blocks above ``M_MMAP_THRESHOLD`` (at most 32 MB by default) to the kernel at
once, so a training step that frees and re-allocates its large gradient and logits buffers pays a
page fault per 4 KB page every step. On a 2-core machine this cost a tiny 4M model ~40% of its step
time; raising the thresholds keeps those pages in the process after the first step.

The one setting that must come before torch loads, MKL's buffer cache, is made by importing :mod:`open4m`
(see its docstring).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_tuned = False


def flush_denormals() -> bool:
    """Flush subnormal floats to zero on the CPU (SSE3+ / ARM); True if supported. Changes no result above 1e-38."""
    return bool(torch.set_flush_denormal(True))


def tune_cpu() -> None:
    """Every process-level CPU setting of this module (what the training and generation entry points call).

    The settings stay for the rest of the process; ``torch.set_flush_denormal(False)`` undoes the flushing.
    """
    tune_allocator()
    flush_denormals()


def tune_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 31) -> bool:
    """Keep large freed blocks in the process (glibc only). Returns True if the settings were applied."""
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    _tuned = bool(ok)
    return _tuned


def native_bf16(device: str = "cpu") -> bool:
    """Whether bf16 matrix products run on native units of ``device`` (CPU: AVX-512 or ARM bf16 as oneDNN
    reports them; any other device is not checked here and answers True). Without them autocast emulates bf16:
    a quickstart training step of the ``--fast`` size took 3.7 s in bf16 against 0.32 s in fp32 on a 2-core
    AVX2-only AMD EPYC. Private torch API: when it is missing the answer is True, so callers measure instead of
    assuming."""
    if device != "cpu":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True
