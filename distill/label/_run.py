"""The labelling run behind `distill label`: sample -> teacher -> label set, batched and resumable.

A background thread finds, decodes and samples the videos, encodes the stored JPEGs and prepares the teacher's
inputs (`Frame`s, pre-shrunk to the teacher's `input_size`), handing whole batches over a bounded queue; the teacher
runs on the calling thread, so the model never waits on video I/O and memory stays bounded (two batches in the
queue plus at most one unsaved shard). `LabelSetWriter` stores rows a shard at a time; a rerun skips frames
already stored and videos already finished, so a killed run resumes with nothing lost and nothing doubled.
Running out of (GPU) memory halves the batch size and goes on.

This module does not implement teachers (see `_teacher.py`) or the storage format (see `distill.dataset`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill._progress import progress_bar
from distill.config import SamplingConfig, TaskConfig, save_config
from distill.dataset import MANIFEST, LabelSetWriter, label_row
from distill.errors import TeacherError, VideoError, is_out_of_memory, release_gpu_memory
from distill.label._teacher import Teacher, TeacherAnswer, build_teacher, describe_teacher, teacher_tag
from distill.video import (
    Failure,
    Frame,
    SampleStats,
    VideoFile,
    encode_jpeg,
    find_videos,
    probe,
    resize_short_side,
    sample_videos,
)

logger = logging.getLogger(__name__)

_END = object()


@dataclass
class LabelSummary:
    """What a labelling run did. Counts over the whole label set are in `per_class`, `unmatched`, `total_frames`."""

    out: Path
    videos_found: int = 0
    videos_already_done: int = 0  # finished by an earlier run, not opened again
    frames_labelled: int = 0  # stored by this run
    frames_already_done: int = 0  # sampled again but stored by an earlier run
    skipped_uncovered: int = 0  # annotations teacher: no segment covers the frame
    total_frames: int = 0  # in the label set
    per_class: dict[str, int] = field(default_factory=dict)
    unmatched: int = 0  # in the label set: answers that matched no class (generate mode)
    failures: list[Failure] = field(default_factory=list)
    stats: SampleStats = field(default_factory=SampleStats)
    seconds: float = 0.0  # labelling loop wall time (model loading excluded)
    batch_size: int = 0  # at the end (lower than asked if the teacher ran out of memory)

    @property
    def frames_per_s(self) -> float:
        return self.frames_labelled / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Batch:
    frames: list[Frame] = field(default_factory=list)  # what the teacher is given (pre-shrunk to its input size)
    jpegs: list[bytes] = field(default_factory=list)  # what is stored, one per frame
    videos_done: list[tuple[str, int]] = field(default_factory=list)  # (name, size) of videos complete with this batch
    sampled: int = 0  # sampling positions passed since the previous batch (progress)
    already_done: int = 0


class _Producer:
    """Background thread: videos -> prepared batches on a bounded queue; exceptions are forwarded to the queue."""

    def __init__(
        self,
        videos: list[VideoFile],
        cfg: TaskConfig,
        done: frozenset,
        finished: dict[str, int],
        input_size: int | None,
        batch_size: int,
    ) -> None:
        self.videos, self.sampling, self.done, self.finished = videos, cfg.sampling, done, finished
        self.input_size = input_size
        self.batch_size = batch_size  # lowered by the main thread after an out-of-memory error
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.stop = threading.Event()
        self.stats = SampleStats()
        self.failures: list[Failure] = []
        self.videos_already_done = 0
        self._counted = 0
        self.thread = threading.Thread(target=self._run, name="distill-label-producer", daemon=True)

    def _run(self) -> None:
        try:
            self._produce()
            self._put(_END)
        except BaseException as exc:  # surfaced on the main thread
            self._put(exc)

    def _put(self, item: object) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _send(self, batch: _Batch) -> None:
        counted = self.stats.frames_kept + self.stats.duplicates
        batch.sampled, self._counted = counted - self._counted, counted
        self._put(batch)

    def _produce(self) -> None:
        batch = _Batch()
        for video in self.videos:
            size = _size(video.path)
            if self.finished.get(video.name) == size:
                self.videos_already_done += 1
                continue
            failed = len(self.failures)
            for frame in sample_videos([video], self.sampling, stats=self.stats, failures=self.failures):
                if self.stop.is_set():
                    return
                if (frame.video, frame.frame_index) in self.done:
                    batch.already_done += 1
                    continue
                self._add(batch, frame)
                if len(batch.frames) >= self.batch_size:
                    self._send(batch)
                    batch = _Batch()
            if len(self.failures) == failed:
                batch.videos_done.append((video.name, size))
        self._send(batch)  # the rest (possibly empty: it still carries progress and finished videos)

    def _add(self, batch: _Batch, frame: Frame) -> None:
        batch.jpegs.append(encode_jpeg(resize_short_side(frame.image, self.sampling.image_size)))
        if self.input_size:
            frame = dataclasses.replace(frame, image=resize_short_side(frame.image, self.input_size))
        batch.frames.append(frame)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _answer(teacher: Teacher, frames: list[Frame], producer: _Producer) -> list[TeacherAnswer | None]:
    """Ask the teacher; on running out of memory halve the batch (for this and later batches) and retry."""
    size = producer.batch_size
    if len(frames) > size:  # batched before an out-of-memory error lowered the size
        return [a for i in range(0, len(frames), size) for a in _answer(teacher, frames[i : i + size], producer)]
    try:
        answers = list(teacher.label(frames))
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        if len(frames) == 1:
            raise TeacherError(
                "out of GPU memory even at batch size 1; use a smaller model, --device cpu, or free the GPU"
            ) from None
        half = len(frames) // 2
        producer.batch_size = max(1, min(producer.batch_size, half))
        logger.warning("out of memory at batch size %d; halving to %d and going on", len(frames), half)
        release_gpu_memory()
        return _answer(teacher, frames[:half], producer) + _answer(teacher, frames[half:], producer)
    if len(answers) != len(frames):
        raise TeacherError(f"the teacher returned {len(answers)} answers for {len(frames)} frames; fix the backend")
    return answers


def _expected_samples(videos: Sequence[VideoFile], sampling: SamplingConfig) -> int | None:
    """Roughly how many frames sampling will visit (for the progress bar's ETA); None if unknown."""
    total = 0
    for video in videos:
        try:
            duration = probe(video.path).duration_s
        except VideoError:
            continue
        span = max(0.0, min(duration, sampling.end_s or duration) - sampling.start_s)
        n = int(span * sampling.fps) + 1 if span > 0 else 0
        total += min(n, sampling.max_frames_per_video or n)
    return total or None


def _finished_videos(writer: LabelSetWriter, sampling: SamplingConfig) -> dict[str, int]:
    """Videos an earlier run finished with the same sampling settings: name -> file size when finished."""
    state = writer.manifest.get("finished") or {}
    if state.get("sampling") != dataclasses.asdict(sampling):
        return {}
    return {str(k): int(v) for k, v in (state.get("videos") or {}).items()}


def run_label(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    cfg: TaskConfig,
    *,
    overwrite: bool = False,
    show_progress: bool = False,
    shard_rows: int = 512,
    teacher: Teacher | None = None,
    root: str | os.PathLike[str] | None = None,
) -> LabelSummary:
    """Label every sampled frame of `inputs` into the label set `out` (Parquet shards + manifest + config.yaml).

    Rerunning with the same classes and teacher resumes: stored frames are skipped, finished videos are not
    opened again. Different classes or teacher raise `DatasetError` unless `overwrite`.

    Args:
        inputs: video files, folders (recursive) or globs.
        out: the label set folder.
        cfg: the task config (classes, question, sampling, teacher).
        shard_rows: frames per shard; a killed run redoes at most this many.
        teacher: an already built teacher (default: `build_teacher(cfg)`).
        root: passed to `build_teacher`: the folder video names are relative to, where an annotations CSV
            names them with it (default: the input folder, when `inputs` is one folder).

    Raises:
        VideoError: no input is a readable video. TeacherError, DatasetError, ConfigError: one line each.

    Example:
        >>> summary = run_label(["videos/"], "runs/labels", load_config("task.yaml"))  # doctest: +SKIP
        >>> summary.frames_labelled, summary.per_class  # doctest: +SKIP
    """
    cfg.require_classes()
    out = Path(out)
    videos, failures = find_videos(inputs)
    if not videos:
        reason = f" ({failures[0].name}: {failures[0].reason})" if failures else ""
        raise VideoError(f"no video found in {', '.join(map(str, inputs))}{reason}; pass video files or folders")
    if root is None and len(inputs) == 1 and Path(inputs[0]).is_dir():
        root = inputs[0]  # CSV paths given with the folder (absolute or as typed) still match
    writer, teacher = _open(out, cfg, teacher, overwrite, shard_rows, root)
    finished = _finished_videos(writer, cfg.sampling)
    producer = _Producer(
        videos,
        cfg,
        frozenset(writer.done),
        finished,
        input_size=teacher.input_size,
        batch_size=cfg.teacher.batch_size,
    )
    summary = LabelSummary(out=out, videos_found=len(videos), failures=list(failures), stats=producer.stats)
    todo = [v for v in videos if finished.get(v.name) != _size(v.path)]
    start = time.perf_counter()
    with writer, progress_bar("labelling", total=_expected_samples(todo, cfg.sampling), enabled=show_progress) as bar:
        producer.thread.start()
        try:
            pending = _loop(teacher, producer, writer, finished, summary, bar, tag=teacher_tag(teacher.describe()))
        finally:
            producer.stop.set()
            producer.thread.join(timeout=10)
    finished.update(pending)  # the writer has flushed their last rows
    summary.seconds = time.perf_counter() - start
    _finish(summary, producer, writer, finished)
    if summary.stats.videos == 0 and summary.videos_already_done == 0:
        raise VideoError(f"no video could be sampled from {', '.join(map(str, inputs))}; see the warnings above")
    return summary


def _open(
    out: Path,
    cfg: TaskConfig,
    teacher: Teacher | None,
    overwrite: bool,
    shard_rows: int,
    root: str | os.PathLike[str] | None,
) -> tuple[LabelSetWriter, Teacher]:
    """Open the label set and build the teacher, in the order that fails fastest and leaves no debris."""
    description = teacher.describe() if teacher is not None else describe_teacher(cfg)
    opts = {"config": cfg.to_dict(), "shard_rows": shard_rows, "overwrite": overwrite}
    writer = None
    if (out / MANIFEST).exists() and not overwrite:  # resume, or refuse at once (before loading a model)
        writer = LabelSetWriter(out, cfg.class_names, description, **opts)
    if teacher is None:
        teacher = build_teacher(cfg, root=root)
    if writer is None:  # only now: a teacher that fails to load leaves no label set behind
        writer = LabelSetWriter(out, cfg.class_names, teacher.describe(), **opts)
    save_config(cfg, out / "config.yaml")
    return writer, teacher


def _finish(summary: LabelSummary, producer: _Producer, writer: LabelSetWriter, finished: dict[str, int]) -> None:
    """Fill the summary from the producer and the manifest; record finished videos and run statistics."""
    summary.failures += producer.failures
    summary.videos_already_done = producer.videos_already_done
    summary.batch_size = producer.batch_size
    counts = writer.manifest["counts"]
    summary.total_frames, summary.unmatched = counts["frames"], counts["unmatched"]
    summary.per_class = dict(counts["per_class"])
    state = {"sampling": dataclasses.asdict(producer.sampling), "videos": finished}
    if summary.frames_labelled or "run" not in writer.manifest:  # a no-op rerun keeps the real run's cost
        writer.update(finished=state, run=_run_record(summary))
    else:
        writer.update(finished=state)


def _loop(
    teacher: Teacher,
    producer: _Producer,
    writer: LabelSetWriter,
    finished: dict[str, int],
    summary: LabelSummary,
    bar: Any,
    tag: str,
) -> dict[str, int]:
    """Label batches until the producer ends; returns finished videos whose last rows are not yet in a shard."""
    pending: dict[str, int] = {}
    shards = len(writer.manifest["shards"])
    while True:
        item = producer.queue.get()
        if item is _END:
            return pending
        if isinstance(item, BaseException):
            raise item
        answers = _answer(teacher, item.frames, producer) if item.frames else []
        for frame, jpeg, answer in zip(item.frames, item.jpegs, answers):
            if answer is None:
                summary.skipped_uncovered += 1
                continue
            where = (frame.video, frame.frame_index, frame.timestamp_s)
            writer.add(label_row(*where, jpeg, answer.label, answer.probs, teacher=tag, raw=answer.raw))
            summary.frames_labelled += 1
        summary.frames_already_done += item.already_done
        pending.update(item.videos_done)
        if len(writer.manifest["shards"]) != shards:  # a shard was written: everything added so far is safe
            shards = len(writer.manifest["shards"])
            finished.update(pending)
            pending = {}
            writer.update(finished={"sampling": dataclasses.asdict(producer.sampling), "videos": finished})
        bar.advance(item.sampled)


def _run_record(summary: LabelSummary) -> dict[str, Any]:
    """The last run's statistics, kept in the manifest."""
    return {
        "frames_labelled": summary.frames_labelled,
        "frames_already_done": summary.frames_already_done,
        "skipped_uncovered": summary.skipped_uncovered,
        "videos_failed": [f"{f.name}: {f.reason}" for f in summary.failures],
        "seconds": round(summary.seconds, 3),
        "frames_per_s": round(summary.frames_per_s, 3),
        "batch_size": summary.batch_size,
    }
