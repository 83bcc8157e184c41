"""`run_serve`: capture threads -> one inference thread -> window or events, with a teacher on the side.

```
camera 0 ──capture──> [slot] ─┐                               ┌─> [shown slot] ─> window (main thread)
video.mp4 ─capture──> [slot] ─┼─> inference (one batch) ──────┼─> events.jsonl, web view (its own thread)
rtsp://…  ─capture──> [slot] ─┘        │ unsure  ^ verdict     └─> stats every few seconds
                                       v         │
                                  [slot] ─> fallback (teacher) ─> hard examples (label set)
```
Every arrow between threads is a single-value slot (latest wins): nothing queues up. `q`, SIGINT, SIGTERM,
`max_seconds`, or the end of every source stops all threads; they are joined within a second. The web view
(`distill.realtime.web`, with `http`) only reads the shown slots and counters and stops after the others.

`teacher_config` and `build_fallback_teacher` make the fallback teacher ask what labelling asked: the question
and class texts the student recorded. `run_serve` itself does not load a teacher (the caller passes one), and
this module never imports torch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.config import TaskConfig, parse_classes
from distill.errors import ConfigError, VideoError
from distill.label import Teacher, build_teacher
from distill.realtime._state import LatencyHistogram, Slot, Workers
from distill.realtime.capture import CapturedFrame, CaptureWorker
from distill.realtime.fallback import FallbackWorker
from distill.realtime.hard_examples import HardExamples
from distill.realtime.inference import InferenceWorker, SourceState, StudentLike
from distill.realtime.sinks import DisplaySink, EventLog
from distill.realtime.smoothing import Smoother
from distill.realtime.stats import StatsClock
from distill.realtime.summary import ServeSummary, SourceSummary
from distill.video import Source, parse_source

if TYPE_CHECKING:
    from distill.realtime.web import WebView
    from distill.train.meta import StudentMeta

logger = logging.getLogger(__name__)

DEFAULT_HARD_EXAMPLES = Path("runs/hard-examples")
JOIN_TIMEOUT_S = 0.9
WEB_JOIN_MIN_S = 0.5  # the web thread ends 0.2-0.4 s after it is told (told last, so its streams see the end)
# One ONNX Runtime thread: its pool spin-waits, and on a small CPU more threads take cores from decoding
# (bench/serve.py: p95 capture-to-label latency 41-51 ms with ORT's default against 12-17 ms with one thread).
STUDENT_THREADS = 1


def run_serve(
    sources: Sequence[str | int | Source],
    student: str | os.PathLike[str] | StudentLike,
    cfg: TaskConfig,
    *,
    teacher: Teacher | None = None,
    display: bool = False,
    events: str | os.PathLike[str] | None = None,
    max_seconds: float | None = None,
    fast: bool = False,
    hard_examples: str | os.PathLike[str] | None = DEFAULT_HARD_EXAMPLES,
    stats_every_s: float = 5.0,
    http: str | None = None,
    http_token: str | None = None,
    on_http: Callable[[str], None] | None = None,
) -> ServeSummary:
    """Classify every frame of `sources` in real time until they end or the run is stopped.

    Args:
        sources: camera indices, file paths and RTSP/HTTP URLs (or parsed `Source`s).
        student: a `student.onnx` path (loaded with one CPU thread), or a loaded `distill.export.Student`.
        cfg: the task config; `cfg.serve` sets smoothing and fallback, `cfg.sampling.image_size` the stored
            hard-example size.
        teacher: asked about frames whose smoothed confidence is below `cfg.serve.fallback_threshold`.
        display: show one OpenCV window per source (`q` quits); needs a display.
        events: a JSON-lines file for label changes and stats, or `-` for stdout.
        max_seconds: stop after this long.
        fast: play files as fast as the student classifies them (every frame), not at their native rate.
        hard_examples: folder for teacher-labelled frames (a label set), or None to keep none.
        stats_every_s: seconds between stats lines in the events.
        http: `HOST:PORT` of the web view (default `cfg.serve.http`; None: none); port 0 picks a free one.
        http_token: every web request must carry it (never logged).
        on_http: called with the web view's address once it listens.

    Raises:
        ConfigError: no source given, teacher classes that differ from the student's, no display, an http
            address that cannot be bound.
        VideoError: no source could be opened.

    Example:
        >>> summary = run_serve(["clip.mp4"], "runs/student/student.onnx", load_config(), events="-")  # doctest: +SKIP
    """
    parsed = [s if isinstance(s, Source) else parse_source(s) for s in sources]
    if not parsed:
        raise ConfigError("no source to serve; pass --camera N or --source FILE_OR_URL")
    student = _load_student(student)
    run = _Run(parsed, student, cfg, teacher=teacher, fast=fast, stats_every_s=stats_every_s)
    http = http if http is not None else cfg.serve.http
    try:
        run.open_outputs(display=display, events=events, hard_examples=hard_examples, http=http, http_token=http_token)
        if run.web is not None and on_http is not None:
            on_http(run.web.url)
        run.start()
        with _signals_stop(run):
            run.loop(max_seconds)
    finally:
        run.shutdown()
    run.workers.raise_first()
    if run.web is not None:
        run.web.raise_error()
    summary = run.summary()
    if all(s.status == "failed" for s in summary.sources):
        details = "; ".join(f"{s.name}: {s.error}" for s in summary.sources)
        raise VideoError(f"no source could be opened ({details})")
    return summary


def teacher_config(cfg: TaskConfig, meta: StudentMeta, *, question: str | None = None) -> TaskConfig:
    """The config serving's fallback teacher is built from: by default it asks what labelling asked.

    - `cfg` names no classes: the student's classes with the texts it recorded, and its recorded question
      (`question` replaces it). A student that recorded no question (made before questions were recorded)
      is asked `cfg.question` about its class names, as labelling would have by default.
    - `cfg` names classes (the user's `--config`): used as given, `question` replacing its question; its class
      names must be the student's.

    Raises:
        ConfigError: the config's class names differ from the student's.

    Example:
        >>> cfg = teacher_config(load_config(), Student("student.onnx").meta)  # doctest: +SKIP
        >>> cfg.question, [c.text for c in cfg.classes]  # doctest: +SKIP
        ('what is the machine doing? {choices}', ['machine idle', 'machine running'])
    """
    if cfg.classes:
        if set(cfg.class_names) != set(meta.classes):
            raise ConfigError(
                f"the config's classes ({', '.join(cfg.class_names)}) differ from the student's "
                f"({', '.join(meta.classes)}); pass the --config the student was trained with, or none"
            )
        return cfg if question is None else dataclasses.replace(cfg, question=question)
    classes = parse_classes([{"name": n, "text": t} for n, t in zip(meta.classes, meta.class_texts)])
    asked = question if question is not None else meta.question or cfg.question
    return dataclasses.replace(cfg, classes=classes, question=asked)


def build_fallback_teacher(
    cfg: TaskConfig,
    meta: StudentMeta,
    sources: Sequence[str | int | Source] = (),
    *,
    question: str | None = None,
) -> tuple[TaskConfig, Teacher]:
    """The fallback teacher `cfg.teacher.backend` names, asking what `teacher_config` says, and its config.

    Video names the teacher is given are relative to the folder of the first file source (`teacher_root`).
    Building a PaliGemma teacher imports torch; nothing else here does.

    Raises:
        ConfigError: classes that differ from the student's. TeacherError: an unknown backend or a model or
            annotations file that cannot be loaded.
    """
    cfg = teacher_config(cfg, meta, question=question)
    return cfg, build_teacher(cfg, root=teacher_root(sources))


def teacher_root(sources: Sequence[str | int | Source]) -> Path | None:
    """The folder of the first file source: segments CSV paths under it match the names served files carry."""
    for spec in sources:
        source = spec if isinstance(spec, Source) else parse_source(spec)
        if source.kind == "file":
            return Path(source.spec).parent
    return None


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def _load_student(student: str | os.PathLike[str] | StudentLike) -> StudentLike:
    if isinstance(student, (str, os.PathLike)):
        from distill.export import Student

        return Student(student, threads=STUDENT_THREADS)
    return student


class _Run:
    """The threads and shared state of one serving run."""

    def __init__(
        self,
        sources: list[Source],
        student: StudentLike,
        cfg: TaskConfig,
        *,
        teacher: Teacher | None,
        fast: bool,
        stats_every_s: float,
    ) -> None:
        self.cfg = cfg
        self.student = student
        self.teacher = teacher
        self.stats_every_s = stats_every_s
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.workers = Workers(self.stop)
        self.stopped_by = "end"
        self.start_wall = time.time()
        self.start_mono = time.monotonic()
        self.shutdown_s = 0.0
        self.signalled_at: float | None = None
        self.end_mono = self.start_mono
        self.unjoined: list[str] = []
        classes = list(student.classes)
        if teacher is not None and set(teacher.classes) != set(classes):
            raise ConfigError(
                f"the teacher's classes ({', '.join(teacher.classes)}) differ from the student's "
                f"({', '.join(classes)}); pass the --config or --classes the student was trained with"
            )
        session = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.start_wall))
        self.frames: list[Slot[CapturedFrame]] = [Slot() for _ in sources]
        self.captures = [
            CaptureWorker(i, s, self.frames[i], self.stop, self.wake, fast=fast) for i, s in enumerate(sources)
        ]
        for capture, name in zip(self.captures, _unique([c.name for c in self.captures])):
            capture.name = name  # the same file twice: `clip.mp4` and `clip.mp4#2` in logs and events
        self.states = [
            SourceState(
                name=c.name,
                live=c.source.live,
                video=f"{c.name}@{session}" if c.source.live else c.video_name,
                smoother=Smoother.from_config(len(classes), cfg.serve),
            )
            for c in self.captures
        ]
        self.display: DisplaySink | None = None
        self.events: EventLog | None = None
        self.hard: HardExamples | None = None
        self.fallback: FallbackWorker | None = None
        self.inference: InferenceWorker | None = None
        self.web: WebView | None = None
        self._emit_lock = threading.Lock()

    def open_outputs(
        self, *, display: bool, events: str | os.PathLike[str] | None, hard_examples: Any, http: Any, http_token: Any
    ) -> None:
        if display:
            self.display = DisplaySink([s.name for s in self.states])
        if self.teacher is not None and hard_examples is not None:
            self.hard = HardExamples(
                hard_examples,
                list(self.student.classes),
                self.teacher.describe(),
                self.cfg.to_dict(),
                image_size=self.cfg.sampling.image_size,
            )
        if events is not None:
            self.events = EventLog(events)
        if http is not None:
            from distill.realtime.web import WebView  # the web libraries load only when a web view is asked for

            self.web = WebView(self, http, http_token)

    def start(self) -> None:
        serve = self.cfg.serve
        if self.teacher is not None:
            self.fallback = FallbackWorker(
                self.teacher,
                self.student.classes,
                [s.verdicts for s in self.states],
                self.stop,
                max_per_second=serve.fallback_max_per_second,
                hold_s=serve.teacher_hold_s,
                hard_examples=self.hard,
            )
            if serve.fallback_threshold <= 0:
                logger.warning("a teacher is set but the fallback threshold is 0; it will never be asked")
        self.inference = InferenceWorker(
            self.student,
            self.frames,
            self.states,
            self.stop,
            self.wake,
            self.captures_done,
            self.emit,
            fallback=self.fallback,
            threshold=serve.fallback_threshold,
            live_start=self.start_wall,
        )
        self._capture_threads = [self.workers.start(f"capture-{c.number}", c.run) for c in self.captures]
        self._inference_thread = self.workers.start("inference", self.inference.run)
        if self.fallback is not None:
            self.workers.start("fallback", self.fallback.run)
        if self.web is not None:
            self.web.start()

    def captures_done(self) -> bool:
        return not any(t.is_alive() for t in self._capture_threads)

    def emit(self, record: dict[str, Any]) -> None:
        with self._emit_lock:  # the inference and main threads both emit: the file and the web see one order
            if self.events is not None:
                self.events.write(record)
            if self.web is not None:
                self.web.feed.publish(record)

    def loop(self, max_seconds: float | None) -> None:
        """The main thread: display, stats, timed flushes, and the stop conditions."""
        stats = self.stats = StatsClock(self)
        deadline = self.start_mono + max_seconds if max_seconds is not None else None
        while not self.stop.is_set():
            if self.display is not None:
                fps = stats.fps_per_source()
                for i, state in enumerate(self.states):
                    self.display.show(i, state.shown.peek(), fps[i])
                if self.display.quit_requested():
                    self.stopped_by = "quit"
                    break
                self.stop.wait(0.01)
            else:
                self.stop.wait(0.05)
            if not self._inference_thread.is_alive():
                break  # every source ended (or a worker failed: raised after shutdown)
            if deadline is not None and time.monotonic() >= deadline:
                self.stopped_by = "max-seconds"
                break
            stats.maybe_write()
            if self.hard is not None:
                self.hard.flush_if_due()

    def shutdown(self) -> None:
        """Stop every thread, join them within `JOIN_TIMEOUT_S`, then flush and close the outputs."""
        begin = self.end_mono = self.signalled_at or time.monotonic()  # a signal's stop counts from the signal
        self.stop.set()
        self.unjoined = self.workers.join(JOIN_TIMEOUT_S)
        if self.inference is not None and (self.events is not None or self.web is not None):
            self.emit(StatsClock(self).final())
        if self.web is not None:  # last: its event streams end with the final stats line
            self.unjoined += self.web.close(max(begin + JOIN_TIMEOUT_S - time.monotonic(), WEB_JOIN_MIN_S))
        self.shutdown_s = time.monotonic() - begin
        if self.unjoined:
            logger.warning("threads still busy after %.1f s: %s (abandoned)", JOIN_TIMEOUT_S, ", ".join(self.unjoined))
        if self.hard is not None:
            self.hard.close()
        if self.events is not None:
            self.events.close()
        if self.display is not None:
            self.display.close()

    def summary(self) -> ServeSummary:
        inference = self.inference
        duration = max(self.end_mono - self.start_mono, 1e-9)
        counts = inference.latency.snapshot() if inference else LatencyHistogram().counts
        fallback = self.fallback.stats if self.fallback else None
        return ServeSummary(
            sources=[
                SourceSummary(
                    name=c.name,
                    kind=c.source.kind,
                    status=c.stats.status,
                    frames_captured=c.stats.frames,
                    frames_classified=s.classified,
                    frames_dropped=self.frames[c.number].dropped,
                    label_changes=s.changes,
                    reconnects=c.stats.reconnects,
                    error=c.stats.error,
                )
                for c, s in zip(self.captures, self.states)
            ],
            duration_s=round(duration, 3),
            frames_classified=inference.classified if inference else 0,
            inference_fps=round((inference.classified if inference else 0) / duration, 2),
            latency_p50_ms=LatencyHistogram.percentile_ms(counts, 50),
            latency_p95_ms=LatencyHistogram.percentile_ms(counts, 95),
            frame_errors=inference.errors if inference else 0,
            teacher=fallback is not None,
            fallbacks_offered=fallback.offered if fallback else 0,
            fallbacks_asked=fallback.asked if fallback else 0,
            teacher_answers=fallback.answered if fallback else 0,
            teacher_errors=fallback.errors if fallback else 0,
            hard_examples=self.hard.written if self.hard else 0,
            hard_examples_skipped=self.hard.skipped if self.hard else 0,
            hard_examples_dir=self.hard.directory if self.hard else None,
            stopped_by=self.stopped_by,
            shutdown_s=round(self.shutdown_s, 3),
            unjoined=self.unjoined,
        )


@contextmanager
def _signals_stop(run: _Run) -> Iterator[None]:
    """While serving, SIGINT and SIGTERM set the stop event instead of raising (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: object) -> None:
        run.stopped_by = "signal"
        run.signalled_at = run.signalled_at or time.monotonic()
        run.stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
