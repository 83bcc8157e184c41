"""Hard examples: frames the teacher was asked about, stored as a label set for `distill train --extra`.

The rows follow `distill.dataset.LABEL_SCHEMA` (JPEG short side `sampling.image_size`, the teacher's label and
probabilities in the student's class order). A shard is written every `flush_rows` rows or `flush_s` seconds,
and on `close`, so a stopped run loses nothing the teacher answered. Reopening the folder with the same
classes and teacher appends to it; frames already stored (same video and frame index) are skipped.

This module does not ask the teacher; `distill.realtime.fallback` does, and hands each answered `Frame` here.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distill.dataset import LabelSetWriter, label_row
from distill.errors import DatasetError
from distill.label import teacher_tag
from distill.video import Frame, encode_jpeg, resize_short_side

logger = logging.getLogger(__name__)


class HardExamples:
    """Thread-safe appender of teacher-labelled frames to a label set folder.

    Args:
        directory: the label set folder (created; appended to when it holds a compatible set).
        classes: the student's classes (the order of `probs`).
        teacher: the teacher's `describe()` dict, stored in the manifest.
        config: the resolved task config as a dict.
        image_size: short side of the stored JPEGs (0 keeps the frame size).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        classes: Sequence[str],
        teacher: Mapping[str, Any],
        config: Mapping[str, Any] | None = None,
        *,
        image_size: int = 320,
        flush_rows: int = 16,
        flush_s: float = 10.0,
    ) -> None:
        self.directory = Path(directory)
        try:
            self._writer = LabelSetWriter(self.directory, classes, teacher, config, shard_rows=flush_rows)
        except DatasetError as exc:
            raise DatasetError(
                f"{exc}".replace("use another --out or pass --overwrite", "use another --hard-examples folder")
            ) from None
        self._teacher = teacher_tag(dict(teacher))  # the same `teacher` column `distill label` writes
        self.image_size = image_size
        self.flush_s = flush_s
        self._lock = threading.Lock()  # add() on the fallback thread, flush()/close() on the main thread
        self._last_flush = time.monotonic()
        self._closed = False
        self.written = 0  # rows added in this run
        self.skipped = 0  # frames already in the set

    def add(self, frame: Frame, label: str | None, probs: np.ndarray, raw: str | None) -> bool:
        """Store one teacher-labelled frame; False if it was already stored or the writer is closed."""
        jpeg = encode_jpeg(resize_short_side(frame.image, self.image_size))  # outside the lock: the slow part
        where = (frame.video, frame.frame_index, frame.timestamp_s)
        row = label_row(*where, jpeg, label, probs, teacher=self._teacher, raw=raw)
        with self._lock:
            if self._closed:
                return False
            if (frame.video, frame.frame_index) in self._writer.done:
                self.skipped += 1
                return False
            self._writer.add(row)  # writes a shard by itself every `flush_rows` rows
            self.written += 1
        return True

    def flush_if_due(self) -> None:
        """Write pending rows if the last write is `flush_s` seconds old (the main loop calls this)."""
        if time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        self._writer.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Write what is pending; later `add`s are ignored (a teacher answer arriving after shutdown)."""
        with self._lock:
            if not self._closed:
                self._flush_locked()
                self._closed = True
        if self.written:
            logger.info("%d hard example(s) stored in %s", self.written, self.directory)
