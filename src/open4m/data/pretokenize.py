"""Pretokenization: raw world shards → token shards the training loader reads (``open4m tokenize``).

Input: a folder of raw world shards (``open4m world render``, members as in :mod:`open4m.data.world.sample`) and a
tokenizer set (:class:`open4m.tokenizer_set.TokenizerSet`, by default the shipped world set). Output: one token
shard per raw shard, same file name, same sample keys in the same order, written atomically. Members per sample,
named by registry modality so :func:`open4m.data.loader.decode_sample` maps them to modalities (S = the image
tokenizers' image size, 64 for the world):

- ``rgb@S.png``: the raw uint8 RGB image ``(S, S, 3)``, the model's pixel input (the loader normalises it with
  :func:`open4m.pixels.to_model_pixels`);
- ``tok_<m>@S.npy`` for each image tokenizer of the set (rgb, depth, normal, semseg, ...): int16 token ids
  ``(h, w)`` (``(16, 16)`` for the world): ``set.image["tok_<m>@S"].encode`` of the shard's images in batches of
  ``batch_size`` (a lone image can round a near-tie of the nearest code differently);
- for each text modality of the set: ``caption@S.txt`` (the raw caption), ``det@S.json`` (the raw box list),
  likewise ``color_palette@S.json`` / ``metadata@S.json``; the loader tokenizes them with the set's text tokenizer.

``OUT/manifest.json`` (written atomically, rewritten after every finished shard)::

    {"format": "open4m-token-shards/1", "source": "/abs/raw", "tokenizers": "/abs/set",
     "sha256": {"tok_rgb@64": "...", ..., "caption@64": "...", "det@64": "..."},   # TokenizerSet.sha256
     "members": ["caption@64.txt", "det@64.json", "rgb@64.png", "tok_depth@64.npy", ...],
     "shards": {"world-train-000000.tar": {"samples": 500, "sha256": "<token shard file>",
                                           "source_sha256": "<raw shard file>"}, ...}}

Resuming: a shard is skipped when its final file exists and either its manifest entry matches (both file hashes)
or, not listed (a run stopped between writing it and updating the manifest), its tar headers show the source's
keys in order with exactly the expected members; anything else is (re)written and leftover temporaries are
removed. The manifest is written before any shard, so an unlisted shard under a matching manifest was made with
these tokenizers. A manifest whose tokenizer hashes, members or source differ refuses the run unless
``overwrite`` (which then deletes and rewrites every token shard named like a source shard); so does an output
folder holding shards but no manifest; one holding shards that are not in the source is always refused (remove
them or pick another folder).
"""

from __future__ import annotations

import json
import multiprocessing
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from open4m import modalities
from open4m.atomic import read_json
from open4m.data.shards import (
    iter_shard,
    list_shards,
    remove_partial_shards,
    shard_keys,
    write_bytes_atomic,
    write_shard,
)
from open4m.data.world.sample import EXTENSIONS
from open4m.tokenizer_set import TokenizerSet, file_sha256

FORMAT = "open4m-token-shards/1"
MANIFEST = "manifest.json"
TOKEN_DTYPE = np.int16


@dataclass(frozen=True)
class Plan:
    """What to write per sample: ``pixels`` (pixel modality name or None), ``image`` (token modality → raw
    world modality), ``text`` (text modality → raw world modality)."""

    pixels: str | None
    image: dict[str, str]
    text: dict[str, str]

    @property
    def members(self) -> list[str]:
        """The member extensions of every token-shard sample, sorted (the order write_shard stores them in)."""
        out = [f"{name}.npy" for name in self.image]
        out += [f"{name}.{EXTENSIONS[raw]}" for name, raw in self.text.items()]
        if self.pixels:
            out.append(f"{self.pixels}.png")
        return sorted(out)

    @property
    def raw_members(self) -> dict[str, str]:
        """Raw world member (``rgb.png``) → the output modality it feeds (for error messages)."""
        out = {f"{raw}.{EXTENSIONS[raw]}": name for name, raw in self.image.items()}
        out.update({f"{raw}.{EXTENSIONS[raw]}": name for name, raw in self.text.items()})
        if self.pixels:
            out["rgb.png"] = self.pixels
        return out


