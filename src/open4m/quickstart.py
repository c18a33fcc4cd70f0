"""``open4m quickstart``: render the world, tokenize it, train a small 4M, evaluate it, write a report folder.

Stages, in order (each reuses what an earlier run of the same folder finished):

1. ``world``: raw world shards, ``OUT/data/world/{train,val}`` (:func:`open4m.data.world.write_world`);
2. ``tokenizers``: the shipped world tokenizer set, or with ``train_tokenizers`` image tokenizers trained with
   ``configs/tokenizers/*.yaml`` (:func:`open4m.vq.train.train_tokenizer`) saved as a set in ``OUT/tokenizers``;
3. ``tokenize``: token shards, ``OUT/data/tokens/{train,val}`` (:func:`open4m.data.pretokenize.pretokenize`);
4. ``train``: a few calibration steps in fp32 and (on a CPU with native bf16 units,
   :func:`open4m.runtime.native_bf16`) in bf16 autocast measure this machine, then the world recipe
   trains in the faster precision for the steps the budget leaves (:mod:`open4m.quickstart_plan`), checkpoints and
   ``loss.png`` in ``OUT/train`` (:func:`open4m.train.train`; an interrupted run resumes from its last checkpoint);
5. ``export``: ``OUT/model``: config.json + model.safetensors (float16, tied heads once) and the tokenizer set in
   ``OUT/model/tokenizers``, so ``open4m generate --model OUT/model`` works;
6. ``evaluate``: the exported model and the untrained initial model (same seed, same scenes) on held-out scenes,
   ``OUT/eval/{model,untrained}`` (:mod:`open4m.evaluation`);
7. ``samples``: ``OUT/samples_rgb_to_all.png`` and ``OUT/samples_caption_to_all.png``;
8. ``report``: ``OUT/report.md`` (:mod:`open4m.quickstart_report`).

``OUT/stages.json`` (written atomically after every stage) records the settings and each finished stage with its
seconds. A folder is never overwritten without ``overwrite``: a rerun with the same settings continues (or, when
finished, says so and changes nothing); other settings, or a non-empty folder that is not a quickstart run, are
refused. ``overwrite`` deletes a quickstart run's own files and starts again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from open4m import quickstart_plan as planning
from open4m.atomic import write_json_atomic
from open4m.quickstart_plan import Settings

FORMAT = "open4m-quickstart/1"
STATE_FILE = "stages.json"
STAGES = ("world", "tokenizers", "tokenize", "train", "export", "evaluate", "samples", "report")
OWN_ENTRIES = ("data", "tokenizers", "train", "calibrate", "model", "eval", "report.md", "loss.png",
               "samples_rgb_to_all.png", "samples_caption_to_all.png", STATE_FILE)
CALIBRATION_STEPS = 20
# Calibration steps left out of the median. Measured at the default size in bf16: steps 2-9 took 0.41 s, steps
# 10-80 0.57-0.58 s (the first steps use batches the loader prepared during start-up; afterwards its worker shares
# the 2 cores with training), and bf16's first steps also compile oneDNN kernels. A calibration over steps 4-9
# planned 4,173 steps at 0.39 s for a run whose steps then took 0.50-0.65 s.
CALIBRATION_WARMUP = 10
TOKENIZER_CONFIGS = {"rgb": "rgb_fsq.yaml", "depth": "depth.yaml", "normal": "normal.yaml", "semseg": "semseg.yaml"}


def evaluation_runner():
    """The evaluation package (``evaluate_model``, ``write_report``, ``format_table``, ``not_better_than``,
    ``load_results``); a clear error when this install has none yet."""
    try:
        from open4m import evaluation
    except ImportError as err:
        raise ValueError(f"the evaluate stage needs open4m.evaluation, which this install lacks ({err})") from None
    return evaluation


class Quickstart:
    """One quickstart run in the folder ``out`` (see the module docstring). ``log`` prints progress lines."""

    def __init__(self, out: str | Path, settings: Settings, workers: int = 1, overwrite: bool = False,
                 progress: bool = True, log: Callable[[str], None] = print) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"--workers must be a positive integer, got {workers!r}")
        self.out, self.settings, self.workers = Path(out), settings.validate(), workers
        self.progress, self.log = progress, log
        self.state = self._open(overwrite)

    # ------------------------------------------------------------------------------------------ the folder
    def _open(self, overwrite: bool) -> dict:
        out = self.out
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} exists and is not a folder")
        state_path = out / STATE_FILE
        if out.is_dir() and not state_path.is_file() and any(out.iterdir()):
            raise FileExistsError(f"{out} is not empty and holds no quickstart run ({STATE_FILE}); refusing to "
                                  "write into it (even with --overwrite); use an empty or new --out folder")
        if state_path.is_file():
            state = _read_state(state_path)
            state["settings"] = planning.with_defaults(state["settings"])  # runs from before a setting existed
            if overwrite:
                self.log(f"--overwrite: removing the quickstart run in {out}")
                for name in OWN_ENTRIES:
                    path = out / name
                    if path.is_dir():
                        shutil.rmtree(path)
                    elif path.exists():
                        path.unlink()
            elif state["settings"] != self.settings.to_dict():
                changed = sorted(k for k, v in self.settings.to_dict().items() if state["settings"].get(k) != v)
                details = ", ".join(f"{k}: {state['settings'].get(k)!r} there, {self.settings.to_dict()[k]!r} now"
                                    for k in changed)
                raise FileExistsError(f"{out} holds a quickstart run with other settings ({details}); pass "
                                      "--overwrite to replace it, or use another --out folder")
            else:
                return state
        try:
            out.mkdir(parents=True, exist_ok=True)
            state = {"format": FORMAT, "settings": self.settings.to_dict(), "stages": {}}
            write_json_atomic(state_path, state)
        except OSError as err:
            raise ValueError(f"cannot write the quickstart folder {out}: {err.strerror or err}") from None
        return state

    def _save(self) -> None:
        write_json_atomic(self.out / STATE_FILE, self.state)

    def done(self, stage: str) -> bool:
        return stage in self.state["stages"]

    @property
    def complete(self) -> bool:
        return all(self.done(s) for s in STAGES)

    def _finish(self, stage: str, seconds: float, **info) -> None:
        self.state["stages"][stage] = {"seconds": round(seconds, 2), **info}
        self._save()

    # ------------------------------------------------------------------------------------------ paths
    @property
    def raw(self) -> Path:
        return self.out / "data" / "world"

    @property
    def tokens(self) -> Path:
        return self.out / "data" / "tokens"

    @property
    def tokenizer_dir(self) -> Path:
        """The tokenizer set of this run (the shipped one unless it trains its own)."""
        if self.settings.train_tokenizers:
            return self.out / "tokenizers" / "set"
        from open4m.shipped import world_tokenizers_dir

        return world_tokenizers_dir()

    @property
    def model_dir(self) -> Path:
        return self.out / "model"

    # ------------------------------------------------------------------------------------------ the run
    def run(self, stop_after: str | None = None) -> Path:
        """Run every unfinished stage (up to and including ``stop_after``); returns ``OUT/report.md``."""
        if stop_after is not None and stop_after not in STAGES:
            raise ValueError(f"unknown stage {stop_after!r}; stages: {list(STAGES)}")
        if self.complete:
            self.log(f"the quickstart in {self.out} is complete ({self.out / 'report.md'}); nothing to do "
                     "(pass --overwrite to run it again)")
            return self.out / "report.md"
        from open4m.runtime import tune_cpu

        tune_cpu()  # before any stage starts torch threads: threads started earlier keep denormals slow
        self._print_plan()
        started = time.perf_counter()
        runners = {"world": self.stage_world, "tokenizers": self.stage_tokenizers, "tokenize": self.stage_tokenize,
                   "train": self.stage_train, "export": self.stage_export, "evaluate": self.stage_evaluate,
                   "samples": self.stage_samples, "report": self.stage_report}
        for number, stage in enumerate(STAGES, 1):
            if self.done(stage):
                self.log(f"[{number}/{len(STAGES)}] {stage}: done earlier "
                         f"({self.state['stages'][stage]['seconds']:.0f} s), reused")
            else:
                self.log(f"[{number}/{len(STAGES)}] {stage} ...")
                start = time.perf_counter()
                info = runners[stage]() or {}
                self._finish(stage, time.perf_counter() - start, **info)
                self.log(f"[{number}/{len(STAGES)}] {stage}: {time.perf_counter() - start:.1f} s")
            if stage == stop_after:
                break
        self.log(f"quickstart: {time.perf_counter() - started:.0f} s in this run")
        return self.out / "report.md"

    def _print_plan(self) -> None:
        s = self.settings
        estimate = self.state.setdefault("estimate", planning.estimate(s, self.workers))
        self._save()
        steps = f"{s.steps} steps" if s.steps else "steps sized to the budget after calibration"
        self.log(f"quickstart plan ({s.minutes:g} min budget): {s.train_scenes} train + {s.val_scenes} val world "
                 f"scenes; 4M tiny_gelu dim {s.dim}, {s.depth}+{s.depth} blocks, batch {s.batch_size}, {steps}; "
                 f"evaluation on {s.eval_scenes} held-out scenes (model and untrained)")
        for stage in STAGES:
            note = " (done)" if self.done(stage) else ""
            self.log(f"  {stage:10s} ~{estimate[stage]:6.0f} s{note}")
        self.log(f"  {'total':10s} ~{sum(estimate.values()):6.0f} s")

    # ------------------------------------------------------------------------------------------ stages
    def stage_world(self) -> dict:
        from open4m.data.world import write_world

        s, counts = self.settings, {}
        for split, num in (("train", s.train_scenes), ("val", s.val_scenes)):
            report = write_world(self.raw / split, num, split=split, workers=self.workers,
                                 shard_size=min(planning.SHARD_SIZE, num), progress=self.progress)
            counts[split] = report.rendered + report.skipped
        return {"scenes": counts}

    def stage_tokenizers(self) -> dict:
        if not self.settings.train_tokenizers:
            return {"set": str(self.tokenizer_dir), "trained": False}
        from open4m.shipped import world_tokenizers_dir
        from open4m.tokenizer_set import TokenizerSet
        from open4m.vq.samples import world_shard_samples
        from open4m.vq.tokenizer import ImageTokenizer
        from open4m.vq.train import load_config, train_tokenizer

        image = {}
        for modality, file in TOKENIZER_CONFIGS.items():
            config_path = planning.configs_dir() / "tokenizers" / file
            folder = self.out / "tokenizers" / modality
            marker = f"tokenizer {modality}"
            if marker in self.state.get("parts", {}):
                tokenizer = ImageTokenizer.load(folder)
            else:
                config, train, _ = load_config(config_path, modality)
                if self.settings.tokenizer_steps is not None:
                    train = dataclasses.replace(train, steps=self.settings.tokenizer_steps,
                                                warmup_steps=min(train.warmup_steps, self.settings.tokenizer_steps))
                self.log(f"  training the {modality} tokenizer ({config_path.name}, {train.steps} steps)")
                resume = (folder / "checkpoint.safetensors").is_file()
                tokenizer = train_tokenizer(config, world_shard_samples(self.raw / "train"), folder, train=train,
                                            resume=resume, progress=self.progress)
                self.state.setdefault("parts", {})[marker] = True
                self._save()
            image[tokenizer.modality] = tokenizer
        shipped = TokenizerSet.load(world_tokenizers_dir(), only=["caption@64", "det@64"])
        TokenizerSet(image, shipped.text, shipped.text_modalities).save(self.tokenizer_dir, half=True, overwrite=True)
        return {"set": str(self.tokenizer_dir), "trained": True}

    def stage_tokenize(self) -> dict:
        from open4m.data.pretokenize import pretokenize

        seconds = {}
        for split in ("train", "val"):
            report = pretokenize(self.raw / split, self.tokens / split, tokenizers=self.tokenizer_dir,
                                 workers=self.workers, progress=self.progress)
            seconds[split] = round(report.seconds, 2)
        return {"seconds_per_split": seconds}

    def _config(self, steps: int, out_dir: Path, dtype: str | None = None):
        """The training config; ``dtype`` defaults to the planned precision (fp32 for runs planned before there
        was a choice)."""
        dtype = dtype or self.state.get("train_plan", {}).get("dtype", "fp32")
        return planning.train_config(self.settings, self.tokens / "train", self.tokens / "val", self.tokenizer_dir,
                                     out_dir, steps, dtype)

    def stage_train(self) -> dict:
        from open4m import train_state
        from open4m.train import train

        plan = self.state.get("train_plan")
        if plan is None:
            plan = self._plan_training()
            self.state["train_plan"] = plan
            self._save()
        config = self._config(plan["steps"], self.out / "train")
        resume = train_state.latest_checkpoint(config.out_dir) is not None
        if resume:
            self.log(f"  resuming the training in {config.out_dir}")
        config = dataclasses.replace(config, progress=self.progress)
        result = train(config, resume=resume)
        losses = [json.loads(line) for line in (self.out / "train" / "metrics.jsonl").read_text().splitlines()]
        train_losses = [r["loss"] for r in losses if "loss" in r]
        val = [r["val_loss"] for r in losses if "val_loss" in r]
        if (self.out / "train" / "loss.png").is_file():
            shutil.copyfile(self.out / "train" / "loss.png", self.out / "loss.png")
        return {"steps": plan["steps"], "checkpoint": str(result["checkpoint"]), "first_loss": train_losses[0],
                "last_loss": train_losses[-1], "val_loss": val[-1] if val else None}

    def _plan_training(self) -> dict:
        """Training steps and precision: fixed by the settings, or a calibration run per candidate precision
        measures seconds per step; the faster precision is chosen and the steps fill what the budget leaves after
        the later stages' estimates."""
        s = self.settings
        if s.steps is not None:
            return {"steps": s.steps, "calibrated": False, "dtype": "fp32" if s.dtype == "auto" else s.dtype}
        from open4m.runtime import native_bf16

        candidates = ("fp32", "bf16") if s.dtype == "auto" else (s.dtype,)
        if s.dtype == "auto" and not native_bf16():
            candidates = ("fp32",)
            self.log("  bf16 autocast not calibrated: this CPU has no native bf16 units (it would be emulated, "
                     "~10x slower)")
        measured = {dtype: self._calibrate(dtype) for dtype in candidates}
        dtype = planning.choose_dtype({k: v["seconds_per_step"] for k, v in measured.items()})
        seconds_per_step, startup = measured[dtype]["seconds_per_step"], measured[dtype]["startup_s"]
        estimate = self.state["estimate"]
        spent = sum(v["seconds"] for k, v in self.state["stages"].items() if k != "tokenizers")
        spent += sum(v["wall_s"] for v in measured.values())
        later = sum(estimate[k] for k in STAGES[STAGES.index("train") + 1:])
        seconds = s.minutes * 60 - spent - later
        steps = planning.steps_for(seconds, seconds_per_step, startup, s.min_steps)
        speeds = ", ".join(f"{k} {v['seconds_per_step']:.2f} s/step" for k, v in measured.items())
        floor = f" (at least {s.min_steps})" if steps == s.min_steps else ""
        self.log(f"  calibration: {speeds} -> {dtype}; {startup:.1f} s startup; {seconds:.0f} s left for "
                 f"training -> {steps} steps{floor} (~{steps * seconds_per_step / 60:.1f} min)")
        return {"steps": steps, "calibrated": True, "dtype": dtype, "seconds_per_step": round(seconds_per_step, 4),
                "calibration_s_per_step": {k: round(v["seconds_per_step"], 4) for k, v in measured.items()},
                "startup_s": round(startup, 2), "train_budget_s": round(seconds, 1)}

    def _calibrate(self, dtype: str) -> dict:
        """A short training run in ``dtype``: its median seconds per step after warm-up, the startup seconds
        (loading, building) and its wall time."""
        from open4m.train import train

        s = self.settings
        calibrate = self.out / "calibrate"
        shutil.rmtree(calibrate, ignore_errors=True)
        config = dataclasses.replace(self._config(CALIBRATION_STEPS, calibrate, dtype), warmup_steps=0, save_every=0,
                                     val_data=[], plot=False, progress=False)
        self.log(f"  calibrating: {CALIBRATION_STEPS} training steps in {dtype}")
        start = time.perf_counter()
        train(config)
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in (calibrate / "metrics.jsonl").read_text().splitlines()]
        tokens = s.batch_size * 256
        seconds_per_step = statistics.median(tokens / r["tokens_per_s"] for r in records[CALIBRATION_WARMUP:])
        startup = max(0.0, wall - sum(tokens / r["tokens_per_s"] for r in records))
        shutil.rmtree(calibrate, ignore_errors=True)
        return {"seconds_per_step": seconds_per_step, "startup_s": startup, "wall_s": wall}

    def stage_export(self) -> dict:
        import torch

        from open4m import train_state
        from open4m.model import from_pretrained, save_pretrained

        checkpoint = train_state.latest_checkpoint(self.out / "train")
        if checkpoint is None:
            raise FileNotFoundError(f"no training checkpoint in {self.out / 'train'}; the train stage did not finish")
        model = from_pretrained(checkpoint)
        save_pretrained(model, self.model_dir, dtype=torch.float16, compact=True, overwrite=True)
        target = self.model_dir / "tokenizers"
        tmp = self.model_dir / ".tokenizers.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(self.tokenizer_dir, tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        params = sum(p.numel() for p in model.parameters())
        size = sum(f.stat().st_size for f in self.model_dir.rglob("*") if f.is_file())
        return {"parameters": params, "bytes": size}

    def _untrained_model(self):
        from open4m.train import build_model, seed_everything

        config = self._config(self.state["train_plan"]["steps"], self.out / "train")
        seed_everything(config.seed)  # the trainer seeds the same way before building: the initial weights
        return build_model(config, log=lambda *a: None).eval()

    def stage_evaluate(self) -> dict:
        from open4m.model import from_pretrained
        from open4m.tokenizer_set import TokenizerSet
        from open4m.vq.samples import world_shard_samples

        evaluation, s = evaluation_runner(), self.settings
        tokenizers = TokenizerSet.load(self.model_dir / "tokenizers")
        models = {"untrained": self._untrained_model, "model": lambda: from_pretrained(self.model_dir).eval()}
        for name, make in models.items():
            folder = self.out / "eval" / name
            if (folder / "results.json").is_file():
                continue
            self.log(f"  evaluating the {'trained' if name == 'model' else name} model on {s.eval_scenes} scenes")
            # RGB unguided at the prediction steps: the eval's guidance default was measured on the shipped model,
            # not on a minutes-old one (with it, `--fast` beat the untrained model on 8 of 18 metrics, not 10+).
            results = evaluation.evaluate_model(make(), tokenizers, world_shard_samples(self.raw / "val"),
                                                s.eval_scenes, s.eval_batch_size, steps=s.eval_steps, seed=s.seed,
                                                rgb_steps=s.eval_steps, rgb_guidance=1.0, progress=self.progress)
            baseline = evaluation.load_results(self.out / "eval" / "untrained") if name == "model" else None
            evaluation.write_report(results, folder, baseline=baseline, overwrite=True)
        results = evaluation.load_results(self.out / "eval" / "model")
        baseline = evaluation.load_results(self.out / "eval" / "untrained")
        return {"not_better_than_untrained": evaluation.not_better_than(results, baseline)}

    def stage_samples(self) -> dict:
        from open4m.quickstart_report import write_samples

        return write_samples(self.model_dir, self.raw / "val", self.out, self.settings)

    def stage_report(self) -> dict:
        from open4m.quickstart_report import write_report

        write_report(self.out, self.state, evaluation_runner())
        return {}


def _read_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); remove the folder or pass --overwrite") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("stages"), dict):
        raise ValueError(f"{path} is not an {FORMAT} state file; remove the folder or pass --overwrite")
    return state


def run_quickstart(out: str | Path = "runs/quickstart", minutes: float | None = None, fast: bool = False,
                   train_tokenizers: bool = False, overwrite: bool = False, workers: int = 1,
                   progress: bool = True, settings: Settings | None = None, stop_after: str | None = None,
                   dtype: str = "auto") -> Path:
    """``open4m quickstart``: plan the run for the budget (or use ``settings``), run every unfinished stage of
    the folder ``out`` (up to ``stop_after``) and return the path of ``report.md``.

    Raises ValueError / FileExistsError with a clear message for a bad budget or worker count, an unwritable
    or foreign folder, or a folder holding a run with other settings (unless ``overwrite``).
    """
    settings = settings or planning.plan_settings(minutes, fast, train_tokenizers, dtype)
    return Quickstart(out, settings, workers=workers, overwrite=overwrite, progress=progress).run(stop_after)
