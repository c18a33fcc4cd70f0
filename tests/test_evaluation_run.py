"""The evaluation runner end to end: wiring (an oracle scores exactly the tokenizer ceiling), a tiny random model
on rendered scenes, task planning, the report writer and the `open4m eval` command."""

import json

import numpy as np
import pytest
import torch

from generation_helpers import moved_image
from open4m import cli, sequences
from open4m.data.shards import list_shards
from open4m.data.world import SHAPES, iter_world_samples, write_world
from open4m.evaluation import evaluate_model, format_table, load_results, not_better_than, write_report
from open4m.evaluation import run as run_module
from open4m.evaluation.tasks import METRICS, TASKS, plan_tasks
from open4m.generation import boxes as boxes_module
from open4m.generation import describe as describe_module
from open4m.generation.prompt import GenerationResult
from open4m.generation.runner import RGB_GUIDANCE
from open4m.model import FourM, preset, save_pretrained
from open4m.pixels import to_model_pixels
from open4m.shipped import world_tokenizers_dir
from open4m.tokenizer_set import TokenizerSet

DOMAINS_IN = ["rgb@64", "tok_rgb@64", "tok_depth@64", "tok_normal@64", "tok_semseg@64", "caption@64", "det@64"]
DOMAINS_OUT = DOMAINS_IN[1:]


def tiny_model(domains_in=DOMAINS_IN, domains_out=DOMAINS_OUT) -> FourM:
    torch.manual_seed(0)
    return FourM(preset("tiny_gelu", domains_in, domains_out, dim=32, encoder_depth=1, decoder_depth=1,
                        num_heads=2)).eval()


@pytest.fixture(scope="module")
def tokenizers():
    return TokenizerSet.load(world_tokenizers_dir())


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("world-val")
    write_world(out, 4, split="val")
    return out


@pytest.fixture(scope="module")
def samples(val_dir):
    return list(iter_world_samples(list_shards(val_dir)))


