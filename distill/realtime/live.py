"""What the web view reads of a serving run: per-source counters, the shown frame, recent events, JPEGs.

- `Board`: the read-only view of a run the web layer needs (`RunBoard` adapts the serving threads' state;
  tests hand-feed their own). Reading it never blocks a worker: counters are plain attributes each written by
  one thread, frames come from the latest-wins `shown` slots.
- `EventFeed`: every event the run emits, numbered, in a bounded ring (latest wins once it is full), plus a
  per-source timeline of label changes over the last minutes.
- `JpegCache`: the shown frame of one source with its label drawn, JPEG-encoded once per frame, on demand.
- `RateWindow`: fps and latency percentiles over the last few seconds, from counter snapshots.

This module does not serve HTTP (`distill.realtime.web` does) and never imports the web libraries.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import cv2
import numpy as np

from distill.realtime._state import LatencyHistogram
from distill.realtime.inference import Shown
from distill.realtime.sinks import render_overlay

EVENTS_KEPT = 4096  # events a late or slow reader can still catch up on
TIMELINE_S = 600.0  # the page's strip shows the last ten minutes of labels
TIMELINE_KEPT = 2000  # label changes kept per source (a flickering source cannot grow memory)
RATE_WINDOW_S = 5.0  # fps and latency percentiles cover about the last five seconds
JPEG_QUALITY = 80
JPEG_MAX_WIDTH = 640  # wider frames are shrunk first: a 720p frame costs ~2.5 ms to shrink and encode, not ~9


@dataclass(frozen=True)
class SourceCounters:
    """Counters of one source at one moment (cumulative since the run started)."""

    name: str
    kind: str  # camera | url | file
    status: str  # starting | running | reconnecting | ended | failed | stopped
    captured: int
    classified: int
    dropped: int  # replaced in the slot before the inference thread took them
    reconnects: int
    fallbacks: int  # teacher calls about this source's frames
    changes: int  # label changes
    class_counts: tuple[int, ...]  # frames classified per shown class, in `Board.classes` order
    latency: np.ndarray  # LatencyHistogram counts of capture-to-label latency
    latency_sum_s: float


class Board(Protocol):
    """The read-only view of a serving run that the web layer needs."""

    classes: Sequence[str]
    start_mono: float  # time.monotonic() when the run started

    def counters(self) -> list[SourceCounters]: ...

    def shown(self, number: int) -> Shown | None: ...


class RunBoard:
    """A `Board` over a `distill.realtime.serve._Run`'s own state, read without locks (each counter has one
    writing thread), so a reader never holds up a worker."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.classes = list(run.student.classes)
        self.start_mono = run.start_mono

    def counters(self) -> list[SourceCounters]:
        run = self.run
        asked = dict(run.fallback.stats.asked_by_source) if run.fallback is not None else {}
        return [
            SourceCounters(
                name=s.name,
                kind=c.source.kind,
                status=c.stats.status,
                captured=c.stats.frames,
                classified=s.classified,
                dropped=run.frames[i].dropped,
                reconnects=c.stats.reconnects,
                fallbacks=asked.get(i, 0),
                changes=s.changes,
                class_counts=tuple(s.class_counts),
                latency=s.latency.snapshot(),
                latency_sum_s=s.latency.sum_s,
            )
            for i, (c, s) in enumerate(zip(run.captures, run.states))
        ]

    def shown(self, number: int) -> Shown | None:
        return self.run.states[number].shown.peek()


class EventFeed:
    """Events of a run, numbered from 1, for readers that poll with the last number they saw.

    `publish` is called on the emitting threads and only appends under a lock; readers copy what is new.

    Example:
        >>> feed = EventFeed(["cam"])
        >>> feed.publish({"event": "label", "source": "cam", "label": "idle", "by": "student"})
        >>> [r["label"] for _, r in feed.since(0)], feed.last
        (['idle'], 1)
    """

    def __init__(self, sources: Sequence[str], kept: int = EVENTS_KEPT) -> None:
        self._index = {name: i for i, name in enumerate(sources)}
        self._events: deque[tuple[int, dict[str, Any]]] = deque(maxlen=kept)
        self._timelines: list[deque[tuple[float, str, str]]] = [deque(maxlen=TIMELINE_KEPT) for _ in sources]
        self._lock = threading.Lock()
        self.last = 0  # number of the newest event

    def publish(self, record: dict[str, Any]) -> None:
        now = time.time()
        with self._lock:
            self.last += 1
            self._events.append((self.last, record))
            number = self._index.get(record.get("source", ""))
            if record.get("event") == "label" and number is not None:
                self._timelines[number].append((now, record["label"], record["by"]))

    def since(self, after: int) -> list[tuple[int, dict[str, Any]]]:
        """Events numbered above `after`, oldest first (those already pushed out of the ring are gone)."""
        with self._lock:
            if self.last <= after:
                return []
            return [(n, r) for n, r in self._events if n > after]

    def timeline(self, number: int, span_s: float = TIMELINE_S) -> list[tuple[float, str, str]]:
        """(wall time, label, by) of the source's label changes in the last `span_s` seconds, plus the one
        in force when that span began."""
        cutoff = time.time() - span_s
        with self._lock:
            changes = list(self._timelines[number])
        recent = [c for c in changes if c[0] >= cutoff]
        older = [c for c in changes if c[0] < cutoff]
        return older[-1:] + recent


