"""`distill review`: the teacher's labels as pictures, the likely wrong ones ranked, corrections written back.

`run_review(labels, out)` writes two files into `out`:

- `review.html`: one self-contained page (thumbnails inlined, no script or style from elsewhere): per class a
  count, the least confident frames and a sample of confident ones; per video a timeline strip of the labels
  with flicker marked (and the student's labels beside it); the ranked suspects with teacher and suggested
  label; with `truth_csv`, the teacher's accuracy per class on the frames the ground truth covers.
- `review.csv`: the suspects, one per line, with an empty `corrected` column for a person to fill in.

`apply_review(labels, review_csv)` stores the filled-in corrections in the label set as a human teacher's rows
(`distill.dataset.write_corrections`); from then on `read_table`, `load_labels`, training and `compare` see the
corrected label, and the teacher's own rows stay in the set. Applying the same file again changes nothing.

`review_frames(frames, out)` is the same page for frames held in memory (what `distill label --preview` shows).

Suspects are ranked by `distill.evaluate._suspects`: with a student, cleanlab on out-of-fold probabilities
from its penultimate features; without one, low confidence and flicker.

This module does not label frames and does not train; it reads a label set (and runs a student) and reports.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distill._files import write_atomic
from distill._progress import progress_bar
from distill.dataset import (
    decode_image,
    read_corrections,
    read_manifest,
    read_table,
    shard_paths,
    write_corrections,
)
from distill.errors import DatasetError
from distill.evaluate._review_page import render_page
from distill.evaluate._suspects import Suspects, flicker_marks, rank_with_student, rank_without_student

logger = logging.getLogger(__name__)

CSV_COLUMNS = ["rank", "video", "frame_index", "timestamp_s", "label", "suggested", "score", "reason", "student"]
CORRECTED = "corrected"
DEFAULT_LIMIT = 200  # suspects listed in review.csv


@dataclass
class ReviewFrames:
    """The frames under review, in label-set order. Labels are class indices, -1 = no label."""

    classes: list[str]
    video: np.ndarray  # (N,) object (str)
    frame_index: np.ndarray  # (N,) int
    timestamp: np.ndarray  # (N,) float, seconds
    label: np.ndarray  # (N,) int, the label training uses (a person's correction where there is one)
    teacher_label: np.ndarray  # (N,) int, the teacher's own answer
    probs: np.ndarray  # (N, K) float32, the teacher's distribution (zeros where it gave none)
    confidence: np.ndarray  # (N,) float, the teacher's confidence, NaN where unknown
    corrected: np.ndarray  # (N,) bool, a person corrected this frame
    images: Sequence[bytes]  # (N,) JPEG bytes (a list, or `ShardImages` reading them from the shards)

    def __len__(self) -> int:
        return len(self.label)


class ShardImages(Sequence[bytes]):
    """A label set's JPEGs by row number (read_table order), read a shard at a time, one shard kept in memory.

    Reading rows in order (as the student does) reads each shard once; `prefetch` fetches scattered rows in
    shard order.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.paths = shard_paths(directory)
        sizes = [pq.ParquetFile(p).metadata.num_rows for p in self.paths]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # (S + 1,) first row of each shard
        self._shard, self._column = -1, None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _get(self, i: int) -> bytes:
        if not 0 <= i < len(self):
            raise IndexError(i)
        shard = int(np.searchsorted(self.starts, i, side="right") - 1)
        if shard != self._shard:
            self._column = pq.read_table(self.paths[shard], columns=["image"]).column("image")
            self._shard = shard
        return self._column[i - int(self.starts[shard])].as_py()

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._get(j) for j in range(*i.indices(len(self)))]
        return self._get(int(i))

    def prefetch(self, rows: Sequence[int]) -> dict[int, bytes]:
        return {int(i): self._get(int(i)) for i in sorted(set(int(r) for r in rows))}


