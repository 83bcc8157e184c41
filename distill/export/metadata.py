"""A `student.onnx`'s `StudentMeta`, in its `metadata_props`: write it into a model, read it from a file.

The encoding is `StudentMeta.to_props` / `from_props` (JSON values under `distill.*` keys, readable by any
ONNX tool); this module only moves those entries in and out of an ONNX file, keeping other entries.

This module does not run models; reading needs `onnx`, never torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from distill.errors import ExportError
from distill.train.meta import FORMAT, PREFIX, StudentMeta

if TYPE_CHECKING:
    import onnx

__all__ = ["FORMAT", "StudentMeta", "read_metadata", "write_metadata"]


def write_metadata(model: onnx.ModelProto, meta: StudentMeta) -> onnx.ModelProto:
    """Replace the model's `distill.*` metadata_props with those of `meta` (other entries are kept)."""
    keep = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    for key, value in keep + sorted(meta.to_props().items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = f"distill student ({meta.model}, {meta.precision}): " + ", ".join(meta.classes)
    return model


def read_metadata(path: str | os.PathLike[str]) -> StudentMeta:
    """The `StudentMeta` of an ONNX file (weights are not loaded). Raises `ExportError` if it has none.

    Example:
        >>> read_metadata("runs/student/student.onnx").classes  # doctest: +SKIP
        ('active', 'idle', 'error')
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
    return StudentMeta.from_props({p.key: p.value for p in model.metadata_props}, path)
