"""Evaluation results on disk and as a table: ``results.json`` + ``metrics.md``, and the comparison with an
untrained baseline that CI asserts on."""

from __future__ import annotations

from pathlib import Path

from open4m.atomic import read_json, write_atomic, write_json_atomic

RESULTS_FILE, TABLE_FILE = "results.json", "metrics.md"
ARROWS = {True: "↑", False: "↓"}


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _baseline_values(baseline: dict | None) -> dict[tuple[str, str], float | None]:
    if baseline is None:
        return {}
    return {(row["task"], row["metric"]): row["model"] for row in baseline["metrics"]}


def format_table(results: dict, baseline: dict | None = None) -> str:
    """The markdown table ``task | metric | model | tokenizer ceiling [| untrained]`` of :func:`evaluate_model`
    results (``baseline``: results of an untrained model, same tasks), then the skipped tasks."""
    base = _baseline_values(baseline)
    head = "| task | metric | model | tokenizer ceiling |" + (" untrained |" if baseline else "")
    rule = "|---|---|---:|---:|" + ("---:|" if baseline else "")
    lines = [head, rule]
    for row in results["metrics"]:
        cells = [row["task"].replace("->", " → "), f"{row['metric']} {ARROWS[row['higher_is_better']]}",
                 _number(row["model"]), _number(row["ceiling"])]
        if baseline:
            cells.append(_number(base.get((row["task"], row["metric"]))))
        lines.append("| " + " | ".join(cells) + " |")
    for task, reason in results.get("skipped", {}).items():
        lines.append(f"\nSkipped {task}: {reason}.")
    return "\n".join(lines) + "\n"


def _caption_chain(results: dict) -> str:
    """How RGB -> caption was decoded, when it ran: through the model's own boxes or from the image alone."""
    if not any(row["task"] == "rgb->caption" for row in results["metrics"]):
        return ""
    s = results["settings"]
    chains = [what for key, what in (("caption_count_from_boxes", "their count opens each caption"),
                                     ("caption_shapes_from_boxes", "their shapes name its objects"),
                                     ("caption_given_boxes", "they are a condition of the caption decoder"))
              if s.get(key)]
    if not chains:
        return "RGB → caption: the model's caption of the image (not chained through its boxes). "
    return f"RGB → caption chained through the model's own boxes: {', '.join(chains)}. "


def _markdown(results: dict, baseline: dict | None) -> str:
    s = results["settings"]
    return (
        f"# Evaluation on {results['num_scenes']} held-out world scenes\n\n"
        f"Generation: MaskGIT {s['steps']} steps for images, autoregressive for sequences, temperature "
        f"{s['temperature']}, seed {s['seed']}; RGB input `{results['model']['rgb_input']}`. "
        f"{_caption_chain(results)}{results['seconds']['total']:.1f} s.\n\n"
        "The tokenizer ceiling is the metric of the ground truth passed through its tokenizer "
        "(tokenize → detokenize); for X → RGB it is the model's own judge on the RGB tokenizer's "
        "reconstruction of the true image. ↑ higher is better, ↓ lower is better.\n\n"
        + format_table(results, baseline)
        + "\nDefinitions:\n\n"
        + "\n".join(f"- {r['task']} {r['metric']}: {r['description']}" for r in results["metrics"])
        + "\n"
    )


def write_report(results: dict, out_dir: str | Path, *, baseline: dict | None = None, overwrite: bool = False) -> Path:
    """Write ``out_dir/results.json`` (the results, plus ``baseline`` when given) and ``out_dir/metrics.md``,
    each atomically. Refuses (FileExistsError) when either file exists, unless ``overwrite``. Returns ``out_dir``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a folder")
    existing = [name for name in (RESULTS_FILE, TABLE_FILE) if (out_dir / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds an evaluation report ({', '.join(existing)}); "
                              "pass overwrite=True (--overwrite) to replace it")
    payload = dict(results, baseline=baseline) if baseline is not None else results
    write_json_atomic(out_dir / RESULTS_FILE, payload)
    text = _markdown(results, baseline)
    write_atomic(out_dir / TABLE_FILE, lambda tmp: Path(tmp).write_text(text))
    return out_dir


def load_results(path: str | Path) -> dict:
    """Results written by :func:`write_report` (a ``results.json`` or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    results = read_json(path, f"no evaluation results at {path}")
    if not isinstance(results, dict) or "metrics" not in results:
        raise ValueError(f"{path} does not hold open4m evaluation results (no 'metrics')")
    return results


def not_better_than(results: dict, baseline: dict) -> list[str]:
    """``task/metric`` names where ``results`` is not strictly better than ``baseline`` (direction-aware) or has
    no value; a baseline without a value there counts as beaten by any value. Empty = better everywhere."""
    base = _baseline_values(baseline)
    failing = []
    for row in results["metrics"]:
        key, value, old = f"{row['task']}/{row['metric']}", row["model"], base.get((row["task"], row["metric"]))
        if value is None:
            failing.append(key)
        elif old is not None and not (value > old if row["higher_is_better"] else value < old):
            failing.append(key)
    return failing
