"""What a student's predictions score: the one macro-F1 every `metrics.json` reports, and training's final figures.

- `class_scores(y_true, y_pred, classes)`: precision, recall, F1 and support per class, and `macro_f1`, their
  unweighted mean over *all* the task's classes (scikit-learn, `labels=classes`, `zero_division=0`): a class the
  reference never shows and no model predicts scores 0, so the figure means the same on every split. `distill
  compare` (against ground truth) and training (against the teacher) both call it, so their numbers agree.
- `student_metrics(...)`: a training run's figures on the validation split, the student against the teacher:
  `agreement` (student's top class == the teacher's top class, the argmax of its distribution, or its hard label
  where it gave none; what the best checkpoint is chosen by), `accuracy` (== the teacher's hard label), the
  `class_scores` of the hard labels, and `confusion` (rows: teacher's hard label, columns: student).

Only `predict` needs torch (imported inside). This module does not know any ground truth; `distill compare`
measures against annotations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def class_scores(y_true: Sequence[Any], y_pred: Sequence[Any], classes: Sequence[Any]) -> dict[str, Any]:
    """Per-class precision/recall/F1/support and their macro average over every class in `classes`.

    Args:
        y_true, y_pred: one label per frame (reference, prediction), values drawn from `classes`.
        classes: the task's classes, in report order.

    Returns:
        `{"macro_f1": float, "per_class": {class: {"precision", "recall", "f1", "support"}}}` (JSON-able; the
        class keys are `str(class)`).

    Example:
        >>> class_scores(["a", "a", "b"], ["a", "b", "b"], ["a", "b", "c"])["macro_f1"]  # c never occurs: F1 0
        0.4444444444444444
    """
    from sklearn.metrics import precision_recall_fscore_support

    labels = list(classes)
    precision, recall, f1, support = precision_recall_fscore_support(
        list(y_true), list(y_pred), labels=labels, average=None, zero_division=0
    )
    return {
        "macro_f1": float(np.mean(f1)) if labels else 0.0,
        "per_class": {
            str(c): {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
    }


def predict(module: Any, loader: Any, device: Any = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run `module` (a `StudentModule`) over `loader` in eval mode.

    Returns:
        (student probs (N, K), teacher hard labels (N,), teacher top classes (N,)).
    """
    import torch

    module.eval().to(device)
    probs, labels, tops = [], [], []
    with torch.no_grad():
        for batch in loader:
            batch = tuple(t.to(device) for t in batch)
            x, _, label, top = module.on_after_batch_transfer(batch, 0)
            probs.append(torch.softmax(module(x).float(), dim=1).cpu())
            labels.append(label.cpu())
            tops.append(top.cpu())
    return torch.cat(probs).numpy(), torch.cat(labels).numpy(), torch.cat(tops).numpy()


def student_metrics(
    probs: np.ndarray, labels: np.ndarray, teacher_top: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Agreement, accuracy, `class_scores` (macro-F1, per class) and the confusion matrix (JSON-able).

    Args:
        probs: (N, K) the student's class probabilities.
        labels: (N,) the teacher's hard labels, as class indices.
        teacher_top: (N,) the teacher's top class, as class indices.
        classes: the K class names, in logit order.
    """
    from sklearn.metrics import confusion_matrix

    ids = list(range(len(classes)))
    pred = probs.argmax(axis=1)  # (N,)
    names = np.asarray(classes, dtype=object)
    scores = class_scores(names[labels].tolist(), names[pred].tolist(), list(classes))
    return {
        "frames": int(len(pred)),
        "agreement": float((pred == teacher_top).mean()),
        "accuracy": float((pred == labels).mean()),
        "macro_f1": scores["macro_f1"],
        "mean_confidence": float(probs.max(axis=1).mean()),
        "per_class": scores["per_class"],
        "confusion": {
            "rows": "teacher",
            "columns": "student",
            "classes": list(classes),
            "matrix": confusion_matrix(labels, pred, labels=ids).tolist(),
        },
    }
