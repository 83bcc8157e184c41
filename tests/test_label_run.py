"""The labelling run (`distill label` / `run_label`): annotations teacher, resume, refusal,
CUDA out-of-memory halving, bounded memory, the CLI summary and its one-line errors."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import moving_frames, solid_frames
from typer.testing import CliRunner

from distill import _decode_workers as workers_module
from distill.cli import app
from distill.config import load_config
from distill.dataset import read_manifest, read_table
from distill.errors import DatasetError, TeacherError
from distill.label import TeacherAnswer, run_label
from distill.label.annotations import read_segments
from distill.video import write_video

runner = CliRunner()
RED, GREEN, BLUE = (0, 0, 255), (0, 255, 0), (255, 0, 0)  # BGR


def annotated_clip(root: Path) -> tuple[Path, Path]:
    """A clip red 0-2 s, green 2-4 s, blue 4-6 s and a CSV covering 0-5 s (so 5-6 s is not covered)."""
    write_video(root / "videos" / "cam" / "a.mp4", solid_frames([RED, GREEN, BLUE], 2.0, noise=3), 25)
    csv = root / "segments.csv"
    csv.write_text("video,start_s,end_s,label\ncam/a.mp4,0,2,red\ncam/a.mp4,2,4,green\ncam/a.mp4,4,5,blue\n")
    return root / "videos", csv


def annotations_config(csv: Path, **overrides):
    flags = {"classes": "red,green,blue", "teacher.backend": "annotations", "teacher.annotations": str(csv)}
    flags |= {"sampling.fps": 5, "sampling.dedup": False, "sampling.workers": 1} | overrides
    return load_config(overrides=flags)  # one decode thread: monkeypatched decoding reaches it


def dominant(jpeg: bytes) -> str:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return ["blue", "green", "red"][int(image.reshape(-1, 3).mean(0).argmax())]  # BGR channel order


def test_annotations_teacher_labels_a_generated_video_exactly(tmp_path):
    videos, csv = annotated_clip(tmp_path)
    summary = run_label([videos], tmp_path / "labels", annotations_config(csv), show_progress=True)
    rows = read_table(tmp_path / "labels").to_pylist()
    assert len(rows) == 25 and summary.frames_labelled == 25  # 0.0, 0.2, ... 4.8 s
    assert summary.skipped_uncovered == 5  # 5.0 ... 5.8 s: no segment
    for row in rows:
        truth = ["red", "green", "blue"][min(int(row["timestamp_s"] // 2), 2)]
        assert row["label"] == truth == dominant(row["image"]), row["timestamp_s"]
        assert row["probs"] == [float(c == truth) for c in ("red", "green", "blue")] and row["confidence"] == 1.0
        assert row["video"] == "cam/a.mp4" and row["teacher"] == "annotations:segments.csv:segments"
    manifest = read_manifest(tmp_path / "labels")
    assert manifest["counts"]["per_class"] == {"red": 10, "green": 10, "blue": 5}
    assert manifest["run"]["skipped_uncovered"] == 5
    assert manifest["teacher"]["backend"] == "annotations" and len(manifest["teacher"]["sha256"]) == 16
    assert (tmp_path / "labels" / "config.yaml").exists()


@pytest.mark.parametrize("prefix", ["{videos}/", "./{videos}/"])
def test_csv_paths_may_include_the_input_folder(tmp_path, monkeypatch, prefix):
    videos, csv = annotated_clip(tmp_path)
    monkeypatch.chdir(tmp_path)
    folder = str(videos) if prefix == "{videos}/" else "videos"
    csv.write_text(csv.read_text().replace("cam/a.mp4", prefix.format(videos=folder) + "cam/a.mp4"))
    summary = run_label([folder], tmp_path / "labels", annotations_config(csv))
    assert summary.frames_labelled == 25


def test_cli_summary(tmp_path):
    videos, csv = annotated_clip(tmp_path)
    (videos / "broken.mp4").write_bytes(b"not a video at all" * 10)
    args = ["label", str(videos), "--classes", "red,green,blue", "--annotations", str(csv), "--fps", "5"]
    result = runner.invoke(app, [*args, "--no-dedup", "--out", str(tmp_path / "labels")])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "labelled 25 frames" in out and "frames/s" in out
    assert "red 10, green 10, blue 5; unmatched 0" in out
    assert "skipped 5 frames no annotation segment covers" in out
    assert "1 video(s) failed: broken.mp4" in out
    again = runner.invoke(app, [*args, "--no-dedup", "--out", str(tmp_path / "labels")])
    assert again.exit_code == 0 and "labelled 0 frames" in again.stdout and "1 videos already done" in again.stdout


def test_rerun_skips_finished_videos_without_opening_them(tmp_path, monkeypatch):
    videos, csv = annotated_clip(tmp_path)
    write_video(videos / "b.mp4", moving_frames(2.0), 25)
    cfg = annotations_config(csv)
    first = run_label([videos], tmp_path / "labels", cfg)
    opened = []
    real = workers_module.read_timeline

    def recording(path, *args, **kwargs):
        opened.append(Path(path).relative_to(videos).as_posix())
        return real(path, *args, **kwargs)

    monkeypatch.setattr(workers_module, "read_timeline", recording)
    second = run_label([videos], tmp_path / "labels", cfg)
    assert opened == [] and second.videos_already_done == 2 and second.frames_labelled == 0
    assert read_manifest(tmp_path / "labels")["run"]["frames_labelled"] == 25  # the first run's cost is kept
    assert second.total_frames == first.total_frames == 25
    # a different fps samples other frames: finished videos are opened again, stored frames are kept
    third = run_label([videos], tmp_path / "labels", annotations_config(csv, **{"sampling.fps": 10}))
    assert sorted(set(opened)) == ["b.mp4", "cam/a.mp4"]
    assert third.frames_already_done == 25 and third.frames_labelled == 25


def test_different_classes_are_refused_unless_overwrite(tmp_path):
    videos, csv = annotated_clip(tmp_path)
    run_label([videos], tmp_path / "labels", annotations_config(csv))
    csv.write_text(csv.read_text().replace("blue", "green"))
    with pytest.raises(DatasetError, match="different teacher"):  # the CSV changed: another teacher
        run_label([videos], tmp_path / "labels", annotations_config(csv))
    with pytest.raises(DatasetError, match="labelled with classes"):
        run_label([videos], tmp_path / "labels", annotations_config(csv, classes="red,green"))
    summary = run_label([videos], tmp_path / "labels", annotations_config(csv, classes="red,green"), overwrite=True)
    assert summary.per_class == {"red": 10, "green": 15}


def test_a_teacher_that_fails_to_load_leaves_no_label_set(tmp_path):
    videos, csv = annotated_clip(tmp_path)
    csv.write_text(csv.read_text().replace("blue", "purple"))
    with pytest.raises(TeacherError, match="purple"):
        run_label([videos], tmp_path / "labels", annotations_config(csv))
    assert not (tmp_path / "labels" / "manifest.json").exists()
    csv.write_text(csv.read_text().replace("purple", "blue"))  # fixed: the same command now just works
    assert run_label([videos], tmp_path / "labels", annotations_config(csv)).frames_labelled == 25


# --- teachers injected into the run ---------------------------------------------------------------------------


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError, which is what the run recognises."""


