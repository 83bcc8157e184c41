"""Write a comparison to disk: `metrics.json`, PNG plots, `report.md` and a self-contained `report.html`.

The HTML embeds its plots as base64 `data:` URIs and its style inline, so it can be mailed or archived as one
file; `report.md` links the PNGs next to it. Plots are drawn with scikit-learn's `ConfusionMatrixDisplay` and
matplotlib on `Figure` objects (no pyplot state, no display needed).

This module does not compute metrics (`distill.evaluate.metrics`) or run models (`distill.evaluate.compare`).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distill._files import write_atomic

PLOTS = {
    "confusion_student": "Student vs ground truth",
    "confusion_teacher": "Teacher vs ground truth",
    "confusion_agreement": "Student vs teacher (rows: teacher)",
    "reliability": "Calibration (reliability diagram)",
    "fallback": "Teacher fallback trade-off",
}


# --- plots --------------------------------------------------------------------------------------------------


def _figure(width: float = 5.0, height: float = 4.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.add_subplot()


def _save(fig: Any, path: Path) -> None:
    write_atomic(path, lambda fh: fig.savefig(fh, format="png"))


def plot_confusion(
    path: Path, matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str, ylabel: str
) -> Path:
    """A confusion matrix (counts) drawn by scikit-learn's `ConfusionMatrixDisplay`."""
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = _figure()
    display = ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(classes))
    display.plot(ax=ax, colorbar=False, values_format="d", cmap="Blues", xticks_rotation=30)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    _save(fig, path)
    return path


def plot_reliability(path: Path, curves: Mapping[str, Mapping[str, Any]], against: str) -> Path:
    """Reliability diagram: per confidence bin, accuracy against the diagonal; ECE in the legend."""
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    width = 1.0 / max(len(curves), 1)
    for k, (name, rel) in enumerate(curves.items()):
        edges = np.asarray(rel["edges"])
        acc = np.array([np.nan if v is None else v for v in rel["accuracy"]], dtype=float)
        bin_w = edges[1] - edges[0]
        left = edges[:-1] + k * bin_w * width
        ax.bar(left, np.nan_to_num(acc), width=bin_w * width, align="edge", alpha=0.75,
               label=f"{name} (ECE {rel['ece']:.3f})", edgecolor="black", lw=0.5)  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence")
    ax.set_ylabel(f"accuracy against {against}")
    ax.set_title(PLOTS["reliability"])
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)
    return path


def plot_fallback(path: Path, fallback: Mapping[str, Any]) -> Path:
    """Share of frames sent to the teacher, and resulting agreement/accuracy, against the threshold."""
    fig, ax = _figure(5.6, 4.2)
    x = fallback["thresholds"]
    ax.plot(x, fallback["teacher_share"], color="tab:red", label="share sent to teacher")
    ax.plot(x, fallback["agreement"], color="tab:blue", label="agreement with teacher")
    if fallback.get("accuracy") is not None:
        ax.plot(x, fallback["accuracy"], color="tab:green", label="accuracy (ground truth)")
    for rec, style in zip(_recommendations(fallback), (":", "-.")):
        label = f"threshold by {rec['criterion']}: {rec['threshold']:.2f}"
        ax.axvline(rec["threshold"], color="black", ls=style, lw=1, label=label)
    ax.axhline(fallback["target_agreement"], color="tab:blue", ls="--", lw=0.8, alpha=0.6)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("fallback threshold (student confidence below it goes to the teacher)")
    ax.set_title(PLOTS["fallback"])
    ax.legend(loc="center left", fontsize=8)
    _save(fig, path)
    return path


