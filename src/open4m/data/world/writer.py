"""Writing many scenes: WebDataset shards or the official folder layout, in parallel, resumable.

Layouts under the output folder ``out``:

- ``wds``: ``out/world-<split>-<shard:06d>.tar``; shard ``i`` holds scenes ``i*shard_size ..`` of the split,
  one sample per scene keyed by its seed (10 digits), members as in :mod:`open4m.data.world.sample`.
- ``folders`` (OFFICIAL-4M-SPEC §4.1, ``root/<modality>/<split>/<id>.<ext>``):
  ``out/<modality>/<split>/<seed:010d>.<ext>``, one file per modality and scene.

``out/world.json`` records the config, layout and shard size. A second run into the same folder must
use the same settings (else ValueError) and only renders what is missing: every file is written to a
hidden temporary name and renamed into place when complete, so an interrupted run leaves no half-written
shard or file under a final name and simply continues. Work is split into jobs of ``shard_size`` scenes
run by ``workers`` spawned processes.
"""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

from open4m.data.shards import encode_member, remove_partial_shards, shard_keys, write_bytes_atomic, write_shard
from open4m.data.world.config import SPLIT_SEEDS, WorldConfig, seed_for
from open4m.data.world.sample import EXTENSIONS, MODALITIES, encode_sample, render_scene

LAYOUTS = ("wds", "folders")
MANIFEST = "world.json"
MAX_WORKERS = 256


@dataclass(frozen=True)
class WriteReport:
    """What a :func:`write_world` call did: scenes rendered now, scenes found already done, files produced."""

    rendered: int
    skipped: int
    paths: list[Path]


def scene_key(seed: int) -> str:
    """The sample key / file stem of a scene: its seed, zero-padded to 10 digits."""
    return f"{seed:010d}"


def shard_path(out: Path, split: str, index: int) -> Path:
    """Path of shard ``index`` of ``split`` in the wds layout."""
    return out / f"world-{split}-{index:06d}.tar"


def _check_manifest(out: Path, settings: dict) -> None:
    manifest = out / MANIFEST
    if manifest.exists():
        previous = json.loads(manifest.read_text())
        changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
        if changed:
            details = "; ".join(f"{k}: {previous.get(k)!r} there, {settings.get(k)!r} now" for k in changed)
            raise ValueError(f"{out} holds a world written with other settings ({details}); "
                             "use another --out folder or the same settings")
    else:
        ours = list(out.glob("world-*.tar")) + [out / name for name in MODALITIES if (out / name).exists()]
        if ours:
            raise ValueError(f"{out} already holds {ours[0].name} but no {MANIFEST}; refusing to overwrite files "
                             "this writer did not make; use an empty or new --out folder")
        write_bytes_atomic(manifest, json.dumps(settings, indent=2, sort_keys=True).encode())


def _render_wds_job(job: tuple) -> tuple[int, int, str]:
    """Worker: write one shard unless it is already complete; returns (rendered, skipped, path)."""
    out, split, start, stop, shard_index, config_dict = job
    config = WorldConfig.from_dict(config_dict)
    path = shard_path(Path(out), split, shard_index)
    seeds = [seed_for(split, i) for i in range(start, stop)]
    expected = [scene_key(s) for s in seeds]
    if path.exists():
        try:
            if shard_keys(path) == expected:
                return 0, len(seeds), str(path)
        except ValueError:
            pass  # damaged by something else than us: it is regenerated below
    samples = [{"__key__": key, **encode_sample(render_scene(seed, config))} for key, seed in zip(expected, seeds,
                                                                                                  strict=True)]
    write_shard(path, samples, overwrite=True)
    return len(seeds), 0, str(path)


def _render_folders_job(job: tuple) -> tuple[int, int, str]:
    """Worker: write every modality file of scenes ``start..stop`` that are not complete yet."""
    out, split, start, stop, _, config_dict = job
    config = WorldConfig.from_dict(config_dict)
    rendered = skipped = 0
    for index in range(start, stop):
        seed = seed_for(split, index)
        key = scene_key(seed)
        paths = {name: Path(out) / name / split / f"{key}.{EXTENSIONS[name]}" for name in MODALITIES}
        if all(p.exists() for p in paths.values()):
            skipped += 1
            continue
        entries = encode_sample(render_scene(seed, config))
        for name, path in paths.items():
            ext = EXTENSIONS[name]
            write_bytes_atomic(path, encode_member(ext, entries[f"{name}.{ext}"]))
        rendered += 1
    return rendered, skipped, str(Path(out))


def write_world(out: str | Path, num: int, split: str = "train", config: WorldConfig | None = None,
                workers: int = 1, layout: str = "wds", shard_size: int = 500, progress: bool = False) -> WriteReport:
    """Render scenes ``0..num-1`` of ``split`` into ``out`` (see the module docstring); resumable.

    Raises ValueError for bad arguments, an ``out`` that is a file, or a folder written with other settings.
    """
    config = (config or WorldConfig()).validate()
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEEDS)}")
    if not isinstance(num, int) or num < 0:
        raise ValueError(f"number of scenes must be a non-negative integer, got {num!r}")
    if num:
        seed_for(split, num - 1)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {list(LAYOUTS)}")
    if not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be an integer in 1..{MAX_WORKERS}, got {workers!r}")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    _check_manifest(out, {**config.to_dict(), "layout": layout, "shard_size": shard_size})
    remove_partial_shards(out)
    if layout == "folders":
        for name in MODALITIES:
            (out / name / split).mkdir(parents=True, exist_ok=True)
            remove_partial_shards(out / name / split)
    jobs = [(str(out), split, start, min(start + shard_size, num), start // shard_size, config.to_dict())
            for start in range(0, num, shard_size)]
    run = _render_wds_job if layout == "wds" else _render_folders_job
    results = []
    if workers == 1 or len(jobs) <= 1:
        results = [run(job) for job in _progress(jobs, progress)]
    else:
        with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            results = list(_progress(pool.imap_unordered(run, jobs), progress, total=len(jobs)))
    paths = sorted({Path(p) for _, _, p in results})
    return WriteReport(rendered=sum(r for r, _, _ in results), skipped=sum(s for _, s, _ in results), paths=paths)


def _progress(iterable, enabled: bool, total: int | None = None):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, unit="shard", desc="world")
