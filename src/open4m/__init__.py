"""open4m: a from-scratch implementation of 4M, Massively Multimodal Masked Modeling.

Importing open4m before torch switches off MKL's own buffer cache (``MKL_DISABLE_FAST_MM``, read once when
torch loads MKL; a value already set is kept): MKL otherwise keeps the GEMM packing buffers of every matrix
shape it has seen for the life of the process (~90 MB after one training step of the tiny 4M model),
pinned in the middle of the heap. Without the cache each GEMM takes its buffer from malloc, which
:func:`open4m.runtime.tune_allocator` keeps in the process, so it costs no page faults.
"""

import os

os.environ.setdefault("MKL_DISABLE_FAST_MM", "1")

__version__ = "0.1.0"
