"""The rows a training run uses: label sets (main + `--extra`) read into arrays, and the train/val split.

- `load_rows(labels_dir, extra)`: every frame of the main set and the extra sets, with its class index
  (-1 for an unmatched answer), the teacher's distribution in the main set's class order, and provenance.
- `make_splits(rows, val_fraction, seed)`: by video with `distill.dataset.split_by_video`; a single video is
  split into time blocks, and training frames closer than a gap to a validation frame are dropped, so
  neighbouring frames never straddle the split. Extra sets (hard examples) always go to training. The split
  is a `HeldOutSplit` (stored in the student), and VAL is exactly the labelled frames its `held_out` names,
  which `distill.train.meta.held_out_mask` gives every later stage.

This module does not decode images (see `distill.train.cache`) and does not import torch.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill.dataset import read_manifest, read_table, split_by_video
from distill.errors import DatasetError
from distill.train.meta import HeldOutSplit

TRAIN, VAL, DROPPED = 0, 1, -1
_COLUMNS = ["video", "frame_index", "timestamp_s", "label", "probs", "confidence"]


@dataclass
class Rows:
    """One entry per frame of all label sets read; `set_index` 0 is the main set, 1.. the extras."""

    classes: list[str]
    sources: list[Path]  # label-set folders, by set_index
    manifest: dict[str, Any]  # of the main set
    set_index: np.ndarray  # (N,) int
    row: np.ndarray  # (N,) int, row number within its set (read_table order)
    video: np.ndarray  # (N,) object (str)
    frame_index: np.ndarray  # (N,) int
    timestamp: np.ndarray  # (N,) float
    label: np.ndarray  # (N,) int, class index; -1 = unmatched
    probs: np.ndarray  # (N, K) float32, rows sum to 1; one-hot where the set had no distribution
    has_probs: np.ndarray  # (N,) bool
    confidence: np.ndarray  # (N,) float32, NaN where unknown

    def __len__(self) -> int:
        return len(self.label)

    def select(self, mask: np.ndarray) -> Rows:
        """A copy holding only the rows where `mask` is true."""
        keep = {k: getattr(self, k)[mask] for k in _ARRAYS}
        return Rows(self.classes, self.sources, self.manifest, **keep)

    @property
    def teacher_top(self) -> np.ndarray:
        """(N,) the teacher's most probable class (its hard label where there is no distribution)."""
        return np.where(self.has_probs, self.probs.argmax(axis=1), self.label)


_ARRAYS = ("set_index", "row", "video", "frame_index", "timestamp", "label", "probs", "has_probs", "confidence")


def load_rows(labels_dir: str | os.PathLike[str], extra: Sequence[str | os.PathLike[str]] = ()) -> Rows:
    """Read the main label set and the extra ones; classes come from the main set's manifest.

    Raises:
        DatasetError: a set is missing or empty, has fewer than two classes, or an extra set's classes differ.
    """
    main = Path(labels_dir)
    manifest = read_manifest(main)
    classes = [str(c) for c in manifest.get("classes", [])]
    if len(classes) < 2:
        raise DatasetError(
            f"label set {main} has {len(classes)} class(es) {classes}; "
            "a classifier needs two or more — relabel with more --classes"
        )
    parts = [_read_set(main, classes, classes, 0)]
    for i, directory in enumerate(extra, start=1):
        directory = Path(directory)
        own = [str(c) for c in read_manifest(directory).get("classes", [])]
        if sorted(own) != sorted(classes):
            raise DatasetError(
                f"extra label set {directory} has classes {own}, the main set {classes}; "
                "use sets labelled with the same classes"
            )
        parts.append(_read_set(directory, own, classes, i))
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in _ARRAYS}
    arrays["probs"] = arrays["probs"].reshape(-1, len(classes)).astype(np.float32)
    rows = Rows(classes, [main, *(Path(d) for d in extra)], manifest, **arrays)
    if not (rows.label[rows.set_index == 0] >= 0).any():
        raise DatasetError(f"label set {main} has no labelled frames; run `distill label` on some videos first")
    present = sorted({classes[i] for i in rows.label[rows.label >= 0]})
    if len(present) < 2:
        raise DatasetError(
            f"only class {present[0]!r} has frames in {main}; a classifier needs frames of two or more classes"
        )
    return rows


