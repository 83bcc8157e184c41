"""Typed errors. Every message says what went wrong *and* how to fix it, in one line.

The CLI turns any `DistillError` into that one line and exit code 1; `--debug` shows the traceback.
"""

from __future__ import annotations


class DistillError(Exception):
    """Base class for errors a user can fix (bad input, missing files, wrong options)."""


class ConfigError(DistillError):
    """The task config or a flag is invalid."""


class VideoError(DistillError):
    """A video or live source cannot be opened or decoded."""


class DatasetError(DistillError):
    """A label set is missing, malformed, or incompatible with the request."""


class TeacherError(DistillError):
    """A teacher cannot be loaded or cannot answer."""


class TrainError(DistillError):
    """Training cannot start or continue."""


class ExportError(DistillError):
    """A model cannot be exported, or an exported file is not a distill student."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (at most `limit` characters), or its type name when empty.

    What a one-line `DistillError` quotes of a third-party error.
    """
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def is_out_of_memory(exc: BaseException) -> bool:
    """True for running out of memory: torch's `OutOfMemoryError` (CUDA), `MemoryError`, and runtime errors
    whose message says "out of memory" (CUDA, cuDNN and ONNX Runtime phrase it so)."""
    return isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__ or "out of memory" in str(exc).lower()


def release_gpu_memory() -> None:
    """Return cached CUDA memory to the driver after running out of it, if torch is already loaded.

    Never imports torch: a process that has not loaded it (serving an ONNX student) has no CUDA cache.
    """
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