@dataclass(frozen=True)
class TokenizeReport:
    """What a :func:`pretokenize` call did: shards written now / found complete, samples written, seconds."""

    written: int
    skipped: int
    samples: int
    seconds: float
    out: Path


def plan_for(tokenizers: TokenizerSet) -> Plan:
    """The members a token shard gets from ``tokenizers`` (see the module docstring)."""
    image = {name: tok.config.modality for name, tok in tokenizers.image.items()}
    sizes = {tok.config.image_size for tok in tokenizers.image.values()}
    if len(sizes) > 1:
        raise ValueError(f"the tokenizer set's image tokenizers have different image sizes {sorted(sizes)}; "
                         "token shards need one resolution")
    text = {}
    for name in tokenizers.text_modalities:
        raw = name.split("@")[0]
        if raw not in EXTENSIONS:
            raise ValueError(f"text modality {name!r}: the world has no raw modality {raw!r}")
        text[name] = raw
    pixels = None
    if sizes:
        name = f"rgb@{sizes.pop()}"
        if name in modalities.names() and modalities.get(name).kind == "pixels":
            pixels = name
    if not image and not text:
        raise ValueError("the tokenizer set holds no image or text tokenizer")
    return Plan(pixels, image, text)


def tokenize_samples(entries: list[dict], tokenizers: TokenizerSet, plan: Plan, where: str) -> list[dict]:
    """Raw shard samples (``iter_shard`` dicts) → token-shard samples, image encodes batched over the list.

    Raises ValueError naming ``where``, the sample key and the modality when a raw member is missing or bad.
    """
    for entry in entries:
        for member, name in plan.raw_members.items():
            if member not in entry:
                raise ValueError(f"{where}: sample {entry['__key__']!r} lacks {member} (needed for {name}); "
                                 f"it has {sorted(k for k in entry if k != '__key__')}")
    out = [{"__key__": entry["__key__"]} for entry in entries]
    if not entries:
        return out
    for name, raw in plan.image.items():
        stack = np.stack([_raw_image(entry, raw) for entry in entries])
        try:
            tokens = tokenizers.image[name].encode(stack)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        for sample, grid in zip(out, tokens.astype(TOKEN_DTYPE), strict=True):
            sample[f"{name}.npy"] = grid
    for name, raw in plan.text.items():
        member = f"{raw}.{EXTENSIONS[raw]}"
        for sample, entry in zip(out, entries, strict=True):
            sample[f"{name}.{EXTENSIONS[raw]}"] = entry[member]
    if plan.pixels:
        for sample, entry in zip(out, entries, strict=True):
            sample[f"{plan.pixels}.png"] = entry["rgb.png"]
    return out


def _raw_image(entry: dict, raw: str) -> np.ndarray:
    value = np.asarray(entry[f"{raw}.{EXTENSIONS[raw]}"])
    return value.astype(np.float32) if value.dtype == np.float16 else value  # normals are stored as float16


# --- workers -----------------------------------------------------------------------------------------------

_WORKER: dict = {}


def _init_worker(tokenizers: str | TokenizerSet, device: str, batch_size: int) -> None:
    """Per process: one torch thread, the set (loaded once from its folder) with its image tokenizers on
    ``device`` encoding ``batch_size`` images per forward."""
    torch.set_num_threads(1)
    if not isinstance(tokenizers, TokenizerSet):
        tokenizers = TokenizerSet.load(tokenizers)
    for tokenizer in tokenizers.image.values():
        tokenizer.model.to(device)
        tokenizer.batch_size = batch_size
    _WORKER.update(tokenizers=tokenizers, plan=plan_for(tokenizers))