def _read_set(directory: Path, own: list[str], classes: list[str], set_index: int) -> dict[str, np.ndarray]:
    table = read_table(directory, columns=_COLUMNS)
    n, k = table.num_rows, len(classes)
    if n == 0:
        raise DatasetError(f"label set {directory} has no frames yet; run `distill label` to fill it")
    order = [own.index(c) for c in classes]  # main class i is column order[i] of this set's probs
    index = {c: i for i, c in enumerate(classes)}
    labels = table.column("label").to_pylist()
    unknown = sorted({lab for lab in labels if lab is not None and lab not in index})
    if unknown:
        raise DatasetError(f"label set {directory} has frames labelled {unknown[0]!r}, not one of its classes")
    label = np.array([-1 if lab is None else index[lab] for lab in labels], dtype=np.int64)
    probs = np.zeros((n, k), np.float32)
    has = np.zeros(n, bool)
    for i, p in enumerate(table.column("probs").to_pylist()):
        if p is not None and len(p) == k:
            v = np.asarray(p, np.float32)[order]
            total = float(v.sum())
            if np.isfinite(v).all() and (v >= 0).all() and total > 0:
                probs[i], has[i] = v / total, True
        if not has[i] and label[i] >= 0:
            probs[i, label[i]] = 1.0
    conf = np.array([np.nan if c is None else c for c in table.column("confidence").to_pylist()], np.float32)
    return {
        "set_index": np.full(n, set_index, np.int64),
        "row": np.arange(n, dtype=np.int64),
        "video": np.array(table.column("video").to_pylist(), dtype=object),
        "frame_index": np.asarray(table.column("frame_index").to_numpy(), np.int64),
        "timestamp": np.asarray(table.column("timestamp_s").to_numpy(), np.float64),
        "label": label,
        "probs": probs,
        "has_probs": has,
        "confidence": conf,
    }


def make_splits(rows: Rows, val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Assign every labelled row to TRAIN, VAL or DROPPED (unmatched frames and single-video gap frames).

    Returns:
        (split array (N,), info dict): the info holds the `HeldOutSplit` under `held_out` (what the student
        records) and, for people, the mode, videos per split and counts (what splits.json shows).
    """
    split = np.full(len(rows), DROPPED, np.int64)
    labelled = rows.label >= 0
    main = labelled & (rows.set_index == 0)
    split[labelled & (rows.set_index > 0)] = TRAIN
    videos = sorted(set(rows.video[main]))
    if len(videos) >= 2:
        train_v, val_v = split_by_video(videos, val_fraction, seed)
        held = HeldOutSplit("by-video", tuple(val_v), val_fraction=val_fraction, seed=seed)
        in_val = held.held_out(rows.video, rows.timestamp)
        split[main & in_val] = VAL
        split[main & ~in_val] = TRAIN
        info: dict[str, Any] = {"mode": "by-video", "seed": seed, "videos": {"train": train_v, "val": val_v}}
    else:
        held, info = _time_blocks(rows, main, split, val_fraction, seed)
        info["videos"] = {"train": videos, "val": videos}
    if not (split == VAL).any() or (split[rows.set_index == 0] == TRAIN).sum() < 2:
        raise DatasetError(
            f"too few labelled frames ({int(main.sum())}) to hold out a validation split; label more frames or videos"
        )
    info["counts"] = _counts(rows, split)
    info["extra_sets"] = [str(p) for p in rows.sources[1:]]
    info["held_out"] = held
    return split, info


def _time_blocks(
    rows: Rows, main: np.ndarray, split: np.ndarray, val_fraction: float, seed: int
) -> tuple[HeldOutSplit, dict[str, Any]]:
    """Split one video into time blocks; drop training frames closer than `gap_s` to any validation frame."""
    idx = np.flatnonzero(main)
    t = rows.timestamp[idx]
    n_blocks = int(np.clip(len(idx) // 8, 2, 10))
    edges = np.linspace(t.min(), t.max(), n_blocks + 1)
    n_val = min(max(1, round(n_blocks * val_fraction)), n_blocks - 1)
    val_blocks = sorted(random.Random(seed).sample(range(n_blocks), n_val))
    held = HeldOutSplit(
        "time-blocks", (str(rows.video[idx[0]]),), tuple(edges), tuple(val_blocks), val_fraction=val_fraction, seed=seed
    )
    is_val = held.held_out(rows.video[idx], t)
    dt = np.diff(np.sort(t))
    step = float(np.median(dt[dt > 0])) if (dt > 0).any() else 1.0
    gap_s = max(2.0 * step, 0.02 * float(t.max() - t.min()))
    val_t = np.sort(t[is_val])
    near = np.searchsorted(val_t, t)
    dist = np.minimum(
        np.abs(t - val_t[np.clip(near - 1, 0, len(val_t) - 1)]), np.abs(t - val_t[np.clip(near, 0, len(val_t) - 1)])
    )
    dropped = ~is_val & (dist < gap_s)
    split[idx] = np.where(is_val, VAL, np.where(dropped, DROPPED, TRAIN))
    return held, {
        "mode": "time-blocks",
        "seed": seed,
        "blocks": n_blocks,
        "val_blocks": val_blocks,
        "gap_s": round(gap_s, 3),
        "gap_frames_dropped": int(dropped.sum()),
    }


def _counts(rows: Rows, split: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, code in (("train", TRAIN), ("val", VAL)):
        mask = split == code
        per_class = np.bincount(rows.label[mask], minlength=len(rows.classes))
        out[name] = {
            "frames": int(mask.sum()),
            "videos": len(set(rows.video[mask & (rows.set_index == 0)])),
            "extra_frames": int((mask & (rows.set_index > 0)).sum()),
            "per_class": {c: int(n) for c, n in zip(rows.classes, per_class)},
        }
    out["unmatched_dropped"] = int((rows.label < 0).sum())
    return out
