"""`distill demo --quick` end to end: render, label, train, export, compare, serve — and a student that works.

This is the suite's one big test (about a minute on 2 CPU cores): the student, trained from scratch on the
rendered videos, must reach 0.9 accuracy against the ground truth on videos it never saw.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distill.cli import app
from distill.demo.pipeline import QUICK, paligemma_command, teacher_segments
from distill.demo.scenes import plan_segments
from distill.label.annotations import read_segments


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_demo_student_reaches_ground_truth_accuracy_on_held_out_videos(demo_run):
    out, _ = demo_run
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    splits = json.loads((out / "student" / "splits.json").read_text())
    assert metrics["videos"] == splits["videos"]["val"]  # compared on the videos training held out
    assert not set(metrics["videos"]) & set(splits["videos"]["train"])
    assert metrics["truth"] is not None and metrics["frames"] >= 40
    assert metrics["student"]["accuracy"] >= 0.9, metrics["student"]
    assert metrics["teacher"]["accuracy"] < 1.0  # the stand-in teacher is imperfect around state changes


def test_demo_writes_every_artifact(demo_run):
    out, _ = demo_run
    videos = sorted((out / "videos").glob("*.mp4"))
    assert len(videos) == QUICK.scene.n_videos
    segments = read_segments(out / "videos" / "segments.csv")
    assert set(segments) == {v.name for v in videos}
    for name in ("labels/manifest.json", "student/student.onnx", "student/student.ckpt", "task.yaml"):
        assert (out / name).is_file(), name
    # the student carries the label set's stored frame size, so serving shrinks big frames as labelling did
    from distill.export import Student

    stored = json.loads((out / "labels" / "manifest.json").read_text())["config"]["sampling"]["image_size"]
    assert Student(out / "student" / "student.onnx").meta.source_short_side == stored > 0
    for name in (
        "report.html",
        "report.md",
        "metrics.json",
        "confusion_student.png",
        "reliability.png",
        "fallback.png",
    ):
        assert (out / "report" / name).is_file(), name
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines() if line.strip()]
    assert events, "serving wrote no events"


def test_demo_output_says_paligemma_and_what_next(demo_run):
    out, output = demo_run
    text = " ".join(output.split())  # rich may wrap long lines
    assert "A real run labels with PaliGemma" in text
    assert " ".join(paligemma_command(out / "videos", out).split()) in text
    for expected in ("where everything is", "report.html", "distill serve --source", "accuracy (ground truth)"):
        assert expected in text, expected


@pytest.mark.parametrize("seed", range(4))
def test_stand_in_teacher_moves_only_state_changes(seed: int):
    import numpy as np

    truth = tuple(plan_segments("v.mp4", QUICK.scene, np.random.default_rng(seed)))
    teacher = teacher_segments(truth, lag_s=1.0, seed=seed)
    assert [s.label for s in teacher] == [s.label for s in truth]
    assert teacher[0].start_s == 0 and teacher[-1].end_s == truth[-1].end_s
    assert all(a.end_s == b.start_s for a, b in zip(teacher, teacher[1:]))
    for t, g in zip(teacher[1:], truth[1:]):
        assert abs(t.start_s - g.start_s) <= 1.0
    assert any(t.start_s != g.start_s for t, g in zip(teacher, truth))
