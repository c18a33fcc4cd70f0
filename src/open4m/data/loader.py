"""Token shards → samples → masked batches, with a data position that can be saved and restored exactly.

Shards are WebDataset tars (:func:`open4m.data.shards.write_shard`): per sample a ``__key__`` and one
member per modality, ``<modality>.npy`` (image tokens ``(N,)`` / ``(h, w)`` or 1-D sequence ids without
EOS), ``<modality>.txt`` (raw text, tokenised by masking's text tokenizer) or ``<modality>.json``
(boxes / palette / metadata, turned into text by :func:`open4m.sequences.to_text`). Pixel and embedding
modalities (inputs only) are float ``.npy`` arrays, ``(C, H, W)`` and ``(L, D)``; a pixel modality may also be
a uint8 RGB ``.png`` (as :mod:`open4m.data.pretokenize` writes it), normalised by :func:`open4m.pixels.to_model_pixels`.

Determinism and the data position (what a checkpoint stores, what ``--resume`` restores):

- A *reader* is one (rank, worker) pair: ``reader = rank * num_workers + worker``, ``R = world * num_workers``.
- Epoch ``e`` of dataset ``d`` visits its shards in the order ``permutation(seed, d, e)``. With at least
  ``R`` shards, reader ``r`` reads the shards ``order[r::R]``; with fewer, every reader reads all shards and
  keeps the samples whose running index ``i`` has ``i % R == r``. Either way no sample is seen twice per epoch.
- Each reader shuffles its samples through a buffer (``shuffle_buffer`` samples) with its own
  ``rng(seed, d, e, r)``. A reader loops over epochs forever: a worker never runs dry.
- Batch ``j`` of a reader draws, with ``rng(seed, rank, worker, j)``, the dataset of each sample (the mixture
  weights) and then its masks (:meth:`UnifiedMasking.mask_batch`).
- The position of a reader is ``{"batch": j, "streams": [[epoch, samples taken this epoch], ...]}`` (one
  stream per dataset). Each batch carries the position after it, so the trainer knows exactly what it
  consumed even though workers prefetch. Restoring replays the current epoch of each stream up to
  that count (reading, not masking): at most one epoch of reading per dataset.
- ``torch.utils.data.DataLoader`` takes batches from its workers round-robin, so global batch ``n`` comes
  from worker ``n % W``; after a resume at batch ``n`` the workers' roles are rotated by ``n`` so the order
  continues unchanged. Exact resuming needs the same ``world``, ``num_workers``, shard lists and seed.

A corrupt or truncated shard is reported (a warning) and skipped; :class:`ReadErrors` counts them.
"""

from __future__ import annotations

import dataclasses
import tarfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from open4m.data.shards import decode_member, iter_shard, list_shards, shard_keys
from open4m.masking import UnifiedMasking
from open4m.mixtures import MaskingConfig
from open4m.modalities import get as get_modality
from open4m.pixels import to_model_pixels
from open4m.sequences import to_text

POSITION_KEY = "__position__"


@dataclasses.dataclass
class DatasetSpec:
    """One training dataset: ``shards`` (paths, directories, brace patterns or URLs), its mixture ``weight``,
    and the modalities it provides (``None``: every modality of the masking config). Modalities of the
    config it lacks are filled as empty when listed in ``fill_empty``, otherwise a missing one is an error."""

    shards: list[str]
    weight: float = 1.0
    modalities: list[str] | None = None
    name: str = ""


