"""WebDataset tar shards: atomic writing, listing finished shards, reading samples back.

A shard is a plain tar file. Each sample is a dict with a ``"__key__"`` (no dots, no slashes) and one
entry per member; the entry's name is the member's extension, e.g. ``{"__key__": "000042",
"rgb.png": array, "caption.txt": "..."}`` becomes the members ``000042.rgb.png`` and
``000042.caption.txt``. The last suffix picks the encoding:

- ``png``: uint8 arrays (H, W) → grey, (H, W, 3) → RGB, (H, W, 4) → RGBA; uint16 (H, W) → 16-bit grey;
- ``npy``: any numeric array, ``numpy.save`` format (read back with ``allow_pickle=False``);
- ``json``: any JSON-serialisable value; ``txt``: a str (UTF-8);
- anything else: ``bytes`` stored as they are (also accepted for the suffixes above: already encoded).

Shards are byte-for-byte deterministic (fixed member order, zero mtimes and owners) and written
atomically: to a hidden temporary file in the same folder, then ``os.replace``d into place, so a killed
writer never leaves a half-written shard under a final name (:func:`remove_partial_shards` cleans up the
temporaries it leaves).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

TEMP_SUFFIX = ".partial"
PNG_COMPRESS_LEVEL = 3


def encode_member(ext: str, value) -> bytes:
    """Encode one sample entry by its extension's last suffix (see the module docstring)."""
    if isinstance(value, bytes):
        return value
    kind = ext.rsplit(".", 1)[-1]
    if kind == "png":
        return _encode_png(ext, value)
    if kind == "npy":
        array = np.asarray(value)
        if array.dtype == object:
            raise ValueError(f"member {ext!r}: object arrays cannot be stored as npy")
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return buffer.getvalue()
    if kind == "json":
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    if kind == "txt":
        if not isinstance(value, str):
            raise ValueError(f"member {ext!r}: expected a str, got {type(value).__name__}")
        return value.encode()
    raise ValueError(f"member {ext!r}: no encoder for this extension; pass bytes")


def _encode_png(ext: str, value) -> bytes:
    array = np.asarray(value)
    if array.dtype == np.uint16 and array.ndim == 2:
        image = Image.fromarray(array)
    elif array.dtype == np.uint8 and (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        image = Image.fromarray(array)
    else:
        raise ValueError(f"member {ext!r}: png needs uint8 (H, W), (H, W, 3), (H, W, 4) or uint16 (H, W); "
                         f"got {array.dtype} {array.shape}")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def decode_member(ext: str, data: bytes):
    """Inverse of :func:`encode_member`: arrays for png/npy, parsed JSON, str for txt, else bytes."""
    kind = ext.rsplit(".", 1)[-1]
    if kind == "png":
        with Image.open(io.BytesIO(data)) as image:
            array = np.array(image)  # a writable copy
        return array.astype(np.uint16) if array.dtype.kind in "iu" and array.dtype != np.uint8 else array
    if kind == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    if kind == "json":
        return json.loads(data)
    if kind == "txt":
        return data.decode()
    return data


def write_shard(path: str | Path, samples: list[dict], overwrite: bool = False) -> Path:
    """Write ``samples`` (dicts with ``"__key__"``, see the module docstring) as one tar shard, atomically.

    Raises FileExistsError when ``path`` exists and ``overwrite`` is False, ValueError on a bad key or entry.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"shard {path} already exists; pass overwrite=True to replace it")
    seen = set()
    members = []
    for sample in samples:
        key = sample.get("__key__")
        if not isinstance(key, str) or not key or "." in key or "/" in key:
            raise ValueError(f"sample key must be a non-empty str without '.' or '/', got {key!r}")
        if key in seen:
            raise ValueError(f"duplicate sample key {key!r} in shard {path}")
        seen.add(key)
        for ext in sorted(k for k in sample if k != "__key__"):
            members.append((f"{key}.{ext}", encode_member(ext, sample[ext])))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return write_bytes_atomic(path, buffer.getvalue())


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a hidden temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        temp.write_bytes(data)
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()
    return path


def iter_shard(path: str | Path) -> Iterator[dict]:
    """Yield the samples of a shard as dicts ``{"__key__": key, ext: decoded value, ...}``, in file order.

    Raises FileNotFoundError for a missing file and ValueError for a truncated or malformed shard.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"shard {path} does not exist")
    current: dict | None = None
    done: set[str] = set()
    try:
        with tarfile.open(path, mode="r") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, _, ext = info.name.partition(".")
                if not ext:
                    raise ValueError(f"shard {path}: member {info.name!r} has no extension")
                if current is None or current["__key__"] != key:
                    if key in done:
                        raise ValueError(f"shard {path}: members of sample {key!r} are not contiguous")
                    if current is not None:
                        done.add(current["__key__"])
                        yield current
                    current = {"__key__": key}
                current[ext] = decode_member(ext, tar.extractfile(info).read())
            _check_end_of_archive(path, tar.offset)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ValueError(f"shard {path} is truncated or not a tar file: {err}") from err
    if current is not None:
        yield current


def _check_end_of_archive(path: Path, offset: int) -> None:
    """A complete tar ends with two zero blocks; tarfile stops silently when a file is cut between members."""
    with open(path, "rb") as file:
        file.seek(offset)
        marker = file.read(2 * tarfile.BLOCKSIZE)
    if len(marker) < 2 * tarfile.BLOCKSIZE or marker.strip(b"\0"):
        raise ValueError(f"shard {path} is truncated: no end-of-archive marker after the last member")


def shard_keys(path: str | Path) -> list[str]:
    """Sample keys of a shard in order, reading only the tar headers."""
    try:
        with tarfile.open(path, mode="r") as tar:
            names = [info.name.partition(".")[0] for info in tar if info.isfile()]
            _check_end_of_archive(Path(path), tar.offset)
    except (tarfile.TarError, EOFError) as err:
        raise ValueError(f"shard {path} is truncated or not a tar file: {err}") from err
    return list(dict.fromkeys(names))


def list_shards(directory: str | Path, pattern: str = "*.tar") -> list[Path]:
    """Finished shards in ``directory`` matching ``pattern``, sorted by name (temporaries excluded)."""
    return sorted(p for p in Path(directory).glob(pattern) if not p.name.startswith(".") and p.is_file())


def remove_partial_shards(directory: str | Path) -> list[Path]:
    """Delete the temporary files killed writers left in ``directory``; return what was removed."""
    removed = []
    for temp in Path(directory).glob(f".*{TEMP_SUFFIX}"):
        temp.unlink(missing_ok=True)
        removed.append(temp)
    return sorted(removed)
