"""The ``open4m`` command line: wires subcommands to the library; no logic of its own."""

from __future__ import annotations

import argparse
import os
import sys

from open4m import __version__


def _cmd_modalities(args: argparse.Namespace) -> int:
    from open4m import modalities

    for name in modalities.names():
        m = modalities.get(name)
        size = f"{m.grid_size}x{m.grid_size}" if m.is_image else f"<= {m.max_tokens}"
        print(f"{name:24s} {m.kind:13s} vocab={m.vocab_size!s:6s} tokens={size:8s} {m.tokenizer}")
    return 0


# --- tokenizer train-text (text.py) ------------------------------------------------------------------


def _cmd_tokenizer_train_text(args: argparse.Namespace) -> int:
    from open4m.text import TextTokenizer, iter_corpus

    class_names = [c.strip() for c in args.class_names.split(",") if c.strip()] if args.class_names else []
    lines = list(iter_corpus(args.corpus))
    if not lines:
        raise ValueError(f"corpus {' '.join(args.corpus)} holds no text lines")
    tokenizer = TextTokenizer.train(lines, args.vocab_size, class_names=class_names, show_progress=False)
    path = tokenizer.save(args.out, overwrite=args.force)
    print(f"trained on {len(lines)} lines: vocab {tokenizer.vocab_size} ({len(class_names)} class names) -> {path}")
    return 0


def _add_tokenizer_text_parsers(tok_sub: argparse._SubParsersAction) -> None:
    p = tok_sub.add_parser(
        "train-text",
        help="train a WordPiece text tokenizer with the 4M special-token layout",
        description="Train a WordPiece text tokenizer with the official 4M layout: [PAD] [UNK] [SOS] [EOS], "
        "sentinels [S_0]..[S_199], value tokens v0=0..v3=999, then the class names as single tokens.",
    )
    p.add_argument("--corpus", nargs="+", required=True, metavar="FILE_OR_DIR",
                   help=".txt (one text per line), .jsonl (strings or {'caption': ...}), .tar shards (*.txt members), "
                   "or directories holding them")
    p.add_argument("--vocab-size", type=int, required=True, help="vocabulary size, the 4204 special tokens included")
    p.add_argument("--out", required=True, help="directory to write tokenizer.json into")
    p.add_argument("--class-names", default="", help="comma-separated class names, e.g. 'sphere,cube,wine glass'")
    p.add_argument("--force", action="store_true", help="replace an existing tokenizer.json")
    p.set_defaults(func=_cmd_tokenizer_train_text)


# --- parser -------------------------------------------------------------------------------------------
# --- open4m world: the procedural dataset (open4m.data.world) ---------------------------------------------


def _cmd_world_render(args: argparse.Namespace) -> int:
    import dataclasses

    from open4m.data.world import WorldConfig
    from open4m.data.world.writer import write_world

    config = dataclasses.replace(WorldConfig(), resolution=args.resolution)
    report = write_world(args.out, args.num, split=args.split, config=config, workers=args.workers,
                         layout=args.layout, shard_size=args.shard_size, progress=args.progress)
    print(f"world {args.split}: rendered {report.rendered} scenes, {report.skipped} already done, "
          f"{len(report.paths)} {'shards' if args.layout == 'wds' else 'folders'} in {args.out}")
    return 0


def _cmd_world_preview(args: argparse.Namespace) -> int:
    from open4m.data.world.preview import write_preview

    path = write_preview(args.out, num_scenes=args.num, split=args.split, resolution=args.resolution)
    print(f"wrote {path}")
    return 0


def _add_world_parser(sub) -> None:
    world = sub.add_parser("world", help="render the procedural 3D world dataset (all modalities aligned)")
    world_sub = world.add_subparsers(dest="world_command", metavar="WORLD_COMMAND", required=True)
    p = world_sub.add_parser("render", help="write scenes of a split as WebDataset shards or official folders")
    p.add_argument("--out", required=True, help="output folder (created; a rerun resumes it)")
    p.add_argument("--num", type=int, required=True, help="number of scenes (the split's first N seeds)")
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("--resolution", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    p.add_argument("--layout", default="wds", choices=["wds", "folders"],
                   help="wds: tar shards; folders: root/<modality>/<split>/<id>.<ext>")
    p.add_argument("--shard-size", type=int, default=500, help="scenes per shard / per job (default 500)")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.set_defaults(func=_cmd_world_render)
    p = world_sub.add_parser("preview", help="write a PNG grid of every modality of a few scenes")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--num", type=int, default=4, help="number of scenes (rows, default 4)")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--resolution", type=int, default=128, help="render resolution (default 128)")
    p.set_defaults(func=_cmd_world_preview)


