"""open4m quickstart: budget planning, the staged run (reuse, resume, overwrite refusal), the exported model,
bad input; the full `--fast` run end to end (slow)."""

import json
import os
import shutil

import pytest
import torch

from open4m import quickstart_plan
from open4m.cli import main
from open4m.quickstart import STAGES, Quickstart, run_quickstart
from open4m.quickstart_plan import Settings, plan_settings

TINY = Settings(minutes=1, train_scenes=24, val_scenes=8, eval_scenes=2, sample_scenes=2, dim=64, depth=1,
                num_heads=2, batch_size=8, steps=2, eval_steps=2, eval_batch_size=2)


def _state(out):
    return json.loads((out / "stages.json").read_text())


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny run stopped after the export stage (no evaluation): (out folder, log lines)."""
    out = tmp_path_factory.mktemp("qs") / "run"
    lines = []
    Quickstart(out, TINY, progress=False, log=lines.append).run(stop_after="export")
    return out, lines


# ------------------------------------------------------------------------------------------------ planning
def test_plan_scales_with_the_budget():
    fast, default, long = plan_settings(fast=True), plan_settings(), plan_settings(120)
    assert fast.minutes == 3 and default.minutes == 30
    assert fast.train_scenes < default.train_scenes < long.train_scenes
    assert fast.eval_scenes <= default.eval_scenes
    assert (fast.dim, fast.depth) < (default.dim, default.depth) <= (long.dim, long.depth)
    assert fast.steps is None  # sized after calibration
    assert fast.dtype == "auto" and plan_settings(fast=True, dtype="bf16").dtype == "bf16"


@pytest.mark.parametrize("minutes", [0, -5, float("nan"), float("inf")])
def test_plan_rejects_a_bad_budget(minutes):
    with pytest.raises(ValueError, match="--minutes must be a positive number"):
        plan_settings(minutes)


def test_plan_rejects_fast_with_minutes():
    with pytest.raises(ValueError, match="either --fast or --minutes"):
        plan_settings(5, fast=True)


def test_steps_fill_the_budget():
    assert quickstart_plan.steps_for(100.0, 0.5, 10.0) == 180
    assert quickstart_plan.steps_for(1.0, 0.5, 10.0) == quickstart_plan.MIN_STEPS
    assert quickstart_plan.steps_for(100.0, 0.5, 10.0, min_steps=300) == 300
    assert plan_settings(fast=True).min_steps == quickstart_plan.FAST_MIN_STEPS
    assert plan_settings().min_steps == quickstart_plan.MIN_STEPS


def test_the_estimate_counts_the_steps_a_run_must_take():
    default = quickstart_plan.estimate(plan_settings(), 2)
    assert sum(default.values()) == pytest.approx(30 * 60)  # the budget's steps outlast its minimum
    fast = plan_settings(fast=True)
    estimate = quickstart_plan.estimate(fast, 2)
    assert estimate["train"] >= fast.min_steps * quickstart_plan.PRIOR_FAST_STEP_S > fast.minutes * 60 - sum(
        v for k, v in estimate.items() if k != "train")


def test_bf16_is_chosen_only_when_it_pays_for_itself():
    assert quickstart_plan.choose_dtype({"fp32": 0.71, "bf16": 0.42}) == "bf16"
    assert quickstart_plan.choose_dtype({"fp32": 0.50, "bf16": 0.48}) == "fp32"  # < 1.1x faster
    assert quickstart_plan.choose_dtype({"fp32": 0.30, "bf16": 0.90}) == "fp32"  # a CPU without bf16 units
    assert quickstart_plan.choose_dtype({"fp32": 0.30}) == "fp32"
    assert quickstart_plan.choose_dtype({"bf16": 0.30}) == "bf16"


def test_plan_rejects_an_unknown_dtype():
    with pytest.raises(ValueError, match="dtype must be one of auto, fp32, bf16, got 'fp16'"):
        plan_settings(fast=True, dtype="fp16")


def test_calibration_picks_the_faster_precision_and_the_training_uses_it(tmp_path, monkeypatch):
    settings = Settings(**{**TINY.to_dict(), "steps": None, "minutes": 2})
    monkeypatch.setattr("open4m.runtime.native_bf16", lambda: True)
    q = Quickstart(tmp_path / "q", settings, progress=False, log=lambda s: None)
    q.state["estimate"] = quickstart_plan.estimate(settings, 1)
    measured = {"fp32": 0.5, "bf16": 0.2}
    monkeypatch.setattr(q, "_calibrate", lambda dtype: {"seconds_per_step": measured[dtype], "startup_s": 1.0,
                                                        "wall_s": 3.0})
    plan = q._plan_training()
    assert plan["dtype"] == "bf16" and plan["calibration_s_per_step"] == measured
    budget = 120 - 6.0 - sum(v for k, v in q.state["estimate"].items() if k in STAGES[STAGES.index("train") + 1:])
    assert plan["train_budget_s"] == round(budget, 1) and plan["steps"] == int((budget - 1.0) / 0.2)
    q.state["train_plan"] = plan
    assert q._config(plan["steps"], tmp_path / "t").dtype == "bf16"
    measured["bf16"] = 0.6
    assert q._plan_training()["dtype"] == "fp32"
    fixed = Quickstart(tmp_path / "f", Settings(**{**settings.to_dict(), "dtype": "fp32"}), progress=False,
                       log=lambda s: None)
    calls = []
    monkeypatch.setattr(fixed, "_calibrate", lambda dtype: calls.append(dtype) or {"seconds_per_step": 0.5,
                                                                                   "startup_s": 1.0, "wall_s": 3.0})
    fixed.state["estimate"] = q.state["estimate"]
    assert fixed._plan_training()["dtype"] == "fp32" and calls == ["fp32"]


def test_bf16_is_not_calibrated_on_a_cpu_that_would_emulate_it(tmp_path, monkeypatch):
    monkeypatch.setattr("open4m.runtime.native_bf16", lambda: False)
    lines, calls = [], []
    q = Quickstart(tmp_path / "q", Settings(**{**TINY.to_dict(), "steps": None, "minutes": 2}), progress=False,
                   log=lines.append)
    q.state["estimate"] = quickstart_plan.estimate(q.settings, 1)
    monkeypatch.setattr(q, "_calibrate", lambda dtype: calls.append(dtype) or {"seconds_per_step": 0.5,
                                                                               "startup_s": 1.0, "wall_s": 3.0})
    assert q._plan_training()["dtype"] == "fp32" and calls == ["fp32"]
    assert any("no native bf16" in line for line in lines)
    forced = Quickstart(tmp_path / "b", Settings(**{**q.settings.to_dict(), "dtype": "bf16"}), progress=False,
                        log=lambda s: None)
    forced.state["estimate"] = q.state["estimate"]
    monkeypatch.setattr(forced, "_calibrate", lambda dtype: calls.append(dtype) or {"seconds_per_step": 0.5,
                                                                                    "startup_s": 1.0, "wall_s": 3.0})
    assert forced._plan_training()["dtype"] == "bf16" and calls[-1] == "bf16"  # asked for: calibrated and kept


def test_native_bf16_answers_for_this_machine():
    from open4m.runtime import native_bf16

    assert native_bf16("cuda") is True
    assert native_bf16() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_a_run_folder_from_before_the_dtype_setting_continues(tiny_run, tmp_path):
    out = tmp_path / "old"
    shutil.copytree(tiny_run[0], out)
    state = _state(out)
    del state["settings"]["dtype"]
    del state["train_plan"]["dtype"]
    (out / "stages.json").write_text(json.dumps(state))
    q = Quickstart(out, TINY, progress=False, log=lambda s: None)
    assert q.state["settings"] == TINY.to_dict() and q._config(2, tmp_path / "t").dtype == "fp32"


def test_training_config_is_the_world_recipe_at_quickstart_size(tmp_path):
    c = quickstart_plan.train_config(TINY, tmp_path / "t", tmp_path / "v", tmp_path / "set", tmp_path / "o", 50)
    assert c.model == "tiny_gelu" and c.model_overrides["dim"] == 64 and c.model_overrides["encoder_depth"] == 1
    assert c.domains_in == quickstart_plan.WORLD_INPUTS and c.domains_out == quickstart_plan.WORLD_OUTPUTS
    assert c.masking.endswith("configs/mixtures/world.yaml") and c.steps == 50 and c.warmup_steps == 5
    assert c.text_tokenizer == str(tmp_path / "set") and c.dtype == "fp32"
    assert quickstart_plan.train_config(TINY, tmp_path, tmp_path, tmp_path, tmp_path, 5, "bf16").dtype == "bf16"


# ------------------------------------------------------------------------------------------------ bad input
def test_cli_rejects_a_bad_budget(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path / "q"), "--minutes", "0"]) == 2
    assert "--minutes must be a positive number" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_cli_rejects_fast_with_minutes(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["quickstart", "--out", str(tmp_path / "q"), "--fast", "--minutes", "5"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_an_unwritable_out_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["quickstart", "--out", str(tmp_path / "file" / "q"), "--fast"]) == 2
    assert "cannot write the quickstart folder" in capsys.readouterr().err
    assert main(["quickstart", "--out", str(tmp_path / "file"), "--fast"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_a_foreign_folder_is_refused_even_with_overwrite(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="holds no quickstart run"):
            run_quickstart(tmp_path, settings=TINY, overwrite=overwrite, progress=False)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_settings_that_cannot_run_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"eval_scenes \(9\) needs at least as many held-out scenes"):
        Quickstart(tmp_path / "q", Settings(**{**TINY.to_dict(), "eval_scenes": 9}))
    with pytest.raises(ValueError, match="dim must be >= 1"):
        Quickstart(tmp_path / "q", Settings(**{**TINY.to_dict(), "dim": 0}))
    assert not (tmp_path / "q").exists()


def test_bad_workers_and_stage(tmp_path):
    with pytest.raises(ValueError, match="--workers must be a positive integer"):
        Quickstart(tmp_path / "q", TINY, workers=0)
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        Quickstart(tmp_path / "q", TINY, progress=False, log=lambda s: None).run(stop_after="nope")


# ------------------------------------------------------------------------------------------------ the run
def test_stages_up_to_export_make_a_loadable_model_bundle(tiny_run):
    from open4m.model import from_pretrained
    from open4m.tokenizer_set import TokenizerSet
    from open4m.train import build_model

    out, lines = tiny_run
    state = _state(out)
    assert list(state["stages"]) == list(STAGES[: STAGES.index("export") + 1])
    assert state["settings"] == TINY.to_dict()
    assert state["train_plan"] == {"steps": 2, "calibrated": False, "dtype": "fp32"}
    assert state["stages"]["world"]["scenes"] == {"train": 24, "val": 8}
    assert sorted(p.name for p in (out / "data" / "tokens" / "train").glob("*.tar")) == [
        p.name for p in sorted((out / "data" / "world" / "train").glob("*.tar"))]
    assert (out / "loss.png").is_file() and (out / "train" / "loss.png").is_file()
    model = from_pretrained(out / "model")
    assert model.config.dim == 64 and sorted(model.decoder_embeddings) == sorted(quickstart_plan.WORLD_OUTPUTS)
    # float16 export of the last checkpoint: the weights equal the checkpoint's, rounded to float16
    from open4m import train_state

    checkpoint = from_pretrained(train_state.latest_checkpoint(out / "train"))
    exported = dict(model.named_parameters())
    for name, b in checkpoint.named_parameters():
        assert torch.equal(exported[name].float(), b.half().float()), name
    # training moved the weights away from the untrained initial model the evaluation compares against
    config = quickstart_plan.train_config(TINY, out, out, out, out, 2)
    quickstart_run = Quickstart(out, TINY, progress=False, log=lambda s: None)
    untrained = quickstart_run._untrained_model()
    from open4m.train import seed_everything

    seed_everything(0)
    assert all(torch.equal(a, b) for a, b in zip(untrained.state_dict().values(),
                                                   build_model(config).state_dict().values(), strict=True))
    moved = [k for k, v in checkpoint.state_dict().items() if not torch.equal(v, untrained.state_dict()[k])]
    assert len(moved) > len(checkpoint.state_dict()) // 2
    tokenizers = TokenizerSet.load(out / "model" / "tokenizers")
    assert tokenizers.modalities == ["tok_rgb@64", "tok_depth@64", "tok_normal@64", "tok_semseg@64", "caption@64",
                                     "det@64"]
    assert any("[5/8] export" in line for line in lines)


def test_generate_works_with_the_exported_model(tiny_run, tmp_path):
    out, _ = tiny_run
    png = tmp_path / "g.png"
    assert main(["generate", "--model", str(out / "model"), "--from", "caption=a red sphere", "--to",
                 "det,tok_depth@64", "--out", str(png), "--steps", "2"]) == 0
    assert png.stat().st_size > 0


def test_a_rerun_reuses_finished_stages(tiny_run):
    out, _ = tiny_run
    before = _mtimes(out / "data") | _mtimes(out / "model") | _mtimes(out / "train")
    lines = []
    Quickstart(out, TINY, progress=False, log=lines.append).run(stop_after="export")
    assert _mtimes(out / "data") | _mtimes(out / "model") | _mtimes(out / "train") == before
    assert sum("done earlier" in line and "reused" in line for line in lines) == 5


def test_an_interrupted_training_resumes_from_its_checkpoint(tiny_run, tmp_path, monkeypatch):
    """A run that died after its last checkpoint but before the stage was marked done resumes the trainer
    (which then has nothing left to do) instead of training again or refusing the checkpoints."""
    out = tmp_path / "copy"
    shutil.copytree(tiny_run[0], out)
    state = _state(out)
    for stage in ("train", "export"):
        del state["stages"][stage]
    (out / "stages.json").write_text(json.dumps(state))
    metrics = (out / "train" / "metrics.jsonl").read_text()
    calls = []
    import open4m.train

    real = open4m.train.train
    monkeypatch.setattr(open4m.train, "train", lambda c, resume=False: calls.append(resume) or real(c, resume))
    lines = []
    Quickstart(out, TINY, progress=False, log=lines.append).run(stop_after="train")
    assert calls == [True] and any("resuming the training" in line for line in lines)
    assert (out / "train" / "metrics.jsonl").read_text() == metrics
    assert _state(out)["stages"]["train"]["steps"] == 2


def test_trained_tokenizers_make_the_set_the_token_shards_use(tmp_path):
    from open4m.data.pretokenize import read_manifest
    from open4m.shipped import world_tokenizers_dir
    from open4m.tokenizer_set import TokenizerSet

    out = tmp_path / "q"
    settings = Settings(**{**TINY.to_dict(), "train_tokenizers": True, "tokenizer_steps": 2})
    Quickstart(out, settings, progress=False, log=lambda s: None).run(stop_after="tokenize")
    trained, shipped = TokenizerSet.load(out / "tokenizers" / "set"), TokenizerSet.load(world_tokenizers_dir())
    assert trained.modalities == shipped.modalities
    for name in trained.image:  # new image tokenizers, the shipped text tokenizer
        assert trained.sha256[name] != shipped.sha256[name]
    assert trained.sha256["caption@64"] == shipped.sha256["caption@64"]
    manifest = read_manifest(out / "data" / "tokens" / "train")
    assert manifest["sha256"] == trained.sha256
    assert json.loads((out / "tokenizers" / "depth" / "train_summary.json").read_text())
    assert _state(out)["parts"] == {f"tokenizer {m}": True for m in ("rgb", "depth", "normal", "semseg")}


def test_other_settings_are_refused_and_overwrite_starts_over(tmp_path):
    out = tmp_path / "q"
    Quickstart(out, TINY, progress=False, log=lambda s: None).run(stop_after="world")
    other = Settings(**{**TINY.to_dict(), "train_scenes": 16})
    with pytest.raises(FileExistsError, match=r"other settings \(train_scenes: 24 there, 16 now\).*--overwrite"):
        Quickstart(out, other, progress=False, log=lambda s: None)
    Quickstart(out, other, overwrite=True, progress=False, log=lambda s: None).run(stop_after="world")
    assert _state(out)["settings"]["train_scenes"] == 16
    assert _state(out)["stages"]["world"]["scenes"] == {"train": 16, "val": 8}


def test_a_corrupt_state_file_is_a_clear_error(tmp_path):
    (tmp_path / "stages.json").write_text("{not json")
    with pytest.raises(ValueError, match="stages.json is not valid JSON"):
        Quickstart(tmp_path, TINY)


# ------------------------------------------------------------------------------------------------ end to end
def _check_report(out):
    evaluation = pytest.importorskip("open4m.evaluation")
    from open4m.evaluation.tasks import METRICS

    text = (out / "report.md").read_text()
    results = evaluation.load_results(out / "eval" / "model")
    baseline = evaluation.load_results(out / "eval" / "untrained")
    assert {(r["task"], r["metric"]) for r in results["metrics"]} == {(m.task, m.name) for m in METRICS}
    for m in METRICS:
        assert f"| {m.task.replace('->', ' → ')} | {m.name} " in text
    for name in ("loss.png", "samples_rgb_to_all.png", "samples_caption_to_all.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG" and f"]({name})" in text
    return results, baseline, evaluation


def test_tiny_run_end_to_end_and_a_finished_run_is_left_alone(tmp_path):
    pytest.importorskip("open4m.evaluation")
    out = tmp_path / "q"
    run_quickstart(out, settings=TINY, progress=False)
    _check_report(out)
    before = _mtimes(out)
    lines = []
    Quickstart(out, TINY, progress=False, log=lines.append).run()
    assert _mtimes(out) == before and any("is complete" in line for line in lines)


@pytest.mark.slow
def test_fast_quickstart_beats_the_untrained_model(tmp_path):
    """What CI runs: `open4m quickstart --fast`; every metric reported, and the RGB->geometry/semseg predictions
    clearly better than the untrained model's. On 8 evaluation scenes the other metrics of a three-minute CPU
    model are noisy: in six runs 10 to 16 of the 18 beat the untrained model, 15 of 19 in a run with the
    box-refined semseg (more with more steps; --fast trains at least 900), never exact boxes (mAP@0.5 0) or object
    counts of caption->RGB images; issue 7 stays open for those."""
    pytest.importorskip("open4m.evaluation")
    out = tmp_path / "q"
    assert main(["quickstart", "--fast", "--out", str(out), "--workers", str(min(2, os.cpu_count() or 1)),
                 "--no-progress"]) == 0
    results, baseline, evaluation = _check_report(out)
    lagging = set(evaluation.not_better_than(results, baseline))
    learned = {"rgb->depth/abs_rel", "rgb->depth/delta1", "rgb->normal/angle_deg", "rgb->semseg/miou"}
    assert not learned & lagging, sorted(lagging)
    assert len(results["metrics"]) - len(lagging) >= 10, sorted(lagging)
