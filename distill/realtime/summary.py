"""`ServeSummary`: what a serving run did, per source and in all, and its printable form.

This module does not run anything; `distill.realtime.serve` fills it in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SourceSummary:
    name: str  # credentials masked
    kind: str  # camera | url | file
    status: str  # ended | failed | stopped | reconnecting | running
    frames_captured: int
    frames_classified: int
    frames_dropped: int  # replaced in the slot before the inference thread took them
    label_changes: int
    reconnects: int
    error: str | None = None


@dataclass
class ServeSummary:
    """What a serving run did; `distill serve` prints it."""

    sources: list[SourceSummary]
    duration_s: float
    frames_classified: int
    inference_fps: float  # frames classified per second, all sources together
    latency_p50_ms: float | None  # capture to label
    latency_p95_ms: float | None
    frame_errors: int
    teacher: bool = False  # a teacher was there to fall back on
    fallbacks_offered: int = 0
    fallbacks_asked: int = 0
    teacher_answers: int = 0
    teacher_errors: int = 0
    hard_examples: int = 0
    hard_examples_skipped: int = 0  # answered frames the folder already held (same video and frame index)
    hard_examples_dir: Path | None = None
    stopped_by: str = "end"  # end | signal | quit | max-seconds
    shutdown_s: float = 0.0  # from the stop request until every thread was joined
    unjoined: list[str] = field(default_factory=list)  # threads still running after the join timeout

    @property
    def failures(self) -> list[SourceSummary]:
        return [s for s in self.sources if s.status == "failed"]

    @property
    def threads_joined(self) -> bool:
        return not self.unjoined

    def lines(self) -> list[str]:
        """A human-readable summary, one line per item (what `distill serve` prints)."""
        p50, p95 = _ms(self.latency_p50_ms), _ms(self.latency_p95_ms)
        out = [
            f"served {len(self.sources)} source(s) for {self.duration_s:.1f} s: {self.frames_classified} frames "
            f"classified ({self.inference_fps:.1f} fps), capture-to-label latency p50 {p50} / p95 {p95}"
        ]
        for s in self.sources:
            if s.status == "failed":
                out.append(f"  {s.name}: failed to open: {s.error}")
                continue
            out.append(
                f"  {s.name}: {s.status}, {s.frames_captured} captured, {s.frames_classified} classified, "
                f"{s.frames_dropped} dropped as stale, {s.label_changes} label changes"
                + (f", {s.reconnects} reconnects" if s.reconnects else "")
            )
        if self.frame_errors:
            out.append(f"  {self.frame_errors} frame(s) could not be classified (see the warnings)")
        if self.teacher:
            stored = (
                f"{self.hard_examples} hard example(s) -> {self.hard_examples_dir}" if self.hard_examples_dir else ""
            )
            out.append(
                f"teacher: {self.fallbacks_offered} offered, {self.fallbacks_asked} asked, {self.teacher_answers} "
                f"answered, {self.teacher_errors} failed; {stored or 'hard examples not kept'}"
            )
        joined = "all threads joined" if self.threads_joined else f"still running: {', '.join(self.unjoined)}"
        out.append(f"stopped by {self.stopped_by}; {joined} in {self.shutdown_s:.2f} s")
        return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"
