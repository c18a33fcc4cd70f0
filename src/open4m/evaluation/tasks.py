"""The evaluation tasks, their metrics and what each needs from a model and its tokenizer set.

A task is ``"<condition>-><target>"``. Tasks from RGB measure prediction against the ground truth; tasks
*to* RGB generate an image and judge it through the model's own RGB→depth / RGB→semseg / RGB→det path
(the **judge**). Every metric has a **tokenizer ceiling**, the same metric when the model's output is
replaced by the ground truth passed through its tokenizer (tokenize → detokenize): for RGB→X the X
tokenizer (the text tokenizer for det and captions); for X→RGB the RGB tokenizer's reconstruction of the
true image, judged by the same judge (so that ceiling includes the judge's own error).
"""

from __future__ import annotations

from dataclasses import dataclass

from open4m import modalities

RGB, TOK_RGB = "rgb@64", "tok_rgb@64"
DEPTH, NORMAL, SEMSEG = "tok_depth@64", "tok_normal@64", "tok_semseg@64"
CAPTION, DET = "caption@64", "det@64"


@dataclass(frozen=True)
class Metric:
    """One reported number: its task, name, direction and a one-line definition."""

    task: str
    name: str
    higher_is_better: bool
    description: str

    @property
    def key(self) -> str:
        return f"{self.task}/{self.name}"


METRICS: list[Metric] = [
    Metric("rgb->depth", "abs_rel", False, "mean |pred - true| / true over non-sky pixels"),
    Metric("rgb->depth", "delta1", True, "fraction of non-sky pixels with max(pred/true, true/pred) < 1.25"),
    Metric("rgb->normal", "angle_deg", False, "mean angular error (degrees) over non-sky pixels"),
    Metric("rgb->normal", "within_11_25", True, "fraction of non-sky pixels with an angular error < 11.25 deg"),
    Metric("rgb->semseg", "miou", True, "mean IoU over the 6 world classes present (pooled confusion)"),
    Metric("rgb->semseg", "miou_refined", True,
           "mean IoU once each object pixel takes the class its covering boxes (the model's RGB->boxes) vote for"),
    Metric("rgb->det", "map50", True, "box mAP@0.5 over the 4 shapes (boxes ranked by score)"),
    Metric("rgb->caption", "count_acc", True, "the stated object count equals the visible count"),
    Metric("rgb->caption", "color_acc", True, "stated colours that a visible object of that shape has"),
    Metric("rgb->caption", "list_color_acc", True,
           "colours of the list's items that the object each describes has (list aligned left to right)"),
    Metric("rgb->caption", "shape_acc", True, "stated shapes (and shape counts) that are true"),
    Metric("rgb->caption", "relation_acc", True, "stated relations between unique visible objects that hold"),
    Metric("rgb->caption", "object_recall", True, "visible objects accounted for by the caption's list"),
    Metric("caption->rgb", "class_agreement", True,
           "Jaccard of the caption's shapes and the shapes the judge's RGB->det finds"),
    Metric("caption->rgb", "count_acc", True, "the judge's RGB->det box count equals the caption's count"),
    Metric("caption->rgb", "scene_class_agreement", True,
           "Jaccard of the scene's visible shapes and the classes the judge's RGB->semseg finds"),
    Metric("caption->rgb", "scene_layout_agreement", True,
           "histogram intersection of the class pixel fractions: judge's RGB->semseg vs the scene's semseg"),
    Metric("depth->rgb", "abs_rel", False, "the judge's RGB->depth of the generated image vs the true depth"),
    Metric("depth->rgb", "delta1", True, "the judge's RGB->depth of the generated image vs the true depth"),
    Metric("semseg->rgb", "miou", True, "the judge's RGB->semseg of the generated image vs the true semseg"),
]
TASKS: list[str] = list(dict.fromkeys(m.task for m in METRICS))

# What the judge of each X->RGB task must generate from RGB; caption->rgb needs one of its two.
JUDGES = {"caption->rgb": (DET, SEMSEG), "depth->rgb": (DEPTH,), "semseg->rgb": (SEMSEG,)}
# The judge each caption->rgb metric needs.
CAPTION_RGB_JUDGE = {"class_agreement": DET, "count_acc": DET, "scene_class_agreement": SEMSEG,
                     "scene_layout_agreement": SEMSEG}
CONDITIONS = {"caption->rgb": CAPTION, "depth->rgb": DEPTH, "semseg->rgb": SEMSEG}
TARGETS = {"rgb->depth": DEPTH, "rgb->normal": NORMAL, "rgb->semseg": SEMSEG, "rgb->det": DET, "rgb->caption": CAPTION}


@dataclass
class Plan:
    """Which tasks run, why the others do not, the RGB input the model takes (``rgb@64`` pixels or
    ``tok_rgb@64`` tokens) and the modalities it can generate and decode (model head + tokenizer)."""

    tasks: list[str]
    skipped: dict[str, str]
    rgb_input: str | None
    outputs: set[str]


def plan_tasks(model, tokenizers, tasks: list[str] | None = None) -> Plan:
    """Decide which of ``tasks`` (default: all of :data:`TASKS`) ``model`` and ``tokenizers`` (a
    :class:`open4m.tokenizer_set.TokenizerSet`) can run; the others are skipped with the reason.

    Raises ValueError for an unknown task name, or when no task can run (naming why).
    """
    wanted = list(TASKS if tasks is None else tasks)
    unknown = [t for t in wanted if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown evaluation task(s) {unknown}; known: {TASKS}")
    inputs, outputs = set(model.encoder_embeddings), set(model.decoder_embeddings)

    def tokenizer_for(name: str) -> bool:
        if modalities.get(name).kind == "sequence":
            return tokenizers.text is not None and name in tokenizers.text_modalities
        return name in tokenizers.image

    def can_generate(name: str) -> str | None:
        if name not in outputs:
            return f"the model does not generate {name}"
        return None if tokenizer_for(name) else f"the tokenizer set has no tokenizer for {name}"

    def can_take(name: str) -> str | None:
        if name not in inputs:
            return f"the model does not take {name} as input"
        return None if tokenizer_for(name) else f"the tokenizer set has no tokenizer for {name}"

    rgb_input = RGB if RGB in inputs else TOK_RGB if can_take(TOK_RGB) is None else None
    run, skipped = [], {}
    for task in wanted:
        reasons = [] if rgb_input else [f"the model takes no RGB input ({RGB} or {TOK_RGB} with its tokenizer)"]
        if task in TARGETS:
            reasons.append(can_generate(TARGETS[task]))
        else:
            reasons += [can_take(CONDITIONS[task]), can_generate(TOK_RGB)]
            judges = [can_generate(j) for j in JUDGES[task]]
            if all(judges):
                reasons.append("the judge cannot run: " + "; ".join(judges))
        reasons = [r for r in reasons if r]
        if reasons:
            skipped[task] = "; ".join(reasons)
        else:
            run.append(task)
    if not run:
        raise ValueError("nothing to evaluate: " + " | ".join(f"{t}: {r}" for t, r in skipped.items()))
    return Plan(run, skipped, rgb_input, {name for name in outputs if can_generate(name) is None})