def expand_shards(patterns: str | Sequence[str], source: str = "dataset") -> list[str]:
    """Shard locations of ``patterns``: local directories (their finished ``*.tar``), brace patterns
    (``data-{000..009}.tar``), local files or URLs WebDataset can open (``pipe:``, ``http(s)://``, ...).

    Raises ValueError on an empty list and FileNotFoundError for a local path that does not exist.
    """
    from webdataset.shardlists import expand_urls

    if isinstance(patterns, str):
        patterns = [patterns]
    out: list[str] = []
    for pattern in patterns:
        for url in expand_urls(str(pattern)):
            if _is_remote(url):
                out.append(url)
                continue
            path = Path(url)
            if path.is_dir():
                out.extend(str(p) for p in list_shards(path))
            elif path.is_file():
                out.append(str(path))
            else:
                raise FileNotFoundError(f"{source}: shard {url!r} does not exist")
    if not out:
        raise ValueError(f"{source}: the shard list is empty (patterns {list(patterns)!r})")
    return out


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def count_samples(shards: Sequence[str], enough: int | None = None) -> int | None:
    """Number of samples in local shards (tar headers only; unreadable shards count 0), or None if any shard
    is remote. Stops early once the count reaches ``enough``."""
    if any(_is_remote(s) for s in shards):
        return None
    total = 0
    for shard in shards:
        try:
            total += len(shard_keys(shard))
        except ValueError:
            continue
        if enough is not None and total >= enough:
            break
    return total


class ReadErrors:
    """Counts the shards that could not be read completely (each one also warned about once)."""

    def __init__(self) -> None:
        self.count = 0
        self.shards: list[str] = []

    def report(self, shard: str, err: Exception) -> None:
        self.count += 1
        self.shards.append(shard)
        warnings.warn(f"skipping the rest of shard {shard}: {err} ({self.count} unreadable so far)", stacklevel=2)


def iter_raw_samples(shard: str, errors: ReadErrors) -> Iterator[dict]:
    """Samples of one shard as ``{"__key__", ext: decoded value}``; stops (and reports) at a corrupt part."""
    try:
        if _is_remote(shard):
            yield from _iter_remote(shard)
        else:
            yield from iter_shard(shard)
    except (ValueError, OSError, tarfile.TarError, EOFError) as err:
        errors.report(shard, err)


def _iter_remote(url: str) -> Iterator[dict]:
    from webdataset import gopen

    with gopen(url, "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
        current: dict | None = None
        for info in tar:
            if not info.isfile():
                continue
            key, _, ext = info.name.partition(".")
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key}
            current[ext] = decode_member(ext, tar.extractfile(info).read())
        if current is not None:
            yield current


def decode_sample(raw: Mapping[str, Any], needs: Sequence[str], source: str) -> dict:
    """A raw shard sample → ``{modality: value}`` for the modalities ``needs`` (what masking expects).

    ``.npy`` → int array, ``.txt`` → str, ``.json`` → text via :func:`open4m.sequences.to_text`, ``.png`` of a
    pixels modality (uint8 RGB) → float32 ``(3, H, W)`` via :func:`open4m.pixels.to_model_pixels`.
    Raises ValueError naming the modality when the sample lacks one.
    """
    by_mod: dict[str, tuple[str, Any]] = {}
    for ext, value in raw.items():
        if ext != "__key__":
            mod, _, kind = ext.rpartition(".")
            by_mod[mod] = (kind, value)
    out = {}
    for name in needs:
        if name not in by_mod:
            raise ValueError(f"{source}: sample {raw.get('__key__')!r} has no modality {name!r} "
                             f"(it has {sorted(by_mod)}); list the dataset's modalities and the missing ones "
                             "in fill_empty to train on it anyway")
        kind, value = by_mod[name]
        if kind == "json":
            value = to_text(name, value)
        elif kind == "png" and get_modality(name).kind == "pixels":
            value = to_model_pixels(value)
        elif kind == "npy" and get_modality(name).kind in ("pixels", "embeddings"):
            value = np.asarray(value, np.float32)
        elif kind == "npy" and np.asarray(value).dtype.kind not in "iu":
            raise ValueError(f"{source}: sample {raw.get('__key__')!r}: {name}.npy holds "
                             f"{np.asarray(value).dtype}, expected integer token ids")
        out[name] = value
    return out


