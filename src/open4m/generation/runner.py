"""Generation from the command line's terms: a model folder, ``name=value`` conditions, target names, a PNG.

``name=value`` conditions: a ``.npy`` file holds token ids (int; loaded without pickle), a ``.png`` /
``.jpg`` file is a raw image (needs an image tokenizer for that modality), anything else is text for a
sequence modality (a caption). ``--to all`` means every modality the model generates that is not given. A world
caption predicted from one RGB image is decoded through the model's own boxes (``plain_caption`` /
``--plain-caption`` keeps the plain chained decode).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from open4m import modalities
from open4m.data.world.config import SEMSEG_CLASSES
from open4m.generation.caption_shapes import chain_caption_through_boxes
from open4m.generation.prompt import GenerationResult, generate
from open4m.generation.sampler import TargetSpec
from open4m.pixels import to_model_pixels

TEXT_TOKENIZER_FILES = ("text_tokenizer.json", "tokenizer.json")
CLOSED_VOCABULARY = 10_000  # text tokenizers smaller than this hold every word of their corpus whole
# Classifier-free guidance of generated RGB on its conditions unless asked otherwise (`open4m generate`,
# `open4m eval`): without it the shipped world model's captions barely steer its images (README, "The shipped
# world model", has the measured scales).
RGB_GUIDANCE = 5.0


def resolve_name(name: str, available: Sequence[str], role: str = "modality") -> str:
    """A modality name, or a short one (``depth`` → ``tok_depth@224``, ``rgb`` → ``rgb@224``) when exactly
    one of ``available`` matches it."""
    if name in available or not available:
        return name
    matches = [a for a in available if a.split("@")[0] in (name, f"tok_{name}")]
    if len(matches) == 1:
        return matches[0]
    raise ValueError(f"{role} {name!r} is not one of {sorted(available)}"
                     + (f" (ambiguous: {matches})" if matches else ""))


def parse_condition(spec: str, available: Sequence[str] = ()) -> tuple[str, object]:
    """``"caption=a red cube"`` → ("caption", "a red cube"); ``"tok_rgb@224=x.npy"`` → token ids; ``.png`` → pixels.

    Short names resolve against ``available`` (the model's inputs), raw images preferring pixels.
    """
    name, sep, value = spec.partition("=")
    if not sep or not name:
        raise ValueError(f"--from expects NAME=VALUE (e.g. caption=\"a red cube\"), got {spec!r}")
    if name not in available and Path(value).suffix.lower() in (".png", ".jpg", ".jpeg"):
        pixel_inputs = [a for a in available if a.split("@")[0] == name and modalities.get(a).kind == "pixels"]
        if len(pixel_inputs) == 1:  # a raw image enters through the pixel input when the model has one
            name = pixel_inputs[0]
    name = resolve_name(name, available, "condition")
    modalities.get(name)
    suffix = Path(value).suffix.lower()
    if suffix == ".npy":
        if not Path(value).is_file():
            raise FileNotFoundError(f"{name}: token file {value} not found")
        return name, np.load(value, allow_pickle=False)
    if suffix in (".png", ".jpg", ".jpeg"):
        from PIL import Image

        if not Path(value).is_file():
            raise FileNotFoundError(f"{name}: image {value} not found")
        mod = modalities.get(name)
        try:
            image = Image.open(value)
        except (OSError, ValueError) as err:
            raise ValueError(f"{name}: {value} is not an image PIL can read ({err})") from None
        with image:
            image = image.convert("RGB")
            if mod.kind == "pixels":  # the model's own input: resized and ImageNet-normalised (3, H, W)
                image = image.resize((mod.image_size, mod.image_size), Image.BICUBIC)
                return name, to_model_pixels(np.asarray(image))
            pixels = np.asarray(image, dtype=np.float32) / 255.0
        return name, pixels
    return name, value


def unknown_words(tokenizer, text: str) -> list[str]:
    """Words of ``text`` a closed-vocabulary tokenizer does not know: anything but one whole-word token or
    a whole word plus a plural ``##s`` / ``##es`` (the world's tokenizer holds its caption words so)."""
    out = []
    for word in text.replace(",", " ").replace(".", " ").split():
        pieces = [tokenizer.id_to_token(i) for i in tokenizer.encode(word)]
        plural = len(pieces) == 2 and pieces[1] in ("##s", "##es")
        if "[UNK]" in pieces or (len(pieces) > 1 and not plural and word.isalpha()):
            out.append(word)
    return out


def default_output(stem: str = "generated") -> Path:
    """``generated.png`` in the working folder, or ``generated-1.png``, ... : never an existing file."""
    path, k = Path(f"{stem}.png"), 0
    while path.exists():
        k += 1
        path = Path(f"{stem}-{k}.png")
    return path


def find_text_tokenizer(model_dir: str | os.PathLike, path: str | os.PathLike | None = None):
    """The text tokenizer at ``path``, or one saved beside the model (``text_tokenizer.json`` / ``tokenizer.json``)."""
    from open4m.text import TextTokenizer

    if path is not None:
        return TextTokenizer.load(path)
    for name in TEXT_TOKENIZER_FILES:
        candidate = Path(model_dir) / name
        if candidate.is_file():
            return TextTokenizer.load(candidate)
    return None


def predicted(name: str, given: Sequence[str] = ()) -> bool:
    """Whether the conditions ``given`` determine target ``name`` (a prediction, as ``open4m eval`` scores it)
    rather than leave it to be generated: every target of a prompt holding RGB (pixels or tokens), and every
    non-RGB target of a prompt holding another image (normals from depth; RGB from depth is generated)."""
    images = [g for g in given if modalities.get(g).kind in ("image_tokens", "pixels")]
    return any(g.split("@")[0] in ("rgb", "tok_rgb") for g in images) or bool(images and not _is_rgb(name))


def default_guidance(name: str, given: Sequence[str] = ()) -> float:
    """The classifier-free guidance scale a target gets when none is asked for, given the prompt's conditions
    ``given``: :data:`RGB_GUIDANCE` (measured for generated RGB on the shipped model) for generated RGB tokens
    (``tok_rgb@*``) and for any image-token target of a prompt without image conditions (unguided, the shipped
    model's caption -> depth chain draws an empty floor and the RGB that follows stays empty); 1 (none) for
    sequences and for :func:`predicted` targets, which the image already determines (guiding them would double
    their cost)."""
    if modalities.get(name).kind != "image_tokens" or predicted(name, given):
        return 1.0
    return RGB_GUIDANCE if _is_rgb(name) or _words_only(given) else 1.0


def default_decoding(name: str, given: Sequence[str] = ()) -> dict:
    """``steps`` and ``temperature`` for target ``name`` when none are asked for, given the prompt's conditions
    ``given``: a :func:`predicted` target greedily (temperature 0), image targets in one step, as ``open4m eval``
    predicts; a generated one at temperature 1, image targets in 8 MaskGIT steps. On 32 val scenes, the shipped
    model's ``--from rgb=... --to all`` chain went from (every target in 8 sampled steps, RGB tokens guided) to
    (these defaults): depth delta1 0.916 -> 0.990, normals 8.7 -> 4.7 deg, semseg mIoU 0.60 -> 0.67, boxes
    mAP@0.5 0.40 -> 0.57, caption count / colour / shape 0.44 / 0.31 / 0.67 -> 0.69 / 0.39 / 0.81, in 23 s
    instead of 80."""
    if predicted(name, given):
        return {"steps": 1, "temperature": 0.0}
    return {"steps": 8, "temperature": 1.0}


def _is_rgb(name: str) -> bool:
    return name.split("@")[0] == "tok_rgb"


def _words_only(given: Sequence[str]) -> bool:
    return all(modalities.get(c).kind == "sequence" for c in given)


def resolve_targets(model, names: Sequence[str], given: Sequence[str], guidance: float | None = None,
                    steps: int | None = None, temperature: float | None = None, **settings) -> list[TargetSpec]:
    """Target specs for ``names`` (``["all"]`` = every output of the model not in ``given``), same settings each;
    ``guidance`` None = :func:`default_guidance`, ``steps`` / ``temperature`` None = :func:`default_decoding`, per
    target.

    ``["all"]`` from words only (caption, boxes) is generated geometry first, as 4M chains it: the other image
    targets, then RGB, then sequences (the shipped model drew objects in 3 of 3 seeds that way, 1 of 3 with RGB
    first, whose empty picture then conditions everything after it)."""
    if list(names) == ["all"]:
        names = [n for n in model.decoder_embeddings if n not in given]
        if _words_only(given):
            def rank(n: str) -> int:
                return 2 if modalities.get(n).kind == "sequence" else 1 if _is_rgb(n) else 0

            names = sorted(names, key=rank)
    names = [resolve_name(n, list(model.decoder_embeddings), "target") for n in names]
    if not names:
        raise ValueError("no targets: --to lists nothing the model generates beyond the conditions")
    specs = []
    for name in names:
        kind = modalities.get(name).kind
        decoding = default_decoding(name, given)
        chosen = {"steps": decoding["steps"] if steps is None else steps,
                  "temperature": decoding["temperature"] if temperature is None else temperature, **settings}
        extra = {k: v for k, v in chosen.items() if not (kind == "sequence" and k in ("steps", "token_schedule"))}
        scale = default_guidance(name, given) if guidance is None else guidance
        specs.append(TargetSpec(name, guidance=scale, **extra))
    return specs


def generate_to_png(
    model_dir: str | os.PathLike | None, conditions: Sequence[str], targets: Sequence[str],
    out: str | os.PathLike | None = None, text_tokenizer_path: str | os.PathLike | None = None,
    seed: int | None = 0, overwrite: bool = False, tokenizers_path: str | os.PathLike | None = None,
    allow_unknown_words: bool = False, plain_caption: bool = False, **settings,
) -> tuple[GenerationResult, Path]:
    """Load the model in ``model_dir`` (None: the shipped world model), generate ``targets`` from ``conditions``
    (``name=value`` strings) and write a grid PNG of conditions and outputs to ``out`` (None: a fresh
    ``generated*.png``). Image tokenizers come from ``tokenizers_path``, else ``model_dir/tokenizers``, else the
    shipped world set; the text tokenizer from ``text_tokenizer_path``, the model folder or that set.
    With a small closed-vocabulary text tokenizer (under 10,000 ids, like the world's), a caption word it
    lacks is an error unless ``allow_unknown_words``. ``settings`` (``steps``, ``temperature``, ``guidance``,
    ``scheme``, ...) apply to every target; without ``guidance``, each target gets :func:`default_guidance`, without
    ``steps`` / ``temperature`` :func:`default_decoding`. A world caption predicted from an RGB image alone (greedy,
    unguided: the defaults) is decoded through the model's own boxes as ``open4m eval`` scores it by default
    (:func:`open4m.generation.caption_shapes.caption_through_boxes`; the shipped model, 1,000 val scenes: count
    0.91, colour and shape together 0.86) unless ``plain_caption``, which
    keeps the caption of the plain chained decode."""
    from open4m.model import from_pretrained
    from open4m.runtime import tune_cpu
    from open4m.shipped import tokenizers_dir_for, world_model_dir
    from open4m.tokenizer_set import TokenizerSet
    from open4m.viz import save_grid

    tune_cpu()
    model_dir = Path(model_dir) if model_dir is not None else world_model_dir()
    out = Path(out) if out is not None else default_output()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (use --force to replace it)")
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    model = from_pretrained(model_dir).eval()
    parsed = dict(parse_condition(c, list(model.encoder_embeddings)) for c in conditions)
    tokenizers = TokenizerSet.load(tokenizers_path if tokenizers_path is not None else tokenizers_dir_for(model_dir))
    tok = find_text_tokenizer(model_dir, text_tokenizer_path) or tokenizers.text
    if tok is not None and not allow_unknown_words and tok.vocab_size < CLOSED_VOCABULARY:
        for name, value in parsed.items():
            bad = unknown_words(tok, value) if isinstance(value, str) else []
            if bad:
                raise ValueError(f"{name}: the model's text tokenizer does not know {bad}; use words from its "
                                 "captions (e.g. colours, sizes, materials and shape names) or pass "
                                 "--allow-unknown-words")
    specs = resolve_targets(model, targets, list(parsed), **settings)
    result = generate(model, parsed, specs, tokenizers=tokenizers.image, text_tokenizer=tok, seed=seed)
    if not plain_caption:
        batched = {k: v[None] for k, v in parsed.items() if isinstance(v, np.ndarray)}
        if len(batched) == len(parsed):  # the chain takes one image prompt; parsed conditions have no batch axis
            chain_caption_through_boxes(model, batched, specs, result, image_tokenizers=tokenizers.image,
                                        text_tokenizer=tok, seed=seed or 0)
    class_names = SEMSEG_CLASSES if "tok_semseg@64" in {*parsed, *result.tokens} else None  # the world's labels
    return result, save_grid(parsed, result, out, overwrite=overwrite, class_names=class_names)
