"""distill.train: the student (a timm classifier) trained on a teacher's label set with Lightning.

- `load_student(ckpt) -> (model in eval mode, meta)`: the checkpoint contract export and evaluation build on.
- `build_meta`, `save_student`, `create_student`, `preprocessing`: the same contract, for tools and tests.
- `run_train(labels_dir, out_dir, cfg) -> TrainSummary`: the training run behind `distill train`.

Importing this package imports neither torch, timm nor Lightning; the training run loads them when called.
"""

from __future__ import annotations

from typing import Any

from distill.train.checkpoint import (
    CKPT_KEY,
    build_meta,
    create_student,
    load_student,
    preprocessing,
    read_meta,
    save_student,
)

_LAZY = {"run_train": "distill.train.run", "TrainSummary": "distill.train.run", "audit_labels": "distill.train.audit"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'distill.train' has no attribute {name!r}")


__all__ = [
    "CKPT_KEY",
    "TrainSummary",
    "audit_labels",
    "build_meta",
    "create_student",
    "load_student",
    "preprocessing",
    "read_meta",
    "run_train",
    "save_student",
]
