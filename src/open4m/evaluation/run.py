"""`evaluate_model`: a world 4M model against the world's ground truth, each metric beside its tokenizer ceiling.

Scenes are taken in batches; per batch every runnable task (:mod:`open4m.evaluation.tasks`) generates its
target with :func:`open4m.generation.prompt.generate` (MaskGIT for image tokens, autoregressive for
sequences; by default predictions are greedy, image ones in a single step, while generated RGB images are
sampled at ``rgb_temperature`` over ``rgb_steps`` with classifier-free guidance ``rgb_guidance``, since greedy
MaskGIT collapses an image to its most likely flat layout and unguided captions barely steer it; boxes fuse the
greedy decodes of the image, its mirror and eight shifted views, :func:`open4m.generation.boxes.detect`),
decodes it with the tokenizer set, and adds to pooled statistics (RGB->semseg also once refined by the model's
own boxes, :func:`open4m.generation.segmentation.refine_with_boxes`), so memory does not grow with the number
of scenes. Each row's random generator is seeded with ``seed + scene index``: results do not depend on the
batch size.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from open4m import modalities, sequences
from open4m.data.world.captions import NUMBER_WORDS, count_sentence
from open4m.data.world.config import SEMSEG_CLASSES, SHAPE_LABELS, SHAPES
from open4m.evaluation import metrics
from open4m.evaluation import tasks as task_table
from open4m.evaluation.captions import parse_caption, scene_truth, score_caption
from open4m.evaluation.tasks import CAPTION, DEPTH, DET, SEMSEG, TARGETS, TOK_RGB, plan_tasks
from open4m.generation.boxes import DET_TEMPERATURE, SHIFTS, detect
from open4m.generation.caption_shapes import ShapesFromBoxes, boxes_chain_applies, classes_by_vote
from open4m.generation.describe import CAPTION_SHIFTS, describe
from open4m.generation.prompt import generate
from open4m.generation.runner import RGB_GUIDANCE
from open4m.generation.sampler import TargetSpec
from open4m.generation.segmentation import PIXEL_WEIGHT, refine_with_boxes
from open4m.pixels import to_model_pixels
from open4m.runtime import tune_cpu

FORMAT = "open4m-eval/1"
COLUMNS = ("model", "ceiling")
REFINED_SEMSEG = "rgb->semseg/miou_refined"


class _Pool:
    """Pooled statistics: weighted means per (key, column), confusion matrices, box lists."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, str], list[float]] = {}
        self.confusion: dict[tuple[str, str], np.ndarray] = {}
        self.boxes: dict[str, tuple[list, list]] = {c: ([], []) for c in COLUMNS}

    def add(self, key: str, column: str, value: float, weight: float = 1.0) -> None:
        total = self.sums.setdefault((key, column), [0.0, 0.0])
        total[0] += value * weight
        total[1] += weight

    def add_counts(self, key: str, column: str, correct: int, stated: int) -> None:
        total = self.sums.setdefault((key, column), [0.0, 0.0])
        total[0] += correct
        total[1] += stated

    def add_confusion(self, key: str, column: str, confusion: np.ndarray) -> None:
        self.confusion[(key, column)] = self.confusion.get((key, column), 0) + confusion

    def value(self, key: str, column: str) -> float | None:
        if (key, column) in self.confusion:
            return metrics.semseg_miou(self.confusion[(key, column)])
        if key == "rgb->det/map50":
            predictions, truths = self.boxes[column]
            return metrics.detection_map(predictions, truths, SHAPES)["map"] if truths else None
        num, den = self.sums.get((key, column), (0.0, 0.0))
        return num / den if den > 0 else None


