"""Real frames for the export checks: the label set's val split (parity, agreement) and train split (calibration).

The val split is the one training used: `distill.train.data.make_splits` (by video, or time blocks of a
single video) recomputed with the `train.val_fraction` and `train.seed` of the run's saved config (the
checkpoint's meta, or the `config.yaml` that `distill train` writes next to the checkpoint). When that config
cannot be found, every frame is used for every check and the report says so.

This module does not run models and does not import torch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from distill.dataset import read_manifest, read_table, split_by_video
from distill.errors import DistillError, ExportError

logger = logging.getLogger(__name__)


@dataclass
class FrameSet:
    """Decoded frames of a label set with the teacher's labels (None: the teacher's answer matched no class)."""

    images: list[np.ndarray]  # BGR uint8, as stored (short side resized by `distill label`)
    teacher: list[str | None]
    source: str  # e.g. "val split of runs/labels (3 videos)"

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class CheckFrames:
    """The frames each export check runs on."""

    check: FrameSet  # parity and agreement (held out from calibration where the split allows)
    calibration: FrameSet | None  # INT8 calibration; None until asked for


def _split_config(meta: Mapping[str, Any], ckpt_path: Path) -> tuple[float, int] | None:
    """(val_fraction, seed) of the training run, from the meta or the config.yaml `distill train` wrote."""
    from distill.config import config_from_dict, read_yaml

    for source in (meta.get("split"), (meta.get("config") or {}).get("train")):
        if isinstance(source, Mapping) and "seed" in source and "val_fraction" in source:
            return float(source["val_fraction"]), int(source["seed"])
    for folder in (ckpt_path.parent, ckpt_path.parent.parent):
        path = folder / "config.yaml"
        if path.is_file():
            try:
                train = config_from_dict(read_yaml(path), where=str(path)).train
            except DistillError as exc:
                logger.debug("ignoring %s: %s", path, exc)
                continue
            return train.val_fraction, train.seed
    return None


def _split_rows(directory: Path, videos: Sequence[str], found: tuple[float, int]) -> tuple[list[int], list[int]] | None:
    """(val, train) row numbers of the training run's split: `distill.train.data.make_splits` when available
    (by video, or time blocks within a single video), else `split_by_video`."""
    try:
        from distill.train.data import TRAIN, VAL, load_rows, make_splits
    except ImportError:
        _, val_videos = split_by_video(videos, *found)
        held = set(val_videos)
        val = [i for i, v in enumerate(videos) if v in held]
        return (val, [i for i, v in enumerate(videos) if v not in held]) if val else None
    try:
        rows = load_rows(directory)
        split, _ = make_splits(rows, *found)
    except DistillError as exc:
        logger.info("cannot recompute the training split of %s (%s)", directory, exc)
        return None
    main = rows.set_index == 0
    return rows.row[main & (split == VAL)].tolist(), rows.row[main & (split == TRAIN)].tolist()


def _decode(jpegs: Sequence[bytes]) -> list[np.ndarray]:
    images = []
    for jpeg in jpegs:
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ExportError("a label-set frame is not a readable JPEG; relabel the set with `distill label`")
        images.append(image)
    return images


def _evenly(indices: Sequence[int], limit: int) -> list[int]:
    """At most `limit` of `indices`, spread evenly (deterministic)."""
    if len(indices) <= limit:
        return list(indices)
    picks = np.linspace(0, len(indices) - 1, limit).round().astype(int)
    return [indices[i] for i in picks]


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
    images = _decode(table.column("image").take(indices).to_pylist())
    return FrameSet(images, table.column("label").take(indices).to_pylist(), source)


def check_frames(
    meta: Mapping[str, Any],
    ckpt_path: str | os.PathLike[str],
    *,
    calibration: str | os.PathLike[str] | None,
    need_calibration: bool,
    check_limit: int,
    calibration_limit: int,
) -> CheckFrames:
    """Frames for parity/agreement and (if `need_calibration`) INT8 calibration.

    Check frames come from the training label set's val split; calibration frames from its train split, or
    from all frames of `calibration` when given. If the training label set has moved, `calibration` serves
    for the checks too.

    Raises:
        ExportError: no usable label set (the fix: `--calibration LABELS`), or classes that do not match.
    """
    ckpt_path = Path(ckpt_path)
    classes = meta["classes"]
    recorded = (meta.get("label_set") or {}).get("path")
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
    table = _rows(train_set, classes)
    videos = table.column("video").to_pylist()
    found = _split_config(meta, ckpt_path)
    split = _split_rows(train_set, videos, found) if found is not None else None
    if split is not None and not split[0]:
        split = None  # an empty val split: fall back to every frame rather than check nothing
    if split is None:
        logger.info("val split of %s not recoverable; checking on all of its frames", train_set)
        check_idx = train_idx = list(range(len(videos)))
        source = f"all {len(videos)} frames of {train_set} (val split not recoverable)"
    else:
        check_idx, train_idx = split
        source = f"val split of {train_set} ({len({videos[i] for i in check_idx})} video(s), {len(check_idx)} frames)"
    check = _take(table, _evenly(check_idx, check_limit), source)
    if not need_calibration:
        return CheckFrames(check, None)
    if calibration is not None and Path(calibration) != train_set:
        calib_table = _rows(Path(calibration), classes)
        calib_idx = _evenly(list(range(calib_table.num_rows)), calibration_limit)
        calib = _take(calib_table, calib_idx, f"{len(calib_idx)} frames of {calibration}")
    else:
        calib_idx = _evenly(train_idx or check_idx, calibration_limit)
        which = "train-split " if split is not None and train_idx else ""
        calib = _take(table, calib_idx, f"{len(calib_idx)} {which}frames of {train_set}")
    return CheckFrames(check, calib)
