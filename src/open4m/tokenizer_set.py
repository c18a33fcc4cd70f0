"""A tokenizer set: every tokenizer a 4M model's modalities need, in one folder with a manifest.

Layout (what :meth:`TokenizerSet.save` writes and :meth:`TokenizerSet.load` reads)::

    DIR/manifest.json          {"format": "open4m-tokenizer-set/1",
                                "image": {"tok_rgb@64": "rgb", ...},        # modality -> sub-folder
                                "text": "text/tokenizer.json",              # or null
                                "text_modalities": ["caption@64", "det@64"],
                                "sha256": {"tok_rgb@64": "...", "caption@64": "...", ...}}
    DIR/rgb/config.json, DIR/rgb/model.safetensors     (open4m.vq.ImageTokenizer.save)
    DIR/text/tokenizer.json                             (open4m.text.TextTokenizer.save)

``sha256`` fingerprints each modality's tokenizer (an image tokenizer: its config and weight files; text:
the tokenizer file), so token shards and models can record exactly which tokenizer produced their tokens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from open4m import modalities
from open4m.atomic import read_json, write_json_atomic
from open4m.text import TextTokenizer
from open4m.vq.tokenizer import CONFIG_FILE, WEIGHTS_FILE, ImageTokenizer

FORMAT = "open4m-tokenizer-set/1"
MANIFEST = "manifest.json"
TEXT_FILE = "text/tokenizer.json"


def file_sha256(*paths: Path) -> str:
    """SHA-256 over the bytes of ``paths`` in order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass
class TokenizerSet:
    """``image``: modality name (``tok_rgb@64``) → ImageTokenizer; ``text``: the tokenizer of the sequence
    modalities ``text_modalities`` (or None); ``sha256``: modality → fingerprint (filled by save/load)."""

    image: dict[str, ImageTokenizer] = field(default_factory=dict)
    text: TextTokenizer | None = None
    text_modalities: list[str] = field(default_factory=list)
    sha256: dict[str, str] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        """Every modality this set tokenizes (image modalities first)."""
        return [*self.image, *self.text_modalities]

    def for_modality(self, name: str) -> ImageTokenizer | TextTokenizer:
        """The tokenizer of modality ``name``; a clear error lists what the set has otherwise."""
        if name in self.image:
            return self.image[name]
        if name in self.text_modalities and self.text is not None:
            return self.text
        raise ValueError(f"the tokenizer set has no tokenizer for {name!r}; it has {self.modalities}")

    def save(self, directory: str | Path, half: bool = False, overwrite: bool = False) -> Path:
        """Write the set (see the module docstring); ``half`` stores image-tokenizer weights as float16.

        Refuses to write into a folder that already holds a manifest unless ``overwrite``.
        """
        directory = Path(directory)
        if (directory / MANIFEST).exists() and not overwrite:
            raise FileExistsError(f"{directory} already holds a tokenizer set; pass overwrite=True to replace it")
        image = {}
        for name, tokenizer in self.image.items():
            sub = name.split("@")[0].removeprefix("tok_")
            tokenizer.save(directory / sub, half=half)
            image[name] = sub
        if self.text is not None:
            self.text.save((directory / TEXT_FILE).parent, overwrite=True)
        manifest = {"format": FORMAT, "image": image, "text": TEXT_FILE if self.text is not None else None,
                    "text_modalities": list(self.text_modalities)}
        manifest["sha256"] = self.sha256 = _fingerprints(directory, manifest)
        write_json_atomic(directory / MANIFEST, manifest)
        return directory

    @classmethod
    def load(cls, directory: str | Path, only: Sequence[str] | None = None) -> TokenizerSet:
        """Read a set written by :meth:`save` (``only``: load just these modalities' tokenizers).

        Raises FileNotFoundError / ValueError naming the folder and what is missing or wrong.
        """
        directory = Path(directory)
        manifest = read_manifest(directory)
        wanted = set(only) if only is not None else None
        image = {}
        for name, sub in manifest.get("image", {}).items():
            if wanted is None or name in wanted:
                image[name] = ImageTokenizer.load(directory / sub)
                if image[name].modality != name:
                    raise ValueError(f"{directory / sub}: tokenizes {image[name].modality}, manifest says {name}")
        text_modalities = list(manifest.get("text_modalities", []))
        text = None
        if manifest.get("text") and (wanted is None or wanted & set(text_modalities)):
            text = TextTokenizer.load(directory / manifest["text"])
        for name in text_modalities:
            modalities.get(name)
        return cls(image, text, text_modalities, dict(manifest.get("sha256", {})))


def read_manifest(directory: str | Path) -> dict:
    """The manifest of the tokenizer set in ``directory``; clear errors when it is missing or malformed."""
    path = Path(directory) / MANIFEST
    manifest = read_json(path, f"{directory} is not a tokenizer set: no {MANIFEST}")
    if not isinstance(manifest, Mapping) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not an {FORMAT} manifest")
    return dict(manifest)


def load_text_tokenizer(directory: str | Path) -> TextTokenizer:
    """Only the text tokenizer of the set in ``directory``; ValueError if the set has none."""
    manifest = read_manifest(directory)
    if not manifest.get("text"):
        raise ValueError(f"the tokenizer set {directory} has no text tokenizer")
    return TextTokenizer.load(Path(directory) / manifest["text"])


def _fingerprints(directory: Path, manifest: Mapping) -> dict[str, str]:
    out = {name: file_sha256(directory / sub / CONFIG_FILE, directory / sub / WEIGHTS_FILE)
           for name, sub in manifest["image"].items()}
    if manifest["text"]:
        text_hash = file_sha256(directory / manifest["text"])
        out.update({name: text_hash for name in manifest["text_modalities"]})
    return out
