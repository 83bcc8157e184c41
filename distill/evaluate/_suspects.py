"""Which teacher labels are likely wrong: flicker, low confidence, and cleanlab on a student's features.

- `flicker_marks`: per frame, whether its label differs from a close neighbour's in the same video, and whether
  it is a one-frame blip (A, B, A). "Close" is `distill.train.audit.flicker_window`, as in the label audit.
- `rank_without_student`: low teacher confidence plus flicker; the suggestion is the neighbours' label for a
  blip, else the teacher's second choice.
- `rank_with_student`: out-of-fold probabilities from K-fold logistic regression on the student's penultimate
  features (no network is retrained), then cleanlab's `find_label_issues`; frames it flags come first, the rest
  follow by cleanlab's label-quality score. The suggestion is the out-of-fold most probable class.

Frames a person corrected, and frames with no label, are never suspects.

This module does not read label sets or run the student; it ranks arrays it is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distill.train.audit import flicker_window

LOW_CONFIDENCE = 0.6  # teacher confidence below this makes a frame a suspect (without a student)
FOLDS = 5


@dataclass
class Suspects:
    """Suspect frames, most suspicious first."""

    index: np.ndarray  # (S,) row numbers into the reviewed frames
    score: np.ndarray  # (S,) higher = more likely wrong, in [0, ~2]
    suggested: np.ndarray  # (S,) class index, -1 = no suggestion
    reason: list[str]  # (S,) why each frame is a suspect
    method: str  # "cleanlab" or "confidence+flicker"


def flicker_marks(
    video: np.ndarray, timestamp: np.ndarray, label: np.ndarray, window_s: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(changed, blip): (N,) bools, in the input order; unlabelled frames (-1) are skipped over.

    `changed`: the frame's label differs from the previous or next labelled frame of its video within the
    window. `blip`: both of those neighbours are close, agree with each other, and differ from the frame.
    """
    labelled = label >= 0
    window_s = flicker_window(video[labelled], timestamp[labelled]) if window_s is None else window_s
    n = len(label)
    changed, blip = np.zeros(n, bool), np.zeros(n, bool)
    idx = np.flatnonzero(label >= 0)
    order = idx[np.lexsort((timestamp[idx], video[idx]))]
    v, t, lab = video[order], timestamp[order], label[order]
    close = (v[1:] == v[:-1]) & (np.diff(t) <= window_s)  # (M-1,) pair i, i+1 is close
    differ = close & (lab[1:] != lab[:-1])
    changed[order[1:]] |= differ
    changed[order[:-1]] |= differ
    middle = close[:-1] & close[1:] & (lab[:-2] == lab[2:]) & (lab[1:-1] != lab[:-2])
    blip[order[1:-1]] = middle
    return changed, blip


def neighbour_label(video: np.ndarray, timestamp: np.ndarray, label: np.ndarray) -> np.ndarray:
    """(N,) the label of the previous labelled frame of the same video (-1 where there is none)."""
    out = np.full(len(label), -1, np.int64)
    idx = np.flatnonzero(label >= 0)
    order = idx[np.lexsort((timestamp[idx], video[idx]))]
    same = video[order][1:] == video[order][:-1]
    out[order[1:][same]] = label[order[:-1][same]]
    return out


