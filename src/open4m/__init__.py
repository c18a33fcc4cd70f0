"""open4m: a from-scratch implementation of 4M, Massively Multimodal Masked Modeling."""

__version__ = "0.1.0"