def write_plots(out_dir: Path, metrics: Mapping[str, Any]) -> dict[str, Path]:
    """Draw every plot the metrics allow; returns {plot name: PNG path}."""
    classes = metrics["classes"]
    has_truth = metrics.get("truth") is not None
    student, teacher = metrics["student"], metrics["teacher"]
    paths: dict[str, Path] = {}
    if has_truth:
        paths["confusion_student"] = plot_confusion(
            out_dir / "confusion_student.png", student["confusion"], classes, PLOTS["confusion_student"], "truth"
        )
        paths["confusion_teacher"] = plot_confusion(
            out_dir / "confusion_teacher.png", teacher["confusion"], classes, PLOTS["confusion_teacher"], "truth"
        )
    paths["confusion_agreement"] = plot_confusion(
        out_dir / "confusion_agreement.png", metrics["agreement_confusion"], classes,
        PLOTS["confusion_agreement"], "teacher",
    )  # fmt: skip
    curves = {"student": student["reliability"]}
    if teacher.get("reliability") is not None:
        curves["teacher"] = teacher["reliability"]
    paths["reliability"] = plot_reliability(out_dir / "reliability.png", curves, metrics["calibrated_against"])
    paths["fallback"] = plot_fallback(out_dir / "fallback.png", metrics["fallback"])
    return paths


# --- tables -------------------------------------------------------------------------------------------------


def _fmt(value: Any, kind: str = "ratio") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if kind == "ratio":
        return f"{value:.3f}"
    if kind == "ms":
        return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"
    if kind == "fps":
        return f"{value:.1f}/s" if value >= 1 else f"{value:.3f}/s"
    return str(value)