# ------------------------------------------------------------------ wiring: an oracle reaches the ceiling
class Oracle:
    """Stands in for `generate`: finds the scene each condition row comes from and returns the ground truth
    through its tokenizer, which is what the ceiling measures (for a mirrored or shifted RGB row, the boxes
    mirrored or shifted)."""

    def __init__(self, samples, tokenizers):
        self.samples, self.tok = samples, tokenizers
        rgb = np.stack([s["rgb"] for s in samples])
        # every view RGB->boxes or RGB->caption may decode: (name, dx, dy) for the image, its reconstruction,
        # mirror and shifts
        self.views = [("image", 0, 0), ("reconstruction", 0, 0), ("mirror", 0, 0)] + [
            ("shift", dx, dy) for dx, dy in (*boxes_module.SHIFTS, *describe_module.CAPTION_SHIFTS)]
        images = [rgb, tokenizers.image["tok_rgb@64"].reconstruct(rgb), rgb[:, :, ::-1]] + [
            moved_image(rgb, dx, dy) for _, dx, dy in self.views[3:]]
        self.pixels = np.concatenate([to_model_pixels(np.ascontiguousarray(x)) for x in images])
        self.tokens = {name: tok.encode(np.stack([s[name.split("@")[0][4:]] for s in samples]))
                       for name, tok in tokenizers.image.items()}
        self.truths = {name: tok.reconstruct(np.stack([s[name.split("@")[0][4:]] for s in samples]))
                       for name, tok in tokenizers.image.items()}
        self.calls = []

    def scene_of(self, name, row) -> tuple[int, tuple]:
        """(scene index, the view of it the row shows)."""
        if name == "rgb@64":
            index = int(np.argmin(np.abs(self.pixels - np.asarray(row)[None]).mean(axis=(1, 2, 3))))
            return index % len(self.samples), self.views[index // len(self.samples)]
        plain = self.views[0]
        if name == "caption@64":
            return next(i for i, s in enumerate(self.samples) if self.tok.text.encode(s["caption"]) == list(row)), plain
        return next(i for i, tokens in enumerate(self.tokens[name]) if np.array_equal(tokens, np.asarray(row))), plain

    def truth(self, target, i, view):
        s, text = self.samples[i], self.tok.text
        kind, dx, dy = view
        mirrored, shifted = kind == "mirror", kind == "shift"
        assert not mirrored or target == "det@64", "only RGB->boxes decodes mirrored images"
        assert not shifted or target in ("det@64", "caption@64"), "only RGB->boxes / caption decode shifted images"
        if target == "caption@64":
            return text.decode(text.encode(s["caption"]))
        if target == "det@64":
            boxes = [{"box": d["box"], "class": d["class"]} for d in s["det"]]
            parsed = sequences.text_to_boxes(text.decode(text.encode(sequences.boxes_to_text(boxes))), SHAPES)[0]
            if mirrored:
                parsed = [{**b, "box": [1 - b["box"][2], b["box"][1], 1 - b["box"][0], b["box"][3]]} for b in parsed]
            if shifted:  # the boxes where the moved image shows them (an oracle: not clipped to the image)
                parsed = [{**b, "box": [c + o / 64 for c, o in zip(b["box"], (dx, dy, dx, dy), strict=True)]}
                          for b in parsed]
            return [{**b, "score": 1.0} for b in parsed]  # generated boxes carry scores
        return self.truths[target][i]

    def __call__(self, model, conditions, targets, *, tokenizers, text_tokenizer, seed):
        (name, rows), = conditions.items()
        target = targets[0].name
        self.calls.append((name, target, len(rows)))
        out = [self.truth(target, *self.scene_of(name, row)) for row in rows]
        return GenerationResult({}, {target: out if target in ("caption@64", "det@64") else np.stack(out)})


@pytest.fixture(scope="module")
def oracle_run(samples, tokenizers):
    oracle = Oracle(samples, tokenizers)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module, "generate", oracle)
        patch.setattr(boxes_module, "generate", oracle)
        patch.setattr(describe_module, "generate", oracle)
        results = evaluate_model(tiny_model(), tokenizers, samples, num_scenes=4, batch_size=3, det_samples=2)
    return results, oracle


def test_an_oracle_scores_exactly_the_tokenizer_ceiling(oracle_run):
    results, oracle = oracle_run
    assert [(r["task"], r["metric"]) for r in results["metrics"]] == [(m.task, m.name) for m in METRICS]
    for row in results["metrics"]:
        assert row["model"] == pytest.approx(row["ceiling"], rel=1e-6, abs=1e-9), row
    # chunked by batch_size: 4 scenes -> rows of 3 and 1, the judges' stacked images too; RGB->boxes decodes
    # each row, its mirror and its 8 shifted views greedily (3 rows -> one call of 30), then the image and its
    # mirror twice sampled (det_samples=2): 12; RGB->caption decodes each row with its 8 shifted views at once
    assert [n for _, target, n in oracle.calls if target == "det@64"][:2] == [30, 12]
    assert [n for name, target, n in oracle.calls if (name, target) == ("rgb@64", "caption@64")] == [27, 9]
    assert max(n for _, target, n in oracle.calls if target not in ("det@64", "caption@64")) == 3
    assert results["settings"]["det_samples"] == 2 and results["settings"]["det_flip"] is True
    assert results["settings"]["det_shifts"] == [list(shift) for shift in boxes_module.SHIFTS]
    assert results["settings"]["caption_shifts"] == [list(shift) for shift in describe_module.CAPTION_SHIFTS]
    assert results["num_scenes"] == 4 and not results["skipped"]