class _Evaluator:
    def __init__(self, model, tokenizers, plan, *, batch_size: int, steps: int, temperature: float, seed: int,
                 min_class_pixels: int, rgb_temperature: float, rgb_steps: int, rgb_guidance: float,
                 det_samples: int, det_temperature: float, det_flip: bool, det_shifts: tuple,
                 caption_shifts: tuple, caption_count_from_boxes: bool, caption_given_boxes: bool,
                 caption_shapes_from_boxes: bool, semseg_pixel_weight: float) -> None:
        self.model, self.tok, self.plan = model, tokenizers, plan
        self.batch_size, self.steps, self.temperature, self.seed = batch_size, steps, temperature, seed
        self.rgb_temperature, self.rgb_steps, self.rgb_guidance = rgb_temperature, rgb_steps, rgb_guidance
        self.min_class_pixels = min_class_pixels
        self.det_samples, self.det_temperature, self.det_flip = det_samples, det_temperature, det_flip
        self.det_shifts = det_shifts
        self.caption_shifts_asked = caption_shifts
        self.caption_count_from_boxes = caption_count_from_boxes
        self.caption_given_boxes = caption_given_boxes
        self.caption_shapes_from_boxes = caption_shapes_from_boxes
        self.semseg_pixel_weight = semseg_pixel_weight
        self.batch_outputs: dict[str, object] = {}
        self.pool = _Pool()
        self.seconds = {task: 0.0 for task in plan.tasks}

    # ------------------------------------------------------------------ generation
    def generate(self, conditions: dict, target: str, seeds: list[int]):
        """Decoded ``target`` for every row of ``conditions`` (arrays (B, ...) or lists of length B), in chunks
        of ``batch_size``: an array (B, H, W[, C]) for images, a list for sequences."""
        if target == TOK_RGB:
            spec = TargetSpec(target, steps=self.rgb_steps, temperature=self.rgb_temperature,
                              guidance=self.rgb_guidance)
        else:
            spec = TargetSpec(target, steps=self.steps, temperature=self.temperature)
        out = []
        for start in range(0, len(seeds), self.batch_size):
            chunk = {k: v[start : start + self.batch_size] for k, v in conditions.items()}
            result = generate(self.model, chunk, [spec], tokenizers=self.tok.image, text_tokenizer=self.tok.text,
                              seed=seeds[start : start + self.batch_size])
            out.append(result.decoded[target])
        return np.concatenate(out) if isinstance(out[0], np.ndarray) else [x for part in out for x in part]

    def rgb_condition(self, rgb: np.ndarray) -> dict:
        """The model's RGB input for uint8 images (B, H, W, 3): normalised pixels or RGB tokens."""
        if self.plan.rgb_input == TOK_RGB:
            return {TOK_RGB: self.tok.image[TOK_RGB].encode(rgb)}
        return {self.plan.rgb_input: to_model_pixels(rgb)}

    def text_roundtrip(self, name: str, text: str) -> str:
        ids = self.tok.text.encode(text)[: _max_tokens(name) - 1]
        return self.tok.text.decode(ids)

    def caption_ids(self, caption: str) -> list[int]:
        return self.tok.text.encode(caption)[: _max_tokens(CAPTION) - 1]

    # ------------------------------------------------------------------ one batch
    def add_batch(self, samples: list[dict], first_index: int) -> None:
        seeds = [self.seed + first_index + i for i in range(len(samples))]
        truth = {k: np.stack([s[k] for s in samples]) for k in ("rgb", "depth", "normal", "semseg")}
        rgb_in = self.rgb_condition(truth["rgb"])
        tasks = self.plan.tasks
        from_rgb = {"rgb->depth": self._depth, "rgb->normal": self._normal, "rgb->semseg": self._semseg,
                    "rgb->det": self._det, "rgb->caption": self._caption}
        self.batch_outputs = {}
        for task in (t for t in tasks if t in from_rgb):
            start = time.perf_counter()
            from_rgb[task](samples, truth, rgb_in, seeds)
            self.seconds[task] += time.perf_counter() - start
        if "rgb->semseg" in self.batch_outputs and "rgb->det" in self.batch_outputs:
            self._refined_semseg(truth)
        to_rgb = [t for t in tasks if t not in TARGETS]
        if to_rgb:
            self._to_rgb(to_rgb, samples, truth, seeds)

    def _image_task(self, task: str, kind: str, truth: dict, rgb_in: dict, seeds: list[int]):
        name = TARGETS[task]
        pred = self.generate(rgb_in, name, seeds)
        ceiling = self.tok.image[name].reconstruct(truth[kind])
        return pred, ceiling

    def _depth(self, samples, truth, rgb_in, seeds) -> None:
        for column, pred in zip(COLUMNS, self._image_task("rgb->depth", "depth", truth, rgb_in, seeds), strict=True):
            self._add_depth("rgb->depth", column, truth["depth"], pred)

    def _normal(self, samples, truth, rgb_in, seeds) -> None:
        for column, pred in zip(COLUMNS, self._image_task("rgb->normal", "normal", truth, rgb_in, seeds), strict=True):
            m = metrics.normal_metrics(truth["normal"], pred)
            for name in ("angle_deg", "within_11_25"):
                self.pool.add(f"rgb->normal/{name}", column, m[name], m["pixels"])

    def _semseg(self, samples, truth, rgb_in, seeds) -> None:
        maps = self._image_task("rgb->semseg", "semseg", truth, rgb_in, seeds)
        self.batch_outputs["rgb->semseg"] = maps
        for column, pred in zip(COLUMNS, maps, strict=True):
            self.pool.add_confusion("rgb->semseg/miou", column, metrics.semseg_confusion(truth["semseg"], pred))

    def _refined_semseg(self, truth) -> None:
        """The batch's semseg maps refined by its boxes (the ceiling's by the true boxes, score 1)."""
        for column, labels, boxes in zip(COLUMNS, self.batch_outputs["rgb->semseg"], self.batch_outputs["rgb->det"],
                                         strict=True):
            refined = refine_with_boxes(np.asarray(labels), boxes, SHAPE_LABELS, self.semseg_pixel_weight)
            self.pool.add_confusion(REFINED_SEMSEG, column, metrics.semseg_confusion(truth["semseg"], refined))

    def _det(self, samples, truth, rgb_in, seeds) -> None:
        predicted = detect(self.model, rgb_in, DET, text_tokenizer=self.tok.text, tokenizers=self.tok.image,
                           samples=self.det_samples, temperature=self.det_temperature, flip=self.flip,
                           shifts=self.shifts, seed=seeds)
        columns = ([], [])  # per column, the batch's box lists for the refined semseg (true boxes count 1.0)
        for s, boxes in zip(samples, predicted, strict=True):
            true_boxes = [{"box": d["box"], "class": d["class"]} for d in s["det"]]
            text = self.text_roundtrip(DET, sequences.boxes_to_text(true_boxes))
            roundtrip, _ = sequences.text_to_boxes(text, SHAPES)
            for column, pred, kept in zip(COLUMNS, (_boxes(boxes), roundtrip), columns, strict=True):
                self.pool.boxes[column][0].append(pred)
                self.pool.boxes[column][1].append(true_boxes)
                kept.append([{"score": 1.0, **b} for b in pred])  # a generated box keeps its own score
        self.batch_outputs["rgb->det"] = columns

    @property
    def flip(self) -> bool:
        """Whether RGB->boxes also decodes the mirrored image: asked for, and the model takes RGB as pixels."""
        return bool(self.det_flip and self._pixels_in)

    @property
    def shifts(self) -> tuple:
        """The shifted views RGB->boxes decodes: those asked for when the model takes RGB as pixels, else none."""
        return self.det_shifts if self._pixels_in else ()

    @property
    def caption_shifts(self) -> tuple:
        """The shifted views RGB->caption decodes with the image: those asked for with RGB pixel input, else none."""
        return self.caption_shifts_asked if self._pixels_in else ()

    @property
    def _pixels_in(self) -> bool:
        return bool(self.plan.rgb_input and modalities.get(self.plan.rgb_input).kind == "pixels")

    def _caption(self, samples, truth, rgb_in, seeds) -> None:
        chained = self.caption_count_from_boxes or self.caption_given_boxes or self.caption_shapes_from_boxes
        boxes = self.generate(rgb_in, DET, seeds) if chained else None  # one greedy RGB->det decode per scene
        openings = None
        if self.caption_count_from_boxes:  # the count sentence states how many boxes that decode writes
            openings = [count_sentence(min(len(row), len(NUMBER_WORDS) - 1)) for row in boxes]
        banned = None
        if self.caption_shapes_from_boxes:  # the shape words keep to that decode's boxes, left to right, each
            # named by the vote of the RGB->boxes task's fused decodes (run here when that task is not asked for)
            fused = (self.batch_outputs["rgb->det"][0] if "rgb->det" in self.batch_outputs else
                     detect(self.model, rgb_in, DET, text_tokenizer=self.tok.text, tokenizers=self.tok.image,
                            samples=self.det_samples, temperature=self.det_temperature, flip=self.flip,
                            shifts=self.shifts, seed=seeds))
            voted = [classes_by_vote(row, others) for row, others in zip(boxes, fused, strict=True)]
            banned = ShapesFromBoxes(self.tok.text, voted, SHAPES)
        conditions = {**rgb_in, DET: boxes} if self.caption_given_boxes else rgb_in
        if self.caption_shifts or chained:
            captions = describe(self.model, conditions, CAPTION, text_tokenizer=self.tok.text,
                                tokenizers=self.tok.image, shifts=self.caption_shifts, temperature=self.temperature,
                                seed=seeds, openings=openings, banned=banned)
        else:
            captions = self.generate(rgb_in, CAPTION, seeds)
        for s, caption in zip(samples, captions, strict=True):
            scene = scene_truth(s)
            for column, text in zip(COLUMNS, (caption, self.text_roundtrip(CAPTION, s["caption"])), strict=True):
                for name, (correct, stated) in score_caption(parse_caption(text), scene).items():
                    self.pool.add_counts(f"rgb->caption/{name}", column, correct, stated)

    def _add_depth(self, task: str, column: str, true: np.ndarray, pred: np.ndarray) -> None:
        m = metrics.depth_metrics(true, pred)
        for name in ("abs_rel", "delta1"):
            self.pool.add(f"{task}/{name}", column, m[name], m["pixels"])

    # ------------------------------------------------------------------ X -> RGB, judged by the model
    def _to_rgb(self, tasks: list[str], samples: list[dict], truth: dict, seeds: list[int]) -> None:
        images: dict[str, np.ndarray] = {}
        for task in tasks:
            start = time.perf_counter()
            if task == "caption->rgb":
                conditions = {CAPTION: [self.caption_ids(s["caption"]) for s in samples]}
            else:
                kind = task.split("->")[0]
                name = f"tok_{kind}@64"
                conditions = {name: self.tok.image[name].encode(truth[kind])}
            images[task] = self.generate(conditions, TOK_RGB, seeds)
            self.seconds[task] += time.perf_counter() - start
        images["ceiling"] = self.tok.image[TOK_RGB].reconstruct(truth["rgb"])
        jobs = {DEPTH: ["depth->rgb"], SEMSEG: ["caption->rgb", "semseg->rgb"], DET: ["caption->rgb"]}
        judged: dict[tuple[str, str], object] = {}
        for judge, users in jobs.items():
            users = [t for t in users if t in tasks]
            if not users or judge not in self.plan.outputs:
                continue
            start = time.perf_counter()
            keys = [*users, "ceiling"]
            stacked = np.concatenate([images[k] for k in keys])
            out = self.generate(self.rgb_condition(stacked), judge, seeds * len(keys))
            n = len(samples)
            for i, k in enumerate(keys):
                judged[(judge, k)] = out[i * n : (i + 1) * n]
            elapsed = (time.perf_counter() - start) / len(users)
            for t in users:
                self.seconds[t] += elapsed
        for task in tasks:
            for column, source in zip(COLUMNS, (task, "ceiling"), strict=True):
                self._judge_metrics(task, column, samples, truth, {j: judged.get((j, source)) for j in jobs})

    def _judge_metrics(self, task: str, column: str, samples, truth, judged: dict) -> None:
        if task == "depth->rgb":
            self._add_depth(task, column, truth["depth"], judged[DEPTH])
        elif task == "semseg->rgb":
            self.pool.add_confusion(f"{task}/miou", column, metrics.semseg_confusion(truth["semseg"], judged[SEMSEG]))
        else:
            for i, s in enumerate(samples):
                facts = parse_caption(s["caption"])
                if judged[DET] is not None:
                    boxes = _boxes(judged[DET][i])
                    self.pool.add(f"{task}/class_agreement", column,
                                  metrics.jaccard({b["class"] for b in boxes}, facts.shapes))
                    self.pool.add(f"{task}/count_acc", column, float(len(boxes) == facts.count))
                if judged[SEMSEG] is not None:
                    pred = judged[SEMSEG][i]
                    found = {SEMSEG_CLASSES[c] for c in range(2, len(SEMSEG_CLASSES))
                             if (pred == c).sum() >= self.min_class_pixels}
                    visible = {d["class"] for d in s["det"]}
                    self.pool.add(f"{task}/scene_class_agreement", column, metrics.jaccard(found, visible))
                    self.pool.add(f"{task}/scene_layout_agreement", column, metrics.histogram_agreement(
                        metrics.class_fractions(truth["semseg"][i]), metrics.class_fractions(pred)))

    # ------------------------------------------------------------------ results
    def results(self, num_scenes: int, settings: dict, seconds: float) -> dict:
        rows, skipped = [], dict(self.plan.skipped)
        for m in task_table.METRICS:
            if m.task not in self.plan.tasks:
                continue
            judge = task_table.CAPTION_RGB_JUDGE.get(m.name) if m.task == "caption->rgb" else None
            if judge is not None and judge not in self.plan.outputs:
                skipped[m.key] = f"its judge needs RGB->{judge}, which the model cannot generate"
                continue
            if m.key == REFINED_SEMSEG and "rgb->det" not in self.plan.tasks:
                skipped[m.key] = "it refines the semseg maps with the model's RGB->boxes (the rgb->det task)"
                continue
            values = {c: self.pool.value(m.key, c) for c in COLUMNS}
            rows.append({"task": m.task, "metric": m.name, **values, "higher_is_better": m.higher_is_better,
                         "description": m.description})
        return {
            "format": FORMAT,
            "num_scenes": num_scenes,
            "settings": settings,
            "model": {"domains_in": list(self.model.encoder_embeddings),
                      "domains_out": list(self.model.decoder_embeddings), "rgb_input": self.plan.rgb_input},
            "tokenizers": dict(getattr(self.tok, "sha256", {})),
            "metrics": rows,
            "skipped": skipped,
            "seconds": {"total": seconds, **self.seconds},
        }