def _tokenize_shard(job: tuple[str, str]) -> tuple[str, dict]:
    """Worker: tokenize raw shard ``source`` into ``target``; returns (shard name, its manifest entry)."""
    source, target = job
    entries = list(iter_shard(source))
    samples = tokenize_samples(entries, _WORKER["tokenizers"], _WORKER["plan"], where=f"shard {source}")
    write_shard(target, samples, overwrite=True)
    return Path(target).name, _shard_entry(Path(source), Path(target), len(samples))


def _shard_entry(source: Path, target: Path, samples: int) -> dict:
    return {"samples": samples, "sha256": file_sha256(target), "source_sha256": file_sha256(source)}


# --- the run -----------------------------------------------------------------------------------------------


def pretokenize(data: str | Path, out: str | Path, tokenizers: str | Path | None = None, workers: int = 1,
                device: str = "cpu", batch_size: int = 64, overwrite: bool = False,
                progress: bool = False) -> TokenizeReport:
    """Tokenize every raw world shard in ``data`` into ``out`` (see the module docstring); resumable.

    ``workers`` processes (each loads the set once and uses one torch thread; 1: in this process, also with one
    thread so results do not depend on the worker count), ``batch_size`` images per encoder forward.
    Raises FileNotFoundError / ValueError naming the folder, shard, sample or modality at fault.
    """
    start = time.perf_counter()
    data, out = Path(data).resolve(), Path(out).resolve()
    if not data.is_dir():
        raise FileNotFoundError(f"raw data folder {data} does not exist")
    sources = list_shards(data)
    if not sources:
        raise ValueError(f"no raw shards (*.tar) in {data}")
    if tokenizers is None:
        from open4m.shipped import world_tokenizers_dir

        tokenizers = world_tokenizers_dir()
    tokenizers = Path(tokenizers).resolve()
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    _check_device(device)
    tokenizer_set = TokenizerSet.load(tokenizers)
    plan = plan_for(tokenizer_set)
    sha = {name: tokenizer_set.sha256.get(name) for name in [*plan.image, *plan.text]}
    if missing := [name for name, value in sha.items() if not value]:
        raise ValueError(f"tokenizer set {tokenizers}: its manifest has no sha256 for {missing}")
    if out == data:
        raise ValueError(f"the output folder {out} is the raw data folder; token shards need their own folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT, "source": str(data), "tokenizers": str(tokenizers), "sha256": sha,
                "members": plan.members, "shards": {}}
    previous = _check_existing(out, manifest, {p.name for p in sources}, overwrite)
    remove_partial_shards(out)
    if previous is None:  # a fresh start (or --overwrite): shards under our names are replaced, none adopted
        for source in sources:
            (out / source.name).unlink(missing_ok=True)
    manifest["shards"] = previous or {}
    _write_manifest(out, manifest)
    jobs = []
    for source in sources:
        if _is_complete(source, out / source.name, manifest["shards"].get(source.name), plan.members):
            if source.name not in manifest["shards"]:
                manifest["shards"][source.name] = _shard_entry(source, out / source.name, len(shard_keys(source)))
        else:
            manifest["shards"].pop(source.name, None)
            jobs.append((str(source), str(out / source.name)))
    _write_manifest(out, manifest)
    samples = 0
    for name, entry in _run_jobs(jobs, tokenizer_set, str(tokenizers), device, batch_size, workers, progress):
        manifest["shards"][name] = entry
        _write_manifest(out, manifest)
        samples += entry["samples"]
    return TokenizeReport(written=len(jobs), skipped=len(sources) - len(jobs), samples=samples,
                          seconds=time.perf_counter() - start, out=out)


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a token-shard folder (see the module docstring), e.g. to check a model's tokenizer hashes
    against ``manifest["sha256"]``. Raises FileNotFoundError / ValueError naming the file."""
    path = Path(folder) / MANIFEST
    manifest = read_json(path, f"{folder} holds no {MANIFEST}; it was not written by `open4m tokenize`")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not an {FORMAT} manifest")
    return manifest


def _check_device(device: str) -> None:
    try:
        kind = torch.device(device).type
    except RuntimeError as err:
        raise ValueError(f"device {device!r} is not a torch device: {err}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine")


def _check_existing(out: Path, manifest: dict, source_names: set[str], overwrite: bool) -> dict | None:
    """The finished-shard table of a matching earlier run, or None for a fresh start (no manifest, or a different
    one and ``overwrite``); refuses output this run must not mix with (see the module docstring)."""
    existing = {p.name for p in list_shards(out)}
    strangers = sorted(existing - source_names)
    if strangers:
        raise ValueError(f"{out} holds shards that are not in the source {manifest['source']}: {strangers[:5]}"
                         f"{' ...' if len(strangers) > 5 else ''}; remove them or use another output folder")
    if not (out / MANIFEST).exists():
        if existing and not overwrite:
            raise ValueError(f"{out} holds shards ({sorted(existing)[0]}, ...) but no {MANIFEST}; refusing to "
                             "overwrite files this tool did not make; pass --overwrite or use another folder")
        return None
    previous = read_manifest(out)
    changed = [key for key in ("sha256", "members", "source") if previous.get(key) != manifest[key]]
    if not changed:
        return dict(previous.get("shards", {}))
    if overwrite:
        return None
    details = []
    if "sha256" in changed:
        old, new = previous.get("sha256") or {}, manifest["sha256"]
        differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        details.append(f"tokenizer hashes differ for {differ} (there: {previous.get('tokenizers')}, "
                       f"now: {manifest['tokenizers']})")
    if "members" in changed:
        details.append(f"members differ (there: {previous.get('members')}, now: {manifest['members']})")
    if "source" in changed:
        details.append(f"source differs (there: {previous.get('source')}, now: {manifest['source']})")
    raise ValueError(f"{out} holds token shards made differently: {'; '.join(details)}; pass --overwrite to "
                     "re-tokenize everything, or use another output folder")


def _is_complete(source: Path, target: Path, listed: dict | None, members: list[str]) -> bool:
    """True when ``target`` is a finished token shard of ``source`` (manifest entry, else its tar headers)."""
    if not target.is_file():
        return False
    if listed:
        return listed.get("sha256") == file_sha256(target) and listed.get("source_sha256") == file_sha256(source)
    try:
        with tarfile.open(target, mode="r") as tar:
            names = [info.name for info in tar if info.isfile()]
    except (tarfile.TarError, EOFError, OSError):
        return False
    try:
        keys = shard_keys(source)
        expected = [f"{key}.{member}" for key in keys for member in members]
        return names == expected and shard_keys(target) == keys
    except ValueError:
        return False


def _run_jobs(jobs: list[tuple[str, str]], loaded: TokenizerSet, folder: str, device: str, batch_size: int,
              workers: int, progress: bool) -> Iterator[tuple[str, dict]]:
    """Tokenize ``jobs`` in this process with the ``loaded`` set, or in ``workers`` spawned processes that each
    load the set from ``folder``; yields (shard name, manifest entry) as shards finish."""
    if not jobs:
        return
    if workers == 1 or len(jobs) == 1:
        threads = torch.get_num_threads()
        try:
            _init_worker(loaded, device, batch_size)
            yield from _progress(map(_tokenize_shard, jobs), progress, len(jobs))
        finally:
            torch.set_num_threads(threads)
            _WORKER.clear()
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, len(jobs)), initializer=_init_worker,
                      initargs=(folder, device, batch_size)) as pool:
        yield from _progress(pool.imap_unordered(_tokenize_shard, jobs), progress, len(jobs))


def _progress(items, enabled: bool, total: int):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc="tokenize", unit="shard")


def _write_manifest(out: Path, manifest: dict) -> None:
    write_bytes_atomic(out / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