def test_ceilings_are_near_the_tokenizers_quality(oracle_run):
    rows = {f"{r['task']}/{r['metric']}": r["ceiling"] for r in oracle_run[0]["metrics"]}
    assert rows["rgb->depth/delta1"] > 0.95 and rows["rgb->depth/abs_rel"] < 0.03
    assert rows["rgb->normal/angle_deg"] < 4
    assert rows["rgb->semseg/miou"] > 0.9
    assert rows["rgb->det/map50"] > 0.95
    for name in ("count_acc", "color_acc", "list_color_acc", "shape_acc", "relation_acc", "object_recall"):
        assert rows[f"rgb->caption/{name}"] == 1.0
    assert rows["caption->rgb/class_agreement"] == 1.0  # the oracle judge sees the true shapes
    assert rows["caption->rgb/count_acc"] == 1.0


# ------------------------------------------------------------------ a real tiny model
def test_tiny_random_model_end_to_end(samples, tokenizers):
    results = evaluate_model(tiny_model(), tokenizers, iter(samples), num_scenes=2, batch_size=2, steps=2)
    assert results["num_scenes"] == 2 and not results["skipped"]
    rows = {f"{r['task']}/{r['metric']}": r for r in results["metrics"]}
    assert set(rows) == {m.key for m in METRICS}
    assert rows["rgb->depth/delta1"]["ceiling"] > 0.95
    assert rows["rgb->depth/delta1"]["model"] < rows["rgb->depth/delta1"]["ceiling"]  # untrained
    assert rows["rgb->semseg/miou"]["model"] < 0.5 < rows["rgb->semseg/miou"]["ceiling"]
    for row in results["metrics"]:
        for column in ("model", "ceiling"):
            value = row[column]
            assert value is None or (value >= 0 and (row["metric"] in ("abs_rel", "angle_deg") or value <= 1)), row
    assert set(results["seconds"]) == {"total", *TASKS}
    json.dumps(results)  # JSON-ready


# ------------------------------------------------------------------ planning
def test_a_model_lacking_modalities_skips_tasks_with_reasons(tokenizers):
    plan = plan_tasks(tiny_model(["rgb@64"], ["tok_depth@64", "tok_semseg@64"]), tokenizers)
    assert plan.tasks == ["rgb->depth", "rgb->semseg"]
    assert "does not generate tok_normal@64" in plan.skipped["rgb->normal"]
    assert "does not take caption@64" in plan.skipped["caption->rgb"]
    assert "does not generate tok_rgb@64" in plan.skipped["depth->rgb"]
    tokens_only = plan_tasks(tiny_model(["tok_rgb@64"], ["tok_depth@64"]), tokenizers, ["rgb->depth"])
    assert tokens_only.rgb_input == "tok_rgb@64"


def test_nothing_to_evaluate_and_unknown_tasks_are_errors(tokenizers):
    with pytest.raises(ValueError, match="nothing to evaluate.*no RGB input"):
        plan_tasks(tiny_model(["caption@64"], ["det@64"]), tokenizers)
    with pytest.raises(ValueError, match="unknown evaluation task"):
        plan_tasks(tiny_model(), tokenizers, ["rgb->edges"])
    no_text = TokenizerSet(image=dict(tokenizers.image))
    plan = plan_tasks(tiny_model(), no_text)
    assert "no tokenizer for caption@64" in plan.skipped["rgb->caption"]
    with pytest.raises(ValueError, match="no samples"):
        evaluate_model(tiny_model(), tokenizers, [], tasks=["rgb->depth"])


def test_refined_semseg_needs_the_box_task_and_flip_needs_rgb_pixels(samples, tokenizers, monkeypatch):
    monkeypatch.setattr(run_module, "generate", Oracle(samples, tokenizers))
    results = evaluate_model(tiny_model(), tokenizers, samples, num_scenes=2, tasks=["rgb->semseg"])
    assert [r["metric"] for r in results["metrics"]] == ["miou"]
    assert "rgb->det" in results["skipped"]["rgb->semseg/miou_refined"]
    tokens_in = tiny_model(["tok_rgb@64"], ["tok_semseg@64"])
    results = evaluate_model(tokens_in, tokenizers, samples, num_scenes=1, tasks=["rgb->semseg"])
    assert results["settings"]["det_flip"] is False  # RGB tokens cannot be mirrored
    assert results["settings"]["det_shifts"] == []  # nor shifted
    assert results["settings"]["caption_shifts"] == []  # for captions either


