"""The quickstart's pictures and ``report.md``: sample grids of RGB → all and caption → all from held-out scenes,
and the report (settings, stage times, the metrics table model | tokenizer ceiling | untrained, the check
against the untrained model, pictures, how to use the exported model)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from open4m.atomic import write_atomic

RGB_GRID, CAPTION_GRID = "samples_rgb_to_all.png", "samples_caption_to_all.png"
RGB_INPUT, CAPTION = "rgb@64", "caption@64"


def write_samples(model_dir: Path, val_dir: Path, out: Path, settings) -> dict:
    """Generate every output of the model in ``model_dir`` from the RGB, then from the caption, of the first
    ``settings.sample_scenes`` scenes in ``val_dir``; write ``out/samples_rgb_to_all.png`` and
    ``out/samples_caption_to_all.png`` (one row per scene: condition, then each generated modality). As
    ``open4m generate --from rgb=... --to all`` does, the caption predicted from RGB is decoded through the
    model's own boxes (:func:`open4m.generation.caption_shapes.chain_caption_through_boxes`)."""
    from open4m.data.world.config import SEMSEG_CLASSES
    from open4m.generation import TargetSpec, generate
    from open4m.generation.caption_shapes import chain_caption_through_boxes
    from open4m.model import from_pretrained
    from open4m.pixels import to_model_pixels
    from open4m.tokenizer_set import TokenizerSet
    from open4m.viz import save_grid
    from open4m.vq.samples import world_shard_samples

    model = from_pretrained(model_dir).eval()
    tokenizers = TokenizerSet.load(model_dir / "tokenizers")
    scenes = list(itertools.islice(world_shard_samples(val_dir), settings.sample_scenes))
    if not scenes:
        raise ValueError(f"no held-out scenes in {val_dir} to draw samples from")
    rgb = to_model_pixels(np.stack([s["rgb"] for s in scenes]))
    prompts = {RGB_GRID: {RGB_INPUT: rgb}, CAPTION_GRID: {CAPTION: [s["caption"] for s in scenes]}}
    for file, conditions in prompts.items():
        targets = [TargetSpec(name, steps=settings.eval_steps, temperature=0.0)
                   for name in model.decoder_embeddings if name not in conditions]
        result = generate(model, conditions, targets, tokenizers=tokenizers.image, text_tokenizer=tokenizers.text,
                          seed=settings.seed)
        chain_caption_through_boxes(model, conditions, targets, result, image_tokenizers=tokenizers.image,
                                    text_tokenizer=tokenizers.text, seed=settings.seed)
        save_grid(conditions, result, out / file, overwrite=True, class_names=SEMSEG_CLASSES)
    return {"scenes": len(scenes)}


def _stage_table(state: dict) -> str:
    estimate = state.get("estimate", {})
    lines = ["| stage | estimated s | measured s |", "|---|---:|---:|"]
    for stage, info in state["stages"].items():
        lines.append(f"| {stage} | {estimate.get(stage, 0):.0f} | {info['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def report_text(out: Path, state: dict, evaluation) -> str:
    """The markdown of ``report.md`` from the run state and the evaluation results in ``out/eval``."""
    s, stages = state["settings"], state["stages"]
    results = evaluation.load_results(out / "eval" / "model")
    baseline = evaluation.load_results(out / "eval" / "untrained")
    failing = evaluation.not_better_than(results, baseline)
    train, export = stages.get("train", {}), stages.get("export", {})
    plan = state.get("train_plan", {})
    sized = (f", sized to the budget at {plan['seconds_per_step']:.2f} s/step"
             if plan.get("calibrated") else "")
    precision = "bf16 autocast" if plan.get("dtype") == "bf16" else "fp32"
    verdict = ("Every metric is better than the untrained model's." if not failing
               else f"Not better than the untrained model: {', '.join(failing)}.")
    val = train.get("val_loss")
    return (
        f"# open4m quickstart\n\n"
        f"A 4M model (tiny_gelu, dim {s['dim']}, {s['depth']}+{s['depth']} blocks, "
        f"{export.get('parameters', 0) / 1e6:.2f}M parameters) trained from scratch on {s['train_scenes']} procedural "
        f"world scenes for {train.get('steps')} steps in {precision} (batch {s['batch_size']}{sized}), "
        f"budget {s['minutes']:g} min. "
        f"Training loss {train.get('first_loss', float('nan')):.3f} → {train.get('last_loss', float('nan')):.3f}"
        + (f", validation loss {val:.3f}" if val is not None else "") + ".\n\n"
        f"## Metrics on {results['num_scenes']} held-out scenes\n\n"
        f"Model, its tokenizer ceiling (ground truth through tokenize → detokenize) and the untrained initial "
        f"model (same seed, same scenes). Full results: `eval/model/results.json`, `eval/model/metrics.md`.\n\n"
        + evaluation.format_table(results, baseline)
        + f"\n{verdict}\n\n"
        f"## Samples\n\nRGB → all (held-out scenes):\n\n![RGB to all]({RGB_GRID})\n\n"
        f"Caption → all:\n\n![caption to all]({CAPTION_GRID})\n\n"
        f"## Training loss\n\n![loss curve](loss.png)\n\n"
        f"## Stages\n\n" + _stage_table(state)
        + "\n## Use the model\n\n"
        f"    open4m generate --model {out / 'model'} --from caption=\"a red sphere left of a blue cube\" "
        f"--to all --out sample.png\n\n"
        f"`{out / 'model'}` holds config.json + model.safetensors (float16) and its tokenizer set in `tokenizers/`.\n"
    )


def write_report(out: Path, state: dict, evaluation) -> Path:
    """Write ``out/report.md`` atomically; returns its path."""
    text = report_text(out, state, evaluation)
    path = out / "report.md"
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))
    return path
