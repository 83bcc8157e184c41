"""Numbers for `distill compare`: accuracy, macro-F1, confusion, agreement, calibration, fallback trade-off.

Everything that scikit-learn computes (accuracy, F1, precision/recall, confusion matrices, Cohen's kappa) is
taken from scikit-learn, and macro-F1 is the one `distill.train.metrics.class_scores` defines (over all the task's
classes), so training's and compare's `metrics.json` agree; the reliability bins are numpy histograms, binned the way
`sklearn.calibration.calibration_curve` bins (right-closed: `(lo, hi]`, the first bin also holds 0).

Definitions:
- *agreement*: share of frames where the student's label equals the teacher's (accuracy against the teacher);
  *per-class agreement* of class c: among frames the teacher calls c, the share the student also calls c
  (recall against the teacher).
- *ECE* (expected calibration error, top label): `sum_b n_b / N * |accuracy_b - mean confidence_b|` over
  equal-width confidence bins.
- *fallback curve*: for a threshold t, frames whose student confidence is below t are sent to the teacher and
  take its label; the curve gives, per t, the share sent and the resulting agreement (and accuracy when ground
  truth is known). The recommended threshold is the one with the smallest teacher share that reaches the goal;
  ties go to the lowest threshold. Without ground truth the goal is agreement with the teacher >= a target
  (default 0.98). With ground truth the goal is accuracy: the best accuracy any threshold gives, less a tolerance
  (default 0.005) — sending frames to a teacher that is itself wrong on them is no gain, so a student that is
  already as accurate as the mix gets threshold 0 (never ask). Both recommendations are kept in the curve.

This module does not read label sets, run models or draw plots; it turns label arrays into numbers.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, recall_score

from distill.train.metrics import class_scores

DEFAULT_TARGET_AGREEMENT = 0.98
DEFAULT_ACCURACY_TOLERANCE = 0.005


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix (rows = truth).

    Macro-F1 and the per-class figures are `class_scores`: over every class in `classes`, so a class the
    truth never shows and no model predicts counts as an F1 of 0, as in training's `metrics.json`.
    """
    labels = list(classes)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        **class_scores(y_true, y_pred, labels),
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "frames": len(y_true),
    }


