"""The report files of `distill compare`: they exist, PNGs decode, HTML is self-contained, JSON has the contract."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from distill.evaluate.metrics import comparison_metrics
from distill.evaluate.report import summary_rows, write_report

CLASSES = ["active", "idle", "error", "offline"]


def _metrics(truth: bool, speed: bool = True, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n = 60
    true = list(rng.choice(CLASSES, n))
    teacher = [t if rng.random() < 0.9 else str(rng.choice(CLASSES)) for t in true]
    logits = rng.normal(0, 1, (n, 4))
    logits[np.arange(n), [CLASSES.index(t) for t in teacher]] += 2.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    student = [CLASSES[i] for i in probs.argmax(1)]
    m = comparison_metrics(CLASSES, teacher, student, probs, true if truth else None, np.ones(n))
    m["student"].update(latency_ms_p50=2.5, latency_ms_p95=4.0, throughput_fps=900.0, name="tiny (student.onnx)")
    m["teacher"].update(name="paligemma (google/paligemma2-3b-mix-224)")
    if speed:
        m["teacher"].update(throughput_fps=3.0, cost_source="recorded by `distill label`")
    m.update(
        labels="runs/labels", student_path="runs/student/student.onnx", truth="truth.csv" if truth else None,
        held_out_only=True, split_source="splits.json", videos=["b.mp4"], frames_skipped={"no_truth": 0},
        speedup=300.0 if speed else None,
    )  # fmt: skip
    return m


class _Refs(HTMLParser):
    """Collects every attribute that could load something (src, href, srcset, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in {"src", "href", "srcset", "data", "poster", "action"}:
                self.refs.append((tag, name, value or ""))


@pytest.mark.parametrize("truth", [True, False])
def test_report_files_exist_pngs_decode_html_is_self_contained(tmp_path: Path, truth: bool):
    metrics = _metrics(truth)
    files = write_report(tmp_path / "report", metrics)
    expected_pngs = {"confusion_agreement", "reliability", "fallback"} | (
        {"confusion_student", "confusion_teacher"} if truth else set()
    )
    assert {p.stem for p in (tmp_path / "report").glob("*.png")} == expected_pngs
    for name in ("report.html", "report.md", "metrics.json"):
        assert files[name].is_file() and files[name].stat().st_size > 0
    for png in (tmp_path / "report").glob("*.png"):
        image = cv2.imread(str(png))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 5  # a drawn plot, not a blank canvas

    html = files["report.html"].read_text(encoding="utf-8")
    parser = _Refs()
    parser.feed(html)
    images = [value for tag, name, value in parser.refs if tag == "img"]
    assert len(images) == len(expected_pngs)
    assert all(v.startswith("data:image/png;base64,") for _, _, v in parser.refs), parser.refs
    assert "link" not in parser.tags and "script" not in parser.tags
    assert not re.search(r"url\(|@import|https?://", html)
    # the embedded images are the PNGs on disk
    import base64

    decoded = base64.b64decode(images[0].split(",", 1)[1])
    assert cv2.imdecode(np.frombuffer(decoded, np.uint8), cv2.IMREAD_COLOR) is not None

    md = files["report.md"].read_text(encoding="utf-8")
    for png in expected_pngs:
        assert f"]({png}.png)" in md
    assert ("accuracy (ground truth)" in md) == truth


def test_metrics_json_has_the_contract_shape(tmp_path: Path):
    metrics = _metrics(truth=True)
    write_report(tmp_path, metrics)
    data = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "ece", "latency_ms_p50", "latency_ms_p95", "throughput_fps"):
        assert isinstance(data["student"][key], float), key
    assert isinstance(data["teacher"]["accuracy"], float)
    assert 0 <= data["agreement"] <= 1
    assert set(data["per_class_agreement"]) == set(CLASSES)
    assert data["speedup"] == 300.0
    assert set(data["fallback"]["recommended"]) >= {"threshold", "teacher_share", "agreement", "reached"}
    assert data["student"]["accuracy"] == pytest.approx(metrics["student"]["accuracy"])


def test_summary_rows_show_missing_values_as_dash():
    rows = dict((r[0], r[1:]) for r in summary_rows(_metrics(truth=False, speed=False)))
    assert "accuracy (ground truth)" not in rows
    assert rows["throughput (batched)"] == ("900.0/s", "-")
    assert rows["latency p50 (1 frame)"] == ("2.5 ms", "-")
