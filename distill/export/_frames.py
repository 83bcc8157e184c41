"""Real frames for the export checks: the label set's held-out frames (parity, agreement) and the others
(INT8 calibration).

The held-out frames are the ones the student's training held out, as its `StudentMeta.split` records them
(`distill.train.meta.held_out_mask`, the answer training and compare use too). A student that records no
split (written by an older distill) is checked on every frame, and the report says so.

This module does not run models and does not import torch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.dataset import decode_image, read_manifest, read_table
from distill.errors import DistillError, ExportError
from distill.train.meta import StudentMeta, held_out_mask

logger = logging.getLogger(__name__)


@dataclass
class FrameSet:
    """Decoded frames of a label set with the teacher's labels (None: the teacher's answer matched no class)."""

    images: list[np.ndarray]  # BGR uint8, as stored (short side resized by `distill label`)
    teacher: list[str | None]
    source: str  # e.g. "val split of runs/labels (3 videos)"
    rows: list[int] = field(default_factory=list)  # row numbers in the label set (`read_table` order)

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class CheckFrames:
    """The frames each export check runs on."""

    check: FrameSet  # parity and agreement (held out from calibration where the split allows)
    calibration: FrameSet | None  # INT8 calibration; None until asked for


def _evenly(indices: Sequence[int], limit: int) -> list[int]:
    """At most `limit` of `indices`, spread evenly (deterministic)."""
    if len(indices) <= limit:
        return list(indices)
    picks = np.linspace(0, len(indices) - 1, limit).round().astype(int)
    return [indices[i] for i in picks]


def _stratified(
    indices: Sequence[int] | range, videos: Sequence[str], labels: Sequence[str | None], limit: int
) -> list[int]:
    """At most `limit` of `indices`, taken in turn from every (video, label) group, each group spread evenly.

    Calibration sees every class of every video even when one long video or one class dominates the set, so
    no activation range is set by a single scene.
    """
    if len(indices) <= limit:
        return list(indices)
    groups: dict[tuple[str, str | None], list[int]] = {}
    for i in indices:
        groups.setdefault((videos[i], labels[i]), []).append(i)
    share = limit // len(groups)
    sizes = {key: min(len(rows), share) for key, rows in groups.items()}
    spare = limit - sum(sizes.values())  # groups smaller than their share leave room for the larger ones
    for key, rows in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        extra = min(spare, len(rows) - sizes[key])
        sizes[key] += extra
        spare -= extra
    picked = [i for key, rows in groups.items() for i in _evenly(rows, sizes[key])]
    return sorted(picked)


def _rows(directory: Path, classes: Sequence[str]) -> Any:
    try:
        manifest = read_manifest(directory)
    except DistillError as exc:
        raise ExportError(f"cannot read frames for the export checks: {exc}") from None
    if sorted(manifest["classes"]) != sorted(classes):
        raise ExportError(
            f"label set {directory} has classes {manifest['classes']}, the student {list(classes)}; "
            "pass a label set of the same task"
        )
    table = read_table(directory, columns=["video", "image", "label"])
    if table.num_rows == 0:
        raise ExportError(f"label set {directory} has no frames; label some with `distill label` first")
    return table


def _take(table: Any, indices: Sequence[int], source: str) -> FrameSet:
    images = [decode_image(jpeg) for jpeg in table.column("image").take(indices).to_pylist()]
    return FrameSet(images, table.column("label").take(indices).to_pylist(), source, list(indices))


def split_rows(meta: StudentMeta, directory: Path, labels: Sequence[str | None]) -> tuple[list[int], list[int]] | None:
    """(held-out, training) row numbers of a label set's labelled frames under the student's split; None when
    the student records no split or none of these frames was held out."""
    if meta.split is None:
        return None
    held = held_out_mask(meta.split, directory)
    labelled = np.array([label is not None for label in labels], bool)
    val = np.flatnonzero(held & labelled).tolist()
    return (val, np.flatnonzero(~held & labelled).tolist()) if val else None


def check_frames(
    meta: StudentMeta,
    *,
    calibration: str | os.PathLike[str] | None,
    need_calibration: bool,
    check_limit: int,
    calibration_limit: int,
) -> CheckFrames:
    """Frames for parity/agreement and (if `need_calibration`) INT8 calibration.

    Check frames are the training label set's held-out frames; calibration frames its training frames, or all
    frames of `calibration` when given. If the training label set has moved, `calibration` serves for the
    checks too.

    Raises:
        ExportError: no usable label set (the fix: `--calibration LABELS`), or classes that do not match.
    """
    recorded = meta.label_set.get("path")
    train_set = Path(recorded) if recorded else None
    if train_set is None or not (train_set / "manifest.json").is_file():
        if calibration is None:
            where = f"label set {train_set}" if train_set else "the checkpoint's label set"
            raise ExportError(
                f"{where} is not found, so the export cannot be checked on real frames; "
                "pass --calibration LABELS (a label set of the same task)"
            )
        logger.info("training label set %s not found; checking on %s instead", train_set, calibration)
        train_set = Path(calibration)
    table = _rows(train_set, meta.classes)
    videos = table.column("video").to_pylist()
    split = split_rows(meta, train_set, table.column("label").to_pylist())
    if split is None:
        why = "the student records no held-out split" if meta.split is None else "none of them was held out"
        logger.info("%s: %s; checking on all of its frames", train_set, why)
        check_idx = train_idx = list(range(len(videos)))
        source = f"all {len(videos)} frames of {train_set} ({why})"
    else:
        check_idx, train_idx = split
        source = f"val split of {train_set} ({len({videos[i] for i in check_idx})} video(s), {len(check_idx)} frames)"
    check = _take(table, _evenly(check_idx, check_limit), source)
    if not need_calibration:
        return CheckFrames(check, None)
    if calibration is not None and Path(calibration) != train_set:
        calib_table = _rows(Path(calibration), meta.classes)
        calib_idx = _stratified(
            range(calib_table.num_rows), calib_table.column("video").to_pylist(),
            calib_table.column("label").to_pylist(), calibration_limit,
        )  # fmt: skip
        calib = _take(calib_table, calib_idx, f"{len(calib_idx)} frames of {calibration}")
    else:
        labels = table.column("label").to_pylist()
        calib_idx = _stratified(train_idx or check_idx, videos, labels, calibration_limit)
        which = "train-split " if split is not None and train_idx else ""
        calib = _take(table, calib_idx, f"{len(calib_idx)} {which}frames of {train_set}")
    return CheckFrames(check, calib)