# --- end of open4m world -----------------------------------------------------------------------------------
# --- tokenizer: learned image tokenizers (open4m.vq) ------------------------------------------------


def _cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from open4m.vq.samples import open_samples
    from open4m.vq.train import load_config, train_tokenizer

    config, train, _ = load_config(args.config, args.modality)
    samples = open_samples(args.data, image_size=config.image_size, num_classes=config.num_classes)
    train_tokenizer(config, samples, args.out, train=train, resume=args.resume)
    print(f"tokenizer {config.modality} written to {args.out}")
    return 0


def _cmd_tokenizer_eval(args: argparse.Namespace) -> int:
    from open4m.vq.evaluate import evaluate_tokenizer, format_metrics
    from open4m.vq.samples import open_samples
    from open4m.vq.tokenizer import ImageTokenizer

    tokenizer = ImageTokenizer.load(args.tokenizer)
    samples = open_samples(args.data, image_size=tokenizer.config.image_size, num_classes=tokenizer.config.num_classes)
    print(format_metrics(evaluate_tokenizer(tokenizer, samples, args.num_samples)))
    return 0


def _add_tokenizer_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="train and evaluate tokenizers")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    t = tsub.add_parser("train", help="train an image tokenizer (VQ-VAE with cosine-EMA VQ or FSQ)")
    t.add_argument("--modality", required=True, choices=["rgb", "depth", "normal", "semseg", "edges"])
    t.add_argument("--config", required=True, help="YAML, e.g. configs/tokenizers/rgb.yaml")
    t.add_argument("--data", default="synthetic",
                   help="'synthetic[:SEED]' toy scenes, a folder of world shards (*.tar) or of *.npz samples")
    t.add_argument("--out", required=True, help="output folder (tokenizer, checkpoint, preview.png)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.set_defaults(func=_cmd_tokenizer_train)
    e = tsub.add_parser("eval", help="reconstruction metrics and codebook usage of an image tokenizer")
    e.add_argument("--tokenizer", required=True, help="folder written by `open4m tokenizer train`")
    e.add_argument("--data", default="synthetic:1",
                   help="held-out data: 'synthetic[:SEED]', a folder of world shards (*.tar) or of *.npz")
    e.add_argument("--num-samples", type=int, default=1000)
    e.set_defaults(func=_cmd_tokenizer_eval)
    _add_tokenizer_text_parsers(tsub)


# --- end tokenizer ----------------------------------------------------------------------------------


# --- open4m generate (open4m.generation) -------------------------------------------------------------------


def _cmd_generate(args: argparse.Namespace) -> int:
    from open4m.generation.runner import generate_to_png

    settings = dict(steps=args.steps, temperature=args.temperature, guidance=args.guidance)
    if args.scheme:
        settings["scheme"] = args.scheme
    result, path = generate_to_png(args.model, args.conditions, args.to.split(","), args.out,
                                   text_tokenizer_path=args.text_tokenizer, seed=args.seed, overwrite=args.force,
                                   tokenizers_path=args.tokenizers, allow_unknown_words=args.allow_unknown_words,
                                   plain_caption=args.plain_caption, **settings)
    for name, value in result.decoded.items():
        if isinstance(value, list) and value and isinstance(value[0], str):
            print(f"{name}: {value[0]}")
    print(f"wrote {path}")
    return 0


def _add_generate_parser(sub) -> None:
    from open4m.generation.runner import RGB_GUIDANCE

    p = sub.add_parser("generate", help="generate modalities from conditions with a 4M model; writes a PNG grid")
    p.add_argument("--model", help="model folder (config.json + model.safetensors); default: the shipped world model")
    p.add_argument("--from", dest="conditions", action="append", default=[], metavar="NAME=VALUE",
                   help="a condition: caption=\"text\", rgb=scene.png, tok_rgb@224=tokens.npy (repeatable)")
    p.add_argument("--to", required=True,
                   help="comma-separated targets in order (short names like depth work), or 'all'")
    p.add_argument("--out", help="PNG file to write (default: a new generated.png / generated-N.png here)")
    p.add_argument("--tokenizers", help="tokenizer set folder (default: MODEL/tokenizers, else the shipped world set)")
    p.add_argument("--text-tokenizer", help="text tokenizer json (default: one in the model folder, else the set's)")
    p.add_argument("--plain-caption", action="store_true",
                   help="from one RGB image, keep the caption of the plain chained decode instead of decoding it "
                   "through the model's own boxes (their count opens it, their shapes name its objects left to "
                   "right; the default for world models with boxes, as open4m eval scores it by default)")
    p.add_argument("--allow-unknown-words", action="store_true",
                   help="accept caption words a closed-vocabulary (world) text tokenizer does not hold")
    p.add_argument("--scheme", choices=["maskgit", "roar"], help="image decoding scheme (default maskgit)")
    p.add_argument("--steps", type=int,
                   help="decoding steps per image target (default: 1 for predictions, 8 for generated images)")
    p.add_argument("--temperature", type=float,
                   help="sampling temperature, 0 = greedy (default: 0 for predictions -- every target of a prompt "
                   "with RGB, the non-RGB targets of one with another image -- else 1)")
    p.add_argument("--guidance", type=float,
                   help="classifier-free guidance scale of every target (1 = none; default: "
                   f"{RGB_GUIDANCE:g} for generated RGB targets and for image targets of a prompt of words only, "
                   "else 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=_cmd_generate)


# --- end of open4m generate --------------------------------------------------------------------------------


# --- open4m train: the training loop (open4m.train) ----------------------------------------------------


def _cmd_train(args: argparse.Namespace) -> int:
    from open4m import train_config
    from open4m.train import train

    config = train_config.load(args.config, args.overrides)
    result = train(config, resume=args.resume)
    if result["losses"] and result["rank"] == 0:
        print(f"trained {len(result['losses'])} steps: loss {result['losses'][0]:.4f} -> {result['losses'][-1]:.4f}; "
              f"checkpoint {result['checkpoint']}")
    return 0


def _add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a 4M model on token shards (one process or torchrun: DDP / FSDP2)",
                       description="Train a 4M model. Run under torchrun for several processes, e.g. "
                       "`torchrun --nproc-per-node 2 -m open4m.cli train --config C distributed=fsdp`.")
    p.add_argument("--config", help="training YAML (see configs/train/); keys default as in open4m.train_config")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys, e.g. lr=3e-4 steps=100")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in out_dir")
    p.set_defaults(func=_cmd_train)


