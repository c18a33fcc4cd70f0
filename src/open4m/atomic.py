"""Files on disk: atomic writes (a temporary file in the target's folder, then ``os.replace``: a reader, or a
crash, never sees a half-written file under the final name; files get the permissions the process umask gives
new files, where ``mkstemp`` alone would leave them 0600) and :func:`read_json`, whose errors name the file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """``text`` (UTF-8) to ``path`` atomically."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: object) -> Path:
    """``obj`` as indented JSON (plus a newline) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | os.PathLike, missing: str) -> object:
    """The JSON value in ``path``; FileNotFoundError with ``missing`` when there is no such file, ValueError
    naming the file when it is not valid JSON."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(missing)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
