"""The work the Ray engine's workers do: plan a video, sample a chunk, ask the teacher. Plain Python, no Ray.

`_ray_engine.py` hands these to Ray (planning as tasks, sampling as a task-pool stage and the teacher as an
actor-pool stage of one Ray Data pipeline); they run in worker processes on any node, so they take and return
only picklable values and Arrow-friendly columns. Every row that crosses a stage has the same columns:

```
kind            frame | chunk (a chunk is finished: all its frames came before or come after, `info` counts them)
                | failed (the chunk's video cannot be decoded: `info` is the reason) | error (the teacher failed)
video, chunk    the video's name and the chunk's number
frame_index, timestamp_s, jpeg, teacher_jpeg      the frame (teacher_jpeg empty where the stored JPEG serves)
label, probs, raw, state, teacher_s               added by the teacher stage (state: answered | uncovered | failed)
```

Sampling is the local engine's own: `distill.decode.sample_chunk` picks and decodes the frames, the decode
workers' encoder makes the stored JPEG and the teacher's pre-shrunk view, and the teacher sees the pixels the
local engine's teacher sees. This module does not start Ray, store rows or decide what is finished.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from typing import Any

import numpy as np

from distill._decode_workers import encode_frame
from distill._decode_workers import plan_video as plan_file
from distill.config import SamplingConfig, TaskConfig
from distill.dataset import decode_image
from distill.decode import Chunk, sample_chunk
from distill.errors import VideoError, first_line
from distill.video import SampleStats, VideoFile

logger = logging.getLogger(__name__)

FRAME, CHUNK, FAILED, ERROR = "frame", "chunk", "failed", "error"
ANSWERED, UNCOVERED, RETRY = "answered", "uncovered", "failed"


def plan_video(video: VideoFile, sampling: SamplingConfig) -> tuple[str, Any]:
    """`("planned", (chunks, duration_s, note))`, or `("failed", reason)` for a file FFmpeg cannot read."""
    import av

    try:
        return "planned", plan_file(video, sampling)
    except VideoError as exc:
        return "failed", str(exc).removeprefix(f"{video.path.name}: ")
    except av.FFmpegError as exc:
        return "failed", first_line(exc)


def probe_teacher(cfg: TaskConfig, root: str | None) -> tuple[str, Any]:
    """Build the teacher once: `("ok", (input_size, description))`, or `("error", "Type: message")`."""
    from distill.label._teacher import build_teacher

    try:
        teacher = build_teacher(cfg, root=root)
    except Exception as exc:
        return "error", f"{type(exc).__name__}: {first_line(exc)}"
    return "ok", (teacher.input_size, teacher.describe())


def work_item(chunk: Chunk, skip: frozenset[int]) -> bytes:
    """One row of the sampling stage's input: a chunk and the frame indices already stored (not handed over)."""
    return pickle.dumps((chunk, skip))


def _columns(rows: list[dict[str, Any]], k: int | None = None) -> dict[str, np.ndarray]:
    """Rows -> the stage's columns (every column present, empty values where a kind has none)."""
    out: dict[str, np.ndarray] = {
        "kind": np.array([r["kind"] for r in rows], dtype=object),
        "video": np.array([r["video"] for r in rows], dtype=object),
        "chunk": np.array([r.get("chunk", -1) for r in rows], dtype=np.int64),
        "frame_index": np.array([r.get("frame_index", -1) for r in rows], dtype=np.int64),
        "timestamp_s": np.array([r.get("timestamp_s", 0.0) for r in rows], dtype=np.float64),
        "jpeg": np.array([r.get("jpeg", b"") for r in rows], dtype=object),
        "teacher_jpeg": np.array([r.get("teacher_jpeg") or b"" for r in rows], dtype=object),
        "info": np.array([r.get("info", "") for r in rows], dtype=object),
    }
    if k is not None:
        out["label"] = np.array([r.get("label") for r in rows], dtype=object)
        out["probs"] = np.stack([r.get("probs", np.zeros(k, np.float32)) for r in rows]).astype(np.float32)
        out["raw"] = np.array([r.get("raw") for r in rows], dtype=object)
        out["state"] = np.array([r.get("state", "") for r in rows], dtype=object)
        out["teacher_s"] = np.array([r.get("teacher_s", 0.0) for r in rows], dtype=np.float64)
    return out


