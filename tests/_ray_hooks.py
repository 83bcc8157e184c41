"""Failures on demand inside Ray workers, for tests/test_label_ray.py (`install` is Ray's worker setup hook).

- the `dying` teacher: the annotations teacher (same description, same answers), except that while a file
  `<segments CSV>.kill-once` exists, its second call renames that file to `.killed` and SIGKILLs its own actor.
- decoding a file whose name starts with `crash` SIGKILLs the worker that decodes it (a decoder that crashes).

This module does not test anything.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


class DyingTeacher:
    """The annotations teacher whose actor kills itself once, on its second call, while the marker file exists."""

    def __init__(self, inner, marker: Path) -> None:
        self.inner, self.marker, self.calls = inner, marker, 0
        self.classes, self.input_size = inner.classes, inner.input_size

    def describe(self):
        return self.inner.describe()

    def label(self, frames):
        self.calls += 1
        if self.calls == 2 and self.marker.exists():
            self.marker.rename(self.marker.with_suffix(".killed"))
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.label(frames)


def register_dying() -> None:
    from distill.label import register_teacher
    from distill.label._annotations_teacher import build_annotations, describe_annotations

    def build(cfg, *, root=None):
        marker = Path(cfg.teacher.annotations).with_suffix(".kill-once")
        return DyingTeacher(build_annotations(cfg, root=root), marker)

    register_teacher("dying", build=build, describe=describe_annotations)


def install() -> None:
    """Ray's `worker_process_setup_hook`: runs once in every worker process of the test session's Ray."""
    from distill.label import _ray_stages

    register_dying()
    real = _ray_stages.sample_chunk

    def sample_chunk(chunk, *args, **kwargs):
        if chunk.video.path.name.startswith("crash"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(chunk, *args, **kwargs)

    _ray_stages.sample_chunk = sample_chunk