@dataclass
class ReviewReport:
    """What a review found and wrote."""

    out_dir: Path
    summary: dict[str, Any]
    suspects: Suspects
    student_label: np.ndarray | None = None  # (N,) the student's own answer per frame, when a student was given
    files: dict[str, Path] = field(default_factory=dict)


def frames_from_table(
    table: pa.Table,
    classes: list[str],
    corrections: Mapping[tuple[str, int], str] | None = None,
    images: Sequence[bytes] | None = None,
) -> ReviewFrames:
    """`ReviewFrames` from label-set rows (`LABEL_SCHEMA` columns) and a person's corrections by (video, frame).

    `images` replaces the table's `image` column (which may then be left out of `table`).
    """
    index = {c: i for i, c in enumerate(classes)}
    labels = table.column("label").to_pylist()
    unknown = sorted({lab for lab in labels if lab is not None and lab not in index})
    if unknown:
        raise DatasetError(f"frames are labelled {unknown[0]!r}, not one of the classes {classes}; label them again")
    teacher = np.array([-1 if lab is None else index[lab] for lab in labels], np.int64)
    video = np.array(table.column("video").to_pylist(), dtype=object)
    frame_index = np.asarray(table.column("frame_index").to_pylist(), np.int64)
    corrections = corrections or {}
    fixed = [corrections.get((v, int(f))) for v, f in zip(video, frame_index)]
    label = np.array([t if c is None else index[c] for t, c in zip(teacher, fixed)], np.int64)
    probs = np.zeros((len(labels), len(classes)), np.float32)
    for i, p in enumerate(table.column("probs").to_pylist()):
        if p is not None and len(p) == len(classes):
            probs[i] = np.nan_to_num(np.asarray(p, np.float32))
    conf = [np.nan if c is None else c for c in table.column("confidence").to_pylist()]
    return ReviewFrames(
        list(classes), video, frame_index, np.asarray(table.column("timestamp_s").to_pylist(), np.float64),
        label, teacher, probs, np.asarray(conf, np.float64), np.array([c is not None for c in fixed], bool),
        images if images is not None else table.column("image").to_pylist(),
    )  # fmt: skip


def run_review(
    labels_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    student_path: str | os.PathLike[str] | None = None,
    truth_csv: str | os.PathLike[str] | None = None,
    limit: int = DEFAULT_LIMIT,
    threads: int | None = None,
    show_progress: bool = False,
) -> ReviewReport:
    """Review a label set: write review.html and review.csv into `out_dir`.

    Args:
        labels_dir: a label set written by `distill label`.
        student_path: a `student.onnx` (trained on this set or one with the same classes): its features rank
            the suspects with cleanlab, and its labels are drawn beside the teacher's.
        truth_csv: ground-truth segments `video,start_s,end_s,label`: the teacher's accuracy per class.
        limit: at most this many suspects in review.csv.

    Raises:
        DatasetError: the label set is missing or empty, or the student's classes differ from the set's.
    """
    labels_dir = Path(labels_dir)
    classes = [str(c) for c in read_manifest(labels_dir)["classes"]]
    columns = ["video", "frame_index", "timestamp_s", "label", "probs", "confidence"]
    table = read_table(labels_dir, columns=columns, corrected=False)
    if table.num_rows == 0:
        raise DatasetError(f"label set {labels_dir} has no frames yet; run `distill label` to fill it")
    frames = frames_from_table(table, classes, read_corrections(labels_dir), ShardImages(labels_dir))
    return review_frames(
        frames, out_dir, student_path=student_path, truth_csv=truth_csv, limit=limit, threads=threads,
        source=str(labels_dir), show_progress=show_progress,
    )  # fmt: skip