class SampleStream:
    """The endless, deterministic sample stream of one dataset for one reader (see the module docstring)."""

    def __init__(self, shards: Sequence[str], index: int, reader: int, num_readers: int, seed: int,
                 shuffle_buffer: int, errors: ReadErrors, epoch: int = 0, taken: int = 0) -> None:
        self.shards, self.index, self.reader, self.num_readers = list(shards), index, reader, num_readers
        self.seed, self.buffer_size, self.errors = seed, max(1, shuffle_buffer), errors
        self.epoch, self.taken = epoch, 0
        self._iter = self._epoch_samples(epoch)
        for _ in range(taken):
            next(self._iter)

    def position(self) -> list[int]:
        return [self.epoch, self.taken]

    def next(self) -> dict:
        for _ in range(2):
            try:
                sample = next(self._iter)
                self.taken += 1
                return sample
            except StopIteration:
                self.epoch, self.taken = self.epoch + 1, 0
                self._iter = self._epoch_samples(self.epoch)
        raise ValueError(f"dataset {self.index}: reader {self.reader} of {self.num_readers} got no readable "
                         f"sample in epoch {self.epoch} from {len(self.shards)} shard(s)")

    def _reader_samples(self, epoch: int) -> Iterator[dict]:
        order = np.random.default_rng([self.seed, self.index, epoch]).permutation(len(self.shards))
        r, n = self.reader, self.num_readers
        if len(self.shards) >= n:
            for k in order[r::n]:
                yield from iter_raw_samples(self.shards[k], self.errors)
            return
        i = 0
        for k in order:
            for sample in iter_raw_samples(self.shards[k], self.errors):
                if i % n == r:
                    yield sample
                i += 1

    def _epoch_samples(self, epoch: int) -> Iterator[dict]:
        rng = np.random.default_rng([self.seed, self.index, epoch, self.reader, 1])
        buffer: list[dict] = []
        for sample in self._reader_samples(epoch):
            if len(buffer) < self.buffer_size:
                buffer.append(sample)
                continue
            k = int(rng.integers(len(buffer)))
            buffer[k], sample = sample, buffer[k]
            yield sample
        while buffer:
            yield buffer.pop(int(rng.integers(len(buffer))))


