"""distill.evaluate: the student against the teacher and ground truth — metrics, plots and reports.

- `run_compare(labels_dir, out_dir, student_path=...) -> CompareReport`: what `distill compare` runs.
- `distill.evaluate.metrics`: accuracy/F1/confusion (scikit-learn), agreement, ECE, the fallback curve.
- `distill.evaluate.report`: metrics.json, PNG plots, report.md, self-contained report.html.
- `run_review(labels_dir, out_dir, student_path=None) -> ReviewReport` and `apply_review(labels_dir, csv)`: what
  `distill review` runs (the labels as pictures, suspects ranked, corrections stored).

Importing this package loads nothing heavy; the modules load scikit-learn and matplotlib when used.
This package does not label, train or serve.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distill.evaluate.compare import CompareReport, held_out_frames, run_compare
    from distill.evaluate.review import ReviewReport, apply_review, run_review

_WHERE = {"run_compare": "compare", "CompareReport": "compare", "held_out_frames": "compare"}
_WHERE |= {"run_review": "review", "apply_review": "review", "ReviewReport": "review"}

__all__ = ["CompareReport", "ReviewReport", "apply_review", "held_out_frames", "run_compare", "run_review"]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'distill.evaluate' has no attribute {name!r}")
    return getattr(importlib.import_module(f"distill.evaluate.{module}"), name)