def review_frames(
    frames: ReviewFrames,
    out_dir: str | os.PathLike[str],
    *,
    student_path: str | os.PathLike[str] | None = None,
    truth_csv: str | os.PathLike[str] | None = None,
    limit: int = DEFAULT_LIMIT,
    threads: int | None = None,
    source: str = "",
    title: str = "distill review",
    show_progress: bool = False,
) -> ReviewReport:
    """Rank suspects among `frames`, write review.html and review.csv into `out_dir`; see `run_review`."""
    out = Path(out_dir)
    eligible = (frames.label >= 0) & ~frames.corrected
    student_label, features = None, None
    if student_path is not None:
        features, student_label = _run_student(frames, Path(student_path), threads, show_progress)
    suspects = None
    if features is not None and _enough_for_cleanlab(frames.label):
        suspects = rank_with_student(frames.classes, features, frames.label, eligible, limit=limit)
    elif features is not None:
        logger.warning("too few labelled frames per class for cleanlab; ranking suspects by confidence and flicker")
    if suspects is None:
        suspects = rank_without_student(
            frames.classes, frames.video, frames.timestamp, frames.label, frames.probs, frames.confidence, eligible
        )
        suspects = Suspects(*(a[:limit] for a in (suspects.index, suspects.score, suspects.suggested)),
                            suspects.reason[:limit], suspects.method)  # fmt: skip
    summary = {"title": title, **_summary(frames, suspects, student_path, source)}
    if truth_csv is not None:
        summary["truth"] = truth_accuracy(frames, truth_csv, student_label)
    report = ReviewReport(out, summary, suspects, student_label)
    changed, blip = flicker_marks(frames.video, frames.timestamp, frames.label)
    page = render_page(frames, suspects, student_label, summary, changed | blip)
    report.files["review.html"] = write_atomic(out / "review.html", page)
    report.files["review.csv"] = write_atomic(out / "review.csv", review_csv_text(frames, suspects, student_label))
    return report


def _enough_for_cleanlab(label: np.ndarray) -> bool:
    counts = np.bincount(label[label >= 0]) if (label >= 0).any() else np.zeros(0, np.int64)
    present = counts[counts > 0]
    return len(present) >= 2 and int(present.min()) >= 2 and int(present.sum()) >= 10


def _run_student(
    frames: ReviewFrames, path: Path, threads: int | None, show_progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) penultimate features and (N,) the student's labels (label-set class indices) of every frame."""
    from distill.export.features import FeatureStudent

    student = FeatureStudent(path, threads=threads)
    if sorted(student.classes) != sorted(frames.classes):
        raise DatasetError(
            f"student classes {list(student.classes)} differ from the label set's {frames.classes}; "
            "review with a student trained on this label set (or one with the same classes)"
        )
    features, probs = [], []
    with progress_bar("student", total=len(frames), enabled=show_progress) as bar:
        for i in range(0, len(frames), 256):  # decode a chunk at a time: memory stays bounded
            chunk = [decode_image(jpeg) for jpeg in frames.images[i : i + 256]]
            f, p = student.features(chunk)
            features.append(f)
            probs.append(p)
            bar.advance(len(chunk))
    order = [list(student.classes).index(c) for c in frames.classes]
    probs_all = np.concatenate(probs)[:, order]  # (N, K) in label-set order
    return np.concatenate(features), probs_all.argmax(axis=1)


def _summary(frames: ReviewFrames, suspects: Suspects, student_path: Any, source: str) -> dict[str, Any]:
    labelled = frames.label >= 0
    counts = np.bincount(frames.label[labelled], minlength=len(frames.classes))
    changed, _ = flicker_marks(frames.video, frames.timestamp, frames.label)
    return {
        "source": source,
        "frames": len(frames),
        "videos": len(set(frames.video.tolist())),
        "unmatched": int((~labelled).sum()),
        "per_class": {c: int(n) for c, n in zip(frames.classes, counts)},
        "corrected": int(frames.corrected.sum()),
        "flicker_frames": int(changed.sum()),
        "suspects": len(suspects.index),
        "method": suspects.method,
        "student": str(student_path) if student_path is not None else None,
    }


