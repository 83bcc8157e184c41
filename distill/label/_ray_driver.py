"""The Ray engine's driver side: which (video, chunk) work items are finished (`Ledger`), and the one writer's end
of the row stream (`Store`).

Rows come back from the Ray pipeline in any order, and a task that Ray ran twice may send a frame twice. The
ledger counts each chunk's distinct frames against the count its `chunk` row announces; a chunk is finished
once both agree, and a video once all its planned chunks are. Like the local engine, the run records chunks
and videos as finished (`Resume.commit`) only once a shard holds their rows, so a driver killed at any moment
loses at most the rows of its unwritten shard.

This module does not talk to Ray or decode video; `_ray_engine.py` and `_ray_stages.py` do.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from distill._progress import ProgressBar
from distill.dataset import LabelSetWriter, label_row
from distill.decode import Chunk
from distill.errors import TeacherError
from distill.label._feed import Resume
from distill.label._ray_stages import CHUNK, ERROR, FAILED, RETRY, UNCOVERED, describe_error, rows_of
from distill.label._run import LabelSummary
from distill.video import Failure

logger = logging.getLogger(__name__)


@dataclass
class _Chunk:
    start_s: float
    end_s: float
    expected: int | None = None  # frames the chunk's sampling handed over, once its `chunk` row arrived
    seen: set[int] = field(default_factory=set)  # frame indices received (stored, uncovered or failed)


@dataclass
class Ledger:
    """Per video: the chunks this run must finish, and what came back of them.

    Attributes:
        total_s: media time of the work this run was given (the progress bar's total).
    """

    chunks: dict[tuple[str, int], _Chunk] = field(default_factory=dict)
    open_chunks: dict[str, set[int]] = field(default_factory=dict)  # video -> chunk numbers not yet finished
    rest_s: dict[str, float] = field(default_factory=dict)  # video -> media time outside its planned chunks
    failed: dict[str, str] = field(default_factory=dict)  # video -> reason (first one)
    finished_chunks: list[tuple[str, int]] = field(default_factory=list)  # not yet committed
    finished_videos: list[str] = field(default_factory=list)  # not yet committed
    total_s: float = 0.0
    videos_finished: int = 0

    def plan(self, video: str, chunks: list[Chunk], duration_s: float) -> float:
        """Add a planned video's unfinished chunks; returns the media time finished at once (a video with none)."""
        self.open_chunks[video] = {c.number for c in chunks}
        for c in chunks:
            self.chunks[(video, c.number)] = _Chunk(c.start_s, c.end_s)
        self.rest_s[video] = max(duration_s - sum(c.end_s - c.start_s for c in chunks), 0.0)
        self.total_s += duration_s
        return self._video_finished(video) if not chunks else 0.0

    def frame(self, video: str, number: int, index: int) -> bool:
        """A frame came back; False if it came already (a task Ray ran again), so it must not be stored twice."""
        entry = self.chunks.get((video, number))
        if entry is None or index in entry.seen:
            return False
        entry.seen.add(index)
        return True

    def chunk_done(self, video: str, number: int, frames: int) -> float:
        """A chunk's sampling finished, having handed over `frames` frames; returns media time newly finished."""
        entry = self.chunks.get((video, number))
        if entry is None or entry.expected is not None:
            return 0.0
        entry.expected = frames
        return self.settle(video, number)

    def settle(self, video: str, number: int) -> float:
        """Finish the chunk if all its frames are in; returns the media time that finished (0 if none did)."""
        entry = self.chunks.get((video, number))
        if entry is None or entry.expected is None or len(entry.seen) < entry.expected:
            return 0.0
        if number not in self.open_chunks.get(video, set()):
            return 0.0
        self.open_chunks[video].discard(number)
        self.finished_chunks.append((video, number))
        if not self.open_chunks[video] and video not in self.failed:
            return entry.end_s - entry.start_s + self._video_finished(video)
        return entry.end_s - entry.start_s

    def _video_finished(self, video: str) -> float:
        self.finished_videos.append(video)
        self.videos_finished += 1
        return self.rest_s.get(video, 0.0)

    def fail(self, video: str, reason: str) -> Failure | None:
        """Mark a video failed; its first failure is returned (to report), later ones None."""
        if video in self.failed:
            return None
        self.failed[video] = reason
        return Failure(video, reason)

    def take_finished(self, skip: set[str]) -> tuple[list[tuple[str, int]], list[str]]:
        """The chunks and videos finished since the last call, except those of videos in `skip` (and failed videos:
        their finished chunks count, as in the local engine, but the video stays open)."""
        chunks = [c for c in self.finished_chunks if c[0] not in skip]
        videos = [v for v in self.finished_videos if v not in skip and v not in self.failed]
        self.finished_chunks, self.finished_videos = [], []
        return chunks, videos

    def lost(self, tries: int) -> list[Failure]:
        """Videos with a chunk that never came back whole (its task failed `tries` times), reported once each."""
        failures = []
        for video, numbers in sorted(self.open_chunks.items()):
            if numbers and video not in self.failed:
                chunk = self.chunks[(video, min(numbers))]
                span = f"{chunk.start_s:g}-{chunk.end_s:g} s"
                reason = (
                    f"the task of its chunk at {span} failed {tries} times (a worker died or raised; see the Ray logs)"
                )
                failures.append(self.fail(video, reason))
        return [f for f in failures if f is not None]


class Store:
    """The driver's end of the pipeline: rows -> the one `LabelSetWriter`; finished work -> `Resume`."""

    def __init__(
        self,
        writer: LabelSetWriter,
        resume: Resume,
        ledger: Ledger,
        summary: LabelSummary,
        bar: ProgressBar,
        tag: str,
    ) -> None:
        self.writer, self.resume, self.ledger = writer, resume, ledger
        self.summary, self.bar, self.tag = summary, bar, tag
        self.shards = len(writer.manifest["shards"])
        self.start = time.perf_counter()

    def consume(self, batches: Any, backend: str, actors: int) -> None:
        """Store the rows of every batch (column name -> array) until the stream ends."""
        for batch in batches:
            for row in rows_of(batch):
                kind = row["kind"]
                if kind == ERROR:
                    raise TeacherError(describe_error(row["info"], backend))
                if kind == FAILED:
                    self._failed(row["video"], row["info"])
                elif kind == CHUNK:
                    self._chunk(row)
                else:
                    self._frame(row)
            busy = self.summary.teacher_s / max((time.perf_counter() - self.start) * actors, 1e-9)
            self.bar.update(description=f"labelling (teacher busy {min(busy, 1.0):.0%})")

    def _failed(self, video: str, reason: str) -> None:
        failure = self.ledger.fail(video, reason)
        if failure is not None:
            self.summary.failures.append(failure)
            logger.warning("skipping %s: %s", video, reason)

    def _chunk(self, row: dict[str, Any]) -> None:
        info = json.loads(row["info"])
        s = self.summary
        s.stats.frames_read += info["frames_read"]
        s.stats.frames_kept += info["frames_kept"]
        s.stats.duplicates += info["duplicates"]
        s.decode_s += info["decode_s"]
        s.frames_already_done += info["skipped"]
        self._advance(self.ledger.chunk_done(row["video"], int(row["chunk"]), info["frames"]))

    def _frame(self, row: dict[str, Any]) -> None:
        video, number, index = row["video"], int(row["chunk"]), int(row["frame_index"])
        if not self.ledger.frame(video, number, index):
            return  # sent twice (a task Ray ran again)
        s = self.summary
        s.teacher_s += float(row["teacher_s"])
        if (video, index) in self.writer.done:
            s.frames_already_done += 1
        elif row["state"] == UNCOVERED:
            s.skipped_uncovered += 1
        elif row["state"] == RETRY:
            s.frames_failed.append((video, index, str(row["info"])))
        else:
            jpeg, probs = bytes(row["jpeg"]), row["probs"]
            where = (video, index, float(row["timestamp_s"]))
            label, raw = _text(row["label"]), _text(row["raw"])
            self.writer.add(label_row(*where, jpeg, label, probs, teacher=self.tag, raw=raw))
            s.frames_labelled += 1
            if len(self.writer.manifest["shards"]) != self.shards:  # a shard was written: all rows so far are safe
                self.shards = len(self.writer.manifest["shards"])
                self._commit()
        self._advance(self.ledger.settle(video, number))

    def _advance(self, seconds: float) -> None:
        if seconds:
            self.summary.video_s += seconds
            self.bar.advance(seconds)

    def _commit(self) -> None:
        """Record the chunks and videos finished so far (all their rows are in shards by now)."""
        failed = {video for video, _, _ in self.summary.frames_failed}
        self.resume.commit(*self.ledger.take_finished(failed))
        self.writer.update(finished=self.resume.state())

    def close(self) -> None:
        self.writer.flush()
        failed = {video for video, _, _ in self.summary.frames_failed}
        self.resume.commit(*self.ledger.take_finished(failed))


def _text(value: Any) -> str | None:
    """A text column's value: Arrow turns a column of None only into NaNs."""
    return value if isinstance(value, str) else None