# --- end of open4m train -------------------------------------------------------------------------------


# --- open4m eval: a world model against the world's ground truth (open4m.evaluation) ----------------------


def _cmd_eval(args: argparse.Namespace) -> int:
    from open4m.evaluation import format_table
    from open4m.evaluation.run import evaluate_folder
    from open4m.generation.boxes import neighbour_shifts

    count, shapes = args.caption_count_from_boxes, args.caption_shapes_from_boxes
    if args.plain_caption:
        if count or shapes:
            raise ValueError("--plain-caption does not chain the caption through the boxes: drop "
                             "--caption-count-from-boxes / --caption-shapes-from-boxes or --plain-caption")
        count = shapes = False
    results = evaluate_folder(args.model, args.data, args.out, tokenizers_dir=args.tokenizers, device=args.device,
                              num_scenes=args.num_scenes, overwrite=args.overwrite, baseline=args.baseline,
                              batch_size=args.batch_size, steps=args.steps, temperature=args.temperature,
                              rgb_temperature=args.rgb_temperature, rgb_steps=args.rgb_steps,
                              rgb_guidance=args.rgb_guidance, det_samples=args.det_samples,
                              det_temperature=args.det_temperature, det_flip=args.det_flip,
                              det_shifts=neighbour_shifts(args.det_shift),
                              caption_shifts=neighbour_shifts(args.caption_shift),
                              caption_count_from_boxes=count, caption_given_boxes=args.caption_given_boxes,
                              caption_shapes_from_boxes=shapes,
                              semseg_pixel_weight=args.semseg_pixel_weight,
                              seed=args.seed, progress=args.progress,
                              tasks=args.tasks.split(",") if args.tasks else None)
    print(format_table(results), end="")
    print(f"{results['num_scenes']} scenes in {results['seconds']['total']:.1f} s; report in {args.out}")
    return 0


