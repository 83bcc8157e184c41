"""The labelling run behind `distill label`: sample -> teacher -> label set, batched and resumable.

Decode workers (`distill._decode_workers`: processes, or one thread) decode only the frames sampling keeps and
hand them over as JPEGs, pre-shrunk to the stored size and to the teacher's `input_size`; a background thread
(`_feed.Producer`) turns them into batches of `Frame`s on a bounded queue; the teacher runs on the calling
thread, so the model never waits on video I/O and memory stays bounded. The workers start, and plan the videos,
while the teacher loads, so frames are waiting once it is ready. This process alone owns the `LabelSetWriter`,
which stores rows a shard at a time; a rerun skips finished videos, finished chunks and stored frames, so a
killed run resumes with nothing lost and nothing doubled. Running out of (GPU) memory halves the batch size and
goes on. The summary says where the time went: the teacher's busy share of the wall time, and the workers'
decoding time.

This module does not implement teachers (see `_teacher.py`), decode video (see `distill.decode`) or define the
storage format (see `distill.dataset`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill._decode_workers import stop_on_sigterm
from distill._progress import progress_bar
from distill.config import TaskConfig, save_config
from distill.dataset import MANIFEST, LabelSetWriter, label_row
from distill.decode import check_decode_device
from distill.errors import TeacherError, VideoError, is_out_of_memory, release_gpu_memory
from distill.label._feed import END, Batch, Producer, Resume
from distill.label._teacher import (
    Teacher,
    TeacherAnswer,
    TeacherFailure,
    build_teacher,
    describe_teacher,
    teacher_input_size,
    teacher_tag,
)
from distill.video import Failure, Frame, SampleStats, VideoFile, find_videos, probe

logger = logging.getLogger(__name__)


@dataclass
class LabelSummary:
    """What a labelling run did. Counts over the whole label set are in `per_class`, `unmatched`, `total_frames`."""

    out: Path
    videos_found: int = 0
    videos_already_done: int = 0  # finished by an earlier run, not opened again
    frames_labelled: int = 0  # stored by this run
    frames_already_done: int = 0  # sampled again but stored by an earlier run
    skipped_uncovered: int = 0  # annotations teacher: no segment covers the frame
    # (video, frame_index, reason): the teacher failed them this time (a server error); not stored, and their
    # videos are not marked finished, so the next run of the same command labels them
    frames_failed: list[tuple[str, int, str]] = field(default_factory=list)
    total_frames: int = 0  # in the label set
    per_class: dict[str, int] = field(default_factory=dict)
    unmatched: int = 0  # in the label set: answers that matched no class (generate mode)
    failures: list[Failure] = field(default_factory=list)
    stats: SampleStats = field(default_factory=SampleStats)
    seconds: float = 0.0  # labelling loop wall time (model loading excluded)
    batch_size: int = 0  # at the end (lower than asked if the teacher ran out of memory)
    video_s: float = 0.0  # media time sampled by this run
    teacher_s: float = 0.0  # wall time inside the teacher
    decode_s: float = 0.0  # decode workers' time (decoding, converting, encoding), over all workers
    first_batch_s: float = 0.0  # start-up: until the first frames reached the teacher (workers, plans, first decode)
    workers: int = 0

    @property
    def frames_per_s(self) -> float:
        return self.frames_labelled / self.seconds if self.seconds > 0 else 0.0

    @property
    def video_hours_per_hour(self) -> float:
        return self.video_s / self.seconds if self.seconds > 0 else 0.0

    @property
    def teacher_busy(self) -> float:
        """The teacher's share of the wall time: near 1, the teacher is the bottleneck; low, decoding is."""
        return min(self.teacher_s / self.seconds, 1.0) if self.seconds > 0 else 0.0

    @property
    def bottleneck(self) -> str:
        """Which side to scale, read off the teacher's busy share."""
        if self.teacher_busy >= 0.8:
            return "the teacher is the bottleneck (a larger --batch-size, a faster GPU)"
        return "decoding is the bottleneck (more --workers, --decode-device cuda, or --keyframes)"


def answer_batch(
    teacher: Teacher, frames: list[Frame], producer: Producer
) -> list[TeacherAnswer | TeacherFailure | None]:
    """Ask the teacher; on running out of memory halve the batch (for this and later batches) and retry."""
    size = producer.batch_size
    if len(frames) > size:  # batched before an out-of-memory error lowered the size
        return [a for i in range(0, len(frames), size) for a in answer_batch(teacher, frames[i : i + size], producer)]
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
        return answer_batch(teacher, frames[:half], producer) + answer_batch(teacher, frames[half:], producer)
    if len(answers) != len(frames):
        raise TeacherError(f"the teacher returned {len(answers)} answers for {len(frames)} frames; fix the backend")
    return answers