def test_caption_to_rgb_without_a_det_head_keeps_the_semseg_metrics(samples, tokenizers, monkeypatch):
    monkeypatch.setattr(run_module, "generate", Oracle(samples, tokenizers))
    model = tiny_model(DOMAINS_IN, ["tok_rgb@64", "tok_semseg@64"])
    results = evaluate_model(model, tokenizers, samples, num_scenes=2, tasks=["caption->rgb"])
    assert [r["metric"] for r in results["metrics"]] == ["scene_class_agreement", "scene_layout_agreement"]
    assert "det@64" in results["skipped"]["caption->rgb/class_agreement"]


def test_rgb_generation_settings_reach_the_target_specs_and_the_results(samples, tokenizers, monkeypatch):
    oracle, specs = Oracle(samples, tokenizers), []

    def recording(model, conditions, targets, **kwargs):
        specs.append(targets[0])
        return oracle(model, conditions, targets, **kwargs)

    monkeypatch.setattr(run_module, "generate", recording)
    results = evaluate_model(tiny_model(), tokenizers, samples, num_scenes=2, steps=3,
                             tasks=["caption->rgb", "depth->rgb"], rgb_temperature=0.7, rgb_steps=5, rgb_guidance=2.5)
    rgb = [(s.steps, s.temperature, s.guidance) for s in specs if s.name == "tok_rgb@64"]
    judges = [(s.steps, s.temperature, s.guidance) for s in specs if s.name != "tok_rgb@64"]
    assert rgb == [(5, 0.7, 2.5)] * 2  # caption->rgb and depth->rgb, one batch each
    assert judges and set(judges) == {(3, 0.0, 1.0)}  # the judges predict greedily, unguided
    assert {k: results["settings"][k] for k in ("rgb_temperature", "rgb_steps", "rgb_guidance")} == \
        {"rgb_temperature": 0.7, "rgb_steps": 5, "rgb_guidance": 2.5}
    specs.clear()
    defaults = evaluate_model(tiny_model(), tokenizers, samples, num_scenes=1, tasks=["depth->rgb"])
    assert [(s.name, s.steps, s.temperature, s.guidance) for s in specs] == \
        [("tok_rgb@64", 8, 1.0, RGB_GUIDANCE), ("tok_depth@64", 1, 0.0, 1.0)]
    assert {k: defaults["settings"][k] for k in ("steps", "temperature", "rgb_steps", "rgb_guidance")} == \
        {"steps": 1, "temperature": 0.0, "rgb_steps": 8, "rgb_guidance": RGB_GUIDANCE}
    with pytest.raises(ValueError, match="rgb_steps must be >= 1"):
        evaluate_model(tiny_model(), tokenizers, samples, rgb_steps=0)



def test_caption_count_from_boxes_opens_each_caption_with_the_box_count(samples, tokenizers, monkeypatch):
    from open4m.data.world.captions import count_sentence

    monkeypatch.setattr(run_module, "generate", Oracle(samples, tokenizers))  # greedy boxes = the true boxes
    seen = []

    def recording(model, conditions, target, *, openings=None, **kwargs):
        seen.append(openings)
        return [count_sentence(len(s["det"])) for s in samples[: len(openings)]]

    monkeypatch.setattr(run_module, "describe", recording)
    results = evaluate_model(tiny_model(), tokenizers, samples, num_scenes=2, tasks=["rgb->caption"],
                             caption_shifts=(), caption_count_from_boxes=True)
    assert seen == [[count_sentence(len(s["det"])) for s in samples[:2]]]
    assert {len(s["det"]) for s in samples[:2]} != {0}  # the boxes were counted, not an empty default
    rows = {r["metric"]: r["model"] for r in results["metrics"]}
    assert rows["count_acc"] == 1.0 and results["settings"]["caption_count_from_boxes"] is True
    with pytest.raises(ValueError, match="caption_count_from_boxes: the model has no det@64 target"):
        evaluate_model(tiny_model(DOMAINS_IN, ["caption@64"]), tokenizers, samples, num_scenes=1,
                       tasks=["rgb->caption"], caption_count_from_boxes=True)


