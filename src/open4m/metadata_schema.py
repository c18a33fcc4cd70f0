"""Metadata fields: official type ids and binning, with explicit inverses (OFFICIAL-4M-SPEC §1.4).

Each metadata entry becomes the chunk ``v1=<type id> v0=<bin>`` (see ``sequences.py``). A
:class:`MetadataField` says how one value is binned and what value a bin stands for:

=============  =================================================  =====================================
kind           value → bin (official ``MetadataTransform``)       bin → value (our inverse)
=============  =================================================  =====================================
``image_dim``  ``value // 32``, clipped to 0..999                 ``32·bin + 16`` (bin centre, pixels)
``count``      ``value``, clipped to 0..999                       ``bin``
``range``      ``int((clip(v) − vmin)/(vmax − vmin)·(bins−1))``   centre ``vmin + (vmax−vmin)·(bin+½)/(bins−1)``,
                                                                  capped at ``vmax`` (the top bin is vmax only)
``thresholds`` number of thresholds ``<= value``                  an explicit representative per bin
=============  =================================================  =====================================

Every inverse lands back in its own bin: ``to_bin(from_bin(b)) == b``. (The official decoder in
``plotting_utils.decode_metadata`` maps range bins to ``vmin + (vmax−vmin)·bin/bins`` and image dims
to ``32·bin``, which are not bin centres; the ids are the same either way.)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass

VALUE_BINS = 1000
IMAGE_DIM_BIN_SIZE = 32
KINDS = ("image_dim", "count", "range", "thresholds")


@dataclass(frozen=True)
class MetadataField:
    """One metadata entry: its name, official type id, and binning.

    Attributes:
        name: key in the metadata dict.
        type_id: the ``v1=<type id>`` that announces it.
        kind: one of :data:`KINDS`.
        vmin, vmax, bins: the range and bin count of ``range`` fields.
        thresholds: ascending bin boundaries of ``thresholds`` fields.
        representatives: the value each ``thresholds`` bin decodes to (len(thresholds) + 1 of them).
    """

    name: str
    type_id: int
    kind: str
    vmin: float = 0.0
    vmax: float = 1.0
    bins: int = 50
    thresholds: tuple[float, ...] = ()
    representatives: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"metadata field {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if not 0 <= self.type_id < VALUE_BINS:
            raise ValueError(f"metadata field {self.name!r}: type id must be in 0..{VALUE_BINS - 1}")
        if self.kind == "range" and not (self.vmax > self.vmin and 2 <= self.bins <= VALUE_BINS):
            raise ValueError(f"metadata field {self.name!r}: range needs vmax > vmin and 2..1000 bins")
        if self.kind == "thresholds":
            ok = list(self.thresholds) == sorted(self.thresholds) and len(self.representatives) == len(
                self.thresholds
            ) + 1
            if not ok or any(self.to_bin(r) != b for b, r in enumerate(self.representatives)):
                raise ValueError(
                    f"metadata field {self.name!r}: thresholds must ascend and each representative "
                    f"must fall in its own bin"
                )

    @property
    def num_bins(self) -> int:
        """How many ``v0`` values the field uses."""
        if self.kind == "range":
            return self.bins
        if self.kind == "thresholds":
            return len(self.thresholds) + 1
        return VALUE_BINS

    def to_bin(self, value: float) -> int:
        """The official bin of ``value`` (a finite number)."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"metadata {self.name!r}: expected a finite number, got {value!r}")
        if self.kind == "image_dim":
            return min(max(int(value // IMAGE_DIM_BIN_SIZE), 0), VALUE_BINS - 1)
        if self.kind == "count":
            return min(max(round(value), 0), VALUE_BINS - 1)
        if self.kind == "range":
            clipped = min(max(value, self.vmin), self.vmax)
            return int((clipped - self.vmin) / (self.vmax - self.vmin) * (self.bins - 1))
        return sum(value >= t for t in self.thresholds)

    def from_bin(self, b: int) -> float:
        """The value bin ``b`` stands for (a bin centre or representative; see the module table)."""
        if not 0 <= b < self.num_bins:
            raise ValueError(f"metadata {self.name!r}: bin must be in 0..{self.num_bins - 1}, got {b}")
        if self.kind == "image_dim":
            return b * IMAGE_DIM_BIN_SIZE + IMAGE_DIM_BIN_SIZE // 2
        if self.kind == "count":
            return b
        if self.kind == "range":
            return self.vmin + (self.vmax - self.vmin) * min((b + 0.5) / (self.bins - 1), 1.0)
        return self.representatives[b]


@dataclass(frozen=True)
class MetadataSchema:
    """A set of metadata fields with unique names and type ids; ``aliases`` maps extra input names."""

    fields: tuple[MetadataField, ...]
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        ids = [f.type_id for f in self.fields]
        if len(set(names)) != len(names) or len(set(ids)) != len(ids):
            raise ValueError("metadata schema: field names and type ids must be unique")
        unknown = {a: n for a, n in self.aliases.items() if n not in names or a in names}
        if unknown:
            raise ValueError(f"metadata schema: aliases must map new names to existing fields, got {unknown}")

    @property
    def by_type_id(self) -> dict[int, MetadataField]:
        return {f.type_id: f for f in self.fields}

    def lookup(self, name: str) -> MetadataField:
        """The field called ``name`` (or one of its aliases)."""
        name = self.aliases.get(name, name)
        for f in self.fields:
            if f.name == name:
                return f
        known = ", ".join(sorted([f.name for f in self.fields] + list(self.aliases)))
        raise ValueError(f"metadata: unknown key {name!r}; known keys: {known}")

    def renamed(self, renames: Mapping[str, str]) -> MetadataSchema:
        """A copy whose fields ``old → new`` carry new names; the old names stay accepted as aliases."""
        for old in renames:
            self.lookup(old)
        fields = tuple(dataclasses.replace(f, name=renames.get(f.name, f.name)) for f in self.fields)
        return MetadataSchema(fields, aliases={**self.aliases, **{old: new for old, new in renames.items()}})


def _range(name: str, type_id: int, vmin: float, vmax: float) -> MetadataField:
    return MetadataField(name, type_id, "range", vmin=vmin, vmax=vmax, bins=50)


# Type ids and binning of the official MetadataTransform (modality_transforms.py:876-954).
OFFICIAL_METADATA = MetadataSchema(
    (
        MetadataField("original_width", 0, "image_dim"),
        MetadataField("original_height", 1, "image_dim"),
        MetadataField("caption_n_chars", 2, "count"),
        MetadataField("caption_n_words", 3, "count"),
        MetadataField("caption_n_sentences", 4, "count"),
        MetadataField("n_humans", 5, "count"),
        MetadataField("n_sam_instances", 6, "count"),
        MetadataField("n_coco_instances", 7, "count"),
        MetadataField("coco_instance_diversity", 8, "count"),
        _range("colorfulness", 9, 0, 150),
        _range("brightness", 10, 0, 255),
        _range("contrast", 11, 0, 127),
        _range("saturation", 12, 0, 255),
        _range("entropy", 13, 0, 10),
        _range("walkability", 14, 0, 1),
        _range("objectness", 15, 0, 1),
        MetadataField("semantic_diversity", 16, "count"),
        _range("geometric_complexity", 17, 0, 0.75),
        _range("occlusion_score", 18, 0, 0.25),
        MetadataField("watermark_score", 19, "thresholds", thresholds=(0.5,), representatives=(0.25, 0.75)),
        MetadataField(
            "aesthetic_score", 20, "thresholds", thresholds=(4.5, 5.5), representatives=(4.0, 5.0, 6.0)
        ),
    )
)

# The world's metadata: the official fields, with its object counts named for what they count.
# Units follow the official ones: brightness = mean grey level 0..255, contrast = grey std 0..127,
# colorfulness = Hasler-Süsstrunk 0..150, saturation = mean HSV saturation 0..255, entropy in bits.
WORLD_METADATA = OFFICIAL_METADATA.renamed(
    {"n_coco_instances": "n_objects", "coco_instance_diversity": "n_object_classes"}
)
