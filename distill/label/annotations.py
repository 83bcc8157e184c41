"""Ground-truth segments: a CSV of `video,start_s,end_s,label`, the common temporal-annotation export.

A frame of `video` at time `t` takes the label of the segment with `start_s <= t < end_s`; a frame no segment
covers has no label. Used by the annotations teacher (`distill label --teacher annotations`) and as ground
truth by `distill compare`.

Example:
    >>> segments = read_segments("segments.csv")  # doctest: +SKIP
    >>> label_at(segments, "cam1/shift.mp4", 12.5)  # doctest: +SKIP
    'running'

This module does not read videos or decide which frames to label.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from distill.errors import DatasetError

COLUMNS = ("video", "start_s", "end_s", "label")


@dataclass(frozen=True)
class Segment:
    """One labelled time span `[start_s, end_s)` of a video."""

    start_s: float
    end_s: float
    label: str


def normalize_video_name(name: str, root: str | os.PathLike[str] | None = None) -> str:
    """The name a CSV video is matched under: POSIX separators, no leading `./`, relative to `root` if under it."""
    text = name.strip().replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    if root is not None:
        root_text = Path(root).as_posix().rstrip("/") + "/"
        if text.startswith(root_text):
            text = text[len(root_text) :]
        elif Path(text).is_absolute():
            try:
                text = Path(text).resolve().relative_to(Path(root).resolve()).as_posix()
            except ValueError:
                pass
    return str(PurePosixPath(text)) if text else text


def read_segments(
    csv_path: str | os.PathLike[str],
    classes: Sequence[str] | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
) -> dict[str, list[Segment]]:
    """Read a segments CSV into `{video: [Segment, ...]}`, each list sorted and non-overlapping.

    Overlapping segments with the same label are merged into one.

    Args:
        csv_path: the CSV file; a header row naming at least `video,start_s,end_s,label` (any order, extra
            columns ignored).
        classes: if given, every label must be one of these.
        root: video entries under this folder are made relative to it (see `normalize_video_name`).

    Raises:
        DatasetError: missing file or columns, a bad number, `end_s <= start_s`, a label not in `classes`, or
            overlapping segments with different labels; one line naming the row.
    """
    path = Path(csv_path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError:
        raise DatasetError(f"annotations file {path} does not exist; check the --annotations path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read annotations file {path}: {exc}") from None
    if not rows:
        raise DatasetError(f"annotations file {path} is empty; it needs a header row {','.join(COLUMNS)}")
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise DatasetError(
            f"annotations file {path} lacks column(s) {', '.join(missing)}; the header must name {','.join(COLUMNS)}"
        )
    index = {c: header.index(c) for c in COLUMNS}
    segments: dict[str, list[Segment]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        video, segment = _parse_row(path, line, row, index, classes, root)
        segments.setdefault(video, []).append(segment)
    return {
        video: _merge_overlaps(path, video, sorted(items, key=lambda s: (s.start_s, s.end_s)))
        for video, items in segments.items()
    }


def _parse_row(
    path: Path,
    line: int,
    row: list[str],
    index: Mapping[str, int],
    classes: Sequence[str] | None,
    root: str | os.PathLike[str] | None,
) -> tuple[str, Segment]:
    where = f"{path.name} line {line}"
    if len(row) <= max(index.values()):
        raise DatasetError(f"{where} has {len(row)} fields, expected at least {max(index.values()) + 1}; fix that row")
    video = normalize_video_name(row[index["video"]], root)
    label = row[index["label"]].strip()
    if not video or not label:
        raise DatasetError(f"{where} has an empty video or label; fill it in or delete the row")
    start, end = _number(where, "start_s", row[index["start_s"]]), _number(where, "end_s", row[index["end_s"]])
    if start < 0 or end <= start:
        raise DatasetError(f"{where}: need 0 <= start_s < end_s (got {start:g}, {end:g}); fix the times")
    if classes is not None and label not in classes:
        raise DatasetError(
            f"{where}: label {label!r} is not one of the classes ({', '.join(classes)}); "
            "fix the CSV or add the class to --classes"
        )
    return video, Segment(start, end, label)


def _number(where: str, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{where}: {column} {text.strip()!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise DatasetError(f"{where}: {column} must be a finite number of seconds")
    return value


def _merge_overlaps(path: Path, video: str, items: list[Segment]) -> list[Segment]:
    """Merge overlapping segments of one label (sorted input); overlapping different labels are an error."""
    merged: list[Segment] = []
    for seg in items:
        last = merged[-1] if merged else None
        if last is not None and seg.start_s < last.end_s:
            if seg.label != last.label:
                raise DatasetError(
                    f"{path.name}: segments of {video} overlap with different labels "
                    f"({last.label} {last.start_s:g}-{last.end_s:g}s, {seg.label} {seg.start_s:g}-{seg.end_s:g}s); "
                    "fix the times"
                )
            merged[-1] = Segment(last.start_s, max(last.end_s, seg.end_s), last.label)
        else:
            merged.append(seg)
    return merged


def label_at(segments: Mapping[str, Sequence[Segment]], video: str, t: float) -> str | None:
    """The label of the segment of `video` covering time `t` (`start_s <= t < end_s`), or None.

    `segments` is what `read_segments` returns (sorted, non-overlapping per video).
    """
    items = segments.get(video)
    if not items:
        return None
    i = bisect.bisect_right(items, t, key=lambda s: s.start_s) - 1
    if i >= 0 and items[i].start_s <= t < items[i].end_s:
        return items[i].label
    return None


def csv_fingerprint(csv_path: str | os.PathLike[str]) -> str:
    """A short SHA-256 of the CSV bytes, so a label set records exactly which annotations made it."""
    try:
        return hashlib.sha256(Path(csv_path).read_bytes()).hexdigest()[:16]
    except FileNotFoundError:
        raise DatasetError(f"annotations file {csv_path} does not exist; check the --annotations path") from None
    except OSError as exc:
        raise DatasetError(f"cannot read annotations file {csv_path}: {exc}") from None