def test_caption_shapes_from_boxes_keeps_the_shapes_to_the_voted_boxes(samples, tokenizers, monkeypatch):
    from open4m.generation.caption_shapes import ShapesFromBoxes, boxes_left_to_right

    monkeypatch.setattr(run_module, "generate", Oracle(samples, tokenizers))  # greedy boxes = the true boxes
    fused_calls = []

    def fused(model, conditions, target, **kwargs):  # every fused decode calls each true box a cone
        fused_calls.append(kwargs["shifts"])
        rows = samples[: len(conditions["rgb@64"])]
        return [[{"box": d["box"], "class": "cone", "score": 0.9} for d in s["det"]] for s in rows]

    monkeypatch.setattr(run_module, "detect", fused)
    seen = []

    def recording(model, conditions, target, *, banned=None, **kwargs):
        seen.append(banned)
        return [s["caption"] for s in samples[: len(conditions["rgb@64"])]]

    monkeypatch.setattr(run_module, "describe", recording)
    results = evaluate_model(tiny_model(), tokenizers, samples, num_scenes=2, tasks=["rgb->caption"],
                             caption_shifts=(), caption_shapes_from_boxes=True)
    rule, = seen
    assert isinstance(rule, ShapesFromBoxes) and results["settings"]["caption_shapes_from_boxes"] is True
    assert rule.ordered == [["cone"] * len(s["det"]) for s in samples[:2]]  # the vote named them
    assert len(fused_calls) == 1  # decoded for the captions, as the rgb->det task would
    seen.clear()
    monkeypatch.setattr(run_module, "detect", lambda model, conditions, target, **kwargs: [
        [{"score": 0.8, **d} for d in s["det"]] for s in samples[: len(conditions["rgb@64"])]])
    evaluate_model(tiny_model(), tokenizers, samples, num_scenes=2, tasks=["rgb->det", "rgb->caption"],
                   caption_shifts=(), caption_shapes_from_boxes=True)
    assert seen[0].ordered == [boxes_left_to_right(s["det"]) for s in samples[:2]]  # the det task's boxes voted
    with pytest.raises(ValueError, match="caption_shapes_from_boxes: the model has no det@64 target"):
        evaluate_model(tiny_model(DOMAINS_IN, ["caption@64"]), tokenizers, samples, num_scenes=1,
                       tasks=["rgb->caption"], caption_shapes_from_boxes=True)