def _add_eval_parser(sub) -> None:
    from open4m.generation.boxes import DET_SHIFT, DET_TEMPERATURE
    from open4m.generation.describe import CAPTION_SHIFT
    from open4m.generation.runner import RGB_GUIDANCE
    from open4m.generation.segmentation import PIXEL_WEIGHT

    p = sub.add_parser("eval", help="evaluate a world 4M model on held-out world scenes (metrics + tokenizer ceilings)",
                       description="RGB->depth/normal/semseg/boxes/caption, caption->RGB and depth/semseg->RGB "
                       "consistency on held-out world scenes, each metric beside its tokenizer ceiling. Writes "
                       "results.json and metrics.md into --out.")
    p.add_argument("--model", required=True, help="model folder (config.json + model.safetensors)")
    p.add_argument("--tokenizers", help="tokenizer set folder (default: MODEL/tokenizers if present, else the "
                   "shipped world tokenizers)")
    p.add_argument("--data", required=True, help="folder of held-out world shards (open4m world render --split val)")
    p.add_argument("--num-scenes", type=int, default=1000, help="scenes to evaluate (default 1000)")
    p.add_argument("--out", required=True, help="report folder (results.json, metrics.md)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report in --out")
    p.add_argument("--baseline", help="results.json (or its folder) of an untrained model: adds a column")
    p.add_argument("--batch-size", type=int, default=16, help="scenes per generation call (default 16)")
    p.add_argument("--steps", type=int, default=1,
                   help="MaskGIT steps per predicted image target (default 1: every token at once)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature of the predictions (default 0: greedy)")
    p.add_argument("--rgb-temperature", type=float, default=1.0,
                   help="sampling temperature of generated RGB in the X->RGB tasks (default 1; greedy collapses)")
    p.add_argument("--rgb-steps", type=int, default=8, help="MaskGIT steps of generated RGB in the X->RGB tasks "
                   "(default 8)")
    p.add_argument("--rgb-guidance", type=float, default=RGB_GUIDANCE,
                   help=f"classifier-free guidance scale of generated RGB on its condition (default {RGB_GUIDANCE:g}; "
                   "1 = none)")
    p.add_argument("--det-samples", type=int, default=0,
                   help="RGB->boxes: sampled decodes fused with the greedy ones, per unshifted view (default 0: "
                   "greedy decodes of the views only); boxes are scored and mAP ranks by score")
    p.add_argument("--det-temperature", type=float, default=DET_TEMPERATURE,
                   help=f"sampling temperature of those decodes (default {DET_TEMPERATURE:g})")
    p.add_argument("--no-det-flip", dest="det_flip", action="store_false",
                   help="RGB->boxes: do not also decode the mirrored image (by default its boxes are mirrored back "
                   "and fused with the rest)")
    p.add_argument("--det-shift", type=int, default=DET_SHIFT, metavar="PIXELS",
                   help="RGB->boxes: also decode the eight views of the image moved by PIXELS in x and / or y (one "
                   f"greedy decode each, boxes moved back and fused; default {DET_SHIFT}; 0 = none; "
                   "--det-shift 0 --no-det-flip = the greedy decode of the image alone)")
    p.add_argument("--caption-shift", type=int, default=CAPTION_SHIFT, metavar="PIXELS",
                   help="RGB->caption: decode each caption from the image and its eight views moved by PIXELS at once "
                   f"(next-token log-probabilities averaged; default {CAPTION_SHIFT}; 0 = the image alone)")
    p.add_argument("--caption-count-from-boxes", action=argparse.BooleanOptionalAction, default=None,
                   help="RGB->caption: open each caption with 'There are N objects.', N the number of boxes of the "
                   "model's own greedy RGB->boxes decode, and let the model write the rest (a chain through its "
                   "boxes; default: on, as --caption-shapes-from-boxes, for a model with boxes of world shapes, "
                   "as open4m generate decodes a caption, unless --caption-given-boxes)")
    p.add_argument("--caption-given-boxes", action="store_true",
                   help="RGB->caption: decode each caption from the image and the boxes of the model's own greedy "
                   "RGB->boxes decode, given as a det condition (a chain through its boxes; needs a model that "
                   "takes det as input)")
    p.add_argument("--caption-shapes-from-boxes", action=argparse.BooleanOptionalAction, default=None,
                   help="RGB->caption: keep every shape word of each caption to the model's own boxes (one greedy "
                   "RGB->boxes decode, each box's class voted by the fused RGB->boxes decodes): the k-th listed "
                   "object has the shape of the k-th box from the left, a relation names a listed object; the "
                   "model writes the rest (a chain through its boxes; default as --caption-count-from-boxes)")
    p.add_argument("--plain-caption", action="store_true",
                   help="RGB->caption: the model's caption of the image alone, not chained through its boxes "
                   "(= --no-caption-count-from-boxes --no-caption-shapes-from-boxes)")
    p.add_argument("--semseg-pixel-weight", type=float, default=PIXEL_WEIGHT,
                   help="RGB->semseg miou_refined: the predicted map's vote for its own label against the box scores "
                   f"when object pixels are relabelled by the model's boxes (default {PIXEL_WEIGHT:g})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="cpu", help="device of the model and image tokenizers: cpu or cuda")
    p.add_argument("--tasks", help="comma-separated subset, e.g. rgb->depth,caption->rgb (default: all)")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.set_defaults(func=_cmd_eval)


# --- end of open4m eval ------------------------------------------------------------------------------------


# --- open4m tokenize: raw world shards -> token shards (open4m.data.pretokenize) ---------------------------


def _cmd_tokenize(args: argparse.Namespace) -> int:
    from open4m.data.pretokenize import pretokenize

    report = pretokenize(args.data, args.out, tokenizers=args.tokenizers, workers=args.workers, device=args.device,
                         batch_size=args.batch_size, overwrite=args.overwrite, progress=args.progress)
    rate = f", {report.samples / report.seconds:.1f} scenes/s" if report.samples else ""
    print(f"tokenized {report.written} shards ({report.samples} scenes) in {report.seconds:.1f} s{rate}; "
          f"{report.skipped} already done -> {report.out}")
    return 0


def _add_tokenize_parser(sub) -> None:
    p = sub.add_parser("tokenize", help="pretokenize raw world shards into token shards for training",
                       description="Turn raw world shards (`open4m world render`) into token shards: per sample "
                       "rgb@S.png, tok_<m>@S.npy (int16 ids) per image tokenizer of the set, caption@S.txt and "
                       "det@S.json, plus OUT/manifest.json with the tokenizer hashes. Resumable.")
    p.add_argument("--data", required=True, help="folder of raw world shards (*.tar)")
    p.add_argument("--out", required=True, help="output folder for the token shards and manifest.json")
    p.add_argument("--tokenizers", help="tokenizer set folder (default: the shipped world tokenizers)")
    p.add_argument("--workers", type=int, default=1, help="worker processes, one shard each at a time (default 1)")
    p.add_argument("--device", default="cpu", help="device of the image tokenizers: cpu or cuda (default cpu)")
    p.add_argument("--batch-size", type=int, default=64, help="images per tokenizer forward pass (default 64)")
    p.add_argument("--overwrite", action="store_true",
                   help="re-tokenize into a folder made with other tokenizers / source, or without a manifest")
    p.add_argument("--progress", action="store_true", help="show a progress bar over shards")
    p.set_defaults(func=_cmd_tokenize)


# --- end of open4m tokenize --------------------------------------------------------------------------------


# --- open4m label: pseudo-label a folder of real images (open4m.data.pseudo_label) ------------------------


def _cmd_label(args: argparse.Namespace) -> int:
    from open4m.data.pseudo_label import label_images

    bars = []  # made at the first report, so an early error prints no empty bar

    def progress(done: int, total: int) -> None:
        if not bars:
            from tqdm import tqdm

            bars.append(tqdm(total=total, unit="image", desc="label"))
        bars[0].update(done - bars[0].n)

    try:
        report = label_images(args.images, args.out, args.model, args.tokenizers, shard_size=args.shard_size,
                              batch_size=args.batch_size, min_box_score=args.min_box_score,
                              all_views=not args.image_boxes_only,
                              overwrite=args.overwrite, device=args.device,
                              progress=progress if args.progress else None)
    finally:
        for bar in bars:
            bar.close()
    rate = f", {report.labelled / report.seconds:.1f} images/s" if report.labelled else ""
    print(f"labelled {report.labelled} images into {report.written} shards in {report.seconds:.1f} s{rate}; "
          f"{report.skipped} shards already done -> {report.out}")
    for name, reason in report.unreadable.items():
        print(f"  skipped {name}: {reason}")
    return 0


def _add_label_parser(sub) -> None:
    from open4m.data.pseudo_label import MIN_BOX_SCORE

    p = sub.add_parser(
        "label", help="pseudo-label a folder of images with a 4M model into raw shards for `open4m tokenize`",
        description="Predict depth, normals, semseg, boxes and a caption for every image under --images "
        "(centre-cropped and resized to the model's image size) with a 4M model, and write them as raw shards in "
        "the world's member format (rgb.png, depth.npy, normal.npy, semseg.png, det.json, caption.txt, plus "
        "source.txt) with OUT/labels.json and OUT/preview.png; `open4m tokenize --data OUT` then makes training "
        "shards. Unreadable images are skipped and listed. Resumable; another model, image list or setting needs "
        "--overwrite.")
    p.add_argument("--images", required=True, help="folder of images (searched recursively: png, jpg, bmp, webp)")
    p.add_argument("--out", required=True, help="output folder for the shards and labels.json")
    p.add_argument("--model", help="model folder (default: the shipped world model)")
    p.add_argument("--tokenizers", help="tokenizer set folder (default: the model folder's, else the shipped set)")
    p.add_argument("--shard-size", type=int, default=256, help="images per shard (default 256)")
    p.add_argument("--batch-size", type=int, default=16, help="images per model batch (default 16)")
    p.add_argument("--min-box-score", type=float, default=MIN_BOX_SCORE,
                   help=f"keep the fused boxes scoring at least this (default {MIN_BOX_SCORE})")
    p.add_argument("--image-boxes-only", action="store_true",
                   help="boxes from the image alone instead of fusing its mirror and eight shifted views: 3.2-4.8 "
                   "instead of 2.0-2.4 images/s on a 2-core CPU, weaker boxes (shipped model mAP@0.5 0.71 instead "
                   "of 0.86)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="delete earlier pseudo-labels in --out and label again")
    p.add_argument("--progress", action="store_true", help="show a progress bar over images")
    p.set_defaults(func=_cmd_label)


# --- end of open4m label -----------------------------------------------------------------------------------


# --- open4m quickstart: world -> tokens -> train -> evaluate -> report (open4m.quickstart) ------------------


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from open4m.quickstart import run_quickstart

    report = run_quickstart(args.out, minutes=args.minutes, fast=args.fast, train_tokenizers=args.train_tokenizers,
                            overwrite=args.overwrite, workers=args.workers, progress=not args.no_progress,
                            dtype=args.dtype)
    print(f"report: {report}")
    return 0


def _add_quickstart_parser(sub) -> None:
    from open4m.quickstart_plan import DTYPES  # light: dataclasses and YAML, no torch

    p = sub.add_parser(
        "quickstart", help="render the world, train a small 4M on it, evaluate it and write a report folder",
        description="Render world scenes, tokenize them (shipped tokenizers), train a small 4M sized to the time "
        "budget, evaluate it against the untrained model on held-out scenes, and write OUT/report.md (metrics, "
        "sample grids, loss curve) and OUT/model (use with `open4m generate --model OUT/model`). A rerun "
        "continues an unfinished run of the same settings (a crash resumes the training) and leaves a finished "
        "one as it is; another budget in the same folder needs --overwrite.")
    p.add_argument("--out", default="runs/quickstart", help="report folder (default runs/quickstart)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="time budget in minutes (default 30 on a 2-core CPU)")
    budget.add_argument("--fast", action="store_true",
                        help="a 3-6 minute run (by the CPU) with a smaller model: at least 900 training steps "
                        "(what CI runs)")
    p.add_argument("--train-tokenizers", action="store_true",
                   help="train the image tokenizers with configs/tokenizers/*.yaml instead of using the shipped "
                   "ones (about 15 min per tokenizer on 2 CPU cores, 4 tokenizers, on top of the budget)")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier quickstart run in --out and start over")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="training precision: fp32, bf16 autocast, or auto (default): the faster of the two in a "
                   "short calibration on this machine")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="processes for rendering and tokenizing (default: the CPU count, at most 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_quickstart)


# --- end of open4m quickstart ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="open4m",
        description="open4m: train, run and evaluate 4M any-to-any models (Mizrahi, Bachmann et al. 2023).",
    )
    parser.add_argument("--version", action="version", version=f"open4m {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("modalities", help="list the registered modalities and their sizes")
    p.set_defaults(func=_cmd_modalities)

    _add_tokenizer_commands(sub)
    _add_world_parser(sub)
    _add_generate_parser(sub)
    _add_train_parser(sub)
    _add_eval_parser(sub)
    _add_tokenize_parser(sub)
    _add_label_parser(sub)
    _add_quickstart_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"open4m {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
