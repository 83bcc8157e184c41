"""End-to-end tests of `run_serve` and `distill serve`, headless, on generated colour clips."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_serve_fixtures import CLASSES, FixedTeacher, RecordingStudent, colour_clip, make_student
from typer.testing import CliRunner

from distill.cli import app
from distill.config import load_config
from distill.dataset import load_labels, read_manifest, read_table
from distill.errors import ConfigError, VideoError
from distill.export import Student
from distill.realtime import run_serve
from distill.realtime.smoothing import Smoother

FPS = 25.0


@pytest.fixture
def student_path(tmp_path: Path) -> Path:
    return make_student(tmp_path / "student.onnx")


@pytest.fixture
def student(student_path: Path) -> Student:
    return Student(student_path, threads=1)


def read_events(path: Path) -> tuple[list[dict], list[dict]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if r["event"] == "label"], [r for r in records if r["event"] == "stats"]


@pytest.mark.parametrize("smoothing", ["ema", "vote"])
def test_label_change_appears_within_the_smoothing_window(tmp_path: Path, student: Student, smoothing: str) -> None:
    clip = colour_clip(tmp_path / "rb.mp4", ["red", "blue"], seconds_each=1.0, fps=FPS)
    cfg = load_config(overrides={"serve.smoothing": smoothing})
    events = tmp_path / "events.jsonl"
    summary = run_serve([clip], student, cfg, events=events, fast=True, hard_examples=None)

    labels, stats = read_events(events)
    assert {e["label"] for e in labels} <= set(CLASSES)
    assert all({"source", "t", "label", "confidence", "by"} <= set(e) for e in labels)
    assert [e["label"] for e in labels] == ["red", "blue"]  # no flicker
    lag = Smoother.from_config(len(CLASSES), cfg.serve).lag_frames
    change = labels[1]["t"] - 1.0  # the clip turns blue at 1.0 s of media time
    assert 0 <= change <= (lag + 1) / FPS, f"blue shown {change:.3f} s after the change (window {lag} frames)"
    # fast mode classifies every frame; the final stats line covers the whole run
    assert summary.frames_classified == summary.sources[0].frames_captured == 50
    assert stats[-1]["final"] and stats[-1]["latency_ms"]["p95"] is not None


def test_files_play_at_native_rate_and_end_with_exit(tmp_path: Path, student: Student) -> None:
    clip = colour_clip(tmp_path / "r.mp4", ["red"], seconds_each=1.2, fps=FPS)
    summary = run_serve([clip], student, load_config(), hard_examples=None)
    assert summary.stopped_by == "end" and summary.threads_joined
    assert summary.sources[0].status == "ended"
    assert summary.duration_s >= 0.9 * 1.2  # paced by the container timestamps, not as fast as possible
    assert summary.sources[0].frames_classified + summary.sources[0].frames_dropped == 30


def test_fallback_writes_hard_examples_that_load_labels_reads(tmp_path: Path, student: Student) -> None:
    clip = colour_clip(tmp_path / "rb.mp4", ["red", "blue"], seconds_each=1.0, fps=FPS)
    hard = tmp_path / "hard"
    cfg = load_config(
        overrides={
            "serve.fallback_threshold": 1.0,  # the student is never that sure: every frame is offered
            "serve.fallback_max_per_second": 10,
            "serve.teacher_hold_s": 0.2,
            "sampling.image_size": 32,
        }
    )
    teacher = FixedTeacher("green")
    events = tmp_path / "events.jsonl"
    summary = run_serve([clip], student, cfg, teacher=teacher, events=events, hard_examples=hard)

    assert summary.teacher_answers >= 3 and summary.hard_examples == summary.teacher_answers
    assert summary.fallbacks_asked <= 10 * summary.duration_s + 1  # rate-limited
    ds = load_labels(hard)
    assert len(ds) == summary.hard_examples
    assert set(ds["label"]) == {"green"} and set(ds["video"]) == {"rb.mp4"}
    assert min(ds[0]["image"].size) == 32  # short side resized for storage
    assert ds[0]["probs"] == [0.0, 1.0, 0.0] and ds[0]["teacher"].startswith("test:")
    manifest = read_manifest(hard)
    assert manifest["classes"] == list(CLASSES) and manifest["teacher"]["backend"] == "test"
    # the teacher saw the clip's frames as OpenCV gives them (BGR: red is channel 2), with their provenance
    first = teacher.frames[0]
    assert first.image[..., 2].mean() > 200 and first.image[..., 0].mean() < 60
    assert first.video == "rb.mp4" and first.timestamp_s < 1.0
    labels, _ = read_events(events)
    assert any(e["by"] == "teacher" and e["label"] == "green" for e in labels)

    # a second run appends to the same set and never stores a frame twice
    again = run_serve([clip], student, cfg, teacher=FixedTeacher("green"), hard_examples=hard)
    table = read_table(hard, columns=["video", "frame_index"])
    keys = list(zip(table.column("video").to_pylist(), table.column("frame_index").to_pylist()))
    assert len(keys) == len(set(keys)) == summary.hard_examples + again.hard_examples
    assert again.hard_examples + again.hard_examples_skipped == again.teacher_answers  # seen before: skipped


def test_slow_teacher_does_not_hold_up_inference(tmp_path: Path, student: Student) -> None:
    clip = colour_clip(tmp_path / "r.mp4", ["red"], seconds_each=3.0, fps=FPS)
    cfg = load_config(overrides={"serve.fallback_threshold": 1.0, "serve.fallback_max_per_second": 10})
    teacher = FixedTeacher("green", sleep_s=1.0)
    recording = RecordingStudent(student)
    summary = run_serve([clip], recording, cfg, teacher=teacher, hard_examples=None)

    finished = [(a, b) for a, b in teacher.calls if b <= recording.times[-1]]
    assert finished, "the teacher was never asked"
    for start, end in finished:  # the student kept classifying while the teacher thought
        during = sum(start <= t <= end for t in recording.times)
        assert during >= 0.5 * FPS * (end - start), f"only {during} frames classified during a {end - start:.1f} s call"
    assert summary.frames_classified + summary.sources[0].frames_dropped == 75


def test_source_that_fails_to_open_is_reported_while_others_go_on(
    tmp_path: Path, student: Student, caplog: pytest.LogCaptureFixture
) -> None:
    clip = colour_clip(tmp_path / "g.mp4", ["green"], seconds_each=0.5)
    events = tmp_path / "events.jsonl"
    with caplog.at_level(logging.WARNING, logger="distill"):
        summary = run_serve([tmp_path / "missing.mp4", clip], student, load_config(), events=events, fast=True)
    assert [s.status for s in summary.sources] == ["failed", "ended"]
    assert "missing.mp4" in summary.failures[0].error
    assert summary.sources[1].frames_classified == 12
    assert "missing.mp4" in caplog.text
    labels, _ = read_events(events)
    assert [(e["source"], e["label"]) for e in labels] == [(str(clip), "green")]


def test_no_source_opens_raises(tmp_path: Path, student: Student) -> None:
    with pytest.raises(VideoError, match="no source could be opened"):
        run_serve([tmp_path / "a.mp4", tmp_path / "b.mp4"], student, load_config())


def test_teacher_failures_are_counted_and_out_of_memory_pauses(
    tmp_path: Path, student: Student, caplog: pytest.LogCaptureFixture
) -> None:
    clip = colour_clip(tmp_path / "r.mp4", ["red"], seconds_each=1.0)
    cfg = load_config(overrides={"serve.fallback_threshold": 1.0, "serve.fallback_max_per_second": 20})
    broken = FixedTeacher(fail=RuntimeError("model exploded"))
    summary = run_serve([clip], student, cfg, teacher=broken, hard_examples=tmp_path / "hard")
    assert summary.teacher_errors == summary.fallbacks_asked >= 3
    assert summary.frames_classified + summary.sources[0].frames_dropped == 25  # the loop went on

    oom = type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory. Tried to allocate 2 GiB")
    with caplog.at_level(logging.WARNING, logger="distill"):
        summary = run_serve([clip], student, cfg, teacher=FixedTeacher(fail=oom), hard_examples=None)
    assert summary.fallbacks_asked == 1 and summary.teacher_errors == 1  # paused after the first failure
    assert "paused" in caplog.text


def test_a_frame_the_student_cannot_classify_is_counted(tmp_path: Path, student: Student) -> None:
    clip = colour_clip(tmp_path / "rgb.mp4", ["red", "green", "blue"], seconds_each=0.4)
    recording = RecordingStudent(student, fail_on="green")
    summary = run_serve([clip], recording, load_config(), fast=True, hard_examples=None)
    assert summary.frame_errors >= 8  # about the 10 green frames (the colour edges blur in mpeg4)
    assert summary.frames_classified + summary.frame_errors == 30
    assert summary.stopped_by == "end"


def test_max_seconds_stops_and_joins_every_thread(tmp_path: Path, student: Student) -> None:
    clip = colour_clip(tmp_path / "r.mp4", ["red"], seconds_each=6.0)
    teacher = FixedTeacher(sleep_s=0.3)
    cfg = load_config(overrides={"serve.fallback_threshold": 1.0})
    summary = run_serve([clip, clip], student, cfg, teacher=teacher, max_seconds=0.6, hard_examples=None)
    assert summary.stopped_by == "max-seconds" and summary.threads_joined
    assert summary.shutdown_s < 1.0
    assert [s.status for s in summary.sources] == ["stopped", "stopped"]
    assert [s.name for s in summary.sources] == [str(clip), f"{clip}#2"]  # one file twice: two names


def test_teacher_with_other_classes_is_refused(tmp_path: Path, student: Student) -> None:
    clip = colour_clip(tmp_path / "r.mp4", ["red"], seconds_each=0.2)
    with pytest.raises(ConfigError, match="differ from the student"):
        run_serve([clip], student, load_config(), teacher=FixedTeacher("cat", classes=("cat", "dog")))


# --- the command line -----------------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_serve_headless_with_events_on_stdout(tmp_path: Path, student_path: Path) -> None:
    clip = colour_clip(tmp_path / "rb.mp4", ["red", "blue"], seconds_each=0.5)
    args = ["serve", "--source", str(clip), "--student", str(student_path), "--no-display", "--fast", "--events", "-"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["label"] for r in records if r["event"] == "label"] == ["red", "blue"]
    assert "stopped by end" in result.stderr


def test_cli_serve_with_annotations_teacher_keeps_hard_examples(tmp_path: Path, student_path: Path) -> None:
    clip = colour_clip(tmp_path / "rb.mp4", ["red", "blue"], seconds_each=1.0)
    segments = tmp_path / "segments.csv"
    segments.write_text("video,start_s,end_s,label\nrb.mp4,0,1,green\nrb.mp4,1,2,blue\n")
    hard = tmp_path / "hard"
    args = ["serve", "--source", str(clip), "--student", str(student_path), "--no-display", "--fast"]
    args += ["--teacher", "annotations", "--annotations", str(segments), "--hard-examples", str(hard)]
    args += ["--fallback-threshold", "1.0", "--fallback-max-per-second", "50"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "hard example(s)" in result.stdout
    ds = load_labels(hard)
    for row in ds:  # each stored frame carries the label of the segment covering it
        assert row["label"] == ("green" if row["timestamp_s"] < 1.0 else "blue")
    assert read_manifest(hard)["teacher"]["backend"] == "annotations"


QUESTION = "what is the machine state? {choices}"
ASKED = "answer en what is the machine state? cat, dog or bird"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from _tiny_paligemma import tiny_paligemma_dir

    return tiny_paligemma_dir(tmp_path_factory.getbasetemp())


@pytest.mark.parametrize("backend", ["annotations", "paligemma"])
def test_cli_serve_teacher_asks_what_labelling_asked(tmp_path: Path, backend: str, tiny_model: Path) -> None:
    """The student recorded a question and class texts other than its class names; the fallback teacher asks
    exactly that, and the hard examples record it, though the user named neither."""
    texts = ("cat", "dog", "bird")
    student = make_student(tmp_path / "student.onnx", question=QUESTION, class_texts=texts, prompt=ASKED)
    clip = colour_clip(tmp_path / "rb.mp4", ["red", "blue"], seconds_each=0.4)
    hard = tmp_path / "hard"
    args = ["serve", "--source", str(clip), "--student", str(student), "--no-display", "--fast"]
    args += ["--teacher", backend, "--hard-examples", str(hard), "--fallback-threshold", "1"]
    if backend == "annotations":
        (tmp_path / "segments.csv").write_text("video,start_s,end_s,label\nrb.mp4,0,0.8,green\n")
        args += ["--annotations", str(tmp_path / "segments.csv"), "--fallback-max-per-second", "50"]
    else:  # a config that names no classes: the device and model only
        config = tmp_path / "teacher.yaml"
        config.write_text(f"teacher: {{model: '{tiny_model}', device: cpu, local_files_only: true}}\n")
        args += ["--config", str(config), "--fallback-max-per-second", "5"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = read_manifest(hard)
    assert manifest["counts"]["frames"] >= 1 and manifest["teacher"]["backend"] == backend
    assert manifest["config"]["question"] == QUESTION
    assert manifest["config"]["classes"] == [{"name": n, "text": t} for n, t in zip(CLASSES, texts)]
    if backend == "paligemma":
        assert manifest["teacher"]["prompt"] == ASKED and manifest["teacher"]["class_texts"] == list(texts)


def test_cli_serve_question_replaces_the_recorded_one(tmp_path: Path) -> None:
    student = make_student(tmp_path / "student.onnx", question=QUESTION, class_texts=("cat", "dog", "bird"))
    clip = colour_clip(tmp_path / "r.mp4", ["red"], seconds_each=0.2)
    (tmp_path / "segments.csv").write_text("video,start_s,end_s,label\nr.mp4,0,1,red\n")
    hard = tmp_path / "hard"
    args = ["serve", "--source", str(clip), "--student", str(student), "--no-display", "--fast"]
    args += ["--teacher", "annotations", "--annotations", str(tmp_path / "segments.csv"), "--hard-examples", str(hard)]
    result = runner.invoke(app, [*args, "--fallback-threshold", "1", "--question", "which colour? {choices}"])
    assert result.exit_code == 0, result.output
    config = read_manifest(hard)["config"]
    assert config["question"] == "which colour? {choices}" and config["classes"][0] == {"name": "red", "text": "cat"}


def test_cli_serve_refuses_a_config_whose_classes_differ_from_the_students(tmp_path: Path, student_path: Path) -> None:
    config = tmp_path / "task.yaml"
    config.write_text("classes: [cat, dog]\n")
    (tmp_path / "segments.csv").write_text("video,start_s,end_s,label\nrb.mp4,0,1,cat\n")
    args = ["serve", "--source", "x.mp4", "--student", str(student_path), "--no-display", "--config", str(config)]
    result = runner.invoke(app, [*args, "--teacher", "annotations", "--annotations", str(tmp_path / "segments.csv")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "(cat, dog) differ from the student's (red, green, blue)" in lines[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "no source to serve"),
        (["--source", "x.mp4", "--student", "nope.onnx"], "does not exist"),
        (["--source", "x.mp4", "--smoothing", "median"], "unknown smoothing"),
        (["--source", "x.mp4", "--fallback-threshold", "2"], "fallback_threshold"),
        (["--source", "x.mp4", "--teacher", "annotations"], "--annotations"),
        (["--source", "x.mp4", "--events", "/proc/nope/events.jsonl"], "cannot write events"),
    ],
)
def test_cli_serve_bad_inputs(tmp_path: Path, student_path: Path, extra: list[str], message: str) -> None:
    args = ["serve", "--no-display", "--student", str(student_path), *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_serve_display_without_a_display_says_how_to_fix(
    tmp_path: Path, student_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    clip = colour_clip(tmp_path / "r.mp4", ["red"], seconds_each=0.2)
    result = runner.invoke(app, ["serve", "--source", str(clip), "--student", str(student_path)])
    assert result.exit_code == 1 and "--no-display" in result.output


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_the_cli_within_a_second(tmp_path: Path, student_path: Path, sig: signal.Signals) -> None:
    clip = colour_clip(tmp_path / "r.mp4", ["red", "blue"], seconds_each=10.0, size=(24, 32))
    events = tmp_path / "events.jsonl"
    cmd = [sys.executable, "-m", "distill.cli", "serve", "--source", str(clip), "--source", str(clip)]
    cmd += ["--student", str(student_path), "--no-display", "--events", str(events)]
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (events.exists() and events.read_text().count('"label"') >= 2):  # both sources running
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        sent = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
        exited = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopped by signal; all threads joined in" in out, out + err
    joined_s = float(out.split("all threads joined in ")[1].split(" s")[0])
    assert joined_s < 1.0
    assert exited < 2.5, f"the process took {exited:.2f} s to exit after the signal"  # generous: a loaded machine
    assert np.isfinite(joined_s)


def test_cli_serve_runs_without_torch(tmp_path: Path, student_path: Path) -> None:
    clip = colour_clip(tmp_path / "rb.mp4", ["red", "blue"], seconds_each=0.4)
    segments = tmp_path / "segments.csv"
    segments.write_text("video,start_s,end_s,label\nrb.mp4,0,0.8,green\n")
    blocked = "import sys\nfor name in ('torch', 'torchvision', 'timm', 'lightning', 'transformers'):\n"
    blocked += "    sys.modules[name] = None  # any import of them now raises ImportError\n"
    blocked += "from distill.cli import main\nmain()\n"
    args = ["serve", "--source", str(clip), "--student", str(student_path), "--no-display", "--fast"]
    args += ["--teacher", "annotations", "--annotations", str(segments), "--fallback-threshold", "1"]
    args += ["--hard-examples", str(tmp_path / "hard"), "--events", str(tmp_path / "events.jsonl")]
    result = subprocess.run([sys.executable, "-c", blocked, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "stopped by end" in result.stdout
    assert read_manifest(tmp_path / "hard")["counts"]["frames"] >= 1