class FakeTeacher:
    classes = ("a", "b")
    input_size = 24  # frames are handed over pre-shrunk to this short side

    def __init__(self, max_batch: int = 1000, fail_on_call: int | None = None, on_call=None) -> None:
        self.max_batch, self.fail_on_call, self.on_call = max_batch, fail_on_call, on_call
        self.calls: list[int] = []
        self.answered = 0

    def describe(self):
        return {"backend": "fake", "model": "fake", "mode": "test", "prompt": None}

    def label(self, frames):
        self.calls.append(len(frames))
        if self.on_call:
            self.on_call(frames)
        if len(self.calls) == self.fail_on_call:
            raise RuntimeError("teacher exploded")
        if len(frames) > self.max_batch:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        for f in frames:
            assert f.image.dtype == np.uint8 and f.image.shape[2] == 3 and min(f.image.shape[:2]) == self.input_size
            assert f.video == "clip.mp4" and f.timestamp_s == pytest.approx(f.frame_index / 25)
        answers = []
        for _ in frames:  # every third frame answered overall gets an answer that matched no class
            self.answered += 1
            unmatched = self.answered % 3 == 1
            probs = np.array([0.5, 0.5] if unmatched else [0.2, 0.8], np.float32)
            answers.append(TeacherAnswer(None if unmatched else "b", probs, "x"))
        return answers


