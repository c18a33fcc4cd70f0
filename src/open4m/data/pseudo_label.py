"""Pseudo-labelling a folder of real images with a 4M model (``open4m label``), as the official project labels
CC12M with expert networks: each image gets the model's RGB→X predictions as its aligned modalities.

Input: a folder of images (searched recursively; ``.png .jpg .jpeg .bmp .webp``, hidden files and folders left
out), sorted by relative path. Each image is centre-cropped to a square and resized to the model's image size S
(64 for the shipped world model). Output: raw shards in the member format of the world's shards
(:mod:`open4m.data.world.sample`), so ``open4m tokenize`` turns them into token shards for training unchanged.
Members per sample (key = the image's index in the sorted list, 10 digits), for each modality the model predicts,
each predicted from the image alone (as ``open4m eval`` predicts; never chained through the other labels):

- ``rgb.png``: the cropped and resized input, uint8 ``(S, S, 3)``;
- ``depth.npy`` float32 ``(S, S)``, ``normal.npy`` float16 ``(S, S, 3)``, ``semseg.png`` uint8 ``(S, S)``: the
  greedy one-step predictions of ``tok_depth@S`` / ``tok_normal@S`` / ``tok_semseg@S`` decoded by the tokenizers;
  with a det target too, semseg object pixels are relabelled by the fused boxes
  (:func:`open4m.generation.segmentation.segment`, as ``open4m eval`` scores it);
- ``det.json``: the fused boxes (:func:`open4m.generation.boxes.detect`: greedy decodes of the image, its mirror
  and the shifted views when the model takes RGB pixels, or of the image alone with ``all_views=False``: 3.2-4.8
  instead of 2.0-2.4 images/s on a 2-core CPU, boxes mAP@0.5 0.71 instead of 0.86 for the shipped model) with
  ``score`` >= ``min_box_score``, as
  ``[{"box": [x0, y0, x1, y1], "class": name, "score": s}]``;
- ``caption.txt``: the greedy caption;
- ``source.txt``: the image's path relative to the input folder.

``OUT/preview.png`` shows the first :data:`PREVIEW_IMAGES` labelled images (rgb, depth, normals, semseg, boxes,
caption), redrawn whenever the first shard is written. ``OUT/labels.json`` records the input folder, the model and
tokenizer hashes, the settings, the image list, the unreadable images (skipped, with the reason) and each finished
shard's hash; it is written atomically after every shard. A rerun continues: shards whose file matches its entry
are kept, the rest are (re)written, leftover temporaries removed. A rerun with another model, tokenizer set, image
list or settings is refused unless ``overwrite`` (which deletes this run's shards first). Shards and the preview
are written atomically (temp + rename).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path

import numpy as np

from open4m import modalities
from open4m.atomic import read_json, write_json_atomic
from open4m.data.shards import list_shards, remove_partial_shards, write_shard
from open4m.data.world.config import SHAPE_LABELS
from open4m.data.world.sample import EXTENSIONS

FORMAT = "open4m-pseudo-labels/1"
MANIFEST = "labels.json"
SHARD_PREFIX = "pseudo"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MIN_BOX_SCORE = 0.5
PREVIEW = "preview.png"
PREVIEW_IMAGES = 4


def list_images(root: str | Path) -> list[str]:
    """Paths (relative to ``root``, POSIX style, sorted) of the image files under ``root``; hidden files and
    folders are left out. Raises FileNotFoundError / ValueError for a missing folder or one with no images."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not found:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return found


