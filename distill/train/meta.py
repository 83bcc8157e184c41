"""`StudentMeta`: everything about a student that travels with it, and the split its training held out.

One frozen dataclass, stored in the checkpoint (a plain dict under `"distill"`) and in `student.onnx`
(JSON values under `distill.*` keys of `metadata_props`, readable by any ONNX tool). `Student`, export,
compare and serve all read this one type, so no stage guesses the preprocessing, the question the teacher
was asked, or which frames training held out.

| field | meaning |
| --- | --- |
| classes, class_texts | label ids in logit order, and what the teacher was asked to say for each |
| question, prompt | the task question (with `{choices}`) and the exact prompt the teacher saw |
| model | the timm name (rebuilt with `pretrained=False`) |
| image_size, mean, std | square input side; RGB mean/std on a 0..1 scale |
| channel_order, resize, interpolation | "RGB"; "squash" (whole frame to a square, no crop); "bilinear" |
| source_short_side | short side the label set stored frames at: larger frames are area-shrunk to it first |
| split | `HeldOutSplit`: the validation videos, or the time blocks of a one-video split |
| teacher, label_set, metrics | provenance and the training figures |
| precision, checks | "fp32" / "int8" / "fp16", and the export's parity and agreement figures |

Files written before the split and the question were recorded (`distill-student/1`) still load; their
`split` is None and their `class_texts` are the class names.

`held_out_mask(split, labels_dir)` applies a split to a label set: the rows training held out, which export's
parity gate and compare evaluate.

This module imports neither torch nor onnx: serving reads it on machines that have only ONNX Runtime.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distill.errors import ExportError

FORMAT = "distill-student/2"
READABLE = ("distill-student/1", FORMAT)
PREFIX = "distill."
CHECKPOINT_KEY = "distill"
SUPPORTED = {
    "channel_order": ("RGB", "BGR"),
    "resize": ("squash",),
    "interpolation": ("bilinear", "bicubic", "nearest"),
}


@dataclass(frozen=True)
class HeldOutSplit:
    """The frames a training run held out for validation, stored as data.

    `by-video`: every frame of `val_videos`. `time-blocks` (a label set of one video): the video's time range
    was cut at `edges` (seconds, n_blocks + 1 values) and the frames of blocks `val_blocks` were held out.
    `held_out` is the one answer to "did training hold this frame out" for training, export and compare.

    Example:
        >>> split = HeldOutSplit("by-video", ("b.mp4",))
        >>> split.held_out(["a.mp4", "b.mp4"], [0.0, 1.0]).tolist()
        [False, True]
    """

    mode: str
    val_videos: tuple[str, ...]
    edges: tuple[float, ...] = ()
    val_blocks: tuple[int, ...] = ()
    val_fraction: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "val_videos", tuple(str(v) for v in self.val_videos))
        object.__setattr__(self, "edges", tuple(float(e) for e in self.edges))
        object.__setattr__(self, "val_blocks", tuple(int(b) for b in self.val_blocks))
        if self.mode not in ("by-video", "time-blocks"):
            raise ExportError(f"unknown split mode {self.mode!r} in the student's metadata; retrain it")
        if self.mode == "time-blocks" and (len(self.edges) < 2 or not self.val_blocks):
            raise ExportError("a time-block split needs its block edges and held-out blocks; retrain the student")

    def block_of(self, timestamps: Sequence[float] | np.ndarray) -> np.ndarray:
        """(N,) the time block of each timestamp (first and last blocks extend to -inf and +inf)."""
        n_blocks = len(self.edges) - 1
        t = np.asarray(timestamps, np.float64)
        return np.clip(np.searchsorted(np.asarray(self.edges), t, side="right") - 1, 0, n_blocks - 1)

    def held_out(self, videos: Sequence[str] | np.ndarray, timestamps: Sequence[float] | np.ndarray) -> np.ndarray:
        """(N,) bool: which of these frames (video name, media time) training held out."""
        in_val = np.isin(np.asarray(videos, dtype=object), list(self.val_videos))
        if self.mode == "by-video":
            return in_val
        return in_val & np.isin(self.block_of(timestamps), list(self.val_blocks))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> HeldOutSplit | None:
        """The split stored by this version; None for older records that kept only (mode, fraction, seed)."""
        if not data or "val_videos" not in data:
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def held_out_mask(split: HeldOutSplit, labels_dir: str | os.PathLike[str]) -> np.ndarray:
    """(N,) bool over a label set's rows in `read_table` order: the frames `split` held out from training.

    The one answer for every stage: training's VAL rows are the labelled ones of this mask on its main set,
    export checks parity on them and compare evaluates them. Rows the teacher left unlabelled are included
    (they are in held-out videos or blocks); callers skip them as training did. Extra label sets are never
    held out, so pass the main set.
    """
    from distill.dataset import read_table  # pyarrow: serving, which only reads metadata, never asks

    table = read_table(labels_dir, columns=["video", "timestamp_s"])
    videos = np.array(table.column("video").to_pylist(), dtype=object)
    return split.held_out(videos, np.asarray(table.column("timestamp_s").to_numpy(), np.float64))


@dataclass(frozen=True)
class StudentMeta:
    """What a student is and how to feed it (see the module docstring for the fields)."""

    classes: tuple[str, ...]
    model: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_texts: tuple[str, ...] = ()
    question: str | None = None
    prompt: str | None = None
    channel_order: str = "RGB"
    resize: str = "squash"
    interpolation: str = "bilinear"
    source_short_side: int = 0
    split: HeldOutSplit | None = None
    teacher: dict[str, Any] = field(default_factory=dict)
    label_set: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    checks: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def bad(what: str) -> ExportError:
            return ExportError(f"student metadata: {what}; retrain or re-export the student")

        classes = tuple(str(c) for c in self.classes)
        if len(classes) < 2 or not all(classes):
            raise bad(f"a student needs at least two named classes (got {list(classes)})")
        if len(set(classes)) != len(classes):
            raise bad("class names repeat")
        texts = tuple(str(t) for t in self.class_texts) or classes
        if len(texts) != len(classes):
            raise bad(f"{len(texts)} class texts for {len(classes)} classes")
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 8:
            raise bad(f"image_size {self.image_size!r} is not a positive integer")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != 3 or not all(isinstance(v, (int, float)) for v in value):
                raise bad(f"{name} must be 3 numbers")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if min(self.std) <= 0:
            raise bad("std must be > 0")
        if not isinstance(self.source_short_side, int) or self.source_short_side < 0:
            raise bad(f"source_short_side {self.source_short_side!r} is not a non-negative integer")
        for key, allowed in SUPPORTED.items():
            if getattr(self, key) not in allowed:
                raise bad(f"{key} {getattr(self, key)!r} is not supported (this distill knows {', '.join(allowed)})")
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "class_texts", texts)
        for name in ("teacher", "label_set", "metrics", "checks"):
            object.__setattr__(self, name, dict(getattr(self, name) or {}))

    def replace(self, **changes: Any) -> StudentMeta:
        return dataclasses.replace(self, **changes)

    # --- plain dicts (the checkpoint) ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with a `format` key: what the checkpoint stores under `"distill"`."""
        data: dict[str, Any] = {"format": FORMAT}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, HeldOutSplit):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            data[f.name] = value
        return json.loads(json.dumps(data, default=_jsonable))  # plain types only (numpy scalars become floats)

    @classmethod
    def from_dict(cls, data: Any, source: object = "the student") -> StudentMeta:
        """Read a dict written by `to_dict` (or by an older distill); one-line `ExportError` otherwise."""
        if not isinstance(data, Mapping):
            raise ExportError(f"{source}: the student metadata is not a mapping; retrain the student")
        fmt = data.get("format", READABLE[0])
        if fmt not in READABLE:
            raise ExportError(
                f"{source} has student format {fmt!r}, this distill reads {', '.join(READABLE)}; upgrade distill"
            )
        required = ("classes", "model", "image_size", "mean", "std")
        missing = [k for k in required if k not in data]
        if missing:
            raise ExportError(f"{source}: the student metadata lacks {', '.join(missing)}; retrain the student")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known and v is not None}
        split = data.get("split")
        try:
            kwargs["split"] = HeldOutSplit.from_dict(split if isinstance(split, Mapping) else None)
            return cls(**kwargs)
        except ExportError as exc:
            raise ExportError(f"{source}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ExportError(f"{source}: unreadable student metadata ({exc}); retrain the student") from None

    # --- ONNX metadata_props ---------------------------------------------------------------------------------

    def to_props(self) -> dict[str, str]:
        """`metadata_props` entries: every field JSON-encoded under `distill.<field>`, and `distill.format` as
        the plain format string (as `distill-student/1` files have it)."""
        data = self.to_dict()
        return {PREFIX + "format": data.pop("format")} | {
            PREFIX + k: json.dumps(v, sort_keys=True) for k, v in data.items()
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str | os.PathLike[str] = "the model") -> StudentMeta:
        """Decode `distill.*` metadata; `ExportError` for an ONNX file `distill export` did not make."""
        if PREFIX + "format" not in props:
            raise ExportError(
                f"{source} is an ONNX model but not a distill student (no {PREFIX}format metadata); "
                "export one with `distill export CKPT`"
            )
        data: dict[str, Any] = {"format": props[PREFIX + "format"]}
        for key, raw in props.items():
            if not key.startswith(PREFIX) or key == PREFIX + "format":
                continue
            try:
                data[key[len(PREFIX) :]] = json.loads(raw)
            except json.JSONDecodeError:
                raise ExportError(
                    f"{source} has unreadable {key} metadata; re-export it with `distill export`"
                ) from None
        return cls.from_dict(data, source)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot store {type(value).__name__} in student metadata")
