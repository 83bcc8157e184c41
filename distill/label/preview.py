"""`distill label --preview N`: the teacher's answers on N frames spread over the videos, in minutes.

The frames are spread over the videos in proportion to their length (every video gets one while N allows),
evenly in time within each, and read by seeking, so a preview of hours of video decodes about N frames. The
teacher answers them in batches of `PREVIEW_BATCH` (one call for the default 24). The rows come back in memory
(`LABEL_SCHEMA` columns), for `distill.evaluate.review` to draw; nothing is written.

This module does not write label sets (see `_run.py`) and does not draw the page.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from distill._decode_workers import encode_frame
from distill.config import SamplingConfig, TaskConfig
from distill.dataset import LABEL_SCHEMA, decode_image, label_row
from distill.decode import chunk_near, media_end, read_timeline, sample_chunk
from distill.errors import TeacherError, VideoError, first_line, is_out_of_memory
from distill.label._teacher import Teacher, TeacherFailure, build_teacher, teacher_tag
from distill.video import Frame, VideoFile, find_videos, probe

PREVIEW_BATCH = 24  # frames per teacher call


@dataclass
class Preview:
    """The previewed frames and the teacher's answers (`table` has `LABEL_SCHEMA` columns)."""

    table: pa.Table
    classes: list[str]
    teacher: dict[str, Any]
    calls: int = 0  # teacher calls made
    seconds: float = 0.0  # teacher time
    skipped: int = 0  # frames the teacher had no answer for
    failures: list[str] = field(default_factory=list)


def spread(durations: Sequence[float], n: int) -> list[int]:
    """How many of `n` frames each video gets: one each while `n` allows, the rest by duration (largest remainder)."""
    k = len(durations)
    if k == 0 or n <= 0:
        return [0] * k
    if n <= k:  # the longest videos get one each
        longest = set(np.argsort(-np.asarray(durations, float), kind="stable")[:n].tolist())
        return [1 if i in longest else 0 for i in range(k)]
    weights = np.maximum(np.asarray(durations, float), 1e-9)
    share = (n - k) * weights / weights.sum()
    counts = np.floor(share).astype(int)
    rest = np.argsort(-(share - counts), kind="stable")[: n - k - int(counts.sum())]
    counts[rest] += 1
    return (counts + 1).tolist()


def _read_at(video: VideoFile, count: int, sampling: SamplingConfig) -> list[Frame]:
    """`count` frames evenly spread over the sampled span of one video (centres of equal slices), by seeking.

    The frames carry the frame index and time a labelling run gives them.
    """
    timeline = read_timeline(video.path)
    end = media_end(timeline, sampling)
    times = sampling.start_s + (np.arange(count) + 0.5) * max(end - sampling.start_s, 0.0) / count
    chunk = chunk_near(video, times, timeline)
    if chunk is None:
        return []
    every = dataclasses.replace(sampling, dedup=False, keyframes=False, max_frames_per_video=None)
    return list(sample_chunk(chunk, every))


def preview_frames(inputs: Sequence[str | os.PathLike[str]], cfg: TaskConfig, n: int) -> tuple[list[Frame], list[str]]:
    """Up to `n` frames spread over the videos of `inputs`, and the videos that could not be read.

    Raises:
        VideoError: no input is a readable video.
    """
    videos, failures = find_videos(inputs)
    if not videos:
        reason = f" ({failures[0].name}: {failures[0].reason})" if failures else ""
        raise VideoError(f"no video found in {', '.join(map(str, inputs))}{reason}; pass video files or folders")
    durations, readable, failed = [], [], [f"{f.name}: {f.reason}" for f in failures]
    for video in videos:
        try:
            durations.append(probe(video.path).duration_s)
            readable.append(video)
        except VideoError as exc:
            failed.append(f"{video.name}: {exc}")
    frames: list[Frame] = []
    for video, count in zip(readable, spread(durations, n)):
        if not count:
            continue
        try:
            frames += _read_at(video, count, cfg.sampling)
        except VideoError as exc:
            failed.append(f"{video.name}: {exc}")
    if not frames:
        raise VideoError(f"no frame could be read from {', '.join(map(str, inputs))}; check the videos")
    return frames, failed


def run_preview(
    inputs: Sequence[str | os.PathLike[str]],
    cfg: TaskConfig,
    n: int = PREVIEW_BATCH,
    *,
    teacher: Teacher | None = None,
    annotations_root: str | os.PathLike[str] | None = None,
) -> Preview:
    """Label `n` frames spread over the videos with the configured teacher; keep the rows in memory.

    Raises:
        VideoError: no video readable. TeacherError: the teacher cannot load or runs out of memory.
    """
    cfg.require_classes()
    if n < 1:
        raise TeacherError(f"--preview takes a number of frames >= 1 (got {n})")
    frames, failed = preview_frames(inputs, cfg, n)
    if annotations_root is None and len(inputs) == 1 and Path(inputs[0]).is_dir():
        annotations_root = inputs[0]
    if teacher is None:
        teacher = build_teacher(cfg, root=annotations_root)
    tag = teacher_tag(teacher.describe())
    encoded = [encode_frame(f.image, cfg.sampling, teacher.input_size) for f in frames]  # as a labelling run does
    jpegs = [stored for stored, _ in encoded]
    asked = [Frame(f.video, f.frame_index, f.timestamp_s, decode_image(view or stored))
             for f, (stored, view) in zip(frames, encoded)]  # fmt: skip
    preview = Preview(LABEL_SCHEMA.empty_table(), list(cfg.class_names), teacher.describe(), failures=failed)
    answers: list[Any] = []
    start = time.perf_counter()
    for i in range(0, len(asked), PREVIEW_BATCH):
        try:
            answers += list(teacher.label(asked[i : i + PREVIEW_BATCH]))
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            raise TeacherError(
                f"out of memory on {PREVIEW_BATCH} frames ({first_line(exc)}); use --device cpu"
            ) from None
        preview.calls += 1
    preview.seconds = time.perf_counter() - start
    rows = []
    for frame, jpeg, answer in zip(frames, jpegs, answers):
        if answer is None or isinstance(answer, TeacherFailure):
            preview.skipped += 1
            if answer is not None:
                preview.failures.append(f"{frame.video} frame {frame.frame_index}: {answer.reason}")
            continue
        rows.append(label_row(frame.video, frame.frame_index, frame.timestamp_s, jpeg, answer.label,
                              answer.probs, teacher=tag, raw=answer.raw))  # fmt: skip
    preview.table = pa.Table.from_pylist(rows, schema=LABEL_SCHEMA)
    return preview
