"""Teacher fallback: frames the student is unsure of go to the teacher on its own thread, never a backlog.

The inference worker `offer`s a frame through a single `Slot` (the latest offer wins); the fallback thread
takes one at most `max_per_second` times a second, asks the teacher, posts a `Verdict` for that source (the
shown label for `hold_s` seconds) and stores the frame with the teacher's label as a hard example.
A teacher exception is counted and logged, never fatal; running out of memory pauses fallback for a while.

The teacher is any `distill.label.Teacher`: it is given a `Frame` (BGR pixels plus the video name and time the
frame carries in hard examples), so the annotations teacher and a model answer the same call.

This module does not load teachers (`distill.label.build_teacher` does) or decide when to ask.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from distill.errors import TeacherError, first_line, is_out_of_memory, release_gpu_memory
from distill.label import Teacher, TeacherAnswer, TeacherFailure
from distill.realtime._state import Slot
from distill.realtime.capture import CapturedFrame
from distill.realtime.hard_examples import HardExamples
from distill.video import Frame

logger = logging.getLogger(__name__)

OOM_PAUSE_S = 60.0


@dataclass(frozen=True)
class Request:
    """A frame offered to the teacher, with the name it carries in hard examples."""

    frame: CapturedFrame
    video: str  # the name in hard examples: the file name, or the live source's name and session
    timestamp_s: float  # media time for files, seconds since the run started for live sources


@dataclass(frozen=True)
class Verdict:
    """The teacher's answer for one source, shown instead of the student's until `until` (monotonic)."""

    label: str
    confidence: float
    until: float
    frame_index: int


@dataclass
class FallbackStats:
    """Counters, written only by the fallback thread (`offered` only by the inference thread)."""

    offered: int = 0
    asked: int = 0
    answered: int = 0
    unmatched: int = 0  # answers that matched no class (stored with a null label)
    unanswered: int = 0  # frames the teacher had no answer for (annotations: no segment covers them)
    errors: int = 0
    paused: int = 0  # out-of-memory pauses
    last_error: str | None = None
    asked_by_source: Counter[int] = field(default_factory=Counter)  # teacher calls per source number
    call_s: deque[float] = field(default_factory=lambda: deque(maxlen=50), repr=False)  # last call durations


class FallbackWorker:
    """Asks `teacher` about offered frames, at most `max_per_second` calls a second.

    Args:
        teacher: a `distill.label.Teacher`.
        classes: the student's classes; the teacher must know the same set (its probs are reordered to these).
        verdicts: one slot per source, where answers go.
        hard_examples: where asked frames are stored (or None).
    """

    def __init__(
        self,
        teacher: Teacher,
        classes: Sequence[str],
        verdicts: Sequence[Slot[Verdict]],
        stop: threading.Event,
        *,
        max_per_second: float = 1.0,
        hold_s: float = 2.0,
        hard_examples: HardExamples | None = None,
    ) -> None:
        self.teacher = teacher
        self.classes = list(classes)
        teacher_classes = list(teacher.classes)
        self._order = [teacher_classes.index(c) for c in self.classes]  # teacher prob index of each student class
        self.verdicts = verdicts
        self.stop = stop
        self.min_interval_s = 1.0 / max_per_second
        self.hold_s = hold_s
        self.hard_examples = hard_examples
        self.slot: Slot[Request] = Slot()
        self.stats = FallbackStats()
        self.busy = threading.Event()  # set while a teacher call is in progress
        self._paused_until = 0.0

    def offer(self, request: Request) -> None:
        """Called by the inference thread: replaces any offer not yet taken (latest wins)."""
        if time.monotonic() < self._paused_until:
            return
        self.stats.offered += 1
        self.slot.put(request)

    def run(self) -> None:
        """Thread body."""
        next_call = 0.0
        while not self.stop.is_set():
            wait = next_call - time.monotonic()
            if wait > 0 and self.stop.wait(wait):  # rate limit: offers meanwhile replace each other
                break
            request = self.slot.wait_take(0.1)
            if request is None or time.monotonic() < self._paused_until:
                continue
            next_call = time.monotonic() + self.min_interval_s
            self._ask(request)

    def _ask(self, request: Request) -> None:
        captured = request.frame
        frame = Frame(request.video, captured.index, request.timestamp_s, captured.image)
        self.stats.asked += 1
        self.stats.asked_by_source[captured.source] += 1
        self.busy.set()
        start = time.monotonic()
        try:
            answer = self._call_teacher(frame)
        except Exception as exc:  # a teacher failure never stops the loop
            self._failed(exc)
            return
        finally:
            self.busy.clear()
        self.stats.call_s.append(time.monotonic() - start)
        if self.stop.is_set():
            logger.debug("dropping the teacher's answer for frame %d: the loop is stopping", captured.index)
            return
        if answer is None:
            self.stats.unanswered += 1
            return
        self.stats.answered += 1
        probs = np.asarray(answer.probs, np.float32)[self._order]  # (K,) in the student's class order
        label = answer.label if answer.label in self.classes else None
        if label is None:
            self.stats.unmatched += 1
        else:
            confidence = float(probs[self.classes.index(label)])
            verdict = Verdict(label, confidence, time.monotonic() + self.hold_s, captured.index)
            self.verdicts[captured.source].put(verdict)
        if self.hard_examples is not None:
            self.hard_examples.add(frame, label, probs, answer.raw)

    def _call_teacher(self, frame: Frame) -> TeacherAnswer | None:
        answers = self.teacher.label([frame])
        if len(answers) != 1:
            raise RuntimeError(f"the teacher returned {len(answers)} answers for one frame")
        if isinstance(answers[0], TeacherFailure):  # its server failed: counted and logged like an exception
            raise TeacherError(answers[0].reason)
        return answers[0]

    def _failed(self, exc: Exception) -> None:
        self.stats.errors += 1
        self.stats.last_error = f"{type(exc).__name__}: {first_line(exc)}"
        if is_out_of_memory(exc):
            self.stats.paused += 1
            self._paused_until = time.monotonic() + OOM_PAUSE_S
            self.slot.take()
            release_gpu_memory()
            logger.warning("the teacher ran out of memory; fallback paused for %.0f s", OOM_PAUSE_S)
        elif self.stats.errors <= 3 or self.stats.errors % 100 == 0:
            logger.warning("teacher call failed (%d so far): %s", self.stats.errors, self.stats.last_error)