def test_caption_given_boxes_decodes_each_caption_from_the_image_and_its_boxes(samples, tokenizers, monkeypatch):
    from open4m.data.world.captions import count_sentence

    monkeypatch.setattr(run_module, "generate", Oracle(samples, tokenizers))  # greedy boxes = the true boxes
    seen = []

    def recording(model, conditions, target, *, openings=None, shifts=(), **kwargs):
        seen.append((sorted(conditions), conditions.get("det@64"), openings, shifts))
        return [s["caption"] for s in samples[: len(conditions["rgb@64"])]]

    monkeypatch.setattr(run_module, "describe", recording)
    results = evaluate_model(tiny_model(), tokenizers, samples, num_scenes=2, tasks=["rgb->caption"],
                             caption_shifts=((3, 0),), caption_given_boxes=True)
    (names, boxes, openings, shifts), = seen
    assert names == ["det@64", "rgb@64"] and openings is None and shifts == ((3, 0),)
    truth = [sorted(d["class"] for d in s["det"]) for s in samples[:2]]
    assert [sorted(b["class"] for b in row) for row in boxes] == truth
    assert results["settings"]["caption_given_boxes"] is True
    seen.clear()  # with the count as well: one decode feeds both
    evaluate_model(tiny_model(), tokenizers, samples, num_scenes=2, tasks=["rgb->caption"], caption_shifts=(),
                   caption_given_boxes=True, caption_count_from_boxes=True)
    assert seen[0][2] == [count_sentence(len(s["det"])) for s in samples[:2]] and seen[0][1] is not None
    with pytest.raises(ValueError, match="caption_given_boxes: the model needs det@64 as both target and input"):
        evaluate_model(tiny_model(DOMAINS_IN[:-1], DOMAINS_OUT), tokenizers, samples, num_scenes=1,
                       tasks=["rgb->caption"], caption_given_boxes=True)


def test_captions_chain_through_the_boxes_by_default_where_the_chain_applies(samples, tokenizers, monkeypatch):
    from open4m.data.world.captions import count_sentence
    from open4m.generation.caption_shapes import ShapesFromBoxes

    monkeypatch.setattr(run_module, "generate", Oracle(samples, tokenizers))  # greedy boxes = the true boxes
    monkeypatch.setattr(run_module, "detect", lambda model, conditions, target, **kwargs: [
        [{"score": 0.8, **d} for d in s["det"]] for s in samples[: len(conditions["rgb@64"])]])
    seen = []

    def recording(model, conditions, target, *, openings=None, banned=None, **kwargs):
        seen.append((sorted(conditions), openings, banned))
        return [s["caption"] for s in samples[: len(conditions["rgb@64"])]]

    monkeypatch.setattr(run_module, "describe", recording)
    results = evaluate_model(tiny_model(), tokenizers, samples, num_scenes=2, tasks=["rgb->caption"],
                             caption_shifts=())
    (names, openings, banned), = seen  # a det target, world shapes as box classes: both chains are on
    assert openings == [count_sentence(len(s["det"])) for s in samples[:2]] and isinstance(banned, ShapesFromBoxes)
    settings = results["settings"]
    assert settings["caption_count_from_boxes"] is True and settings["caption_shapes_from_boxes"] is True
    seen.clear()  # one of them asked off: the other stays on
    results = evaluate_model(tiny_model(), tokenizers, samples, num_scenes=2, tasks=["rgb->caption"],
                             caption_shifts=(), caption_count_from_boxes=False)
    assert seen[0][1] is None and isinstance(seen[0][2], ShapesFromBoxes)
    assert results["settings"]["caption_count_from_boxes"] is False
    seen.clear()  # with the boxes as a condition, the chain is that alone
    results = evaluate_model(tiny_model(), tokenizers, samples, num_scenes=2, tasks=["rgb->caption"],
                             caption_shifts=(), caption_given_boxes=True)
    assert seen[0][0] == ["det@64", "rgb@64"] and seen[0][1:] == (None, None)
    assert results["settings"]["caption_shapes_from_boxes"] is False
    seen.clear()  # no det target: the plain caption (the model's own generate call, not describe)
    results = evaluate_model(tiny_model(DOMAINS_IN, ["caption@64"]), tokenizers, samples, num_scenes=2,
                             tasks=["rgb->caption"], caption_shifts=())
    assert seen == [] and results["settings"]["caption_count_from_boxes"] is False


# ------------------------------------------------------------------ report
def fake_results(value, skipped=None):
    return {"num_scenes": 2, "settings": {"steps": 2, "temperature": 0.0, "seed": 0},
            "model": {"rgb_input": "rgb@64"}, "seconds": {"total": 1.0}, "skipped": skipped or {},
            "metrics": [{"task": "rgb->depth", "metric": "abs_rel", "model": value, "ceiling": 0.01,
                         "higher_is_better": False, "description": "d"},
                        {"task": "rgb->semseg", "metric": "miou", "model": 1 - value, "ceiling": 0.99,
                         "higher_is_better": True, "description": "m"}]}


