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
