"""Feeding the teacher: decode-worker events -> batches of `Frame`s on a bounded queue, and what is finished.

A background thread reads the events of the decode workers (`distill._decode_workers`), decodes the JPEG each
frame arrives as (the stored image, or the teacher's own pre-shrunk view where that differs), and groups frames
into batches of the teacher's batch size. Finished chunks and videos travel with the batch that holds their
last frame, so the run records them as finished only once that batch's rows are in a shard (`Resume`).

This module does not ask the teacher or store rows (`_run.py` does), and does not decode video.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill._decode_workers import ChunkDone, DecodePool, EncodedFrame, VideoDone
from distill.config import SamplingConfig
from distill.dataset import decode_image
from distill.video import Failure, Frame, SampleStats, VideoFile

END = object()


@dataclass
class Batch:
    """Frames for one teacher call, their stored JPEGs, and what is finished once they are stored."""

    frames: list[Frame] = field(default_factory=list)  # what the teacher is given (pre-shrunk to its input size)
    jpegs: list[bytes] = field(default_factory=list)  # what is stored, one per frame
    chunks_done: list[tuple[str, int]] = field(default_factory=list)  # (video, chunk number)
    videos_done: list[str] = field(default_factory=list)
    video_s: float = 0.0  # media time covered since the previous batch (progress)
    already_done: int = 0  # frames sampled again but stored by an earlier run


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


class Resume:
    """What earlier runs finished with the same sampling, as the manifest's `finished` entry keeps it.

    `{"sampling": <which frames>, "videos": {name: file size}, "chunks": {name: {"size": s, "numbers": [...]}}}`:
    a video or chunk counts as finished only while its file keeps the size it had.
    """

    def __init__(self, state: dict[str, Any] | None, sampling: SamplingConfig, videos: Sequence[VideoFile]) -> None:
        self.key = sampling.frames_key()
        self.sizes = {v.name: file_size(v.path) for v in videos}
        state = state if state and state.get("sampling") == self.key else {}
        self.videos = {str(k): int(v) for k, v in (state.get("videos") or {}).items()}
        self.chunks = {str(k): dict(v) for k, v in (state.get("chunks") or {}).items()}

    def video_done(self, name: str) -> bool:
        return self.videos.get(name) == self.sizes.get(name)

    def finished_chunks(self) -> dict[str, set[int]]:
        return {k: set(v["numbers"]) for k, v in self.chunks.items() if v.get("size") == self.sizes.get(k)}

    def commit(self, chunks: Sequence[tuple[str, int]], videos: Sequence[str]) -> None:
        """Record chunks and videos whose rows are all stored."""
        for name, number in chunks:
            entry = self.chunks.get(name)
            if entry is None or entry.get("size") != self.sizes[name]:
                entry = self.chunks[name] = {"size": self.sizes[name], "numbers": []}
            if number not in entry["numbers"]:
                entry["numbers"].append(number)
        for name in videos:
            self.videos[name] = self.sizes[name]
            self.chunks.pop(name, None)

    def state(self) -> dict[str, Any]:
        return {"sampling": self.key, "videos": dict(self.videos), "chunks": dict(self.chunks)}


class Producer:
    """Background thread: decode-worker events -> `Batch`es on a bounded queue; exceptions go to the queue."""

    def __init__(
        self,
        videos: Sequence[VideoFile],
        sampling: SamplingConfig,
        done: frozenset[tuple[str, int]],
        resume: Resume,
        batch_size: int,
    ) -> None:
        todo = [v for v in videos if not resume.video_done(v.name)]
        self.videos_already_done = len(videos) - len(todo)
        done_frames: dict[str, set[int]] = {}
        for name, index in done:
            done_frames.setdefault(name, set()).add(index)
        self.pool = DecodePool(todo, sampling, finished_chunks=resume.finished_chunks(), done_frames=done_frames)
        self.todo = todo
        self.batch_size = batch_size  # lowered by the main thread after an out-of-memory error
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.stop = threading.Event()
        self.stats = SampleStats()
        self.failures: list[Failure] = []
        self.decode_s = 0.0  # worker time, over all workers
        self.thread = threading.Thread(target=self._run, name="distill-label-producer", daemon=True)

    def _run(self) -> None:
        try:
            self._produce()
            self._put(END)
        except BaseException as exc:  # surfaced on the main thread
            self._put(exc)
        finally:
            self.pool.close()

    def _put(self, item: object) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _produce(self) -> None:
        batch = Batch()
        for event in self.pool.events(self.stop):
            if self.stop.is_set():
                return
            if isinstance(event, EncodedFrame):
                image = decode_image(event.teacher_jpeg or event.jpeg)
                batch.frames.append(Frame(event.video, event.frame_index, event.timestamp_s, image))
                batch.jpegs.append(event.jpeg)
                if len(batch.frames) >= self.batch_size:
                    self._put(batch)
                    batch = Batch()
            elif isinstance(event, ChunkDone):
                self.stats.add(event.stats)
                self.decode_s += event.decode_s
                batch.chunks_done.append((event.video, event.number))
                batch.video_s += event.seconds
                batch.already_done += event.skipped
            elif isinstance(event, VideoDone):
                self.stats.videos += 1
                batch.videos_done.append(event.video)
                batch.video_s += event.seconds
            else:
                self.failures.append(event)
        self._put(batch)  # the rest (possibly empty: it still carries progress and finished chunks)
