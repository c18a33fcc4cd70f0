"""The modality registry: one frozen record per modality name.

Every other module asks this registry for a modality's kind and sizes; none hard-codes them.
It holds every official 4M-7, 4M-21 and super-resolution (@448) name with the official sizes
(OFFICIAL-4M-SPEC §1.2), and :func:`register` adds new ones (the world's ``tok_rgb@64``, say).

Kinds:

- ``image_tokens``: a fixed grid of discrete ids, ``(H/P) x (W/P)`` tokens, decoded bidirectionally.
- ``pixels``: an image given as floats ``(C, H, W)`` and patch-projected; input only.
- ``sequence``: text-like token ids, span-masked in training, decoded autoregressively.
- ``embeddings``: a sequence of float vectors (e.g. T5 caption embeddings); input only.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

KINDS = ("image_tokens", "pixels", "sequence", "embeddings")

# Sin-cos position tables of sequence modalities always hold this many rows in the official
# checkpoints (a slicing quirk of the reference; OFFICIAL-4M-SPEC §2.3).
SEQUENCE_POS_EMB_ROWS = 512


@dataclass(frozen=True)
class Modality:
    """What the model and the data pipeline need to know about one modality.

    Attributes:
        name: registry key, e.g. ``"tok_depth@224"``.
        kind: one of :data:`KINDS`.
        vocab_size: number of token ids (token kinds); ``None`` for pixels and embeddings.
        max_tokens: most tokens one sample may carry (the image grid size for image kinds).
        image_size: side of the square image, for image kinds.
        patch_size: side of one token's patch, for image kinds.
        num_channels: channels of a pixel image.
        embedding_dim: width of each input vector, for ``embeddings``.
        pos_max_length: positions the sequence embedding knows; later positions reuse 0 in the decoder.
        sincos_pos_emb: fixed 2-D/1-D sin-cos positions (True) or learned ones (global tokens).
        has_encoder: the model can take it as input.
        has_decoder: the model can predict it.
        tokenizer: what produces its tokens (free text; a tokenizer id or a description).
        path: folder or shard-member name on disk.
    """

    name: str
    kind: str
    vocab_size: int | None = None
    max_tokens: int = 0
    image_size: int | None = None
    patch_size: int | None = None
    num_channels: int | None = None
    embedding_dim: int | None = None
    pos_max_length: int | None = None
    sincos_pos_emb: bool = True
    has_encoder: bool = True
    has_decoder: bool = True
    tokenizer: str = ""
    path: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"modality {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.is_image:
            if not self.image_size or not self.patch_size:
                raise ValueError(f"modality {self.name!r}: image kinds need image_size and patch_size")
            if self.image_size % self.patch_size:
                raise ValueError(
                    f"modality {self.name!r}: image_size {self.image_size} is not a multiple of "
                    f"patch_size {self.patch_size}"
                )
            object.__setattr__(self, "max_tokens", self.grid_size**2)
        elif self.max_tokens <= 0:
            raise ValueError(f"modality {self.name!r}: sequence kinds need max_tokens > 0")
        if self.kind in ("image_tokens", "sequence") and not self.vocab_size:
            raise ValueError(f"modality {self.name!r}: token kinds need a vocab_size")
        if self.kind == "pixels" and not self.num_channels:
            raise ValueError(f"modality {self.name!r}: pixels need num_channels")
        if self.kind == "embeddings" and not self.embedding_dim:
            raise ValueError(f"modality {self.name!r}: embeddings need embedding_dim")
        if self.kind in ("pixels", "embeddings") and self.has_decoder:
            object.__setattr__(self, "has_decoder", False)
        if self.pos_max_length is None and self.is_sequence_like:
            object.__setattr__(self, "pos_max_length", self.max_tokens)
        if not self.path:
            object.__setattr__(self, "path", self.name.split("@")[0])

    @property
    def is_image(self) -> bool:
        """Image-like (a token grid or pixels): positions are a 2-D grid."""
        return self.kind in ("image_tokens", "pixels")

    @property
    def is_sequence_like(self) -> bool:
        """Sequence-like (token ids or vectors): positions count valid tokens."""
        return self.kind in ("sequence", "embeddings")

    @property
    def grid_size(self) -> int:
        """Tokens per side of an image modality (``image_size // patch_size``)."""
        if not self.is_image:
            raise ValueError(f"modality {self.name!r} ({self.kind}) has no token grid")
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        """Length of this modality's masks in a batch: the token grid, or the padded sequence.

        Sequences are laid out as inputs then targets (OFFICIAL-4M-SPEC §4.4), so a sequence of at
        most ``max_tokens`` tokens occupies ``2 * (max_tokens + 1)`` slots; embeddings are input only.
        """
        if self.is_image:
            return self.max_tokens
        if self.kind == "embeddings":
            return self.max_tokens
        return 2 * (self.max_tokens + 1)

    @property
    def id(self) -> int:
        """The official in-memory modality tag: ``sha256(name) mod 2**15``."""
        return int(hashlib.sha256(self.name.encode("utf-8")).hexdigest(), 16) % 2**15


_REGISTRY: dict[str, Modality] = {}


def register(modality: Modality, *, replace: bool = False) -> Modality:
    """Add ``modality`` to the registry and return it.

    Registering an equal record again is a no-op; a different record under a taken name raises
    unless ``replace=True``.
    """
    old = _REGISTRY.get(modality.name)
    if old is not None and old != modality and not replace:
        raise ValueError(
            f"modality {modality.name!r} is already registered with different settings: {old}; "
            "pass replace=True to overwrite it"
        )
    _REGISTRY[modality.name] = modality
    return modality


def get(name: str) -> Modality:
    """The registered modality called ``name``; a clear error lists the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown modality {name!r}; registered modalities: {', '.join(sorted(_REGISTRY))}. "
            "Add new ones with open4m.modalities.register(...)"
        ) from None


def names() -> list[str]:
    """All registered names, sorted."""
    return sorted(_REGISTRY)


def image_tokens(name: str, vocab_size: int, image_size: int, patch_size: int, **kw) -> Modality:
    """Register a discrete image-token modality."""
    return register(Modality(name, "image_tokens", vocab_size, image_size=image_size, patch_size=patch_size, **kw))


def pixels(name: str, image_size: int, patch_size: int, num_channels: int = 3, **kw) -> Modality:
    """Register a pixel-input modality (patch-projected, never predicted)."""
    return register(
        Modality(name, "pixels", image_size=image_size, patch_size=patch_size, num_channels=num_channels, **kw)
    )


def sequence(name: str, vocab_size: int, max_tokens: int, **kw) -> Modality:
    """Register a token-sequence modality."""
    return register(Modality(name, "sequence", vocab_size, max_tokens=max_tokens, **kw))


def embeddings(name: str, embedding_dim: int, max_tokens: int, **kw) -> Modality:
    """Register a float-embedding sequence modality (input only)."""
    return register(Modality(name, "embeddings", max_tokens=max_tokens, embedding_dim=embedding_dim, **kw))


def with_size(name: str, image_size: int) -> Modality:
    """A copy of an image modality at another resolution, registered as ``<base>@<image_size>``."""
    base = get(name)
    new_name = f"{name.split('@')[0]}@{image_size}"
    return register(dataclasses.replace(base, name=new_name, image_size=image_size, max_tokens=0))


TEXT_VOCAB = 30000  # the official WordPiece tokenizer (OFFICIAL-4M-SPEC §1.3)


def _register_official() -> None:
    text = "wordpiece-30k"
    for size in (224, 448):
        pixels(f"rgb@{size}", size, 16, tokenizer="none (ImageNet-normalised pixels)", path="rgb")
        image_tokens(f"tok_rgb@{size}", 16384, size, 16, tokenizer="4M_tokenizers_rgb_16k_224-448", path="tok_rgb")
        image_tokens(
            f"tok_depth@{size}", 8192, size, 16, tokenizer="4M_tokenizers_depth_8k_224-448", path="tok_depth"
        )
        image_tokens(
            f"tok_normal@{size}", 8192, size, 16, tokenizer="4M_tokenizers_normal_8k_224-448", path="tok_normal"
        )
        image_tokens(
            f"tok_semseg@{size}", 4096, size, 16, tokenizer="4M_tokenizers_semseg_4k_224-448", path="tok_semseg"
        )
        image_tokens(
            f"tok_clip@{size}", 8192, size, 16, tokenizer="4M_tokenizers_CLIP-B16_8k_224-448", path="tok_clip"
        )
    sequence("caption", TEXT_VOCAB, 256, tokenizer=text)
    sequence("det", TEXT_VOCAB, 256, tokenizer=text)
    sequence("metadata", TEXT_VOCAB, 40, tokenizer=text)
    sequence("human_poses", TEXT_VOCAB, 275, pos_max_length=263, tokenizer=text + " + 4M_tokenizers_human-poses_1k_8")
    sequence("color_palette", TEXT_VOCAB, 23, tokenizer=text)
    sequence("sam_instance", TEXT_VOCAB, 290, tokenizer=text + " + 4M_tokenizers_sam-instance_1k_64")
    embeddings("t5_caption", 4096, 77, tokenizer="T5-XXL embeddings")
    edge = "4M_tokenizers_edge_8k_224-512"
    image_tokens("tok_canny_edge@224", 8192, 224, 16, tokenizer=edge, path="tok_canny_edge")
    image_tokens("tok_sam_edge@224", 8192, 224, 16, tokenizer=edge, path="tok_sam_edge")
    image_tokens("tok_dinov2@224", 8192, 224, 14, tokenizer="4M_tokenizers_DINOv2-B14_8k_224-448", path="tok_dinov2")
    image_tokens(
        "tok_imagebind@224", 8192, 224, 14, tokenizer="4M_tokenizers_ImageBind-H14_8k_224-448", path="tok_imagebind"
    )
    image_tokens(
        "tok_dinov2_global", 8192, 224, 56, sincos_pos_emb=False,
        tokenizer="4M_tokenizers_DINOv2-B14-global_8k_16_224",
    )
    image_tokens(
        "tok_imagebind_global", 8192, 224, 56, sincos_pos_emb=False,
        tokenizer="4M_tokenizers_ImageBind-H14-global_8k_16_224",
    )


_register_official()

# Domain lists of the released models (OFFICIAL-4M-SPEC §1.2).
FOURM7_DOMAINS_IN = [
    "rgb@224", "caption", "det", "tok_rgb@224", "tok_depth@224", "tok_normal@224", "tok_semseg@224", "tok_clip@224",
]
FOURM7_DOMAINS_OUT = [d for d in FOURM7_DOMAINS_IN if d != "rgb@224"]
FOURM21_DOMAINS_IN = [
    "caption", "t5_caption", "det", "metadata", "rgb@224", "tok_rgb@224", "tok_normal@224", "tok_depth@224",
    "tok_semseg@224", "tok_clip@224", "human_poses", "tok_dinov2@224", "tok_dinov2_global", "tok_imagebind@224",
    "tok_imagebind_global", "tok_sam_edge@224", "tok_canny_edge@224", "color_palette", "sam_instance",
]
FOURM21_DOMAINS_OUT = [d for d in FOURM21_DOMAINS_IN if d not in ("t5_caption", "rgb@224")]


WORLD_TEXT_VOCAB = 4352  # ids of the world's text tokenizer (caption@64, det@64)


def _register_world() -> None:
    """The embedded world's modalities (open4m.vq tokenizers, configs/tokenizers/*.yaml, the world text tokenizer).

    64 px images and 4 px patches, so 16 x 16 tokens; one codebook of 1024 codes each. Captions and boxes use
    the world's WordPiece tokenizer (official layout, 4,352 ids: 4,208 special / value / class tokens and the
    world's words); the longest world caption is 92 tokens, the most boxes (12 objects) 61.
    """
    size, patch, vocab = 64, 4, 1024
    pixels(f"rgb@{size}", size, patch, tokenizer="none (ImageNet-normalised pixels, open4m.pixels)", path="rgb")
    for name in ("rgb", "depth", "normal", "semseg", "edges"):
        image_tokens(
            f"tok_{name}@{size}", vocab, size, patch,
            tokenizer=f"open4m.vq {name} VQ-VAE (configs/tokenizers/{name}.yaml)", path=f"tok_{name}",
        )
    text = "open4m world WordPiece (open4m tokenizer train-text on world captions)"
    sequence(f"caption@{size}", WORLD_TEXT_VOCAB, 128, tokenizer=text)
    sequence(f"det@{size}", WORLD_TEXT_VOCAB, 64, tokenizer=text)


_register_world()
