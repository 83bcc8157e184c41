"""distill.train: the student (a timm classifier) trained on a teacher's label set with Lightning.

- `StudentMeta`, `HeldOutSplit`: everything about a student that travels with it (checkpoint and ONNX), and
  the frames its training held out.
- `load_student(ckpt) -> (model in eval mode, StudentMeta)`: the checkpoint contract export builds on.
- `build_meta`, `save_student`, `read_meta`, `create_student`, `preprocessing`: the same contract, for tools
  and tests.
- `held_out_mask(split, labels_dir)`: which rows of a label set training held out (export and compare ask it).
- `run_train(labels_dir, out_dir, cfg) -> TrainSummary`: the training run behind `distill train`.

Importing this package imports neither torch, timm nor Lightning; the training run loads them when called.
"""

from __future__ import annotations

from typing import Any

from distill.train.checkpoint import (
    CHECKPOINT_KEY,
    build_meta,
    create_student,
    load_student,
    preprocessing,
    read_meta,
    save_student,
)
from distill.train.meta import HeldOutSplit, StudentMeta, held_out_mask

_LAZY = {
    "run_train": "distill.train.run",
    "TrainSummary": "distill.train.run",
    "audit_labels": "distill.train.audit",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'distill.train' has no attribute {name!r}")


__all__ = [
    "CHECKPOINT_KEY",
    "HeldOutSplit",
    "StudentMeta",
    "TrainSummary",
    "audit_labels",
    "build_meta",
    "create_student",
    "held_out_mask",
    "load_student",
    "preprocessing",
    "read_meta",
    "run_train",
    "save_student",
]