def _clip(tmp_path: Path, seconds: float = 4.0) -> Path:
    return write_video(tmp_path / "clip.mp4", moving_frames(seconds), 25)


def fake_config(batch_size: int):
    return load_config(
        overrides={"classes": "a,b", "teacher.batch_size": batch_size, "sampling.fps": 25, "sampling.dedup": False}
        | {"sampling.workers": 1}  # one decode thread: monkeypatched decoding reaches it
    )


def test_cuda_out_of_memory_halves_the_batch_and_goes_on(tmp_path, caplog):
    teacher = FakeTeacher(max_batch=2)
    with caplog.at_level(logging.WARNING, logger="distill"):
        summary = run_label([_clip(tmp_path)], tmp_path / "labels", fake_config(8), teacher=teacher)
    assert summary.frames_labelled == 100 and summary.batch_size == 2
    assert teacher.calls[:3] == [8, 4, 2] and max(teacher.calls[3:]) <= 2  # no second out-of-memory
    assert "halving to 4" in caplog.text and "halving to 2" in caplog.text
    # unmatched answers (label None) are stored and counted, never mapped to a class
    table = read_table(tmp_path / "labels")
    assert summary.unmatched == table.column("label").null_count == 34 and summary.per_class == {"a": 0, "b": 66}


def test_out_of_memory_at_batch_one_is_a_one_line_error(tmp_path):
    with pytest.raises(TeacherError, match="even at batch size 1"):
        run_label([_clip(tmp_path, 1.0)], tmp_path / "labels", fake_config(1), teacher=FakeTeacher(max_batch=0))


def test_producer_stays_at_most_a_few_batches_ahead(tmp_path, monkeypatch):
    produced, consumed, ahead = [0], [0], []
    real = workers_module.sample_chunk

    def counting(*args, **kwargs):
        for frame in real(*args, **kwargs):
            produced[0] += 1
            yield frame

    def on_call(images):
        consumed[0] += len(images)
        time.sleep(0.02)  # a slow teacher: the producer would run ahead if nothing held it back
        ahead.append(produced[0] - consumed[0])

    monkeypatch.setattr(workers_module, "sample_chunk", counting)
    run_label([_clip(tmp_path, 8.0)], tmp_path / "labels", fake_config(4), teacher=FakeTeacher(on_call=on_call))
    # 2 queued batches + 1 being filled, the decode workers' bounded queue, and a frame in each hand
    assert consumed[0] == 200 and max(ahead) <= 3 * 4 + workers_module._RESULTS + 2


def test_a_failing_teacher_stops_the_run_keeps_finished_rows_and_the_thread(tmp_path):
    with pytest.raises(RuntimeError, match="teacher exploded"):
        run_label([_clip(tmp_path)], tmp_path / "labels", fake_config(4), teacher=FakeTeacher(fail_on_call=3))
    assert read_manifest(tmp_path / "labels")["counts"]["frames"] == 8  # two batches were labelled and saved
    time.sleep(0.2)
    assert not [t for t in threading.enumerate() if t.name == "distill-label-producer"]