def _boxes(value) -> list[dict]:
    """Generated det as a box list (an unparsable string decodes to no boxes)."""
    return [b for b in value if isinstance(b, dict)] if isinstance(value, list) else []


def _max_tokens(name: str) -> int:
    return modalities.get(name).max_tokens


def evaluate_model(
    model,
    tokenizers,
    samples: Iterable[dict],
    num_scenes: int = 32,
    batch_size: int = 16,
    *,
    steps: int = 1,
    temperature: float = 0.0,
    rgb_temperature: float = 1.0,
    rgb_steps: int = 8,
    rgb_guidance: float = RGB_GUIDANCE,
    det_samples: int = 0,
    det_temperature: float = DET_TEMPERATURE,
    det_flip: bool = True,
    det_shifts: Sequence[tuple[int, int]] = SHIFTS,
    caption_shifts: Sequence[tuple[int, int]] = CAPTION_SHIFTS,
    caption_count_from_boxes: bool | None = None,
    caption_given_boxes: bool = False,
    caption_shapes_from_boxes: bool | None = None,
    semseg_pixel_weight: float = PIXEL_WEIGHT,
    seed: int = 0,
    tasks: list[str] | None = None,
    min_class_pixels: int = 4,
    progress: bool = False,
) -> dict:
    """Evaluate a world 4M ``model`` on the first ``num_scenes`` raw world ``samples``.

    Args:
        model: an :class:`open4m.model.FourM` with world modalities (``rgb@64`` / ``tok_*@64`` / ``caption@64``
            / ``det@64``); tasks it cannot run are skipped and listed in ``results["skipped"]``.
        tokenizers: the :class:`open4m.tokenizer_set.TokenizerSet` its tokens come from.
        samples: world sample dicts (:mod:`open4m.data.world.sample` contract), e.g.
            :func:`open4m.vq.samples.world_shard_samples` of held-out shards.
        num_scenes: how many scenes to use (fewer when ``samples`` runs out first).
        batch_size: scenes per generation call.
        steps, temperature: MaskGIT steps per predicted image target (RGB->X and the judges); sampling temperature
            (0 = greedy) of the predictions. Greedy in one step (every token at once) scored at least as well as
            8 or 16 steps on the shipped model and is the fastest.
        rgb_temperature, rgb_steps: sampling temperature and MaskGIT steps of generated RGB (the X->RGB tasks).
        rgb_guidance: classifier-free guidance scale of generated RGB on its condition (caption, depth or
            semseg; the unconditional branch has that condition emptied; 1 = no guidance; the default
            :data:`open4m.generation.runner.RGB_GUIDANCE` is what makes captions steer the shipped model's images).
        det_samples, det_temperature: RGB->boxes fuses one greedy decode and ``det_samples`` sampled at
            ``det_temperature`` on the image and (with ``det_flip``) on its mirror
            (:func:`open4m.generation.boxes.detect`; boxes scored, mAP ranks by score); 0 (the default) = greedy
            decodes only. The caption->RGB judge reads one greedy decode.
        det_flip: RGB->boxes decodes the mirrored image as well (as many decodes again, boxes mirrored back
            and fused with the rest); only for models that take RGB as pixels (``rgb@64``), the setting
            recorded is the one used.
        det_shifts: RGB->boxes also decodes these shifted views greedily (``(dx, dy)`` pixels, boxes moved back;
            default :data:`open4m.generation.boxes.SHIFTS`, the eight 2 px neighbours: on the shipped model ten
            greedy decodes of image, mirror and shifts score above greedy + 8 samples of image and mirror, in a
            third of the time); as ``det_flip``, only with RGB pixel input. ``det_samples=0, det_flip=False,
            det_shifts=()`` is the greedy decode alone.
        caption_shifts: RGB->caption decodes each caption from the image and these shifted views at once (their
            next-token log-probabilities averaged, :func:`open4m.generation.describe.describe`; default
            :data:`open4m.generation.describe.CAPTION_SHIFTS`, the eight 3 px neighbours); only with RGB pixel
            input; ``()`` = the image alone.
        caption_count_from_boxes: RGB->caption chains through the model's own boxes: each caption is forced to
            open with ``"There are N objects."``, N the number of boxes of one greedy RGB->det decode, and the
            model writes the rest (needs a model with the det target). None (the default, as for
            ``caption_shapes_from_boxes``): on where that chain applies
            (:func:`open4m.generation.caption_shapes.boxes_chain_applies`: a det target, world shapes as box
            classes) and ``caption_given_boxes`` is off, as ``open4m generate`` decodes a caption from one image;
            ``results["settings"]`` records what was used. False for both = the plain caption.
        caption_given_boxes: RGB->caption chains through the model's own boxes as a condition: each caption is
            decoded from the image *and* the boxes of one greedy RGB->det decode (given as ``det@64``, moved with
            each shifted view; needs a model with det as target and input). With ``caption_count_from_boxes`` both
            use the same decode.
        caption_shapes_from_boxes: RGB->caption chains through the model's own boxes for its shapes: every shape
            word of the caption is kept to the box the list has reached, left to right
            (:class:`open4m.generation.caption_shapes.ShapesFromBoxes`): the boxes of one greedy RGB->det decode
            (shared with the options above), each named by the vote of the fused RGB->boxes decodes
            (:func:`open4m.generation.caption_shapes.classes_by_vote`; those of the rgb->det task when it runs,
            else decoded with its settings); needs a model with the det target.
        semseg_pixel_weight: the refined RGB->semseg row (``miou_refined``) relabels the object pixels of the
            predicted map by the fused boxes with this weight for the map's own label
            (:func:`open4m.generation.segmentation.refine_with_boxes`; its ceiling: the semseg ceiling refined
            by the true boxes); needs the rgb->det task.
        seed: row i of the set samples with generator seed ``seed + i``.
        tasks: a subset of :data:`open4m.evaluation.tasks.TASKS` (default all).
        min_class_pixels: caption->rgb counts a shape class as present in a judged semseg map from this many pixels.
        progress: show a tqdm bar over scenes.

    Returns:
        ``{"format", "num_scenes", "settings", "model", "tokenizers", "metrics": [{"task", "metric", "model",
        "ceiling", "higher_is_better", "description"}, ...], "skipped": {task: reason}, "seconds": {...}}``;
        a metric with nothing to measure (e.g. no caption stated a colour) is None.

    Raises ValueError when no task can run or there are no samples.
    """
    tune_cpu()
    if det_samples < 0:
        raise ValueError(f"det_samples must be >= 0, got {det_samples}")
    if num_scenes < 1 or batch_size < 1 or steps < 1 or rgb_steps < 1:
        raise ValueError(f"num_scenes, batch_size, steps and rgb_steps must be >= 1, got {num_scenes}, {batch_size}, "
                         f"{steps}, {rgb_steps}")
    if semseg_pixel_weight < 0:
        raise ValueError(f"semseg_pixel_weight must be >= 0, got {semseg_pixel_weight}")
    plan = plan_tasks(model, tokenizers, tasks)
    chain = not caption_given_boxes and boxes_chain_applies(model, tokenizers.text)
    caption_count_from_boxes = chain if caption_count_from_boxes is None else caption_count_from_boxes
    caption_shapes_from_boxes = chain if caption_shapes_from_boxes is None else caption_shapes_from_boxes
    if caption_count_from_boxes and "rgb->caption" in plan.tasks and DET not in model.decoder_embeddings:
        raise ValueError(f"caption_count_from_boxes: the model has no {DET} target to count the boxes with")
    if caption_shapes_from_boxes and "rgb->caption" in plan.tasks and DET not in model.decoder_embeddings:
        raise ValueError(f"caption_shapes_from_boxes: the model has no {DET} target to take the shapes from")
    if caption_given_boxes and "rgb->caption" in plan.tasks and not (
            DET in model.decoder_embeddings and DET in model.encoder_embeddings):
        raise ValueError(f"caption_given_boxes: the model needs {DET} as both target and input to give a caption "
                         "its own boxes")
    evaluator = _Evaluator(model, tokenizers, plan, batch_size=batch_size, steps=steps, temperature=temperature,
                           seed=seed, min_class_pixels=min_class_pixels, rgb_temperature=rgb_temperature,
                           rgb_steps=rgb_steps, rgb_guidance=rgb_guidance, det_samples=det_samples,
                           det_temperature=det_temperature, det_flip=det_flip,
                           det_shifts=tuple(map(tuple, det_shifts)),  # detect() checks them (whole pixels)
                           caption_shifts=tuple(map(tuple, caption_shifts)),  # and describe() these
                           caption_count_from_boxes=caption_count_from_boxes,
                           caption_given_boxes=caption_given_boxes,
                           caption_shapes_from_boxes=caption_shapes_from_boxes,
                           semseg_pixel_weight=semseg_pixel_weight)
    settings = {"batch_size": batch_size, "steps": steps, "temperature": temperature,
                "rgb_temperature": rgb_temperature, "rgb_steps": rgb_steps, "rgb_guidance": rgb_guidance,
                "det_samples": det_samples, "det_temperature": det_temperature, "det_flip": evaluator.flip,
                "det_shifts": [[int(c) for c in shift] for shift in evaluator.shifts],
                "caption_shifts": [[int(c) for c in shift] for shift in evaluator.caption_shifts],
                "caption_count_from_boxes": caption_count_from_boxes, "caption_given_boxes": caption_given_boxes,
                "caption_shapes_from_boxes": caption_shapes_from_boxes,
                "semseg_pixel_weight": semseg_pixel_weight, "seed": seed, "min_class_pixels": min_class_pixels}
    was_training = model.training
    model.eval()
    start, done = time.perf_counter(), 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_scenes, desc="eval", unit="scene")
    try:
        stream = iter(itertools.islice(samples, num_scenes))
        while batch := list(itertools.islice(stream, batch_size)):
            evaluator.add_batch(batch, done)
            done += len(batch)
            if bar is not None:
                bar.update(len(batch))
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    if done == 0:
        raise ValueError("no samples to evaluate on")
    return evaluator.results(done, settings, time.perf_counter() - start)