def rows_of(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """A batch (column name -> array) as a list of rows."""
    names = list(batch)
    return [dict(zip(names, values)) for values in zip(*(batch[n] for n in names))]


def sample_rows(batch: dict[str, np.ndarray], sampling: SamplingConfig, teacher_size: int | None) -> dict:
    """The sampling stage: each input row's chunk -> one row per kept frame, then its `chunk` row.

    A file FFmpeg cannot decode becomes one `failed` row (trying again cannot help); any other error is raised,
    so that Ray runs the task again.
    """
    import av

    rows: list[dict[str, Any]] = []
    for item in batch["item"]:
        chunk, skip = pickle.loads(item)
        try:
            rows += _sample(chunk, skip, sampling, teacher_size)
        except VideoError as exc:
            reason = str(exc).removeprefix(f"{chunk.video.path.name}: ")
            rows.append({"kind": FAILED, "video": chunk.video.name, "chunk": chunk.number, "info": reason})
        except av.FFmpegError as exc:
            rows.append({"kind": FAILED, "video": chunk.video.name, "chunk": chunk.number, "info": first_line(exc)})
    return _columns(rows)


def _sample(chunk: Chunk, skip: frozenset[int], sampling: SamplingConfig, teacher_size: int | None) -> list[dict]:
    start = time.perf_counter()
    stats = SampleStats()
    rows: list[dict[str, Any]] = []
    skipped = 0
    for frame in sample_chunk(chunk, sampling, stats):
        if frame.frame_index in skip:  # decoded all the same: dedup must see it
            skipped += 1
            continue
        jpeg, view = encode_frame(frame.image, sampling, teacher_size)
        where = {"video": chunk.video.name, "chunk": chunk.number, "frame_index": frame.frame_index}
        rows.append({"kind": FRAME, **where, "timestamp_s": frame.timestamp_s, "jpeg": jpeg, "teacher_jpeg": view})
    info = {
        "frames": len(rows),
        "skipped": skipped,
        "seconds": chunk.end_s - chunk.start_s,
        "decode_s": time.perf_counter() - start,
        "frames_read": stats.frames_read,
        "frames_kept": stats.frames_kept,
        "duplicates": stats.duplicates,
    }
    rows.append({"kind": CHUNK, "video": chunk.video.name, "chunk": chunk.number, "info": json.dumps(info)})
    return rows


class TeacherStage:
    """The teacher stage: one teacher per actor, built from the task config; frames in, answers added.

    Rows that are not frames pass through. An error of the teacher becomes one `error` row (the driver stops the
    run with it, as the local engine does); running out of memory halves this actor's batch size and goes on.

    Args:
        cfg: the task config (`teacher.*` says which teacher, `classes` its answers' order).
        root: the folder video names are relative to (see `build_teacher`).
    """

    def __init__(self, cfg: TaskConfig, root: str | None = None) -> None:
        import cv2  # noqa: F401  (imported while the first chunks decode, not on the first batch's clock)

        from distill.label._run import answer_batch
        from distill.label._teacher import build_teacher

        self._answer = answer_batch
        self.teacher = build_teacher(cfg, root=root)
        self.k = len(cfg.classes)
        self.batch_size = cfg.teacher.batch_size  # lowered after an out-of-memory error

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from distill.label._teacher import TeacherFailure
        from distill.video import Frame

        rows = rows_of(batch)
        frames = [r for r in rows if r["kind"] == FRAME]
        try:
            views = [decode_image(r["teacher_jpeg"] or r["jpeg"]) for r in frames]
            given = [
                Frame(r["video"], int(r["frame_index"]), float(r["timestamp_s"]), v) for r, v in zip(frames, views)
            ]
            start = time.perf_counter()
            answers = self._answer(self.teacher, given, self) if given else []
        except Exception as exc:
            logger.exception("the teacher failed")
            return _columns([{"kind": ERROR, "video": "", "info": f"{type(exc).__name__}: {first_line(exc)}"}], self.k)
        share = (time.perf_counter() - start) / max(len(frames), 1)
        for row, answer in zip(frames, answers):
            row["teacher_s"] = share
            if answer is None:
                row["state"] = UNCOVERED
            elif isinstance(answer, TeacherFailure):
                row["state"], row["info"] = RETRY, answer.reason
            else:
                row.update(state=ANSWERED, label=answer.label, probs=np.asarray(answer.probs, np.float32))
                row["raw"] = answer.raw
        return _columns(rows, self.k)


def describe_error(info: str, backend: str) -> str:
    """The one line a teacher `error` row stops the run with."""
    kind, _, message = info.partition(": ")
    return message if kind.endswith(("TeacherError", "ConfigError")) else f"the {backend} teacher failed: {info}"