def summary_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, student, teacher) rows shared by the CLI table, report.md and report.html."""
    s, t = metrics["student"], metrics["teacher"]
    rows = []
    if metrics.get("truth") is not None:
        rows += [
            ("accuracy (ground truth)", _fmt(s.get("accuracy")), _fmt(t.get("accuracy"))),
            ("macro-F1 (ground truth)", _fmt(s.get("macro_f1")), _fmt(t.get("macro_f1"))),
        ]
    rows += [
        ("agreement with teacher", _fmt(metrics["agreement"]), "1.000"),
        (f"ECE (against {metrics['calibrated_against']})", _fmt(s.get("ece")), _fmt(t.get("ece"))),
        ("latency p50 (1 frame)", _fmt(s.get("latency_ms_p50"), "ms"), _fmt(t.get("latency_ms_p50"), "ms")),
        ("latency p95 (1 frame)", _fmt(s.get("latency_ms_p95"), "ms"), _fmt(t.get("latency_ms_p95"), "ms")),
        ("throughput (batched)", _fmt(s.get("throughput_fps"), "fps"), _fmt(t.get("throughput_fps"), "fps")),
    ]
    return rows


def headline(metrics: Mapping[str, Any]) -> list[str]:
    """Short sentences: speed-up, recommended fallback threshold, where teacher costs came from."""
    lines = []
    speedup, t = metrics.get("speedup"), metrics["teacher"]
    if speedup:
        lines.append(f"The student is {speedup:,.0f}x faster than the teacher per frame ({t.get('cost_source')}).")
    else:
        lines.append(f"Speed-up: not available ({t.get('cost_note') or 'no teacher cost known'}).")
    for rec in _recommendations(metrics["fallback"]):
        lines.append(_recommendation_line(rec))
    return lines


def _recommendations(fallback: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    rec, by_agreement = fallback["recommended"], fallback.get("by_agreement") or fallback["recommended"]
    return [rec] if by_agreement == rec else [rec, by_agreement]


def _recommendation_line(rec: Mapping[str, Any]) -> str:
    """One sentence on a recommended threshold; accuracy-based ones say why (ground truth decides)."""
    share = f"{rec['teacher_share']:.1%} of frames go to the teacher"
    if rec["criterion"] == "accuracy":
        what = f"accuracy {rec['accuracy']:.3f} (>= {rec['target']:.3f}, next to the best any threshold gives)"
        head = "Recommended fallback threshold (by ground truth)"
    else:
        what = f"agreement with the teacher {rec['agreement']:.3f} (target {rec['target']:.2f})"
        head = "Fallback threshold for agreement with the teacher"
    if not rec["reached"]:
        return f"{head}: no threshold reaches the target; the best is {rec['threshold']:.2f} ({share}, {what})."
    if rec["threshold"] == 0:
        return f"{head}: 0 (never ask the teacher): the student alone gives {what}."
    return f"{head}: {rec['threshold']:.2f}: {share}, giving {what}."


def _per_class_rows(metrics: Mapping[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    has_truth = metrics.get("truth") is not None
    for c in metrics["classes"]:
        row = [c, _fmt(metrics["per_class_agreement"].get(c))]
        if has_truth:
            row += [
                _fmt(metrics["student"]["per_class"][c]["f1"]),
                _fmt(metrics["teacher"]["per_class"][c]["f1"]),
            ]
            row.append(str(int(metrics["student"]["per_class"][c]["support"])))
        rows.append(tuple(row))
    return rows


def _per_class_header(metrics: Mapping[str, Any]) -> tuple[str, ...]:
    if metrics.get("truth") is not None:
        return ("class", "agreement", "student F1", "teacher F1", "frames (truth)")
    return ("class", "agreement")


# --- documents ----------------------------------------------------------------------------------------------


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _intro(metrics: Mapping[str, Any]) -> str:
    scope = "held-out videos" if metrics.get("held_out_only") else "all videos"
    return (
        f"{metrics['frames']} frames from {len(metrics['videos'])} {scope} of `{metrics['labels']}`; "
        f"student `{metrics['student_path']}`; teacher {metrics['teacher'].get('name', '?')}"
        + (f"; ground truth `{metrics['truth']}`." if metrics.get("truth") else "; no ground truth given.")
    )


def write_markdown(path: Path, metrics: Mapping[str, Any], plots: Mapping[str, Path]) -> Path:
    parts = ["# Student vs teacher", "", _intro(metrics), ""]
    parts += [f"- {line}" for line in headline(metrics)] + [""]
    parts += [_md_table(("metric", "student", "teacher"), summary_rows(metrics)), "", "## Per class", ""]
    parts += [_md_table(_per_class_header(metrics), _per_class_rows(metrics)), ""]
    for name, png in plots.items():
        parts += [f"## {PLOTS[name]}", "", f"![{PLOTS[name]}]({png.name})", ""]
    write_atomic(path, "\n".join(parts))
    return path


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
    "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .7rem;text-align:right}"
    "td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%}"
    ".plots{display:flex;flex-wrap:wrap;gap:1rem}.plots figure{margin:0;flex:1 1 26rem}"
)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_html(path: Path, metrics: Mapping[str, Any], plots: Mapping[str, Path]) -> Path:
    """One self-contained HTML file: inline style, plots as base64 data URIs, no external reference."""
    figures = []
    for name, png in plots.items():
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        alt = html.escape(PLOTS[name])
        figures.append(
            f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"><figcaption>{alt}</figcaption></figure>'
        )
    intro = html.escape(_intro(metrics)).replace("`", "")
    items = "".join(f"<li>{html.escape(line)}</li>" for line in headline(metrics))
    doc = (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>distill: student vs teacher</title>"
        f"<style>{_CSS}</style></head><body><h1>Student vs teacher</h1><p>{intro}</p><ul>{items}</ul>"
        + _html_table(("metric", "student", "teacher"), summary_rows(metrics))
        + "<h2>Per class</h2>" + _html_table(_per_class_header(metrics), _per_class_rows(metrics))
        + f"<h2>Plots</h2><div class=\"plots\">{''.join(figures)}</div></body></html>"
    )  # fmt: skip
    write_atomic(path, doc)
    return path


def write_report(out_dir: str | os.PathLike[str], metrics: Mapping[str, Any]) -> dict[str, Path]:
    """Write metrics.json, the PNG plots, report.md and report.html into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {"metrics.json": out_dir / "metrics.json"}
    write_atomic(files["metrics.json"], json.dumps(metrics, indent=2, allow_nan=False, default=_json_default))
    plots = write_plots(out_dir, metrics)
    files.update({f"{name}.png": p for name, p in plots.items()})
    files["report.md"] = write_markdown(out_dir / "report.md", metrics, plots)
    files["report.html"] = write_html(out_dir / "report.html", metrics, plots)
    return files


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