def rank_without_student(
    classes: list[str],
    video: np.ndarray,
    timestamp: np.ndarray,
    label: np.ndarray,
    probs: np.ndarray,
    confidence: np.ndarray,
    eligible: np.ndarray,
    *,
    low_confidence: float = LOW_CONFIDENCE,
) -> Suspects:
    """Rank by (1 - confidence) + 0.5 for a blip + 0.25 for any other close label change.

    Args:
        probs: (N, K) the teacher's distributions (rows of zeros where it gave none).
        confidence: (N,) the teacher's confidence, NaN where unknown (counted as 1).
        eligible: (N,) frames that may be suspects (labelled, not corrected by a person).
    """
    changed, blip = flicker_marks(video, timestamp, label)
    conf = np.where(np.isfinite(confidence), confidence, 1.0)
    score = (1.0 - conf) + 0.5 * blip + 0.25 * (changed & ~blip)
    flagged = eligible & (label >= 0) & ((conf < low_confidence) | changed)
    index = np.flatnonzero(flagged)
    index = index[np.argsort(-score[index], kind="stable")]
    second = np.argsort(-probs, axis=1)[:, 1] if probs.shape[1] > 1 else np.zeros(len(label), np.int64)
    has_probs = probs.sum(axis=1) > 0
    prev = neighbour_label(video, timestamp, label)
    suggested, reasons = [], []
    for i in index:
        if blip[i]:
            suggested.append(int(prev[i]))
        else:
            suggested.append(int(second[i]) if has_probs[i] and second[i] != label[i] else -1)
        why = [f"confidence {conf[i]:.2f}"] if conf[i] < low_confidence else []
        why += ["flicker (one-frame blip)"] if blip[i] else ["flicker"] if changed[i] else []
        reasons.append("; ".join(why))
    return Suspects(index, score[index], np.asarray(suggested, np.int64), reasons, "confidence+flicker")


def out_of_fold_probs(features: np.ndarray, labels: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """(N, k) probabilities for each frame from a logistic regression that did not see it (K-fold).

    Args:
        features: (N, D) the student's penultimate features.
        labels: (N,) class indices in [0, k); every class with a frame gets a column, the others stay 0.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(labels, minlength=k)
    folds = int(min(FOLDS, max(2, counts[counts > 0].min())))
    stratified = counts[counts > 0].min() >= folds
    split = (StratifiedKFold if stratified else KFold)(folds, shuffle=True, random_state=seed)
    out = np.zeros((len(labels), k), np.float64)
    for train, test in split.split(features, labels):
        present = np.unique(labels[train])
        if len(present) < 2:  # a fold of one class: the only answer is that class
            out[np.ix_(test, present)] = 1.0
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        model.fit(features[train], labels[train])
        out[np.ix_(test, model.classes_)] = model.predict_proba(features[test])
    return out


def rank_with_student(
    classes: list[str], features: np.ndarray, label: np.ndarray, eligible: np.ndarray, *, limit: int | None = None
) -> Suspects:
    """cleanlab's label issues on out-of-fold probabilities first, then other doubtful frames by label quality.

    Doubtful: the out-of-fold most probable class is not the label, or cleanlab's label quality is below 0.5.

    Args:
        features: (N, D) the student's penultimate features of every frame.
        label: (N,) the labels to check (-1 = unlabelled, left out).
        eligible: (N,) frames that may be suspects (frames a person corrected still inform the fit).
        limit: keep at most this many suspects (None: all).
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    rows = np.flatnonzero(label >= 0)
    present = np.unique(label[rows])  # cleanlab wants every class it is given to occur
    local = np.searchsorted(present, label[rows])
    oof = out_of_fold_probs(features[rows], local, len(present))
    oof = np.clip(oof, 1e-6, None)
    oof /= oof.sum(axis=1, keepdims=True)
    quality = get_label_quality_scores(local, oof)
    issues = np.zeros(len(rows), bool)
    if len(present) >= 2 and len(rows) >= 2 * len(present):
        # n_jobs=1: cleanlab's worker pool forks this process, which may hold threads (torch, Ray, a web server)
        # whose locks a forked child inherits held; it deadlocked so. The sets reviewed here are small for it.
        issues[find_label_issues(local, oof, filter_by="prune_by_noise_rate", n_jobs=1)] = True
    best = present[oof.argmax(axis=1)]
    keep = eligible[rows] & (issues | (best != label[rows]) | (quality < 0.5))
    order = np.lexsort((quality, ~issues))  # flagged issues first, then by quality, worst first
    order = order[keep[order]]
    if limit is not None:
        order = order[:limit]
    suggested = np.where(best != label[rows], best, -1)[order]
    reasons = [
        f"cleanlab: label issue (quality {quality[j]:.2f})" if issues[j] else f"label quality {quality[j]:.2f}"
        for j in order
    ]
    score = (1.0 - quality[order]) + issues[order]
    return Suspects(rows[order], score, suggested.astype(np.int64), reasons, "cleanlab")