def test_report_says_how_the_captions_were_decoded(tmp_path):
    results = fake_results(0.1)
    assert "caption" not in (write_report(results, tmp_path / "none") / "metrics.md").read_text()  # no caption task
    results["metrics"].append({"task": "rgb->caption", "metric": "count_acc", "model": 0.9, "ceiling": 1.0,
                               "higher_is_better": True, "description": "c"})
    text = (write_report(results, tmp_path / "plain") / "metrics.md").read_text()
    assert "the model's caption of the image (not chained through its boxes)" in text
    results["settings"].update(caption_count_from_boxes=True, caption_shapes_from_boxes=True)
    text = (write_report(results, tmp_path / "chained") / "metrics.md").read_text()
    assert ("chained through the model's own boxes: their count opens each caption, their shapes name its "
            "objects.") in text


def test_report_files_table_and_overwrite_refusal(tmp_path):
    results, baseline = fake_results(0.1, {"rgb->det": "the model does not generate det@64"}), fake_results(0.5)
    out = write_report(results, tmp_path / "report", baseline=baseline)
    table = (out / "metrics.md").read_text()
    assert "| rgb → depth | abs_rel ↓ | 0.100 | 0.010 | 0.500 |" in table
    assert "Skipped rgb->det: the model does not generate det@64" in table
    assert load_results(out)["metrics"] == results["metrics"]
    with pytest.raises(FileExistsError, match="overwrite"):
        write_report(fake_results(0.3), out)
    assert load_results(out)["metrics"][0]["model"] == 0.1  # untouched
    write_report(fake_results(0.3), out, overwrite=True)
    assert load_results(out)["metrics"][0]["model"] == 0.3
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left
    assert "untrained" not in format_table(results)


def test_not_better_than_is_direction_aware():
    assert not_better_than(fake_results(0.1), fake_results(0.5)) == []
    assert not_better_than(fake_results(0.5), fake_results(0.1)) == ["rgb->depth/abs_rel", "rgb->semseg/miou"]
    missing = fake_results(0.1)
    missing["metrics"][0]["model"] = None
    assert not_better_than(missing, fake_results(0.5)) == ["rgb->depth/abs_rel"]
    no_baseline_value = fake_results(0.5)
    no_baseline_value["metrics"][1]["model"] = None
    assert not_better_than(fake_results(0.1), no_baseline_value) == []


