"""review.html: one self-contained page (inline CSS, SVG and base64 JPEG thumbnails; no script, no links out).

Sections: a summary with the class colours; the teacher's accuracy against ground truth (when given); the
ranked suspects; per class, the least confident frames and a sample of confident ones; per video, a timeline
strip of the labels with flicker marked and the student's labels beside them.

This module does not rank suspects or read label sets; it draws what `distill.evaluate.review` hands it.
"""

from __future__ import annotations

import base64
import html
from typing import Any

import cv2
import numpy as np

from distill.dataset import decode_image

THUMB = 112  # thumbnail long side, pixels
SUSPECTS_SHOWN = 48
LEAST_CONFIDENT = 8
CONFIDENT_SAMPLE = 4
VIDEOS_SHOWN = 60
PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
]  # fmt: skip
UNLABELLED = "#e0e0e0"

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}h3{font-size:1em}
.grid{display:flex;flex-wrap:wrap;gap:8px}
.card{background:#fff;border:1px solid #ddd;border-radius:4px;padding:4px;width:128px;font-size:11px}
.card img{display:block;width:120px;height:80px;object-fit:contain;margin:auto;image-rendering:auto}
.sw{display:inline-block;width:.9em;height:.9em;border-radius:2px;margin-right:.3em;vertical-align:middle}
.legend span{margin-right:1em;white-space:nowrap}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
.muted{color:#777}.fix{color:#b00;font-weight:bold}
"""


def colour(k: int) -> str:
    return UNLABELLED if k < 0 else PALETTE[k % len(PALETTE)]


def thumbnail(jpeg: bytes, size: int = THUMB) -> str:
    """A `data:` URI of a small JPEG of the frame (long side `size`)."""
    image = decode_image(jpeg)
    h, w = image.shape[:2]
    scale = size / max(h, w)
    if scale < 1:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 75])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _card(frames: Any, i: int, lines: list[str], thumbs: dict[int, str]) -> str:
    where = f"{frames.video[i]} @ {frames.timestamp[i]:.1f} s"
    text = "<br>".join(lines + [f'<span class="muted">{_e(where)}</span>'])
    return f'<div class="card"><img alt="{_e(where)}" src="{thumbs[i]}"><div>{text}</div></div>'


def _thumbnails(frames: Any, rows: list[int]) -> dict[int, str]:
    """Thumbnails of the frames drawn, read in row order (shard by shard for `ShardImages`)."""
    prefetch = getattr(frames.images, "prefetch", None)
    jpegs = prefetch(rows) if prefetch else {i: frames.images[i] for i in rows}
    return {i: thumbnail(jpeg) for i, jpeg in jpegs.items()}


def _conf(frames: Any, i: int) -> str:
    c = frames.confidence[i]
    return "confidence ?" if not np.isfinite(c) else f"confidence {c:.2f}"


def _name(frames: Any, k: int) -> str:
    return frames.classes[k] if k >= 0 else "(none)"


def render_page(
    frames: Any, suspects: Any, student_label: np.ndarray | None, summary: dict[str, Any], flicker: np.ndarray
) -> str:
    """The whole page as HTML text."""
    title = summary.get("title") or "distill review"
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>",
        f"<style>{CSS}</style></head><body><h1>{_e(title)}: {_e(summary.get('source', ''))}</h1>",
        _summary_html(frames, summary),
    ]
    if summary.get("truth"):
        parts.append(_truth_html(summary["truth"]))
    choices = class_choices(frames)
    rows = [int(i) for i in suspects.index[:SUSPECTS_SHOWN]]
    rows += [int(i) for pair in choices for chosen in pair for i in chosen]
    thumbs = _thumbnails(frames, rows)
    parts.append(_suspects_html(frames, suspects, student_label, thumbs))
    parts.append(_classes_html(frames, choices, thumbs))
    parts.append(_timelines_html(frames, student_label, flicker))
    parts.append("</body></html>")
    return "\n".join(parts)


def _summary_html(frames: Any, s: dict[str, Any]) -> str:
    legend = "".join(
        f'<span><i class="sw" style="background:{colour(k)}"></i>{_e(c)} ({s["per_class"].get(c, 0)})</span>'
        for k, c in enumerate(frames.classes)
    )
    student = f"student {_e(s['student'])}" if s.get("student") else "no student given"
    return (
        f"<p>{s['frames']} frames from {s['videos']} video(s); {s['unmatched']} without a label; "
        f"{s['corrected']} corrected by a person; {s['flicker_frames']} in flicker; {student}.</p>"
        f'<p class="legend">{legend}<span><i class="sw" style="background:{UNLABELLED}"></i>(none)</span></p>'
    )


def _truth_html(truth: dict[str, Any]) -> str:
    who = [w for w in ("teacher", "student") if w in truth]
    head = "".join(f"<th>{w} accuracy</th>" for w in who)
    rows = [f"<tr><td><b>all</b></td><td>{truth['frames']}</td>" + "".join(f"<td>{truth[w]:.3f}</td>" for w in who)]
    for name, row in truth["per_class"].items():
        cells = "".join("<td>-</td>" if row[w] is None else f"<td>{row[w]:.3f}</td>" for w in who)
        rows.append(f"<tr><td>{_e(name)}</td><td>{row['frames']}</td>{cells}</tr>")
    return (
        "<h2>Teacher against ground truth</h2><p>On the frames the ground truth covers, by true class.</p>"
        f"<table><tr><th>class</th><th>frames</th>{head}</tr>{''.join(rows)}</table>"
    )


def _suspects_html(frames: Any, suspects: Any, student_label: np.ndarray | None, thumbs: dict[int, str]) -> str:
    how = (
        "cleanlab on out-of-fold probabilities from the student's features"
        if suspects.method == "cleanlab"
        else "low teacher confidence and flicker"
    )
    cards = []
    for rank, (i, sug, why) in enumerate(zip(suspects.index, suspects.suggested, suspects.reason), start=1):
        if rank > SUSPECTS_SHOWN:
            break
        lines = [f"#{rank} teacher <b>{_e(_name(frames, frames.label[i]))}</b>"]
        if sug >= 0:
            lines.append(f'suggested <span class="fix">{_e(frames.classes[sug])}</span>')
        if student_label is not None:
            lines.append(f"student {_e(frames.classes[student_label[i]])}")
        lines.append(_e(why))
        cards.append(_card(frames, int(i), lines, thumbs))
    more = len(suspects.index) - len(cards)
    tail = f"<p class='muted'>{more} more in review.csv.</p>" if more > 0 else ""
    body = "".join(cards) or "<p>No suspects.</p>"
    return (
        f"<h2 id='suspects'>Suspects ({len(suspects.index)})</h2><p>Ranked by {how}. "
        "Fill in the <code>corrected</code> column of review.csv and run "
        "<code>distill review LABELS --apply review.csv</code>.</p>"
        f'<div class="grid">{body}</div>{tail}'
    )


def class_choices(frames: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class: (its least confident frames, a sample of its confident ones), as row numbers."""
    rng = np.random.default_rng(0)
    conf = np.where(np.isfinite(frames.confidence), frames.confidence, 1.0)
    out = []
    for k in range(len(frames.classes)):
        idx = rng.permutation(np.flatnonzero(frames.label == k))  # ties (equal confidence) in random order
        order = idx[np.argsort(conf[idx], kind="stable")]
        rest = order[LEAST_CONFIDENT:]
        confident = rest[len(rest) // 2 :]
        out.append(
            (
                order[:LEAST_CONFIDENT],
                np.sort(rng.choice(confident, min(CONFIDENT_SAMPLE, len(confident)), replace=False)),
            )
        )
    return out


def _classes_html(frames: Any, choices: list[tuple[np.ndarray, np.ndarray]], thumbs: dict[int, str]) -> str:
    parts = ["<h2>Classes</h2>"]
    for k, (name, (low, sample)) in enumerate(zip(frames.classes, choices)):
        n = int((frames.label == k).sum())
        parts.append(f"<h3 id='class-{k}'><i class='sw' style='background:{colour(k)}'></i>{_e(name)}: {n} frames</h3>")
        if not n:
            parts.append("<p class='muted'>No frame has this label.</p>")
        for caption, chosen in (("least confident", low), ("a sample of confident ones", sample)):
            if len(chosen):
                cards = "".join(_card(frames, int(i), [_conf(frames, int(i))], thumbs) for i in chosen)
                parts.append(f"<p class='muted'>{caption}</p><div class='grid'>{cards}</div>")
    return "\n".join(parts)


def _timelines_html(frames: Any, student_label: np.ndarray | None, flicker: np.ndarray) -> str:
    videos = sorted(set(frames.video.tolist()))
    rows = "teacher label (flicker marked red, corrections black)" + (
        "; below it, the student's" if student_label is not None else ""
    )
    parts = [f"<h2>Videos</h2><p class='muted'>Per video: the {rows}.</p>"]
    for name in videos[:VIDEOS_SHOWN]:
        idx = np.flatnonzero(frames.video == name)
        idx = idx[np.argsort(frames.timestamp[idx], kind="stable")]
        parts.append(f"<h3>{_e(name)}</h3>{_strip(frames, idx, student_label, flicker)}")
    if len(videos) > VIDEOS_SHOWN:
        parts.append(f"<p class='muted'>{len(videos) - VIDEOS_SHOWN} more videos not drawn.</p>")
    return "\n".join(parts)


def _runs(t: np.ndarray, labels: np.ndarray) -> list[tuple[float, float, int]]:
    """Runs of equal labels as (start, end, label); a frame lasts until the next one's time."""
    ends = np.append(t[1:], t[-1] + (np.median(np.diff(t)) if len(t) > 1 else 1.0))
    out: list[tuple[float, float, int]] = []
    for start, end, lab in zip(t, ends, labels):
        if out and out[-1][2] == lab:
            out[-1] = (out[-1][0], float(end), int(lab))
        else:
            out.append((float(start), float(end), int(lab)))
    return out


def _strip(frames: Any, idx: np.ndarray, student_label: np.ndarray | None, flicker: np.ndarray) -> str:
    """An inline SVG: the label runs (and the student's below), flicker ticks above, a time axis."""
    width, gutter, band = 1000, 52, 14  # the gutter holds the row names
    t = frames.timestamp[idx]
    t0, span = float(t[0]), max(float(t[-1] - t[0]), 1e-6) * 1.02 + 1.0

    def x(v: float) -> float:
        return round(gutter + (v - t0) / span * (width - gutter), 2)

    rows = [("label", frames.label[idx])] + ([("student", student_label[idx])] if student_label is not None else [])
    height = 8 + band * len(rows) + 14
    shapes = []
    for r, (who, labels) in enumerate(rows):
        y = 8 + r * band
        shapes.append(f'<text x="0" y="{y + band - 4}" font-size="10">{who}</text>')
        for start, end, lab in _runs(t, labels):
            tip = f"{who} {_name(frames, lab)} {start:.1f}-{end:.1f} s"
            shapes.append(
                f'<rect x="{x(start)}" y="{y}" width="{max(x(end) - x(start), 0.6)}" height="{band - 2}" '
                f'fill="{colour(lab)}"><title>{_e(tip)}</title></rect>'
            )
    for i in idx[flicker[idx]]:
        shapes.append(f'<rect x="{x(frames.timestamp[i])}" y="0" width="1.5" height="7" fill="#d00"/>')
    for i in idx[frames.corrected[idx]]:
        shapes.append(f'<circle cx="{x(frames.timestamp[i]) + 1}" cy="4" r="3" fill="#000"/>')
    y = height - 2
    shapes.append(f'<text x="{gutter}" y="{y}" font-size="10">{t0:.0f} s</text>')
    shapes.append(f'<text x="{width}" y="{y}" font-size="10" text-anchor="end">{float(t[-1]):.0f} s</text>')
    return f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}">{"".join(shapes)}</svg>'