def test_a_sampling_error_in_the_background_thread_surfaces(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        yield from ()
        raise MemoryError("decoder ran out of memory")

    monkeypatch.setattr(workers_module, "sample_chunk", broken)
    with pytest.raises(MemoryError, match="decoder"):
        run_label([_clip(tmp_path, 1.0)], tmp_path / "labels", fake_config(4), teacher=FakeTeacher())


# --- annotations CSV ------------------------------------------------------------------------------------------

BAD_CSVS = [
    ("missing columns", "video,start,end,label\na.mp4,0,1,red\n", "lacks column(s) start_s, end_s"),
    ("label not a class", "video,start_s,end_s,label\na.mp4,0,1,purple\n", "label 'purple' is not one of the classes"),
    ("bad number", "video,start_s,end_s,label\na.mp4,zero,1,red\n", "start_s 'zero' is not a number"),
    ("end before start", "video,start_s,end_s,label\na.mp4,3,1,red\n", "need 0 <= start_s < end_s"),
    ("overlap", "video,start_s,end_s,label\na.mp4,0,3,red\na.mp4,2,4,blue\n", "overlap with different labels"),
    ("short row", "video,start_s,end_s,label\na.mp4,0\n", "line 2 has 2 fields"),
    ("empty file", "", "is empty"),
]


@pytest.mark.parametrize(("what", "text", "message"), BAD_CSVS, ids=[b[0] for b in BAD_CSVS])
def test_read_segments_refuses_bad_csvs(tmp_path, what, text, message):
    path = tmp_path / "seg.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        read_segments(path, ["red", "green", "blue"])
    assert "\n" not in str(info.value)


def test_read_segments_and_label_at(tmp_path):
    from distill.label.annotations import Segment, label_at

    path = tmp_path / "seg.csv"
    path.write_text(
        "\ufeffVideo , Start_s,end_s,label,notes\n./cam\\b.mp4,5,9,idle,x\ncam/b.mp4,0,5,run,\n"
        f"{tmp_path}/root/c.mp4,0,2,idle,\ncam/b.mp4,8,12,idle,\n\n"
    )
    segments = read_segments(path, root=tmp_path / "root")
    assert segments["cam/b.mp4"] == [Segment(0, 5, "run"), Segment(5, 12, "idle")]  # same-label overlap merged
    assert list(segments) == ["cam/b.mp4", "c.mp4"]
    cases = [(0, "run"), (4.999, "run"), (5, "idle"), (11.9, "idle"), (12, None), (-1, None)]
    assert [label_at(segments, "cam/b.mp4", t) for t, _ in cases] == [want for _, want in cases]
    assert label_at(segments, "other.mp4", 1.0) is None


# --- bad input: one line, exit 1 ------------------------------------------------------------------------------


def _bad_inputs(tmp_path: Path, tiny: Path) -> dict[str, tuple[list[str], str]]:
    videos, csv = annotated_clip(tmp_path)
    (tmp_path / "cols.csv").write_text("video,start,end,label\ncam/a.mp4,0,1,red\n")
    (tmp_path / "labels.csv").write_text("video,start_s,end_s,label\ncam/a.mp4,0,1,purple\n")
    base = [str(videos), "--classes", "red,green,blue", "--out", str(tmp_path / "out")]
    model = ["--teacher-model", str(tiny), "--local-files-only", "--device", "cpu"]
    return {
        "unknown teacher": (
            [*base, "--teacher", "gpt4"],
            "unknown teacher backend 'gpt4'; choose one of: annotations, openai, paligemma",
        ),
        "missing model folder": ([*base, "--teacher-model", str(tmp_path / "no" / "model")], "--teacher-model"),
        "class tokenises to nothing": ([*base[:2], "cat,☃", *base[3:], *model], "tokenises to nothing"),
        "empty question": ([*base, "--question", "  ", *model], "question is empty"),
        "csv missing columns": ([*base, "--annotations", str(tmp_path / "cols.csv")], "lacks column(s)"),
        "csv label not a class": ([*base, "--annotations", str(tmp_path / "labels.csv")], "is not one of the classes"),
        "annotations without csv": ([*base, "--teacher", "annotations"], "needs a segments CSV"),
        "missing csv": ([*base, "--annotations", str(tmp_path / "nope.csv")], "does not exist"),
        "one class": ([str(videos), "--classes", "red", "--annotations", str(csv)], "at least two classes"),
        "no videos": ([str(tmp_path / "nothing"), "--classes", "a,b", "--annotations", str(csv)], "no video found"),
        "bad device": ([*base, *model[:3], "--device", "tpu"], "unknown device 'tpu'"),
    }


BAD_CASES = [
    "unknown teacher",
    "missing model folder",
    "class tokenises to nothing",
    "empty question",
    "csv missing columns",
    "csv label not a class",
    "annotations without csv",
    "missing csv",
    "one class",
    "no videos",
    "bad device",
]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from _tiny_paligemma import tiny_paligemma_dir

    return tiny_paligemma_dir(tmp_path_factory.getbasetemp())


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_and_exit_1(tmp_path, tiny_model, case):
    args, message = _bad_inputs(tmp_path, tiny_model)[case]
    result = runner.invoke(app, ["label", *args])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("Loading weights")]
    assert lines[-1].startswith("error: ") and message in lines[-1], result.stderr
    assert len([line for line in lines if line.startswith("error")]) == 1 and "Traceback" not in result.output