# ------------------------------------------------------------------ the command
def run_cli(args, capsys):
    code = cli.main(["eval", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_cli_evaluates_a_saved_model_and_refuses_to_overwrite(tmp_path, val_dir, capsys):
    model_dir = save_pretrained(tiny_model(), tmp_path / "model")
    args = ["--model", model_dir, "--data", val_dir, "--num-scenes", 2, "--out", tmp_path / "eval", "--steps", 1,
            "--tasks", "rgb->depth,depth->rgb"]
    code, out = run_cli(args, capsys)
    assert code == 0, out
    assert "| rgb → depth | delta1 ↑ |" in out and "2 scenes" in out
    results = load_results(tmp_path / "eval")
    assert [r["task"] for r in results["metrics"]] == ["rgb->depth", "rgb->depth", "depth->rgb", "depth->rgb"]
    code, out = run_cli(args, capsys)
    assert code == 2 and "already holds an evaluation report" in out and "--overwrite" in out
    code, out = run_cli([*args, "--overwrite", "--baseline", tmp_path / "eval"], capsys)
    assert code == 0, out
    assert "untrained" in (tmp_path / "eval" / "metrics.md").read_text()


def test_cli_errors_are_clear(tmp_path, val_dir, capsys):
    code, out = run_cli(["--model", tmp_path / "nope", "--data", val_dir, "--out", tmp_path / "o"], capsys)
    assert code == 2 and "model folder" in out and "does not exist" in out
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{not json")
    code, out = run_cli(["--model", corrupt, "--data", val_dir, "--out", tmp_path / "o"], capsys)
    assert code == 2 and "not valid JSON" in out
    model_dir = save_pretrained(tiny_model(), tmp_path / "model")
    (model_dir / "model.safetensors").write_bytes(b"truncated")
    code, out = run_cli(["--model", model_dir, "--data", val_dir, "--out", tmp_path / "o"], capsys)
    assert code == 2 and "safetensors" in out
    code, out = run_cli(["--model", model_dir, "--data", tmp_path / "nodata", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "data folder" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out = run_cli(["--model", model_dir, "--data", empty, "--out", tmp_path / "o"], capsys)
    assert code == 2 and "no world shards" in out
    assert not (tmp_path / "o").exists()


def test_cli_rgb_generation_flags_reach_the_results(tmp_path, val_dir, capsys):
    model_dir = save_pretrained(tiny_model(), tmp_path / "model")
    code, out = run_cli(["--model", model_dir, "--data", val_dir, "--num-scenes", 1, "--out", tmp_path / "eval",
                         "--steps", 1, "--tasks", "depth->rgb", "--rgb-steps", 2, "--rgb-guidance", 2.5,
                         "--rgb-temperature", 0.5, "--no-det-flip", "--det-shift", 3, "--caption-shift", 0,
                         "--semseg-pixel-weight", 0.3, "--caption-count-from-boxes", "--caption-given-boxes",
                         "--caption-shapes-from-boxes"],
                        capsys)
    assert code == 0, out
    settings = load_results(tmp_path / "eval")["settings"]
    assert (settings["steps"], settings["rgb_steps"], settings["rgb_guidance"], settings["rgb_temperature"]) == \
        (1, 2, 2.5, 0.5)
    assert settings["det_flip"] is False and settings["semseg_pixel_weight"] == 0.3
    assert settings["det_shifts"] == [[-3, -3], [0, -3], [3, -3], [-3, 0], [3, 0], [-3, 3], [0, 3], [3, 3]]
    assert settings["caption_shifts"] == [] and settings["caption_count_from_boxes"] is True
    assert settings["caption_given_boxes"] is True and settings["caption_shapes_from_boxes"] is True


def test_cli_plain_caption_turns_both_box_chains_off(tmp_path, val_dir, capsys):
    model_dir = save_pretrained(tiny_model(), tmp_path / "model")
    common = ["--model", model_dir, "--data", val_dir, "--num-scenes", 1, "--tasks", "depth->rgb", "--rgb-steps", 1]
    code, out = run_cli([*common, "--out", tmp_path / "default"], capsys)
    assert code == 0, out
    settings = load_results(tmp_path / "default")["settings"]
    assert settings["caption_count_from_boxes"] is True and settings["caption_shapes_from_boxes"] is True
    code, out = run_cli([*common, "--out", tmp_path / "plain", "--plain-caption"], capsys)
    assert code == 0, out
    settings = load_results(tmp_path / "plain")["settings"]
    assert settings["caption_count_from_boxes"] is False and settings["caption_shapes_from_boxes"] is False
    code, out = run_cli([*common, "--out", tmp_path / "shapes", "--no-caption-count-from-boxes"], capsys)
    settings = load_results(tmp_path / "shapes")["settings"]
    assert settings["caption_count_from_boxes"] is False and settings["caption_shapes_from_boxes"] is True
    code, out = run_cli([*common, "--out", tmp_path / "both", "--plain-caption", "--caption-shapes-from-boxes"],
                        capsys)
    assert code == 2 and "--plain-caption" in out and not (tmp_path / "both").exists()
