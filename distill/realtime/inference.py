"""The inference worker: the newest frame of every source, classified in one batch, smoothed, shown.

Each pass takes whatever frames the capture threads left in their slots (one per source at most), runs
`student.predict` once on them, updates each source's `Smoother`, applies a teacher `Verdict` still on hold,
offers unsure frames to the fallback worker, writes a label-change event, and leaves the result in the
source's `shown` slot for the display. A frame that makes the student raise is counted and logged, never fatal.

This module does not read sources, talk to the teacher, or draw; it only decides what label each source shows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from distill.realtime._state import LatencyHistogram, Slot
from distill.realtime.capture import CapturedFrame
from distill.realtime.fallback import FallbackWorker, Request, Verdict
from distill.realtime.smoothing import Smoother

logger = logging.getLogger(__name__)


class StudentLike(Protocol):
    """What serving needs of `distill.export.Student`."""

    classes: Sequence[str]

    def predict(self, frames: list[np.ndarray]) -> Any: ...


@dataclass(frozen=True)
class Shown:
    """What a source shows now: the frame, its label, who gave it, and the student's own view."""

    frame: CapturedFrame
    label: str
    confidence: float
    by: str  # student | teacher
    student_label: str
    student_confidence: float


@dataclass
class SourceState:
    """Per-source state of the inference worker (written only by the inference thread)."""

    name: str  # display name (credentials masked)
    live: bool
    video: str  # the name its frames carry in hard examples
    smoother: Smoother
    verdicts: Slot[Verdict] = field(default_factory=Slot)
    shown: Slot[Shown] = field(default_factory=Slot)
    classified: int = 0
    changes: int = 0
    last_label: str | None = None
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)  # capture to label, this source's frames
    class_counts: list[int] = field(default_factory=list)  # frames per shown class (sized by the worker)


class InferenceWorker:
    """Classifies the newest frame of every source until `stop` is set or every source has ended.

    Args:
        student: a `distill.export.Student` (or anything with `classes` and `predict`).
        frames: one slot per source, filled by the capture threads.
        sources: one `SourceState` per source, in the same order.
        wake: set by capture threads after each frame.
        captures_done: returns True once every capture thread has finished.
        emit: called with each label-change event (a dict), on this thread.
        fallback: the fallback worker, or None.
        threshold: offer a frame to the fallback when the smoothed confidence is below this.
        live_start: wall-clock time the run started (hard examples of live sources are timed from it).
    """

    def __init__(
        self,
        student: StudentLike,
        frames: Sequence[Slot[CapturedFrame]],
        sources: Sequence[SourceState],
        stop: threading.Event,
        wake: threading.Event,
        captures_done: Callable[[], bool],
        emit: Callable[[dict[str, Any]], None],
        *,
        fallback: FallbackWorker | None = None,
        threshold: float = 0.0,
        live_start: float = 0.0,
    ) -> None:
        self.student = student
        self.classes = list(student.classes)
        self.frames = frames
        self.sources = sources
        self.stop = stop
        self.wake = wake
        self.captures_done = captures_done
        self.emit = emit
        self.fallback = fallback
        self.threshold = threshold
        self.live_start = live_start
        self.latency = LatencyHistogram()
        self.classified = 0
        self.batches = 0
        self.errors = 0

    def run(self) -> None:
        """Thread body."""
        while not self.stop.is_set():
            self.wake.wait(0.1)
            self.wake.clear()
            batch = [frame for slot in self.frames if (frame := slot.take()) is not None]
            if batch:
                self._classify(batch)
            elif self.captures_done() and all(slot.peek() is None for slot in self.frames):
                return  # every source has ended and its last frame was classified

    def _classify(self, batch: list[CapturedFrame]) -> None:
        probs = self._predict(batch)
        if probs is None:  # the batch failed: try its frames one by one so one bad frame costs only itself
            for frame in batch if len(batch) > 1 else []:
                single = self._predict([frame])
                if single is not None:
                    self._update(frame, single[0], time.monotonic())
            return
        now = time.monotonic()
        for frame, p in zip(batch, probs):
            self._update(frame, p, now)
        self.batches += 1

    def _predict(self, batch: list[CapturedFrame]) -> np.ndarray | None:
        try:
            probs = np.asarray(self.student.predict([f.image for f in batch]).probs, np.float32)  # (B, K)
            if probs.shape != (len(batch), len(self.classes)):
                raise ValueError(f"the student returned probabilities of shape {probs.shape}")
            return probs
        except Exception as exc:  # one bad frame or batch never stops the loop
            if len(batch) == 1:
                self.errors += 1
                if self.errors <= 3 or self.errors % 100 == 0:
                    name = self.sources[batch[0].source].name
                    logger.warning(
                        "classifying frame %d of %s failed (%d so far): %s", batch[0].index, name, self.errors, exc
                    )
            return None

    def _update(self, frame: CapturedFrame, probs: np.ndarray, now: float) -> None:
        source = self.sources[frame.source]
        index, confidence = source.smoother.update(probs)
        student_label = self.classes[index]
        label, shown_confidence, by = student_label, confidence, "student"
        verdict = source.verdicts.peek()
        if verdict is not None and now < verdict.until:
            label, shown_confidence, by = verdict.label, verdict.confidence, "teacher"
        elif self.fallback is not None and confidence < self.threshold:
            t = frame.t - self.live_start if source.live else frame.t
            self.fallback.offer(Request(frame, source.video, t))
        latency = time.monotonic() - frame.captured
        self.latency.add(latency)
        source.latency.add(latency)
        if not source.class_counts:
            source.class_counts.extend([0] * len(self.classes))
        source.class_counts[index if by == "student" else self.classes.index(label)] += 1
        source.classified += 1
        self.classified += 1
        if label != source.last_label:
            source.last_label = label
            source.changes += 1
            self.emit(
                {
                    "event": "label",
                    "source": source.name,
                    "t": round(frame.t, 3),
                    "frame": frame.index,
                    "label": label,
                    "confidence": round(shown_confidence, 4),
                    "by": by,
                }
            )
        source.shown.put(Shown(frame, label, shown_confidence, by, student_label, confidence))
