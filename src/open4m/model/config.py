"""FourMConfig: every setting of a 4M model, with the official config keys, and the presets.

The field names are the keys of the official ``config.json`` (OFFICIAL-4M-SPEC §3.2), so a
release config maps onto this dataclass one to one. Keys the releases omit take the defaults of
the official ``FourM.__init__``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from torch import nn

from open4m import modalities

# Keys the official FM wrapper deletes unconditionally: a release config always has them.
REQUIRED_KEYS = ("domains_in", "domains_out", "image_size", "patch_size", "norm_bias", "act_layer")
# The keys of a released config.json, in their order (OFFICIAL-4M-SPEC §3.2); written always.
RELEASE_KEYS = (
    "domains_in", "domains_out", "encoder_depth", "decoder_depth", "dim", "num_heads", "mlp_ratio", "qkv_bias",
    "proj_bias", "mlp_bias", "norm_bias", "act_layer", "gated_mlp", "image_size", "patch_size",
)
# Keys that exist only in open4m; never written to config.json (official code would reject them).
OPEN4M_ONLY_KEYS = ("tie_decoder_embeddings",)


@dataclass
class FourMConfig:
    """Architecture of a 4M model.

    ``act_layer`` names a ``torch.nn`` activation class (``"GELU"``, ``"SiLU"``); ``norm_bias``
    chooses LayerNorm with a learned bias (True) or a zero bias buffer (False). ``image_size`` and
    ``patch_size`` are fallbacks only: each image modality's own sizes come from the registry.
    ``tie_decoder_embeddings`` ties each decoder ``to_logits`` to its ``token_emb`` (the official
    trainer does; the official hub wrapper does not).
    """

    domains_in: list[str]
    domains_out: list[str]
    encoder_depth: int = 12
    decoder_depth: int = 12
    dim: int = 768
    num_heads: int = 12
    mlp_ratio: float = 4
    qkv_bias: bool = True
    proj_bias: bool = True
    mlp_bias: bool = True
    norm_bias: bool = True
    act_layer: str = "GELU"
    gated_mlp: bool = False
    image_size: int = 224
    patch_size: int = 16
    qk_norm: bool = False
    decoder_causal_mask: bool = False
    decoder_sep_mask: bool = True
    num_register_tokens: int = 0
    share_modality_embeddings: bool = True
    drop_path_rate_encoder: float = 0.0
    drop_path_rate_decoder: float = 0.0
    shared_drop_path: bool = False
    use_act_checkpoint: bool = False
    tie_decoder_embeddings: bool = False
    # Extra keys read from a file that this version does not know (kept so they can be reported).
    unknown: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for key in ("domains_in", "domains_out"):
            value = getattr(self, key)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"config {key!r} must be a list of modality names, got {value!r}")
            setattr(self, key, list(value))
            for name in value:
                modalities.get(name)
        for name in self.domains_out:
            if not modalities.get(name).has_decoder:
                raise ValueError(
                    f"config domains_out: modality {name!r} ({modalities.get(name).kind}) cannot be predicted"
                )
        if not self.domains_in:
            raise ValueError("config domains_in is empty: the model needs at least one input modality")
        for key in ("dim", "num_heads", "encoder_depth", "decoder_depth"):
            if int(getattr(self, key)) <= 0:
                raise ValueError(f"config {key!r} must be a positive integer, got {getattr(self, key)!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"config dim {self.dim} is not divisible by num_heads {self.num_heads}")
        self.activation()  # validates the name

    def activation(self) -> type[nn.Module]:
        """The ``torch.nn`` class named by ``act_layer``."""
        act = getattr(nn, str(self.act_layer), None)
        if not (isinstance(act, type) and issubclass(act, nn.Module)):
            raise ValueError(f"config act_layer {self.act_layer!r} is not a torch.nn activation class")
        return act

    def to_official_dict(self) -> dict:
        """The config.json content: the release keys in release order, then any other official
        ``FourM`` setting that differs from its default (so release-like models get exactly the
        release key set, which the official ``FM`` and ``FMViT`` accept)."""
        out = {key: getattr(self, key) for key in RELEASE_KEYS}
        for f in dataclasses.fields(self):
            if f.name in out or f.name in OPEN4M_ONLY_KEYS or f.name == "unknown":
                continue
            if getattr(self, f.name) != f.default:
                out[f.name] = getattr(self, f.name)
        return out

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> FourMConfig:
        """Build from a config dict (a release config.json or our own); unknown keys are kept aside.

        Raises a ValueError naming ``source`` and the key when a required key is missing or a value
        has the wrong type.
        """
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise ValueError(f"{source}: missing required key(s) {missing}; a 4M config needs {list(REQUIRED_KEYS)}")
        known = {f.name: f for f in dataclasses.fields(cls) if f.name != "unknown"}
        kwargs, unknown = {}, {}
        for key, value in data.items():
            if key not in known:
                unknown[key] = value
                continue
            kwargs[key] = _check_type(key, value, known[key].type, source)
        return cls(**kwargs, unknown=unknown)


def _check_type(key: str, value, annotation: str, source: str):
    expected = {"int": int, "float": (int, float), "bool": bool, "str": str}.get(str(annotation))
    if expected is None:
        return value
    if isinstance(value, bool) and expected is not bool:
        raise ValueError(f"{source}: key {key!r} must be {annotation}, got {value!r}")
    if not isinstance(value, expected):
        raise ValueError(f"{source}: key {key!r} must be {annotation}, got {value!r} ({type(value).__name__})")
    return value


# Presets (OFFICIAL-4M-SPEC §2.1): size → (dim, encoder depth, decoder depth, heads).
SIZES = {
    "tiny": (384, 6, 6, 6),
    "small": (512, 8, 8, 8),
    "base": (768, 12, 12, 12),
    "large": (1024, 24, 24, 16),
    "xlarge": (2048, 24, 24, 32),
}
FLAVOURS = {
    "gelu": dict(qkv_bias=True, proj_bias=True, mlp_bias=True, norm_bias=True, act_layer="GELU", gated_mlp=False),
    "swiglu_nobias": dict(
        qkv_bias=False, proj_bias=False, mlp_bias=False, norm_bias=False, act_layer="SiLU", gated_mlp=True
    ),
    "swiglu_qknorm_nobias": dict(
        qkv_bias=False, proj_bias=False, mlp_bias=False, norm_bias=False, act_layer="SiLU", gated_mlp=True,
        qk_norm=True,
    ),
}


def preset_names() -> list[str]:
    """All preset names, e.g. ``"base_swiglu_nobias"``; official names like ``fm_base_12e_12d_swiglu_nobias``
    are accepted by :func:`preset` too."""
    return [f"{size}_{flavour}" for size in SIZES for flavour in FLAVOURS]


def preset(name: str, domains_in: list[str], domains_out: list[str], **overrides) -> FourMConfig:
    """A preset config: ``"<size>_<flavour>"`` or the official ``"fm_<size>_<E>e_<D>d_<flavour>"``."""
    key = name
    if key.startswith("fm_"):
        parts = key[3:].split("_")
        key = "_".join([parts[0]] + parts[3:])
    size, _, flavour = key.partition("_")
    if size not in SIZES or flavour not in FLAVOURS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(preset_names())}")
    dim, enc, dec, heads = SIZES[size]
    settings = dict(dim=dim, encoder_depth=enc, decoder_depth=dec, num_heads=heads, mlp_ratio=4, **FLAVOURS[flavour])
    settings.update(overrides)
    return FourMConfig(domains_in=list(domains_in), domains_out=list(domains_out), **settings)