class MaskedBatches(IterableDataset):
    """Endless masked batches of one rank (a torch IterableDataset; use with :func:`make_loader`).

    Each item is a batch as :meth:`UnifiedMasking.mask_batch` returns (``{modality: {"tensor" (B, ...),
    "input_mask" (B, N), "target_mask" (B, N), "decoder_attention_mask" (B, N)}}``) plus
    ``batch[POSITION_KEY] = {"worker": w, "batch": j + 1, "streams": [[epoch, taken], ...]}``.
    """

    def __init__(self, datasets: Sequence[DatasetSpec], masking: MaskingConfig, batch_size: int, seed: int = 0,
                 rank: int = 0, world: int = 1, num_workers: int = 0, shuffle_buffer: int = 256,
                 tokenizer=None, fill_empty: Sequence[str] = (), positions: Mapping[int, Mapping] | None = None,
                 rotation: int = 0) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if not datasets:
            raise ValueError("no training dataset given")
        self.datasets, self.batch_size, self.seed = list(datasets), batch_size, seed
        self.rank, self.world, self.num_workers = rank, world, num_workers
        self.shuffle_buffer, self.positions, self.rotation = shuffle_buffer, dict(positions or {}), rotation
        names = masking.mixture.names
        self.maskings = []
        for d in self.datasets:
            has = names if d.modalities is None else [n for n in names if n in d.modalities]
            lacking = [n for n in names if n not in has]
            not_allowed = [n for n in lacking if n not in fill_empty]
            if not_allowed:
                raise ValueError(f"dataset {d.name or d.shards[0]!r} lacks modalities {not_allowed} the masking "
                                 "config needs; add them to fill_empty to fill them as empty")
            config = masking if not lacking else MaskingConfig.from_dict(
                masking.to_dict(), domains=has, source=f"masking for dataset {d.name!r}")
            self.maskings.append((has, UnifiedMasking(config, tokenizer, fill_empty=lacking)))
        weights = np.array([d.weight for d in self.datasets], float)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"dataset weights must be >= 0 and not all 0, got {weights.tolist()}")
        self.cum_weights = np.cumsum(weights / weights.sum())
        self.errors = ReadErrors()

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        physical = 0 if info is None else info.id
        workers = max(1, self.num_workers)
        worker = (physical + self.rotation) % workers
        reader, readers = self.rank * workers + worker, self.world * workers
        pos = self.positions.get(worker, {"batch": 0, "streams": [[0, 0]] * len(self.datasets)})
        if len(pos["streams"]) != len(self.datasets):
            raise ValueError(f"the saved data position covers {len(pos['streams'])} dataset(s) but train_data lists "
                             f"{len(self.datasets)}; resume with the same train_data")
        streams = [SampleStream(d.shards, i, reader, readers, self.seed, self.shuffle_buffer, self.errors, e, t)
                   for i, (d, (e, t)) in enumerate(zip(self.datasets, pos["streams"], strict=True))]
        j = int(pos["batch"])
        while True:
            rng = np.random.default_rng([self.seed, self.rank, worker, j, 2])
            which = np.minimum(np.searchsorted(self.cum_weights, rng.random(self.batch_size), side="right"),
                               len(self.datasets) - 1)
            samples = [streams[d].next() for d in which]
            batch = self.mask(samples, which, rng)
            j += 1
            batch[POSITION_KEY] = {"worker": worker, "batch": j, "streams": [s.position() for s in streams],
                                   "unreadable_shards": self.errors.count}
            yield batch

    def mask(self, raw: Sequence[dict], which: np.ndarray, rng: np.random.Generator) -> dict:
        """Decode and mask ``B`` raw samples; ``which[i]`` is the dataset of sample ``i``. Same order out."""
        parts, order = [], []
        for d in np.unique(which):
            rows = np.flatnonzero(which == d)
            has, masking = self.maskings[d]
            source = self.datasets[d].name or self.datasets[d].shards[0]
            parts.append(masking.mask_batch([decode_sample(raw[i], has, source) for i in rows], rng))
            order.extend(rows.tolist())
        if len(parts) == 1:
            return parts[0]
        inverse = torch.from_numpy(np.argsort(np.array(order)))
        return {name: {key: torch.cat([p[name][key] for p in parts])[inverse] for key in parts[0][name]}
                for name in parts[0]}


def make_loader(batches: MaskedBatches) -> DataLoader:
    """A DataLoader over ready-made batches with ``batches.num_workers`` worker processes (0: in process)."""
    return DataLoader(batches, batch_size=None, num_workers=batches.num_workers,
                      persistent_workers=batches.num_workers > 0,
                      prefetch_factor=2 if batches.num_workers > 0 else None)


def validation_batches(datasets: Sequence[DatasetSpec], masking: MaskingConfig, batch_size: int,
                       max_batches: int, seed: int = 0, rank: int = 0, world: int = 1, tokenizer=None,
                       fill_empty: Sequence[str] = ()) -> list[dict]:
    """Fixed held-out batches of this rank: shards read in order, no shuffling, masks from a fixed seed,
    so every evaluation sees the same batches. At most ``max_batches`` per rank."""
    source = MaskedBatches(datasets, masking, batch_size, seed=seed, rank=rank, world=world, shuffle_buffer=1,
                           tokenizer=tokenizer, fill_empty=fill_empty)
    out: list[dict] = []
    samples: list[tuple[int, dict]] = []
    for d, spec in enumerate(datasets):
        i = 0
        for sample in (s for shard in spec.shards for s in iter_raw_samples(shard, source.errors)):
            if len(samples) >= max_batches * batch_size:
                break
            if i % world == rank:
                samples.append((d, sample))
            i += 1
    rng = np.random.default_rng([seed, rank, 3])
    for start in range(0, len(samples) - batch_size + 1, batch_size):
        if len(out) >= max_batches:
            break
        chunk = samples[start:start + batch_size]
        out.append(source.mask([s for _, s in chunk], np.array([d for d, _ in chunk]), rng))
    if not out:
        raise ValueError(f"validation data holds {len(samples)} samples for rank {rank}, fewer than one batch "
                         f"of {batch_size}")
    return out

