"""Label audit before training: is the teacher's label set fit to learn from?

Reports class counts, unmatched answers, the share of low-confidence frames, and teacher *flicker*: label
changes between consecutive sampled frames of one video that are closer than `window_s` in time (a steady
scene that the teacher labels A, B, A within seconds). Classes with fewer than `min_frames` frames, and high
flicker or low-confidence shares, become warnings.

Example:
    >>> audit = audit_labels(load_rows("runs/labels"))  # doctest: +SKIP
    >>> audit["classes"], audit["flicker"]["share"], audit["warnings"]  # doctest: +SKIP

This module does not change labels; it only describes them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distill.train.data import Rows


def audit_labels(
    rows: Rows,
    *,
    window_s: float | None = None,
    low_confidence: float = 0.5,
    min_frames: int = 20,
    flicker_warn: float = 0.2,
    low_confidence_warn: float = 0.3,
    unmatched_warn: float = 0.1,
) -> dict[str, Any]:
    """Audit all rows (main and extra sets) and return a JSON-able report.

    Args:
        rows: as read by `distill.train.data.load_rows`.
        window_s: consecutive frames closer than this count for flicker; default max(2 s, 1.5 x the median
            sampling interval).
        low_confidence: frames whose teacher confidence is below this count as low-confidence.
        min_frames: classes with fewer frames get a warning.
    """
    classes = rows.classes
    labelled = rows.label >= 0
    counts = np.bincount(rows.label[labelled], minlength=len(classes))
    conf = rows.confidence[labelled]
    known = np.isfinite(conf)
    low = int((conf[known] < low_confidence).sum())
    flicker = _flicker(rows, window_s)
    report: dict[str, Any] = {
        "frames": len(rows),
        "labelled": int(labelled.sum()),
        "unmatched": int((~labelled).sum()),
        "videos": len({(int(s), v) for s, v in zip(rows.set_index, rows.video)}),
        "soft_share": round(float(rows.has_probs[labelled].mean()) if labelled.any() else 0.0, 4),
        "classes": {c: int(n) for c, n in zip(classes, counts)},
        "low_confidence": {
            "threshold": low_confidence,
            "frames": low,
            "share": round(low / int(known.sum()), 4) if known.any() else None,
        },
        "flicker": flicker,
    }
    report["warnings"] = _warnings(report, min_frames, flicker_warn, low_confidence_warn, unmatched_warn)
    return report


def flicker_window(video: np.ndarray, timestamp: np.ndarray) -> float:
    """How close (seconds) consecutive frames of one video must be for a label change between them to count as
    flicker: max(2 s, 1.5 x the median sampling step). `distill review` marks flicker with the same window."""
    order = np.lexsort((timestamp, video))
    same = video[order][1:] == video[order][:-1]
    dt = np.diff(timestamp[order])
    steps = dt[same & (dt > 0)]
    return max(2.0, 1.5 * float(np.median(steps))) if len(steps) else 2.0


def _flicker(rows: Rows, window_s: float | None) -> dict[str, Any]:
    """Label changes (and one-frame blips A, B, A) between close consecutive frames of each video."""
    keys = np.array([f"{s}\0{v}" for s, v in zip(rows.set_index, rows.video)], dtype=object)
    mask = rows.label >= 0
    order = np.lexsort((rows.timestamp[mask], keys[mask]))
    key, t, lab = keys[mask][order], rows.timestamp[mask][order], rows.label[mask][order]
    same = key[1:] == key[:-1]
    dt = np.diff(t)
    window_s = flicker_window(key, t) if window_s is None else window_s
    close = same & (dt <= window_s)
    change = close & (lab[1:] != lab[:-1])
    blip = close[:-1] & close[1:] & (lab[:-2] == lab[2:]) & (lab[1:-1] != lab[:-2])
    pairs = int(close.sum())
    return {
        "window_s": round(float(window_s), 3),
        "pairs": pairs,
        "changes": int(change.sum()),
        "share": round(int(change.sum()) / pairs, 4) if pairs else 0.0,
        "blips": int(blip.sum()),
    }


def _warnings(report: dict[str, Any], min_frames: int, flicker: float, low_conf: float, unmatched: float) -> list[str]:
    out = []
    for name, n in report["classes"].items():
        if n < min_frames:
            out.append(f"class {name!r} has only {n} frame(s) (< {min_frames}); label more video where it occurs")
    if report["frames"] and report["unmatched"] / report["frames"] > unmatched:
        out.append(
            f"{report['unmatched']} of {report['frames']} teacher answers matched no class; "
            "check the class texts and the question"
        )
    share = report["flicker"]["share"]
    if share > flicker:
        out.append(
            f"the teacher flickers: {share:.0%} of close consecutive frames change label; "
            "check the prompt or sample less densely"
        )
    lc = report["low_confidence"]
    if lc["share"] is not None and lc["share"] > low_conf:
        out.append(
            f"{lc['share']:.0%} of frames have teacher confidence < {lc['threshold']}; the classes may be ambiguous"
        )
    return out