class JpegCache:
    """The newest shown frame of one source as a JPEG with the label drawn, encoded at most once per frame.

    Callers on several threads may ask for the same frame; the lock makes the second wait for the first's
    bytes instead of encoding again. Nothing is encoded unless someone asks.
    """

    def __init__(self, quality: int = JPEG_QUALITY, max_width: int = JPEG_MAX_WIDTH) -> None:
        self.quality = quality
        self.max_width = max_width
        self.encoded = 0  # frames encoded so far
        self._lock = threading.Lock()  # held while encoding, so a frame is encoded once
        self._latest: tuple[Shown | None, bytes] = (None, b"")  # replaced whole, so `cached` needs no lock

    def get(self, shown: Shown) -> bytes:
        with self._lock:
            if shown is not self._latest[0]:
                self._latest = (shown, self._encode(shown))
                self.encoded += 1
            return self._latest[1]

    def cached(self, shown: Shown) -> bytes | None:
        """The JPEG of `shown` if it is already encoded (never waits, never encodes)."""
        latest = self._latest
        return latest[1] if latest[0] is shown else None

    def _encode(self, shown: Shown) -> bytes:
        h, w = shown.frame.image.shape[:2]
        if w > self.max_width:  # shrink first, so drawing and encoding touch the small image only
            # area averaging is fast for whole-number ratios (1280 -> 640) and slow otherwise
            interpolation = cv2.INTER_AREA if w % self.max_width == 0 else cv2.INTER_LINEAR
            small = cv2.resize(
                shown.frame.image, (self.max_width, round(h * self.max_width / w)), interpolation=interpolation
            )
            shown = replace(shown, frame=replace(shown.frame, image=small))
        image = render_overlay(shown)  # tiny frames are scaled up so the label stays readable
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise RuntimeError("OpenCV could not encode a frame as JPEG")
        return buf.tobytes()


@dataclass(frozen=True)
class SourceRates:
    capture_fps: float | None
    inference_fps: float | None
    p50_ms: float | None
    p95_ms: float | None


class RateWindow:
    """Per-source fps and latency percentiles over the last `RATE_WINDOW_S` seconds (sampled on demand, at
    most once a second, so nothing is computed while nobody asks)."""

    def __init__(self, board: Board, window_s: float = RATE_WINDOW_S) -> None:
        self.board = board
        self.window_s = window_s
        self._samples: deque[tuple[float, list[SourceCounters]]] = deque()
        self._lock = threading.Lock()

    def rates(self, now_counters: list[SourceCounters]) -> list[SourceRates]:
        now = time.monotonic()
        with self._lock:
            if not self._samples or now - self._samples[-1][0] >= 1.0:  # latencies trimmed: 40k bins are mostly 0
                kept = [replace(c, latency=_trimmed(c.latency)) for c in now_counters]
                self._samples.append((now, kept))
            while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
                self._samples.popleft()
            then, old = self._samples[0]
        if then == now:  # the first sample: measure from the start of the run
            then = self.board.start_mono
            old = [None] * len(now_counters)
        span = max(now - then, 1e-9)
        return [_rates(new, prev, span) for new, prev in zip(now_counters, old)]


def _trimmed(counts: np.ndarray) -> np.ndarray:
    filled = np.flatnonzero(counts)
    return counts[: filled[-1] + 1 if filled.size else 0]


def _rates(new: SourceCounters, old: SourceCounters | None, span: float) -> SourceRates:
    captured, classified = new.captured - (old.captured if old else 0), new.classified - (old.classified if old else 0)
    latency = new.latency.copy()
    if old is not None:  # counts only grow, so the older (trimmed) histogram is never the longer one
        latency[: len(old.latency)] -= old.latency
    return SourceRates(
        capture_fps=round(captured / span, 2),
        inference_fps=round(classified / span, 2),
        p50_ms=LatencyHistogram.percentile_ms(latency, 50),
        p95_ms=LatencyHistogram.percentile_ms(latency, 95),
    )
