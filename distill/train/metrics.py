"""Final figures of a training run on the validation split: the student against the teacher.

- `agreement`: share of frames where the student's top class is the teacher's top class (argmax of its
  distribution; its hard label where it gave none). This is what the best checkpoint is chosen by.
- `accuracy`: share of frames where the student's top class is the teacher's hard label (the `label` column).
- `macro_f1`, `per_class` (precision, recall, F1, support) and `confusion` (rows: teacher's hard label,
  columns: student) use the teacher's hard labels, via scikit-learn.

This module does not know any ground truth; `distill compare` measures against annotations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


@torch.no_grad()
def predict(module: Any, loader: Any, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run `module` (a `StudentModule`) over `loader` in eval mode.

    Returns:
        (student probs (N, K), teacher hard labels (N,), teacher top classes (N,)).
    """
    module.eval().to(device)
    probs, labels, tops = [], [], []
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
    """Agreement, accuracy, macro-F1, per-class figures and the confusion matrix (JSON-able)."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    k = len(classes)
    pred = probs.argmax(axis=1)
    ids = list(range(k))
    precision, recall, f1, support = precision_recall_fscore_support(labels, pred, labels=ids, zero_division=0)
    return {
        "frames": int(len(pred)),
        "agreement": round(float((pred == teacher_top).mean()), 4),
        "accuracy": round(float((pred == labels).mean()), 4),
        "macro_f1": round(float(f1_score(labels, pred, labels=ids, average="macro", zero_division=0)), 4),
        "mean_confidence": round(float(probs.max(axis=1).mean()), 4),
        "per_class": {
            c: {
                "precision": round(float(precision[i]), 4),
                "recall": round(float(recall[i]), 4),
                "f1": round(float(f1[i]), 4),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion": {
            "rows": "teacher",
            "columns": "student",
            "classes": list(classes),
            "matrix": confusion_matrix(labels, pred, labels=ids).tolist(),
        },
    }