# --- the tiny PaliGemma through the CLI -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["constrained", "generate"])
def test_cli_with_a_tiny_paligemma(tmp_path, tiny_model, mode):
    write_video(tmp_path / "v" / "a.mp4", moving_frames(3.0), 25)
    write_video(tmp_path / "v" / "b.mp4", moving_frames(2.0), 25)
    out = tmp_path / "labels"
    args = ["label", str(tmp_path / "v"), "--classes", "cat,dog,bird", "--teacher-model", str(tiny_model)]
    args += ["--local-files-only", "--device", "cpu", "--fps", "4", "--batch-size", "3", "--mode", mode]
    if mode == "generate":  # ten decoding steps per batch: keep it short
        args += ["--max-frames", "3"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = read_table(out).to_pylist()
    manifest = read_manifest(out)
    assert len(rows) == manifest["counts"]["frames"] == (20 if mode == "constrained" else 6)
    assert manifest["teacher"]["prompt"] == "answer en which of these best describes the image: cat, dog or bird?"
    assert manifest["teacher"]["mode"] == mode and manifest["config"]["teacher"]["batch_size"] == 3
    assert all(r["teacher"] == f"paligemma:{tiny_model}:{mode}" for r in rows)
    for r in rows:
        assert r["label"] is None or r["label"] in ("cat", "dog", "bird")
        assert sum(r["probs"]) == pytest.approx(1.0, abs=1e-5) and r["confidence"] == pytest.approx(max(r["probs"]))
    unmatched = sum(r["label"] is None for r in rows)
    assert manifest["counts"]["unmatched"] == unmatched and f"unmatched {unmatched}" in result.stdout
    if mode == "constrained":
        assert unmatched == 0 and all(r["raw"] == r["label"] for r in rows)
    else:  # a random model's free text matches no class: kept raw, counted, never mapped
        assert unmatched == len(rows) and all(r["raw"] for r in rows)


def test_cli_output_is_distills_own(tmp_path, tiny_model):
    """transformers' loading bar, notices and deprecation warnings stay out of a labelling run's output; --debug
    lets them through."""
    write_video(tmp_path / "v" / "a.mp4", moving_frames(2.0), 25)
    distill = Path(sys.executable).with_name("distill")
    args = [str(distill), "label", str(tmp_path / "v"), "--classes", "cat,dog,bird"]
    args += ["--teacher-model", str(tiny_model), "--local-files-only", "--device", "cpu", "--fps", "2"]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "info"}  # even a user who turned transformers' logging up
    result = subprocess.run([*args, "--out", str(tmp_path / "l")], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    assert result.stdout.startswith("labelled 4 frames"), result.stdout
    debug = subprocess.run(
        [str(distill), "--debug", *args[1:], "--out", str(tmp_path / "d")], capture_output=True, text=True, env=env
    )
    assert debug.returncode == 0 and "Loading weights" in debug.stderr, debug.stderr
