"""The Ray engine's bookkeeping on the driver: which (video, chunk) work items are finished, failed or pending.

Rows come back from the Ray pipeline in any order, and a task that Ray ran twice may send a frame twice. The
ledger counts each chunk's distinct frames against the count its `chunk` row announces; a chunk is finished
once both agree, and a video once all its planned chunks are. Like the local engine, the run records chunks
and videos as finished (`Resume.commit`) only once a shard holds their rows, so a driver killed at any moment
loses at most the rows of its unwritten shard.

This module does not talk to Ray, decode video or store rows; `_ray_engine.py` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from distill.decode import Chunk
from distill.video import Failure


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
