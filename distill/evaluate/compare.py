"""`distill compare`: the student against the teacher (and ground truth), with speed and the fallback trade-off.

The frames compared are those of a label set: by default only the ones the student's training held out (the
split the student records: its validation videos, or time blocks of a one-video set; it never saw them), or
every frame when the label set holds other videos (`held_out_only=False`). For each frame the student's answer
comes from running `student.onnx` here; the teacher's from the label set, or from running a teacher here when
one is given.

Speed: the student's latency (one frame per call, p50/p95) and throughput (batches of 32) are measured here;
the teacher's too when it runs here, otherwise its cost is read from the label set's manifest (what the labelling
run recorded). The speed-up is the ratio of seconds per frame at batched throughput.

The fallback curve and its recommended threshold are described in `distill.evaluate.metrics`.

Frames the teacher could not label (null label) are left out of every metric and counted in `frames_skipped`,
as are frames that no ground-truth segment covers when ground truth is given.

This module does not label videos or train; it reads what those stages wrote and reports.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill._progress import progress_bar
from distill.dataset import decode_image, read_manifest, read_table
from distill.errors import DatasetError, first_line
from distill.evaluate.metrics import DEFAULT_TARGET_AGREEMENT, comparison_metrics, latency_stats
from distill.evaluate.report import write_report
from distill.train.meta import HeldOutSplit, StudentMeta, held_out_mask
from distill.video import Frame

logger = logging.getLogger(__name__)

TIMED_CALLS = 40  # single-frame student calls timed for the latency percentiles
THROUGHPUT_BATCH = 32


@dataclass
class CompareReport:
    """What `run_compare` measured and wrote."""

    out_dir: Path
    metrics: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def student_accuracy(self) -> float | None:
        return self.metrics["student"].get("accuracy")


@dataclass
class _Frames:
    """The frames under evaluation, in label-set order."""

    videos: list[str]
    frame_index: list[int]
    timestamps: np.ndarray
    images: list[np.ndarray]  # BGR
    teacher: list[str]
    teacher_confidence: np.ndarray
    truth: list[str] | None
    skipped: dict[str, int]

    def subset(self, keep: Sequence[bool]) -> _Frames:
        idx = [i for i, k in enumerate(keep) if k]
        return _Frames(
            [self.videos[i] for i in idx], [self.frame_index[i] for i in idx], self.timestamps[idx],
            [self.images[i] for i in idx], [self.teacher[i] for i in idx], self.teacher_confidence[idx],
            [self.truth[i] for i in idx] if self.truth is not None else None, dict(self.skipped),
        )  # fmt: skip


def run_compare(
    labels_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    student_path: str | os.PathLike[str],
    truth_csv: str | os.PathLike[str] | None = None,
    teacher_cfg: Any | None = None,
    held_out_only: bool = True,
    target_agreement: float = DEFAULT_TARGET_AGREEMENT,
    threads: int | None = None,
    show_progress: bool = False,
) -> CompareReport:
    """Compare a student with its teacher (and ground truth) on a label set's frames; write the report.

    Args:
        labels_dir: a label set written by `distill label`.
        out_dir: where metrics.json, report.md, report.html and the PNG plots go.
        student_path: the `student.onnx` to evaluate.
        truth_csv: ground truth as segments `video,start_s,end_s,label` (video names as in the label set).
        teacher_cfg: a `TaskConfig` whose teacher is run here on the frames (its answers and speed replace the
            label set's); None uses the label set's answers and recorded cost.
        held_out_only: evaluate only the frames the student's training held out (see `held_out_frames`).
        target_agreement: the agreement the fallback threshold must reach when no ground truth is given (with
            ground truth the recommendation follows accuracy; see `distill.evaluate.metrics.fallback_curve`).
        threads: ONNX Runtime intra-op threads for the student.

    Raises:
        DatasetError: the label set is missing or empty, none of its frames was held out, or classes differ.
        ExportError: the student file is missing or not a distill student.
    """
    from distill.export import Student

    labels_dir, out_dir, student_path = Path(labels_dir), Path(out_dir), Path(student_path)
    manifest = read_manifest(labels_dir)
    classes = list(manifest["classes"])
    student = Student(student_path, threads=threads)
    if sorted(student.classes) != sorted(classes):
        raise DatasetError(
            f"student classes {list(student.classes)} differ from the label set's {classes}; "
            "compare a student with the label set it was trained on (or one with the same classes)"
        )
    held = held_out_frames(labels_dir, student_path, student.meta) if held_out_only else None
    frames = _load_frames(labels_dir, classes, held.mask if held else None, truth_csv)
    teacher_info = _teacher_info(manifest)
    if teacher_cfg is not None:
        frames, teacher_info = _run_teacher(teacher_cfg, frames, classes, show_progress)
    with progress_bar("student", total=len(frames.images), enabled=show_progress) as bar:
        pred = student.predict(frames.images, batch_size=THROUGHPUT_BATCH)
        bar.advance(len(frames.images))
    probs = pred.probs[:, [list(student.classes).index(c) for c in classes]]  # (N, K) in label-set order
    metrics = comparison_metrics(
        classes, frames.teacher, [classes[i] for i in probs.argmax(axis=1)], probs, frames.truth,
        frames.teacher_confidence, target_agreement=target_agreement,
    )  # fmt: skip
    metrics["student"].update(time_student(student, frames.images))
    metrics["student"].update(name=f"{student.meta.model} ({student_path.name})", providers=student.providers)
    metrics["teacher"].update(teacher_info)
    metrics.update(
        labels=str(labels_dir),
        student_path=str(student_path),
        truth=str(truth_csv) if truth_csv is not None else None,
        held_out_only=held_out_only,
        split_source=held.source if held else None,
        videos=sorted(set(frames.videos)),
        frames_skipped=frames.skipped,
        speedup=_speedup(metrics["student"], metrics["teacher"]),
    )
    files = write_report(out_dir, metrics)
    return CompareReport(out_dir, metrics, files)


# --- which frames -------------------------------------------------------------------------------------------


@dataclass
class HeldOut:
    """The label-set rows compare evaluates by default, and where that answer came from."""

    mask: np.ndarray  # (N,) bool over the label set's rows, in `read_table` order
    source: str


def held_out_frames(labels_dir: Path, student_path: Path, meta: StudentMeta) -> HeldOut:
    """The rows of a label set that the student's training held out (`distill.train.meta.held_out_mask`).

    The split is the one the student carries (`StudentMeta.split`: its validation videos, or the time blocks
    of a one-video set), so the answer does not depend on where `student.onnx` lies and is the one training
    and export's parity gate used. Students from before the split was recorded fall back to the
    `splits.json` written beside them (by-video splits only).

    Raises:
        DatasetError: an older student with no `splits.json` beside it, or a label set none of whose frames
            training held out.
    """
    split = meta.split
    source = f"the {split.mode} split recorded in {student_path.name}" if split is not None else ""
    if split is None:
        split, source = _legacy_split(student_path)
    mask = held_out_mask(split, labels_dir)
    if not mask.any():
        held = ", ".join(split.val_videos[:3]) + (" ..." if len(split.val_videos) > 3 else "")
        raise DatasetError(
            f"nothing was held out of {labels_dir} when {student_path.name} was trained (it held out {held}); "
            "pass --all to evaluate every frame (best on a label set of other videos)"
        )
    return HeldOut(mask, source)


def _legacy_split(student_path: Path) -> tuple[HeldOutSplit, str]:
    """The by-video split in the `splits.json` beside a student that records none in its metadata."""
    splits = student_path.parent / "splits.json"
    fix = "pass --all to evaluate every frame, or retrain the student so that it records its split"
    if not splits.is_file():
        raise DatasetError(f"{student_path} records no held-out split (an older distill wrote it); {fix}")
    try:
        data = json.loads(splits.read_text(encoding="utf-8"))
        mode, val = data.get("mode", "by-video"), list((data.get("videos") or {}).get("val") or [])
    except (OSError, ValueError, AttributeError) as exc:
        raise DatasetError(f"cannot read {splits} ({first_line(exc)}); {fix}") from None
    if mode != "by-video" or not val:
        raise DatasetError(f"{splits} names no held-out video (split {mode!r}); {fix}")
    return HeldOutSplit("by-video", tuple(val)), str(splits)


def _load_frames(labels_dir: Path, classes: list[str], keep_rows: np.ndarray | None, truth_csv: Any) -> _Frames:
    """The labelled frames of a label set (only the rows `keep_rows` marks, when given), with ground truth."""
    table = read_table(labels_dir, columns=["video", "frame_index", "timestamp_s", "image", "label", "confidence"])
    video_col = table.column("video").to_pylist()
    keep = list(range(len(video_col))) if keep_rows is None else np.flatnonzero(keep_rows).tolist()
    labels = table.column("label").to_pylist()
    skipped = {"teacher_unmatched": sum(labels[i] is None for i in keep), "no_truth": 0}
    keep = [i for i in keep if labels[i] is not None]
    times = np.asarray(table.column("timestamp_s").to_pylist(), dtype=np.float64)
    truth = None
    if truth_csv is not None:
        truth_all = _truth_labels(truth_csv, [video_col[i] for i in keep], times[keep], classes)
        skipped["no_truth"] = sum(t is None for t in truth_all)
        keep = [i for i, t in zip(keep, truth_all) if t is not None]
        truth = [t for t in truth_all if t is not None]
    if not keep:
        raise DatasetError(
            f"no frame of {labels_dir} can be evaluated (skipped: {skipped}); check the videos and --truth"
        )
    images_col, conf_col = table.column("image"), table.column("confidence").to_pylist()
    index_col = table.column("frame_index").to_pylist()
    images = [decode_image(images_col[i].as_py()) for i in keep]
    return _Frames(
        [video_col[i] for i in keep], [index_col[i] for i in keep], times[keep], images, [labels[i] for i in keep],
        np.asarray([1.0 if conf_col[i] is None else conf_col[i] for i in keep], np.float64), truth, skipped,
    )  # fmt: skip


def _truth_labels(truth_csv: Any, videos: list[str], times: np.ndarray, classes: list[str]) -> list[str | None]:
    """The ground-truth label of each frame (None where no segment covers it)."""
    from distill.label.annotations import label_at, read_segments

    segments = read_segments(truth_csv, classes)
    out = [label_at(segments, v, float(t)) for v, t in zip(videos, times)]
    if videos and all(t is None for t in out):
        raise DatasetError(
            f"no segment of {truth_csv} covers a compared frame; its video names must match the label set's "
            f"(e.g. {videos[0]!r})"
        )
    return out


# --- speed --------------------------------------------------------------------------------------------------


def time_student(student: Any, images: Sequence[np.ndarray], calls: int = TIMED_CALLS) -> dict[str, Any]:
    """Latency p50/p95 of single-frame calls and throughput at batch 32, measured on `images`."""
    if not images:
        return {}
    for img in images[:3]:  # warm-up: the first calls allocate
        student.predict([img])
    single = []
    for k in range(calls):
        img = images[k % len(images)]
        start = time.perf_counter()
        student.predict([img])
        single.append(time.perf_counter() - start)
    batch = [images[k % len(images)] for k in range(THROUGHPUT_BATCH)]
    batched = []
    for _ in range(3):
        start = time.perf_counter()
        student.predict(batch, batch_size=THROUGHPUT_BATCH)
        batched.append(time.perf_counter() - start)
    one = latency_stats(single)
    return {
        "latency_ms_p50": one["latency_ms_p50"],
        "latency_ms_p95": one["latency_ms_p95"],
        "throughput_fps": latency_stats(batched, THROUGHPUT_BATCH)["throughput_fps"],
        "cost_source": "measured here",
    }


def _speedup(student: dict[str, Any], teacher: dict[str, Any]) -> float | None:
    s, t = student.get("throughput_fps"), teacher.get("throughput_fps")
    if not s or not t:
        return None
    return float(s / t)


def _teacher_info(manifest: dict[str, Any]) -> dict[str, Any]:
    """Name and recorded cost of the teacher that labelled the set (from its manifest)."""
    desc = dict(manifest.get("teacher") or {})
    info: dict[str, Any] = {"name": _teacher_name(desc), "backend": desc.get("backend")}
    run = manifest.get("run") or {}
    if desc.get("backend") == "annotations":
        info["cost_note"] = "the annotations teacher reads a file; a real run would use a VLM teacher"
    elif run.get("frames_labelled") and run.get("frames_per_s"):
        info.update(
            throughput_fps=float(run["frames_per_s"]),
            batch_size=run.get("batch_size"),
            cost_source="recorded by `distill label`",
        )
    else:
        info["cost_note"] = "the label set records no teacher cost; pass --teacher to measure it here"
    return info


def _teacher_name(desc: dict[str, Any]) -> str:
    backend = desc.get("backend") or "?"
    model = desc.get("model")
    return f"{backend} ({model})" if model and backend != "annotations" else str(backend)


def _run_teacher(cfg: Any, frames: _Frames, classes: list[str], show_progress: bool) -> tuple[_Frames, dict[str, Any]]:
    """Label the frames with the configured teacher, timing it; its answers replace the label set's.

    Throughput is timed over batches of `cfg.teacher.batch_size`; latency over up to 5 single-frame calls.
    """
    from distill.label import TeacherAnswer, build_teacher

    teacher = build_teacher(cfg)
    if sorted(teacher.classes) != sorted(classes):
        raise DatasetError(f"--teacher classes {list(teacher.classes)} differ from the label set's {classes}")

    def ask(idx: Sequence[int]) -> list[Any]:
        f = frames
        items = [Frame(f.videos[i], f.frame_index[i], float(f.timestamps[i]), f.images[i]) for i in idx]
        return list(teacher.label(items))

    n, step = len(frames.images), cfg.teacher.batch_size
    ask([0])  # warm-up: first calls allocate, compile, fill caches
    answers: list[Any] = []
    start = time.perf_counter()
    with progress_bar("teacher", total=n, enabled=show_progress) as bar:
        for i in range(0, n, step):
            answers += ask(range(i, min(i + step, n)))
            bar.advance(min(step, n - i))
    batched = time.perf_counter() - start
    single = []
    for i in range(min(5, n)):
        t0 = time.perf_counter()
        ask([i])
        single.append(time.perf_counter() - t0)
    answers = [a if isinstance(a, TeacherAnswer) else None for a in answers]  # no answer, or the teacher failed
    frames.teacher = [a.label if a is not None and a.label is not None else "" for a in answers]
    frames.teacher_confidence = np.asarray([a.confidence if a is not None else 0.0 for a in answers], np.float64)
    ok = [bool(label) for label in frames.teacher]
    frames = frames.subset(ok)
    frames.skipped["teacher_unmatched"] += n - sum(ok)
    if not frames.images:
        raise DatasetError("the teacher labelled none of the compared frames; check --teacher and its options")
    desc, one = teacher.describe(), latency_stats(single)
    return frames, {
        "name": _teacher_name(desc),
        "backend": desc.get("backend"),
        "latency_ms_p50": one["latency_ms_p50"],
        "latency_ms_p95": one["latency_ms_p95"],
        "throughput_fps": n / batched if batched > 0 else None,
        "batch_size": step,
        "cost_source": "measured here",
    }
