"""`run_compare` and `distill compare` on a real (tiny) path: rendered videos -> label -> train -> compare.

One module fixture renders three short machine-state videos, labels them with the annotations teacher and
trains a tiny student for one epoch (it need not be good: every figure is checked against scikit-learn on the
student's own predictions, recomputed here).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score
from typer.testing import CliRunner

from distill.cli import app
from distill.config import load_config
from distill.dataset import LabelSetWriter, read_table
from distill.demo.scenes import STATES, SceneSpec, render_scenario
from distill.errors import DatasetError
from distill.evaluate import run_compare
from distill.export import Student
from distill.label.annotations import label_at, read_segments


@dataclass
class Path3:
    root: Path
    videos: Path
    truth: Path
    labels: Path
    student: Path
    val: list[str]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path3:
    from distill.export import export_onnx
    from distill.label import run_label
    from distill.train import run_train

    root = tmp_path_factory.mktemp("compare")
    spec = SceneSpec(n_videos=3, seconds=12, fps=8, min_segment_s=2, max_segment_s=4, seed=3)
    scenario = render_scenario(root / "videos", spec)
    cfg = load_config(
        overrides={
            "classes": list(STATES),
            "sampling.fps": 1.5,
            "sampling.dedup": False,
            "teacher.backend": "annotations",
            "teacher.annotations": str(scenario.truth_csv),
            "student.model": "resnet10t",
            "student.image_size": 48,
            "student.pretrained": False,
            "train.epochs": 1,
            "train.batch_size": 16,
        }
    )
    run_label([scenario.video_dir], root / "labels", cfg)
    summary = run_train(root / "labels", root / "student", cfg, accelerator="cpu", num_workers=0)
    export_onnx(summary.checkpoint, root / "student" / "student.onnx")
    val = json.loads((root / "student" / "splits.json").read_text())["videos"]["val"]
    return Path3(root, scenario.video_dir, scenario.truth_csv, root / "labels", root / "student" / "student.onnx", val)


def _expected(t: Path3, videos: list[str]) -> dict:
    """The student's predictions and the labels, recomputed from the label set without distill.evaluate."""
    table = read_table(t.labels).to_pylist()
    rows = [r for r in table if r["video"] in videos and r["label"] is not None]
    student = Student(t.student)
    images = [cv2.imdecode(np.frombuffer(r["image"], np.uint8), cv2.IMREAD_COLOR) for r in rows]
    pred = student.predict(images).labels
    segments = read_segments(t.truth)
    truth = [label_at(segments, r["video"], r["timestamp_s"]) for r in rows]
    return {"rows": rows, "pred": pred, "teacher": [r["label"] for r in rows], "truth": truth}


def test_compare_on_held_out_videos_matches_sklearn(trained: Path3, tmp_path: Path):
    report = run_compare(trained.labels, tmp_path / "r", student_path=trained.student, truth_csv=trained.truth)
    m = report.metrics
    assert m["videos"] == trained.val and m["split_source"] == "the by-video split recorded in student.onnx"
    exp = _expected(trained, trained.val)
    assert m["frames"] == len(exp["rows"]) > 0
    assert m["student"]["accuracy"] == pytest.approx(accuracy_score(exp["truth"], exp["pred"]))
    assert m["teacher"]["accuracy"] == pytest.approx(accuracy_score(exp["truth"], exp["teacher"]))
    assert m["agreement"] == pytest.approx(accuracy_score(exp["teacher"], exp["pred"]))
    assert m["student"]["macro_f1"] == pytest.approx(
        f1_score(exp["truth"], exp["pred"], labels=list(STATES), average="macro", zero_division=0)
    )
    assert m["student"]["latency_ms_p50"] > 0 and m["student"]["throughput_fps"] > 0
    assert m["teacher"]["backend"] == "annotations" and m["speedup"] is None  # a CSV has no speed to beat
    for name in ("report.html", "report.md", "metrics.json", "confusion_student.png", "fallback.png"):
        assert (tmp_path / "r" / name).is_file()


def test_compare_all_frames_covers_every_video(trained: Path3, tmp_path: Path):
    m = run_compare(trained.labels, tmp_path, student_path=trained.student, held_out_only=False).metrics
    assert m["videos"] == sorted({p.name for p in trained.videos.glob("*.mp4")})
    assert m["frames"] == len(read_table(trained.labels, columns=["video"]))
    assert m["truth"] is None and m["calibrated_against"] == "teacher" and "accuracy" not in m["student"]


def test_compare_runs_a_given_teacher_and_times_it(trained: Path3, tmp_path: Path):
    cfg = load_config(
        overrides={"classes": list(STATES), "teacher.backend": "annotations", "teacher.annotations": str(trained.truth)}
    )
    m = run_compare(
        trained.labels, tmp_path, student_path=trained.student, teacher_cfg=cfg, truth_csv=trained.truth
    ).metrics
    assert m["teacher"]["cost_source"] == "measured here"
    assert m["teacher"]["throughput_fps"] > 0 and m["speedup"] == pytest.approx(
        m["student"]["throughput_fps"] / m["teacher"]["throughput_fps"]
    )
    assert m["teacher"]["accuracy"] == 1.0  # the teacher here reads the ground truth itself


