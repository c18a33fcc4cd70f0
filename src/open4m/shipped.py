"""Where the shipped world assets live inside the installed package.

- :func:`world_tokenizers_dir`: the world's tokenizer set (open4m.tokenizer_set): FSQ rgb and VQ depth, normal
  and semseg tokenizers (float16 weights) plus the world's WordPiece text tokenizer; built by
  ``configs/tokenizers/*.yaml`` and ``open4m tokenizer train-text`` (see configs/tokenizers/README.md).
- :func:`world_model_dir`: the shipped 4M model trained on the world (config.json + model.safetensors,
  with its tokenizer set in ``tokenizers/``), when the package ships one.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

ASSETS = "assets/world"


def _asset(name: str) -> Path:
    return Path(str(resources.files("open4m").joinpath(ASSETS, name)))


def world_tokenizers_dir() -> Path:
    """The folder of the shipped world tokenizer set; FileNotFoundError if this install lacks it."""
    path = _asset("tokenizers")
    if not (path / "manifest.json").is_file():
        raise FileNotFoundError(f"the shipped world tokenizers are missing from this install ({path})")
    return path


def world_model_dir() -> Path:
    """The folder of the shipped world 4M model; FileNotFoundError if this install lacks it."""
    path = _asset("model")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the shipped world model is missing from this install ({path})")
    return path


def tokenizers_dir_for(model_dir: str | Path) -> Path:
    """The tokenizer set a model folder goes with: ``model_dir/tokenizers`` when it holds one (as quickstart
    bundles write), else the shipped world tokenizers."""
    bundled = Path(model_dir) / "tokenizers"
    return bundled if (bundled / "manifest.json").is_file() else world_tokenizers_dir()