def load_model_and_tokenizers(model_dir: str | Path, tokenizers_dir: str | Path | None = None, device: str = "cpu"):
    """``(model, tokenizer set)`` from a model folder, both on ``device``; the tokenizers default to
    ``model_dir/tokenizers`` when it holds a set, else the shipped world tokenizers. Clear FileNotFoundError /
    ValueError for bad folders."""
    from open4m.model import from_pretrained
    from open4m.shipped import tokenizers_dir_for
    from open4m.tokenizer_set import TokenizerSet

    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    if not model_dir.is_dir():
        raise ValueError(f"{model_dir} is not a folder; expected a model folder (config.json + model.safetensors)")
    model = from_pretrained(model_dir, map_location=device)
    tokenizers = TokenizerSet.load(tokenizers_dir if tokenizers_dir is not None else tokenizers_dir_for(model_dir))
    for tokenizer in tokenizers.image.values():
        tokenizer.model.to(device)
    return model, tokenizers


def evaluate_folder(
    model_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    tokenizers_dir: str | Path | None = None,
    device: str = "cpu",
    num_scenes: int = 1000,
    overwrite: bool = False,
    baseline: str | Path | None = None,
    **settings,
) -> dict:
    """``open4m eval``: load the model (:func:`load_model_and_tokenizers`), evaluate it on the world shards in
    ``data_dir`` (:func:`evaluate_model`, ``settings`` passed on) and write the report to ``out_dir``
    (:func:`open4m.evaluation.report.write_report`; ``baseline``: an earlier ``results.json`` of an untrained
    model for the table's last column). Everything is checked before the model runs. Returns the results."""
    from open4m.evaluation.report import RESULTS_FILE, TABLE_FILE, load_results, write_report
    from open4m.vq.samples import world_shard_samples

    out_dir = Path(out_dir)
    existing = [name for name in (RESULTS_FILE, TABLE_FILE) if (out_dir / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds an evaluation report ({', '.join(existing)}); "
                              "pass --overwrite to replace it")
    if not Path(data_dir).is_dir():
        raise FileNotFoundError(f"data folder {data_dir} does not exist (expected world shards, *.tar, "
                                "as `open4m world render` writes them)")
    samples = world_shard_samples(data_dir)
    base = load_results(baseline) if baseline is not None else None
    model, tokenizers = load_model_and_tokenizers(model_dir, tokenizers_dir, device)
    results = evaluate_model(model, tokenizers, samples, num_scenes, **settings)
    write_report(results, out_dir, baseline=base, overwrite=overwrite)
    return results


__all__ = ["FORMAT", "evaluate_folder", "evaluate_model", "load_model_and_tokenizers"]
