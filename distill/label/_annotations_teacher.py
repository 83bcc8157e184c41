"""The `annotations` teacher: labels from a ground-truth segments CSV, for users with some human labels, demos
and tests. Probabilities are one-hot; frames that no segment covers get no answer (the run skips and counts them).

It answers from each frame's video name and timestamp, never from its pixels. This module does not parse the
CSV itself (see `distill.label.annotations`); it registers the backend under the name `annotations`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.errors import DatasetError, TeacherError
from distill.label._teacher import TeacherAnswer, one_hot, register_teacher
from distill.label.annotations import csv_fingerprint, label_at, read_segments

if TYPE_CHECKING:
    from distill.config import TaskConfig
    from distill.video import Frame

logger = logging.getLogger(__name__)


class AnnotationsTeacher:
    """Answers from a segments CSV (`video,start_s,end_s,label`; video relative to the folder given).

    Args:
        csv_path: the segments CSV.
        classes: class names; every CSV label must be one of them.
        root: CSV video paths under this folder are made relative to it.

    Raises:
        TeacherError: the CSV is missing or malformed, or has a label that is not a class.
    """

    input_size: int | None = None  # it never looks at pixels

    def __init__(
        self, csv_path: str | os.PathLike[str], classes: Sequence[str], *, root: str | os.PathLike[str] | None = None
    ) -> None:
        self.path = Path(csv_path)
        self.classes: tuple[str, ...] = tuple(classes)
        try:
            self.segments = read_segments(self.path, self.classes, root=root)
            self._description = _description(self.path)
        except DatasetError as exc:
            raise TeacherError(str(exc)) from None
        self._index = {c: i for i, c in enumerate(self.classes)}
        self._warned: set[str] = set()

    def describe(self) -> dict[str, Any]:
        return dict(self._description)

    def label(self, frames: Sequence[Frame]) -> list[TeacherAnswer | None]:
        """One-hot answers for frames a segment covers; None for frames no segment covers."""
        answers: list[TeacherAnswer | None] = []
        for frame in frames:
            if frame.video not in self.segments and frame.video not in self._warned:
                self._warned.add(frame.video)
                logger.warning("%s has no segments in %s; its frames are skipped", frame.video, self.path.name)
            label = label_at(self.segments, frame.video, frame.timestamp_s)
            if label is None:
                answers.append(None)
            else:
                answers.append(TeacherAnswer(label, one_hot(self._index[label], len(self.classes)), None))
        return answers


def _description(path: Path) -> dict[str, Any]:
    return {
        "backend": "annotations",
        "model": path.name,
        "mode": "segments",
        "prompt": None,
        "sha256": csv_fingerprint(path),
    }


def _csv_path(cfg: TaskConfig) -> Path:
    if not cfg.teacher.annotations:
        raise TeacherError("the annotations teacher needs a segments CSV; pass --annotations segments.csv")
    return Path(cfg.teacher.annotations)


def describe_annotations(cfg: TaskConfig) -> dict[str, Any]:
    """The CSV's name and content fingerprint: another CSV is another teacher."""
    return _description(_csv_path(cfg))


def build_annotations(cfg: TaskConfig, *, root: str | os.PathLike[str] | None = None) -> AnnotationsTeacher:
    """The teacher for `cfg.teacher.annotations`; CSV video paths under `root` are made relative to it."""
    return AnnotationsTeacher(_csv_path(cfg), cfg.class_names, root=root)


register_teacher("annotations", build=build_annotations, describe=describe_annotations)
