"""Atomic file writes: a reader (or a rerun after a kill) sees the old file or the whole new one, never half.

This module does not know any file format; callers pass bytes or a function that writes to a binary handle.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


@functools.cache
def _umask() -> int:
    """The process umask, read once (reading it means setting it, which is not thread-safe to repeat)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], data: bytes | str | Callable[[BinaryIO], object]) -> Path:
    """Write `data` to `path` via a temp file in the same folder, fsync it, then rename it over `path`.

    Args:
        path: the destination; its folder is created if needed.
        data: bytes, text (written as UTF-8), or a function that writes to the open binary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file owner-only; give it what open() would
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
