"""Stats lines of a serving run: capture and inference fps, drops, fallbacks, capture-to-label latency.

The main thread snapshots the workers' counters (each written by one thread only) and diffs two snapshots,
so no worker ever waits for the stats. A line looks like:

```json
{"event": "stats", "t": 1718000000.0, "elapsed_s": 5.0, "interval_s": 5.0, "capture_fps": {"cam.mp4": 25.0},
 "inference_fps": 25.0, "dropped": 0, "fallbacks": 3, "teacher_answers": 2, "teacher_errors": 0,
 "frame_errors": 0, "latency_ms": {"p50": 4.1, "p95": 7.9}}
```

This module does not run threads; it only reads their counters.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from distill.realtime._state import LatencyHistogram

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    at: float  # monotonic
    captured: tuple[int, ...]  # per source
    classified: tuple[int, ...]  # per source
    dropped: int
    latency: np.ndarray  # histogram counts
    asked: int
    answered: int
    teacher_errors: int
    frame_errors: int


def take_snapshot(run: Any, at: float | None = None) -> Snapshot:
    """Counters of a `distill.realtime.serve._Run` now."""
    fallback = run.fallback.stats if run.fallback is not None else None
    return Snapshot(
        at=time.monotonic() if at is None else at,
        captured=tuple(c.stats.frames for c in run.captures),
        classified=tuple(s.classified for s in run.states),
        dropped=sum(slot.dropped for slot in run.frames),
        latency=run.inference.latency.snapshot(),
        asked=fallback.asked if fallback else 0,
        answered=fallback.answered if fallback else 0,
        teacher_errors=fallback.errors if fallback else 0,
        frame_errors=run.inference.errors,
    )


def stats_record(run: Any, old: Snapshot, new: Snapshot) -> dict[str, Any]:
    """The stats line for the interval between two snapshots (fallback counts are cumulative)."""
    interval = max(new.at - old.at, 1e-9)
    latency = new.latency - old.latency
    return {
        "event": "stats",
        "t": round(time.time(), 3),
        "elapsed_s": round(new.at - run.start_mono, 3),
        "interval_s": round(interval, 3),
        "capture_fps": {
            s.name: round((n - o) / interval, 2) for s, n, o in zip(run.states, new.captured, old.captured)
        },
        "inference_fps": round((sum(new.classified) - sum(old.classified)) / interval, 2),
        "dropped": new.dropped - old.dropped,
        "fallbacks": new.asked,
        "teacher_answers": new.answered,
        "teacher_errors": new.teacher_errors,
        "frame_errors": new.frame_errors,
        "latency_ms": {
            "p50": LatencyHistogram.percentile_ms(latency, 50),
            "p95": LatencyHistogram.percentile_ms(latency, 95),
        },
    }


class StatsClock:
    """Writes a stats line every `run.stats_every_s` seconds and keeps per-source fps for the display."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self._zero = Snapshot(run.start_mono, (0,) * len(run.states), (0,) * len(run.states), 0,
                              np.zeros_like(run.inference.latency.counts), 0, 0, 0, 0)  # fmt: skip
        self._last = self._zero
        self._next = run.start_mono + run.stats_every_s
        self._fps_at = run.start_mono
        self._fps_counts = (0,) * len(run.states)
        self._fps: list[float | None] = [None] * len(run.states)

    def maybe_write(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = max(self._next + self.run.stats_every_s, now)
        new = take_snapshot(self.run, now)
        record = stats_record(self.run, self._last, new)
        self._last = new
        logger.info(
            "stats: inference %.1f fps, capture %s, dropped %d, fallbacks %d, latency p50 %s ms p95 %s ms",
            record["inference_fps"],
            ", ".join(f"{k} {v:.1f} fps" for k, v in record["capture_fps"].items()),
            record["dropped"],
            record["fallbacks"],
            record["latency_ms"]["p50"],
            record["latency_ms"]["p95"],
        )
        self.run.emit(record)

    def final(self) -> dict[str, Any]:
        """The stats line over the whole run (written once at the end)."""
        record = stats_record(self.run, self._zero, take_snapshot(self.run, self.run.end_mono))
        record["final"] = True
        return record

    def fps_per_source(self) -> list[float | None]:
        """Frames classified per second of each source, over about the last second."""
        now = time.monotonic()
        if now - self._fps_at >= 1.0:
            counts = tuple(s.classified for s in self.run.states)
            self._fps = [(c - o) / (now - self._fps_at) for c, o in zip(counts, self._fps_counts)]
            self._fps_at, self._fps_counts = now, counts
        return self._fps