def load_image(path: str | Path, size: int) -> np.ndarray:
    """The image at ``path`` as uint8 ``(size, size, 3)``: turned upright by its EXIF orientation (as a phone's
    photo is shown), converted to RGB, centre-cropped to a square, resized (bicubic). Raises ValueError naming the
    file when PIL cannot read it."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path} is not an image PIL can read ({err})") from None
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8).copy()


@dataclass
class Labeller:
    """The RGB→X predictions of a 4M ``model`` with its tokenizer set, as raw world-format labels.

    Built by :meth:`for_model`, which works out from the model's domains and the set which modalities it can
    label: ``rgb_input`` (``rgb@S`` pixels, else ``tok_rgb@S``), ``images`` (raw name → token modality, for depth,
    normal and semseg), ``caption`` and ``det`` (sequence modality names or None)."""

    model: object
    tokenizers: object
    size: int
    rgb_input: str
    images: dict[str, str]
    caption: str | None
    det: str | None
    min_box_score: float = MIN_BOX_SCORE
    all_views: bool = True

    @classmethod
    def for_model(cls, model, tokenizers, min_box_score: float = MIN_BOX_SCORE, all_views: bool = True) -> Labeller:
        """Raises ValueError when the model takes no RGB or predicts none of the labelled modalities."""
        if not 0.0 <= min_box_score <= 1.0:
            raise ValueError(f"min_box_score must be in [0, 1], got {min_box_score}")
        sizes = {tok.config.image_size for tok in tokenizers.image.values()}
        if len(sizes) != 1:
            raise ValueError(f"the tokenizer set needs image tokenizers of one size, it has {sorted(sizes)}")
        size = sizes.pop()
        inputs, outputs = set(model.config.domains_in), set(model.config.domains_out)
        rgb_input = next((name for name in (f"rgb@{size}", f"tok_rgb@{size}") if name in inputs
                          and (modalities.get(name).kind == "pixels" or name in tokenizers.image)), None)
        if rgb_input is None:
            raise ValueError(f"the model takes no RGB input at {size} px (rgb@{size} pixels or tok_rgb@{size}); "
                             f"its inputs are {sorted(inputs)}")
        images = {raw: f"tok_{raw}@{size}" for raw in ("depth", "normal", "semseg")
                  if f"tok_{raw}@{size}" in outputs and f"tok_{raw}@{size}" in tokenizers.image}
        text = tokenizers.text is not None
        caption = f"caption@{size}" if text and f"caption@{size}" in outputs else None
        det = f"det@{size}" if text and f"det@{size}" in outputs else None
        if not images and caption is None and det is None:
            raise ValueError(f"the model predicts none of tok_depth / tok_normal / tok_semseg / caption / det at "
                             f"{size} px with this tokenizer set; its outputs are {sorted(outputs)}")
        return cls(model, tokenizers, size, rgb_input, images, caption, det, min_box_score, all_views)

    @property
    def members(self) -> list[str]:
        """The shard members of every sample, sorted."""
        raw = ["rgb", *self.images, *["caption"] * (self.caption is not None), *["det"] * (self.det is not None)]
        return sorted([f"{name}.{EXTENSIONS[name]}" for name in raw] + ["source.txt"])

    @property
    def settings(self) -> dict:
        """What decides the labels besides the model and the tokenizers (stored in the manifest)."""
        return {"image_size": self.size, "rgb_input": self.rgb_input, "targets": [*self.images.values(),
                *[n for n in (self.caption, self.det) if n]], "min_box_score": self.min_box_score,
                "box_views": "image, mirror, shifts" if self._views else "image"}

    @property
    def _pixels(self) -> bool:
        return modalities.get(self.rgb_input).kind == "pixels"

    @property
    def _views(self) -> bool:
        """Whether boxes fuse the mirrored and shifted views too (asked for, and the model takes pixels)."""
        return self.all_views and self._pixels

    def label(self, rgb: np.ndarray, seed: int = 0) -> list[dict]:
        """uint8 images ``(B, S, S, 3)`` → one dict per image: ``rgb`` and, for each predicted modality, ``depth``
        / ``normal`` / ``semseg`` arrays, ``det`` (box list), ``caption`` (str)."""
        from open4m.generation.boxes import SHIFTS, detect
        from open4m.generation.prompt import generate
        from open4m.generation.sampler import TargetSpec
        from open4m.generation.segmentation import segment
        from open4m.pixels import to_model_pixels

        if rgb.ndim != 4 or rgb.shape[1:] != (self.size, self.size, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"label: expected uint8 images (B, {self.size}, {self.size}, 3), got "
                             f"{rgb.dtype} {tuple(rgb.shape)}")
        b = len(rgb)
        if self._pixels:
            condition = {self.rgb_input: to_model_pixels(rgb)}
        else:
            condition = {self.rgb_input: self.tokenizers.image[self.rgb_input].encode(rgb)}
        views = {"flip": True, "shifts": SHIFTS} if self._views else {"flip": False, "shifts": ()}
        seeds = [seed + i for i in range(b)]
        text, image_tok = self.tokenizers.text, self.tokenizers.image
        out = [{"rgb": rgb[i]} for i in range(b)]
        boxes = None
        # (raw name, target); semseg with a det target comes from segment() below, refined by the boxes
        jobs = [(raw, TargetSpec(name, steps=1, temperature=0.0)) for raw, name in self.images.items()
                if not (raw == "semseg" and self.det)]
        jobs += [("caption", TargetSpec(self.caption, temperature=0.0))] if self.caption else []
        for raw, spec in jobs:  # each from the image alone, as `open4m eval` predicts (one prompt would chain them)
            result = generate(self.model, condition, [spec], tokenizers=image_tok, text_tokenizer=text, seed=seeds)
            for row, value in zip(out, result.decoded[spec.name], strict=True):
                row[raw] = value
        if self.det and "semseg" in self.images:
            seg = segment(self.model, condition, self.images["semseg"], self.det, class_ids=SHAPE_LABELS,
                          tokenizers=image_tok, text_tokenizer=text, seed=seeds, **views)
            boxes = seg.boxes
            for row, value in zip(out, seg.labels, strict=True):
                row["semseg"] = value
        elif self.det:
            boxes = detect(self.model, condition, self.det, text_tokenizer=text, tokenizers=image_tok, samples=0,
                           seed=seeds, **views)
        if boxes is not None:
            for row, row_boxes in zip(out, boxes, strict=True):
                row["det"] = [{"box": [float(c) for c in box["box"]], "class": box["class"],
                               "score": float(box["score"])} for box in row_boxes
                              if box.get("score", 1.0) >= self.min_box_score]
        return out


# The dtypes world shards store the image labels in (normals as float16).
_STORED_DTYPES = {"depth": np.float32, "normal": np.float16, "semseg": np.uint8}


def _members(row: dict, source: str) -> dict:
    """A labelled image (a :meth:`Labeller.label` row) as shard members."""
    out = {f"{name}.{EXTENSIONS[name]}": np.asarray(value, dtype=_STORED_DTYPES[name])
           if name in _STORED_DTYPES else value for name, value in row.items()}
    return {**out, "source.txt": source}


@dataclass
class LabelReport:
    """What a :func:`label_folder` call did: shards written now / found done, images labelled now, images that
    could not be read (relative path → reason), seconds, the output folder."""

    written: int
    skipped: int
    labelled: int
    unreadable: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    out: Path = Path()


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}-{index:06d}.tar"


def label_folder(images: str | Path, out: str | Path, labeller: Labeller, *, model_sha256: str,
                 tokenizers_sha256: dict, shard_size: int = 256, batch_size: int = 16, overwrite: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> LabelReport:
    """Label every image under ``images`` into shards of ``shard_size`` images in ``out`` (see the module
    docstring); ``progress(done, total)`` is called with images after each batch. Resumable."""
    from open4m.tokenizer_set import file_sha256  # here, not at the top: the CLI imports this module to build --help

    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size} and {batch_size}")
    start = time.perf_counter()
    images, out = Path(images), Path(out)
    files = list_images(images)
    identity = {"format": FORMAT, "images": str(images.resolve()), "model_sha256": model_sha256,
                "tokenizers_sha256": tokenizers_sha256, "settings": {**labeller.settings, "shard_size": shard_size},
                "members": labeller.members, "files": files}
    manifest = _start(out, identity, overwrite)
    shards = [files[i : i + shard_size] for i in range(0, len(files), shard_size)]
    report = LabelReport(0, 0, 0, dict(manifest.get("unreadable", {})), out=out)
    done = 0
    for index, names in enumerate(shards):
        path = out / shard_name(index)
        entry = manifest["shards"].get(path.name)
        if entry is not None and path.is_file() and file_sha256(path) == entry["sha256"]:
            report.skipped += 1
            done += len(names)
            if progress:
                progress(done, len(files))
            continue
        samples, shown = [], []
        first = index * shard_size
        for name in names:  # read again below: a file may have been mended since
            report.unreadable.pop(name, None)
        for b in range(0, len(names), batch_size):
            batch = list(enumerate(names[b : b + batch_size], start=first + b))
            loaded = []
            for key, name in batch:
                try:
                    loaded.append((key, name, load_image(images / name, labeller.size)))
                except ValueError as err:
                    report.unreadable[name] = str(err)
            if loaded:
                rows = labeller.label(np.stack([rgb for _, _, rgb in loaded]), seed=loaded[0][0])
                for (key, name, _), row in zip(loaded, rows, strict=True):
                    samples.append({"__key__": f"{key:010d}", **_members(row, name)})
                if index == 0:
                    shown += rows[: PREVIEW_IMAGES - len(shown)]
                report.labelled += len(loaded)
            done += len(batch)
            if progress:
                progress(done, len(files))
        write_shard(path, samples, overwrite=True)
        if shown:
            from open4m.data.world.preview import samples_grid
            from open4m.viz import save_png

            save_png(samples_grid(shown), out / PREVIEW, overwrite=True)
        manifest["shards"][path.name] = {"samples": len(samples), "sha256": file_sha256(path)}
        manifest["unreadable"] = dict(sorted(report.unreadable.items()))
        write_json_atomic(out / MANIFEST, manifest)
        report.written += 1
    report.seconds = time.perf_counter() - start
    return report


def _start(out: Path, identity: dict, overwrite: bool) -> dict:
    """The manifest to continue from: with ``overwrite`` a fresh one (this run's shards deleted); else the stored
    one when it matches ``identity``, a fresh one when there is none, and ValueError naming what differs."""
    out.mkdir(parents=True, exist_ok=True)
    remove_partial_shards(out)
    path = out / MANIFEST
    ours = list_shards(out, f"{SHARD_PREFIX}-*.tar")
    if overwrite:
        for shard in ours:
            shard.unlink()
    elif path.exists():
        stored = read_json(path, f"{path} is missing")
        changed = [_difference(k, stored.get(k), identity[k]) for k in identity if stored.get(k) != identity[k]]
        if not changed:
            return stored
        raise ValueError(f"{out} holds pseudo-labels made with other {'; '.join(changed)}; use another --out "
                         "folder, or --overwrite to delete them and label again")
    elif ours:
        raise ValueError(f"{out} holds {len(ours)} {SHARD_PREFIX}-*.tar shards but no {MANIFEST}; use another "
                         "--out folder, or --overwrite to replace them")
    manifest = {**identity, "shards": {}, "unreadable": {}}
    write_json_atomic(path, manifest)
    return manifest


def _difference(key: str, there, now) -> str:
    """One line on how manifest entry ``key`` differs: ``settings (shard_size: 4 there, 256 now)``."""
    if key == "files":
        there = there or []
        return (f"images ({len(there)} there, {len(now)} now; first difference: "
                f"{next((a, b) for a, b in zip_longest(there, now) if a != b)})")
    if isinstance(there, dict) and isinstance(now, dict):
        keys = sorted(k for k in set(there) | set(now) if there.get(k) != now.get(k))
        return f"{key} ({', '.join(f'{k}: {there.get(k)!r} there, {now.get(k)!r} now' for k in keys)})"
    return f"{key} ({there!r} there, {now!r} now)"


def label_images(images: str | Path, out: str | Path, model_dir: str | Path | None = None,
                 tokenizers_dir: str | Path | None = None, *, shard_size: int = 256, batch_size: int = 16,
                 min_box_score: float = MIN_BOX_SCORE, all_views: bool = True, overwrite: bool = False,
                 device: str = "cpu",
                 progress: Callable[[int, int], None] | None = None) -> LabelReport:
    """:func:`label_folder` with a model folder (default: the shipped world model) and its tokenizers (default:
    ``model_dir/tokenizers``, else the shipped world set)."""
    from open4m.evaluation.run import load_model_and_tokenizers
    from open4m.model.checkpoint import WEIGHTS_NAME
    from open4m.runtime import tune_cpu
    from open4m.shipped import world_model_dir
    from open4m.tokenizer_set import file_sha256

    tune_cpu()
    model_dir = Path(model_dir) if model_dir is not None else world_model_dir()
    list_images(images)  # a bad folder is named before the model loads
    model, tokenizers = load_model_and_tokenizers(model_dir, tokenizers_dir, device=device)
    labeller = Labeller.for_model(model.eval(), tokenizers, min_box_score, all_views)
    return label_folder(images, out, labeller, model_sha256=file_sha256(model_dir / WEIGHTS_NAME),
                        tokenizers_sha256=dict(tokenizers.sha256), shard_size=shard_size, batch_size=batch_size,
                        overwrite=overwrite, progress=progress)


__all__ = ["FORMAT", "MANIFEST", "MIN_BOX_SCORE", "LabelReport", "Labeller", "label_folder", "label_images",
           "list_images", "load_image"]