def truth_accuracy(
    frames: ReviewFrames, truth_csv: str | os.PathLike[str], student_label: np.ndarray | None = None
) -> dict[str, Any]:
    """The teacher's (and the student's) accuracy per true class, on the frames a ground-truth segment covers.

    Raises:
        DatasetError: no segment covers any frame (video names must match the label set's).
    """
    from distill.label.annotations import label_at, read_segments

    segments = read_segments(truth_csv, frames.classes)
    index = {c: i for i, c in enumerate(frames.classes)}
    truth = np.array(
        [index.get(label_at(segments, v, float(t)) or "", -1) for v, t in zip(frames.video, frames.timestamp)]
    )
    covered = truth >= 0
    if not covered.any():
        example = frames.video[0] if len(frames) else "?"
        raise DatasetError(
            f"no segment of {truth_csv} covers a reviewed frame; its video names must match the label set's "
            f"(e.g. {example!r})"
        )
    answers = {"teacher": frames.teacher_label}
    if student_label is not None:
        answers["student"] = student_label
    out: dict[str, Any] = {"frames": int(covered.sum()), "per_class": {}}
    for who, said in answers.items():
        out[who] = round(float((said[covered] == truth[covered]).mean()), 4)
    for k, name in enumerate(frames.classes):
        mask = truth == k
        row: dict[str, Any] = {"frames": int(mask.sum())}
        for who, said in answers.items():
            row[who] = round(float((said[mask] == k).mean()), 4) if mask.any() else None
        out["per_class"][name] = row
    return out


def review_csv_text(frames: ReviewFrames, suspects: Suspects, student_label: np.ndarray | None) -> str:
    """review.csv: one line per suspect, most suspicious first, with an empty `corrected` column."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, CORRECTED])
    names = frames.classes
    for rank, (i, score, sug, why) in enumerate(
        zip(suspects.index, suspects.score, suspects.suggested, suspects.reason), start=1
    ):
        student = names[student_label[i]] if student_label is not None else ""
        writer.writerow([
            rank, frames.video[i], int(frames.frame_index[i]), f"{frames.timestamp[i]:.3f}", names[frames.label[i]],
            names[sug] if sug >= 0 else "", f"{score:.4f}", why, student, "",
        ])  # fmt: skip
    return buf.getvalue()


def read_review_csv(path: str | os.PathLike[str], classes: list[str]) -> dict[tuple[str, int], str]:
    """The filled-in corrections of a review.csv: (video, frame_index) -> class; lines left empty are skipped.

    Raises:
        DatasetError: the file is missing, lacks the columns, or names a class that does not exist (one line,
            with the line number).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} does not exist; run `distill review LABELS` first and fill in `corrected`")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("video", "frame_index", CORRECTED) if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path} has no column {missing[0]!r}; apply a review.csv that `distill review` wrote")
        out: dict[tuple[str, int], str] = {}
        for line, row in enumerate(reader, start=2):
            value = (row.get(CORRECTED) or "").strip()
            if not value:
                continue
            if value not in classes:
                raise DatasetError(
                    f"{path} line {line}: corrected label {value!r} is not a class ({', '.join(classes)}); "
                    "fix that line"
                )
            try:
                key = (str(row["video"]), int(str(row["frame_index"]).strip()))
            except ValueError:
                raise DatasetError(f"{path} line {line}: frame_index {row['frame_index']!r} is not a number") from None
            out[key] = value
    return out


def apply_review(labels_dir: str | os.PathLike[str], review_csv: str | os.PathLike[str]) -> dict[str, int]:
    """Store a review.csv's corrections in the label set; returns counts (corrections, changed, unchanged).

    Raises:
        DatasetError: a correction names a frame the set does not hold or a class that does not exist.
    """
    classes = [str(c) for c in read_manifest(labels_dir)["classes"]]
    corrections = read_review_csv(review_csv, classes)
    changed = write_corrections(labels_dir, corrections)
    return {"corrections": len(corrections), "changed": changed, "unchanged": len(corrections) - changed}