def test_recorded_teacher_cost_gives_the_speedup(trained: Path3, tmp_path: Path):
    labels = tmp_path / "labels"
    shutil.copytree(trained.labels, labels)
    manifest = json.loads((labels / "manifest.json").read_text())
    manifest["teacher"] = {"backend": "paligemma", "model": "google/paligemma2-3b-mix-224", "mode": "constrained"}
    manifest["run"] = {"frames_labelled": 40, "frames_per_s": 2.5, "batch_size": 8, "seconds": 16.0}
    (labels / "manifest.json").write_text(json.dumps(manifest))
    m = run_compare(labels, tmp_path / "r", student_path=trained.student, held_out_only=False).metrics
    assert m["teacher"]["throughput_fps"] == 2.5 and m["teacher"]["cost_source"] == "recorded by `distill label`"
    assert m["speedup"] == pytest.approx(m["student"]["throughput_fps"] / 2.5)
    assert "faster than the teacher" in (tmp_path / "r" / "report.md").read_text()


def test_cli_compare_prints_the_summary_table(trained: Path3, tmp_path: Path):
    args = ["compare", str(trained.labels), "--student", str(trained.student), "--truth", str(trained.truth)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    for text in (
        "accuracy (ground truth)",
        "agreement with teacher",
        "latency p50",
        "fallback threshold",
        "report.html",
    ):
        assert text in result.output
    data = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert f"{data['student']['accuracy']:.3f}" in result.output


def _one_video_set(path: Path) -> Path:
    jpeg = cv2.imencode(".jpg", np.zeros((32, 32, 3), np.uint8))[1].tobytes()
    with LabelSetWriter(path, list(STATES), {"backend": "annotations"}) as w:
        for i in range(4):
            w.add({"video": "only.mp4", "frame_index": i, "timestamp_s": float(i), "image": jpeg, "label": "idle",
                   "probs": [0, 1, 0, 0], "confidence": 1.0, "teacher": "annotations", "raw": None})  # fmt: skip
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing-labels", "does not exist"),
        ("missing-student", "student"),
        ("bad-truth-label", "not one of the classes"),
        ("truth-names-differ", "video names must match"),
        ("one-video", "nothing was held out"),
    ],
)
def test_cli_compare_bad_inputs_are_one_line_errors(trained: Path3, tmp_path: Path, case: str, message: str):
    labels, student, extra = trained.labels, trained.student, []
    if case == "missing-labels":
        labels = tmp_path / "nope"
    elif case == "missing-student":
        student = tmp_path / "nope.onnx"
    elif case == "bad-truth-label":
        (tmp_path / "t.csv").write_text("video,start_s,end_s,label\nmachine-00.mp4,0,5,exploded\n")
        extra = ["--truth", str(tmp_path / "t.csv")]
    elif case == "truth-names-differ":
        (tmp_path / "t.csv").write_text("video,start_s,end_s,label\nother.mp4,0,500,idle\n")
        extra = ["--truth", str(tmp_path / "t.csv")]
    elif case == "one-video":
        labels = _one_video_set(tmp_path / "one")
        (trained.root / "student2").mkdir(exist_ok=True)
        student = trained.root / "student2" / "student.onnx"  # no splits.json next to it
        shutil.copy(trained.student, student)
    result = CliRunner().invoke(
        app, ["compare", str(labels), "--student", str(student), *extra, "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 1, result.output
    assert "error:" in result.output and message in result.output
    assert "Traceback" not in result.output


def test_class_mismatch_is_a_dataset_error(trained: Path3, tmp_path: Path):
    jpeg = cv2.imencode(".jpg", np.zeros((32, 32, 3), np.uint8))[1].tobytes()
    with LabelSetWriter(tmp_path / "l", ["cat", "dog"], {"backend": "annotations"}) as w:
        w.add({"video": "a.mp4", "frame_index": 0, "timestamp_s": 0.0, "image": jpeg, "label": "cat",
               "probs": [1, 0], "confidence": 1.0, "teacher": "annotations", "raw": None})  # fmt: skip
    with pytest.raises(DatasetError, match="differ"):
        run_compare(tmp_path / "l", tmp_path / "r", student_path=trained.student, held_out_only=False)


def test_cli_compare_with_a_teacher_reads_the_label_sets_config(trained: Path3, tmp_path: Path):
    args = ["compare", str(trained.labels), "--student", str(trained.student), "--out", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--teacher", "annotations", "--annotations", str(trained.truth)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["teacher"]["cost_source"] == "measured here" and data["speedup"] > 0
    assert "faster than the teacher" in " ".join(result.output.split())


def test_compare_runs_a_teacher_behind_an_openai_compatible_server(trained: Path3, tmp_path: Path):
    from _openai_server import FakeServer

    with FakeServer() as server:
        overrides = {"classes": list(STATES), "teacher.backend": "openai", "teacher.url": server.url}
        cfg = load_config(overrides=overrides | {"teacher.model": "toy-vlm"})
        m = run_compare(trained.labels, tmp_path, student_path=trained.student, teacher_cfg=cfg).metrics
    assert m["teacher"]["backend"] == "openai" and m["teacher"]["cost_source"] == "measured here"
    assert m["teacher"]["throughput_fps"] > 0 and server.chat_requests > len(STATES)