def _video_seconds(videos: Sequence[VideoFile]) -> float | None:
    """Media time of the videos (for the progress bar's ETA); None if unknown."""
    total = 0.0
    for video in videos:
        try:
            total += probe(video.path).duration_s
        except VideoError:
            continue
    return total or None


def run_label_local(
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
        >>> summary = run_label_local(["videos/"], "runs/labels", load_config("task.yaml"))  # doctest: +SKIP
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
    check_decode_device(cfg.sampling.decode_device, videos[0].path)
    writer, teacher, producer, resume, bar_total = _start(out, cfg, videos, teacher, overwrite, shard_rows, root)
    summary = LabelSummary(out=out, videos_found=len(videos), failures=list(failures), stats=producer.stats)
    summary.workers = producer.pool.workers
    start = time.perf_counter()
    with (
        stop_on_sigterm(),
        writer,
        progress_bar("labelling", total=bar_total, unit="video s", enabled=show_progress) as bar,
    ):
        try:
            _loop(teacher, producer, writer, resume, summary, bar, tag=teacher_tag(teacher.describe()))
        finally:
            producer.stop.set()
            producer.thread.join(timeout=10)
    summary.seconds = time.perf_counter() - start
    _finish(summary, producer, writer, resume)
    if summary.stats.videos == 0 and summary.videos_already_done == 0:
        raise VideoError(f"no video could be sampled from {', '.join(map(str, inputs))}; see the warnings above")
    return summary


def _start(
    out: Path,
    cfg: TaskConfig,
    videos: Sequence[VideoFile],
    teacher: Teacher | None,
    overwrite: bool,
    shard_rows: int,
    root: str | os.PathLike[str] | None,
) -> tuple[LabelSetWriter, Teacher, Producer, Resume, float | None]:
    """Open the label set, start decoding and build the teacher; also the media time to label (for the bar).

    The decode workers start and plan the videos while the teacher loads; when the teacher's input size is known
    beforehand (`teacher_input_size`) they decode too (the bounded queue holds a few batches), so frames are
    waiting once the teacher is ready. The producer thread is running when this returns.
    """
    writer = _resume_or_refuse(out, cfg, teacher, overwrite, shard_rows)
    resume = Resume(writer.manifest.get("finished") if writer else None, cfg.sampling, videos)
    done = frozenset(writer.done) if writer else frozenset()
    producer = Producer(videos, cfg.sampling, done, resume, cfg.teacher.batch_size)
    early = teacher.input_size if teacher is not None else teacher_input_size(cfg)
    producer.pool.teacher_size = early
    producer.pool.start()
    if early is not None:
        producer.thread.start()
    try:
        writer, teacher = _open(out, cfg, writer, teacher, overwrite, shard_rows, root)
        bar_total = _video_seconds(producer.todo)
        if early is not None and teacher.input_size != early:
            raise TeacherError(
                f"the {cfg.teacher.backend} teacher's input size is {teacher.input_size}, not the {early} its "
                "backend announced; fix the backend's input_size"
            )
    except BaseException:
        producer.stop.set()
        if producer.thread.is_alive():
            producer.thread.join(timeout=10)  # it closes the pool on its way out
        producer.pool.close()
        raise
    if early is None:
        producer.pool.teacher_size = teacher.input_size
        producer.thread.start()
    return writer, teacher, producer, resume, bar_total


def _resume_or_refuse(
    out: Path, cfg: TaskConfig, teacher: Teacher | None, overwrite: bool, shard_rows: int
) -> LabelSetWriter | None:
    """The existing label set to resume (refused at once, before a model loads, if its classes or teacher differ);
    None for a new one."""
    if not (out / MANIFEST).exists() or overwrite:
        return None
    description = teacher.describe() if teacher is not None else describe_teacher(cfg)
    return _writer(out, cfg, description, overwrite, shard_rows)


def _writer(
    out: Path, cfg: TaskConfig, description: dict[str, Any], overwrite: bool, shard_rows: int
) -> LabelSetWriter:
    return LabelSetWriter(
        out, cfg.class_names, description, config=cfg.to_dict(), shard_rows=shard_rows, overwrite=overwrite
    )


def _open(
    out: Path,
    cfg: TaskConfig,
    writer: LabelSetWriter | None,
    teacher: Teacher | None,
    overwrite: bool,
    shard_rows: int,
    root: str | os.PathLike[str] | None,
) -> tuple[LabelSetWriter, Teacher]:
    """Build the teacher, then create the label set if it is new: a teacher that fails to load leaves no debris."""
    if teacher is None:
        teacher = build_teacher(cfg, root=root)
    if writer is None:
        writer = _writer(out, cfg, teacher.describe(), overwrite, shard_rows)
    save_config(cfg, out / "config.yaml")
    return writer, teacher


def _finish(summary: LabelSummary, producer: Producer, writer: LabelSetWriter, resume: Resume) -> None:
    """Fill the summary from the producer and the manifest; record what is finished and the run's statistics."""
    summary.failures += producer.failures
    summary.videos_already_done = producer.videos_already_done
    summary.batch_size = producer.batch_size
    summary.decode_s = producer.decode_s
    counts = writer.manifest["counts"]
    summary.total_frames, summary.unmatched = counts["frames"], counts["unmatched"]
    summary.per_class = dict(counts["per_class"])
    if summary.frames_labelled or "run" not in writer.manifest:  # a no-op rerun keeps the real run's cost
        writer.update(finished=resume.state(), run=run_record(summary))
    else:
        writer.update(finished=resume.state())


def _loop(
    teacher: Teacher, producer: Producer, writer: LabelSetWriter, resume: Resume, summary: LabelSummary, bar, tag: str
) -> None:
    """Label batches until the producer ends. Finished chunks and videos are committed to `resume` (and the
    manifest) once a shard holds their rows; those still pending at the end are committed by the caller's flush."""
    pending = Batch()
    shards = len(writer.manifest["shards"])
    start = time.perf_counter()
    while True:
        item = producer.queue.get()
        if item is END:
            break
        if isinstance(item, BaseException):
            raise item
        if not summary.first_batch_s and item.frames:
            summary.first_batch_s = time.perf_counter() - start
        summary.teacher_s += _label(teacher, producer, writer, summary, item, tag)
        summary.frames_already_done += item.already_done
        summary.video_s += item.video_s
        written = len(writer.manifest["shards"]) != shards
        shards = len(writer.manifest["shards"])
        if written and writer.unsaved:  # the shard holds every earlier batch's rows, maybe not all of this one's
            _commit(resume, pending, summary)
            pending = Batch()
        pending.chunks_done += item.chunks_done
        pending.videos_done += item.videos_done
        safe = not writer.unsaved and (pending.chunks_done or pending.videos_done)  # every row added is in a shard
        if safe:
            _commit(resume, pending, summary)
            pending = Batch()
        if written or safe:
            writer.update(finished=resume.state())
        bar.advance(item.video_s)
        busy = summary.teacher_s / max(time.perf_counter() - start, 1e-9)
        bar.update(description=f"labelling (teacher busy {min(busy, 1.0):.0%})")
    writer.flush()
    _commit(resume, pending, summary)


def _commit(resume: Resume, pending: Batch, summary: LabelSummary) -> None:
    """Record finished chunks and videos, except those of videos with a frame the teacher failed this run."""
    failed = {video for video, _, _ in summary.frames_failed}
    resume.commit(
        [c for c in pending.chunks_done if c[0] not in failed], [v for v in pending.videos_done if v not in failed]
    )


def _label(
    teacher: Teacher, producer: Producer, writer: LabelSetWriter, summary: LabelSummary, batch: Batch, tag: str
) -> float:
    """Ask the teacher about one batch and store the answers; returns the seconds the teacher took."""
    start = time.perf_counter()
    answers = answer_batch(teacher, batch.frames, producer) if batch.frames else []
    took = time.perf_counter() - start
    for frame, jpeg, answer in zip(batch.frames, batch.jpegs, answers):
        if answer is None:
            summary.skipped_uncovered += 1
            continue
        if isinstance(answer, TeacherFailure):
            summary.frames_failed.append((frame.video, frame.frame_index, answer.reason))
            continue
        where = (frame.video, frame.frame_index, frame.timestamp_s)
        writer.add(label_row(*where, jpeg, answer.label, answer.probs, teacher=tag, raw=answer.raw))
        summary.frames_labelled += 1
    return took


def run_record(summary: LabelSummary) -> dict[str, Any]:
    """The last run's statistics, kept in the manifest."""
    return {
        "frames_labelled": summary.frames_labelled,
        "frames_already_done": summary.frames_already_done,
        "skipped_uncovered": summary.skipped_uncovered,
        "frames_failed": [f"{v}@{i}: {why}" for v, i, why in summary.frames_failed[:20]],
        "videos_failed": [f"{f.name}: {f.reason}" for f in summary.failures],
        "seconds": round(summary.seconds, 3),
        "frames_per_s": round(summary.frames_per_s, 3),
        "batch_size": summary.batch_size,
        "video_s": round(summary.video_s, 3),
        "video_hours_per_hour": round(summary.video_hours_per_hour, 3),
        "teacher_busy": round(summary.teacher_busy, 3),
        "first_batch_s": round(summary.first_batch_s, 3),
        "decode_s": round(summary.decode_s, 3),
        "workers": summary.workers,
    }