def agreement_metrics(teacher: Sequence[str], student: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """Student-teacher agreement overall and per teacher class, Cohen's kappa, and their confusion matrix."""
    labels = list(classes)
    per_class = recall_score(teacher, student, labels=labels, average=None, zero_division=np.nan)
    present = set(teacher)
    return {
        "agreement": float(accuracy_score(teacher, student)),
        "per_class_agreement": {c: (float(v) if c in present else None) for c, v in zip(labels, per_class)},
        "kappa": _kappa(teacher, student, labels),
        "confusion": confusion_matrix(teacher, student, labels=labels).tolist(),  # rows = teacher
    }


def _kappa(teacher: Sequence[str], student: Sequence[str], labels: list[str]) -> float | None:
    """Cohen's kappa, or None where it is undefined (e.g. both sides use one and the same label)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        value = cohen_kappa_score(teacher, student, labels=labels, replace_undefined_by=np.nan)
    return float(value) if np.isfinite(value) else None


@dataclass(frozen=True)
class Reliability:
    """Top-label calibration in equal-width bins; empty bins have count 0 and NaN accuracy/confidence."""

    edges: np.ndarray  # (n_bins + 1,)
    counts: np.ndarray  # (n_bins,) frames per bin
    accuracy: np.ndarray  # (n_bins,) share correct per bin
    confidence: np.ndarray  # (n_bins,) mean confidence per bin
    ece: float

    def to_dict(self) -> dict[str, Any]:
        def clean(a: np.ndarray) -> list[float | None]:
            return [None if np.isnan(v) else round(float(v), 6) for v in a]

        return {
            "ece": self.ece,
            "edges": [float(e) for e in self.edges],
            "counts": [int(c) for c in self.counts],
            "accuracy": clean(self.accuracy),
            "confidence": clean(self.confidence),
        }


def reliability(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> Reliability:
    """Bin frames by confidence and compare each bin's accuracy with its mean confidence.

    Args:
        confidence: (N,) the probability the model gave its own label, in [0, 1].
        correct: (N,) whether that label was right (bool or 0/1).
        n_bins: equal-width bins over [0, 1].
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.shape != correct.shape or confidence.ndim != 1:
        raise ValueError("confidence and correct must be 1-D arrays of the same length")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], np.clip(confidence, 0.0, 1.0), side="left")  # (N,) bin of each frame
    counts = np.bincount(ids, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(ids, weights=correct, minlength=n_bins) / counts
        conf = np.bincount(ids, weights=confidence, minlength=n_bins) / counts
    total = counts.sum()
    gaps = np.where(counts > 0, np.abs(np.nan_to_num(acc) - np.nan_to_num(conf)), 0.0)
    ece = float((counts * gaps).sum() / total) if total else float("nan")
    return Reliability(edges, counts, acc, conf, ece)


@dataclass(frozen=True)
class FallbackCurve:
    """Per threshold: share of frames sent to the teacher, and the agreement/accuracy that results."""

    thresholds: np.ndarray
    teacher_share: np.ndarray
    agreement: np.ndarray
    accuracy: np.ndarray | None  # None without ground truth
    target_agreement: float
    recommended: dict[str, Any] = field(default_factory=dict)  # by accuracy with ground truth, else by agreement
    by_agreement: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def r(a: np.ndarray) -> list[float]:
            return [round(float(v), 6) for v in a]

        return {
            "thresholds": r(self.thresholds),
            "teacher_share": r(self.teacher_share),
            "agreement": r(self.agreement),
            "accuracy": r(self.accuracy) if self.accuracy is not None else None,
            "target_agreement": self.target_agreement,
            "recommended": self.recommended,
            "by_agreement": self.by_agreement,
        }


def fallback_curve(
    student_labels: Sequence[str],
    student_confidence: np.ndarray,
    teacher_labels: Sequence[str],
    truth: Sequence[str] | None = None,
    *,
    thresholds: np.ndarray | None = None,
    target_agreement: float = DEFAULT_TARGET_AGREEMENT,
    accuracy_tolerance: float = DEFAULT_ACCURACY_TOLERANCE,
) -> FallbackCurve:
    """What happens when frames with student confidence below a threshold take the teacher's label.

    Args:
        student_labels, student_confidence: the student's label and its probability, per frame.
        teacher_labels: the teacher's label per frame.
        truth: ground-truth labels per frame, if known (adds the accuracy curve).
        thresholds: candidate thresholds (default 0, 0.01, ..., 1.0); a frame goes to the teacher when
            `confidence < threshold`, so 0 never asks and values above every confidence always ask.
        target_agreement: the agreement the recommendation must reach (without ground truth).
        accuracy_tolerance: with ground truth, how far below the best accuracy on the curve the recommendation
            may stay.

    Returns:
        The curve; `recommended` and `by_agreement` are {threshold, teacher_share, agreement, accuracy, criterion,
        target, reached}: the threshold with the smallest teacher share whose criterion (accuracy with ground
        truth, else agreement) reaches the target (`reached` False: none does, so the best one is given instead).
    """
    s = np.asarray(student_labels, dtype=object)
    t = np.asarray(teacher_labels, dtype=object)
    conf = np.asarray(student_confidence, dtype=np.float64)
    if not (len(s) == len(t) == len(conf)) or len(s) == 0:
        raise ValueError("student labels, confidences and teacher labels must be non-empty and of equal length")
    grid = np.round(np.linspace(0.0, 1.0, 101), 2) if thresholds is None else np.asarray(thresholds, np.float64)
    share, agree, acc = [], [], []
    for threshold in grid:
        ask = conf < threshold  # (N,) frames sent to the teacher
        combined = np.where(ask, t, s)
        share.append(float(ask.mean()))
        agree.append(float(accuracy_score(t.tolist(), combined.tolist())))
        if truth is not None:
            acc.append(float(accuracy_score(list(truth), combined.tolist())))
    share_a, agree_a = np.array(share), np.array(agree)
    acc_a = np.array(acc) if truth is not None else None
    by_agreement = _recommend(grid, share_a, agree_a, acc_a, "agreement", target_agreement)
    recommended = by_agreement
    if acc_a is not None:
        target = round(float(acc_a.max()) - accuracy_tolerance, 6)
        recommended = _recommend(grid, share_a, agree_a, acc_a, "accuracy", target)
    return FallbackCurve(grid, share_a, agree_a, acc_a, target_agreement, recommended, by_agreement)


def _recommend(
    grid: np.ndarray,
    share: np.ndarray,
    agree: np.ndarray,
    acc: np.ndarray | None,
    criterion: str,
    target: float,
) -> dict[str, Any]:
    score = acc if criterion == "accuracy" and acc is not None else agree
    ok = np.flatnonzero(score >= target - 1e-12)
    reached = ok.size > 0
    # reached: smallest share, then lowest threshold; otherwise best score, then smallest share
    i = int(ok[np.lexsort((grid[ok], share[ok]))[0]]) if reached else int(np.lexsort((grid, share, -score))[0])
    return {
        "threshold": float(grid[i]),
        "teacher_share": float(share[i]),
        "agreement": float(agree[i]),
        "accuracy": float(acc[i]) if acc is not None else None,
        "criterion": criterion,
        "target": float(target),
        "reached": bool(reached),
    }


def latency_stats(seconds: Sequence[float], frames_per_call: int = 1) -> dict[str, float]:
    """p50/p95 latency (ms per call) and throughput (frames/s) from timed calls."""
    arr = np.asarray(seconds, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no timings")
    return {
        "latency_ms_p50": float(np.percentile(arr, 50) * 1000),
        "latency_ms_p95": float(np.percentile(arr, 95) * 1000),
        "throughput_fps": float(frames_per_call * arr.size / arr.sum()) if arr.sum() > 0 else float("inf"),
    }


def comparison_metrics(
    classes: Sequence[str],
    teacher_labels: Sequence[str],
    student_labels: Sequence[str],
    student_probs: np.ndarray,
    truth: Sequence[str] | None = None,
    teacher_confidence: np.ndarray | None = None,
    *,
    n_bins: int = 10,
    target_agreement: float = DEFAULT_TARGET_AGREEMENT,
) -> dict[str, Any]:
    """Every number of a comparison, from per-frame labels (the `metrics.json` core, without speed).

    Args:
        classes: class names, in the order of `student_probs` columns.
        teacher_labels, student_labels: one label per frame.
        student_probs: (N, K) the student's class probabilities.
        truth: ground-truth labels per frame, or None.
        teacher_confidence: (N,) the teacher's confidence per frame, or None (no teacher calibration then).

    Calibration (ECE) is measured against the ground truth when given, otherwise against the teacher.
    """
    probs = np.asarray(student_probs, dtype=np.float64)  # (N, K)
    conf = probs.max(axis=1)  # (N,) the student's confidence in its own label
    reference = list(truth) if truth is not None else list(teacher_labels)
    student: dict[str, Any] = {}
    teacher: dict[str, Any] = {}
    if truth is not None:
        student.update(classification_metrics(truth, student_labels, classes))
        teacher.update(classification_metrics(truth, teacher_labels, classes))
    rel = reliability(conf, np.asarray(student_labels, dtype=object) == np.asarray(reference, dtype=object), n_bins)
    student.update(ece=rel.ece, reliability=rel.to_dict())
    if teacher_confidence is not None and truth is not None:
        t_rel = reliability(
            teacher_confidence, np.asarray(teacher_labels, dtype=object) == np.asarray(truth, dtype=object), n_bins
        )
        teacher.update(ece=t_rel.ece, reliability=t_rel.to_dict())
    agree = agreement_metrics(teacher_labels, student_labels, classes)
    curve = fallback_curve(student_labels, conf, teacher_labels, truth, target_agreement=target_agreement)
    return {
        "classes": list(classes),
        "frames": len(student_labels),
        "calibrated_against": "ground truth" if truth is not None else "teacher",
        "student": student,
        "teacher": teacher,
        "agreement": agree["agreement"],
        "per_class_agreement": agree["per_class_agreement"],
        "kappa": agree["kappa"],
        "agreement_confusion": agree["confusion"],
        "fallback": curve.to_dict(),
    }
