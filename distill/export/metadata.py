"""The preprocessing and provenance a `student.onnx` carries in its `metadata_props`.

Every value is JSON-encoded under a `distill.` key, so any ONNX tool can read it:

| key | value |
| --- | --- |
| distill.format | "distill-student/1" |
| distill.classes | class names, in logit order |
| distill.model | the student's timm name |
| distill.image_size | square input side in pixels |
| distill.mean, distill.std | 3 floats each, RGB order, 0..1 scale |
| distill.channel_order | "RGB" |
| distill.resize | "squash" (whole frame resized to image_size x image_size, no crop) |
| distill.interpolation | "bilinear" |
| distill.teacher | the teacher that labelled the training frames (from the label-set manifest) |
| distill.label_set | {path, frames, classes} of the training label set |
| distill.metrics | training metrics (may be empty) |
| distill.precision | "fp32", "int8" or "fp16" (added by `distill export`) |
| distill.checks | the export's parity / agreement figures (added by `distill export`) |

This module does not run models; reading needs `onnx` or an ONNX Runtime session, never torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.errors import ExportError

if TYPE_CHECKING:
    import onnx

FORMAT = "distill-student/1"
PREFIX = "distill."
META_KEYS = (
    "classes",
    "model",
    "image_size",
    "mean",
    "std",
    "channel_order",
    "resize",
    "interpolation",
    "teacher",
    "label_set",
    "metrics",
)
EXTRA_KEYS = ("precision", "checks", "source_short_side")
DEFAULTS: dict[str, Any] = {
    "channel_order": "RGB",
    "resize": "squash",
    "interpolation": "bilinear",
    "teacher": {},
    "label_set": {},
    "metrics": {},
    "precision": "fp32",
    "checks": {},
    # short side the training frames were stored at (the label set's JPEGs); larger frames are first
    # area-shrunk to it, as `distill label` did, so serving sees the pixels training saw. 0: no pre-shrink.
    "source_short_side": 0,
}
SUPPORTED = {
    "channel_order": ("RGB", "BGR"),
    "resize": ("squash",),
    "interpolation": ("bilinear", "bicubic", "nearest"),
}


def meta_to_props(meta: Mapping[str, Any]) -> dict[str, str]:
    """The `metadata_props` entries for a student `meta` dict (contract 3 keys, plus precision and checks)."""
    props = {PREFIX + "format": FORMAT}
    for key in META_KEYS + EXTRA_KEYS:
        value = meta.get(key, DEFAULTS.get(key))
        if value is None:
            raise ExportError(f"the student's metadata has no {key!r}; re-train with `distill train` to record it")
        props[PREFIX + key] = json.dumps(value, sort_keys=True, default=_jsonable)
    return props


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot store {type(value).__name__} in ONNX metadata")


def props_to_meta(props: Mapping[str, str], source: str | os.PathLike[str] = "the model") -> dict[str, Any]:
    """Decode and validate `distill.*` metadata; raises `ExportError` for a model `distill export` did not make."""
    fmt = props.get(PREFIX + "format")
    if fmt is None:
        raise ExportError(
            f"{source} is an ONNX model but not a distill student (no {PREFIX}format metadata); "
            "export one with `distill export CKPT`"
        )
    if fmt != FORMAT:
        raise ExportError(f"{source} has student format {fmt!r}, this distill reads {FORMAT!r}; upgrade distill")
    meta: dict[str, Any] = {}
    for key in META_KEYS + EXTRA_KEYS:
        raw = props.get(PREFIX + key)
        if raw is None:
            if key not in DEFAULTS:
                raise ExportError(f"{source} lacks the {PREFIX}{key} metadata; re-export it with `distill export`")
            meta[key] = DEFAULTS[key]
            continue
        try:
            meta[key] = json.loads(raw)
        except json.JSONDecodeError:
            raise ExportError(
                f"{source} has unreadable {PREFIX}{key} metadata; re-export it with `distill export`"
            ) from None
    _validate(meta, source)
    return meta


def _validate(meta: dict[str, Any], source: object) -> None:
    def bad(what: str) -> ExportError:
        return ExportError(f"{source}: {what} in the distill metadata; re-export it with `distill export`")

    classes = meta["classes"]
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes):
        raise bad("classes must be a list of at least two names")
    if len(set(classes)) != len(classes):
        raise bad("class names repeat")
    if not isinstance(meta["image_size"], int) or meta["image_size"] < 8:
        raise bad(f"image_size {meta['image_size']!r} is not a positive integer")
    for key in ("mean", "std"):
        value = meta[key]
        if not isinstance(value, list) or len(value) != 3 or not all(isinstance(v, (int, float)) for v in value):
            raise bad(f"{key} must be 3 numbers")
    if min(meta["std"]) <= 0:
        raise bad("std must be > 0")
    if not isinstance(meta["source_short_side"], int) or meta["source_short_side"] < 0:
        raise bad(f"source_short_side {meta['source_short_side']!r} is not a non-negative integer")
    for key, allowed in SUPPORTED.items():
        if meta[key] not in allowed:
            raise bad(f"{key} {meta[key]!r} is not supported (this distill knows {', '.join(allowed)})")


def write_metadata(model: onnx.ModelProto, meta: Mapping[str, Any]) -> onnx.ModelProto:
    """Replace the model's `distill.*` metadata_props with those of `meta` (other entries are kept)."""
    props = meta_to_props(meta)
    keep = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    for key, value in keep + sorted(props.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = f"distill student ({meta.get('model')}, {meta.get('precision', 'fp32')}): " + ", ".join(
        meta["classes"]
    )
    return model


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The student metadata of an ONNX file (weights are not loaded). Raises `ExportError` if it has none.

    Example:
        >>> read_metadata("runs/student/student.onnx")["classes"]  # doctest: +SKIP
        ['active', 'idle', 'error']
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path} does not exist; export a student with `distill export CKPT --out {path}`")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... depending on the damage
        raise ExportError(f"{path} is not a readable ONNX model ({type(exc).__name__}); re-export it") from None
    if not model.graph.node:  # protobuf parses empty or foreign bytes into an empty model
        raise ExportError(f"{path} is not a readable ONNX model (no graph); re-export it with `distill export`")
    return props_to_meta({p.key: p.value for p in model.metadata_props}, path)
