"""The teacher registry (`build_teacher` / `describe_teacher` look backends up by name), the annotations teacher
behind the `Teacher` protocol, and the config a fallback teacher is built from (`teacher_config`): it asks what
labelling asked unless told otherwise. Mismatched classes are one-line errors in serve and train."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from distill.cli import app
from distill.config import load_config
from distill.errors import ConfigError, TeacherError
from distill.label import (
    Teacher,
    TeacherAnswer,
    build_prompt,
    build_teacher,
    describe_teacher,
    register_teacher,
    teacher_backends,
)
from distill.label import _teacher as teacher_module
from distill.label._teacher import teacher_input_size
from distill.realtime.serve import build_fallback_teacher, teacher_config
from distill.train.meta import StudentMeta
from distill.video import Frame

QUESTION = "what is the machine state? {choices}"
ASKED = "answer en what is the machine state? cat, dog or bird"  # what labelling asked, recorded by the student


def student_meta(**changes) -> StudentMeta:
    """A student whose classes were asked about with texts other than their names and a custom question."""
    fields = dict(
        classes=("red", "green", "blue"),
        class_texts=("cat", "dog", "bird"),
        question=QUESTION,
        prompt=ASKED,
        model="resnet10t",
        image_size=32,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
    return StudentMeta(**(fields | changes))


# --- the registry -------------------------------------------------------------------------------------------


class EchoTeacher:
    """A registered test backend: answers the first class for every frame."""

    input_size = None

    def __init__(self, cfg, root) -> None:
        self.classes, self.root = cfg.class_names, root

    def label(self, frames):
        return [TeacherAnswer(self.classes[0], np.eye(len(self.classes), dtype=np.float32)[0]) for _ in frames]

    def describe(self):
        return {"backend": "echo", "model": None, "mode": None, "prompt": None}


def test_builtin_backends_are_registered_and_lookup_goes_by_name(monkeypatch, tmp_path):
    assert {"annotations", "paligemma"} <= set(teacher_backends())
    monkeypatch.setattr(teacher_module, "_BACKENDS", dict(teacher_module._BACKENDS))  # undone after the test
    register_teacher("echo", build=lambda cfg, *, root=None: EchoTeacher(cfg, root), describe=lambda cfg: {"x": 1})
    assert "echo" in teacher_backends()
    cfg = load_config(overrides={"classes": "a,b", "teacher.backend": "echo"})
    assert describe_teacher(cfg) == {"x": 1}
    teacher = build_teacher(cfg, root=tmp_path)
    assert isinstance(teacher, EchoTeacher) and isinstance(teacher, Teacher) and teacher.root == tmp_path
    assert [a.label for a in teacher.label([Frame("v.mp4", 0, 0.0, np.zeros((4, 4, 3), np.uint8))])] == ["a"]


@pytest.mark.parametrize("call", [build_teacher, describe_teacher])
def test_an_unknown_backend_lists_the_registered_ones(call):
    cfg = load_config(overrides={"classes": "a,b", "teacher.backend": "gpt4"})  # the config cannot know the registry
    with pytest.raises(TeacherError) as info:
        call(cfg)
    message = str(info.value)
    assert message == f"unknown teacher backend 'gpt4'; choose one of: {', '.join(teacher_backends())}"
    assert "annotations, openai, paligemma" in message


def test_importing_the_label_and_realtime_packages_imports_no_torch():
    code = (
        "import sys, distill.label, distill.realtime, distill.realtime.serve\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'timm', 'lightning') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "assert {'annotations', 'paligemma'} <= set(distill.label.teacher_backends())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_annotations_teacher_answers_frames_by_video_and_time(tmp_path):
    csv = tmp_path / "segments.csv"
    csv.write_text("video,start_s,end_s,label\ncam/a.mp4,0,2,red\ncam/a.mp4,2,4,blue\n")
    flags = {"classes": "red,green,blue", "teacher.backend": "annotations", "teacher.annotations": str(csv)}
    cfg = load_config(overrides=flags)
    teacher = build_teacher(cfg)
    assert isinstance(teacher, Teacher) and teacher.input_size is None
    assert teacher.describe() == describe_teacher(cfg) and teacher.describe()["backend"] == "annotations"
    pixels = np.zeros((8, 8, 3), np.uint8)  # never looked at
    times = [("cam/a.mp4", 1.0), ("cam/a.mp4", 3.5), ("cam/a.mp4", 9.0), ("other.mp4", 1.0)]
    answers = teacher.label([Frame(video, i, t, pixels) for i, (video, t) in enumerate(times)])
    assert [a and a.label for a in answers] == ["red", "blue", None, None]
    assert answers[1].probs.tolist() == [0.0, 0.0, 1.0]


# --- what the fallback teacher asks --------------------------------------------------------------------------


def texts(cfg) -> list[str]:
    return [c.text for c in cfg.classes]


def test_fallback_teacher_asks_the_students_recorded_question_and_texts():
    cfg = teacher_config(load_config(), student_meta())
    assert cfg.class_names == ("red", "green", "blue") and texts(cfg) == ["cat", "dog", "bird"]
    assert cfg.question == QUESTION and build_prompt(cfg) == ASKED


def test_question_flag_replaces_the_recorded_question_only():
    cfg = teacher_config(load_config(), student_meta(), question="which animal is it? {choices}")
    assert texts(cfg) == ["cat", "dog", "bird"]
    assert build_prompt(cfg) == "answer en which animal is it? cat, dog or bird"


def test_a_config_with_the_students_classes_is_used_as_given():
    given = load_config(overrides={"classes": "blue,red,green", "question": "colour? {choices}"})
    assert teacher_config(given, student_meta()) is given
    assert teacher_config(given, student_meta(), question="hue?").question == "hue?"


def test_a_student_without_a_recorded_question_gets_todays_default():
    old = student_meta(class_texts=(), question=None, prompt=None)  # written before questions were recorded
    default = load_config()
    cfg = teacher_config(default, old)
    assert texts(cfg) == ["red", "green", "blue"] and cfg.question == default.question


def test_a_config_whose_classes_differ_from_the_students_is_one_line():
    with pytest.raises(ConfigError) as info:
        teacher_config(load_config(overrides={"classes": "cat,dog"}), student_meta())
    message = str(info.value)
    assert "\n" not in message and "(cat, dog) differ from the student's (red, green, blue)" in message


def test_fallback_paligemma_teacher_asks_what_labelling_asked(tmp_path_factory):
    from _tiny_paligemma import tiny_paligemma_dir

    model = tiny_paligemma_dir(tmp_path_factory.getbasetemp())
    flags = {"teacher.model": str(model), "teacher.local_files_only": True, "teacher.device": "cpu"}
    cfg, teacher = build_fallback_teacher(load_config(overrides=flags), student_meta(), ["clip.mp4"])
    assert teacher.classes == ("red", "green", "blue") and teacher.texts == ["cat", "dog", "bird"]
    assert teacher.describe()["prompt"] == ASKED == student_meta().prompt
    assert teacher.describe()["class_texts"] == ["cat", "dog", "bird"] and cfg.question == QUESTION
    rng = np.random.default_rng(0)
    answers = teacher.label([Frame("clip.mp4", 0, 0.0, rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))])
    assert answers[0].label in ("red", "green", "blue")  # answers carry the student's class names


def test_paligemma_announces_its_input_size_before_loading(tmp_path_factory, tmp_path):
    """Read from the image processor's configuration: the size the built teacher has; None when unreadable."""
    from _tiny_paligemma import IMAGE_SIZE, tiny_paligemma_dir

    model = tiny_paligemma_dir(tmp_path_factory.getbasetemp())
    flags = {"teacher.model": str(model), "teacher.local_files_only": True, "teacher.device": "cpu"}
    cfg = load_config(overrides={"classes": "cat,dog"} | flags)
    assert teacher_input_size(cfg) == build_teacher(cfg).input_size == IMAGE_SIZE
    missing = load_config(overrides={"classes": "cat,dog", "teacher.model": str(tmp_path / "none")})
    assert teacher_input_size(missing) is None
    assert teacher_input_size(load_config(overrides={"classes": "cat,dog", "teacher.backend": "annotations"})) is None


def test_a_backend_that_announces_a_wrong_input_size_is_one_line_and_leaves_no_worker(monkeypatch, tmp_path):
    import multiprocessing

    from conftest import moving_frames

    from distill.label import run_label
    from distill.video import write_video

    write_video(tmp_path / "a.mp4", moving_frames(2.0), 25)
    monkeypatch.setattr(teacher_module, "_BACKENDS", dict(teacher_module._BACKENDS))
    register_teacher(
        "echo", build=lambda cfg, *, root=None: EchoTeacher(cfg, root), describe=lambda cfg: {}, input_size=lambda c: 64
    )
    cfg = load_config(overrides={"classes": "a,b", "teacher.backend": "echo", "sampling.workers": 2})
    with pytest.raises(TeacherError, match="input size is None, not the 64 its backend announced"):
        run_label([tmp_path / "a.mp4"], tmp_path / "labels", cfg)
    assert multiprocessing.active_children() == []


# --- train: the config's classes must be the label set's ------------------------------------------------------


def test_train_refuses_a_config_whose_classes_differ_from_the_label_set(tmp_path: Path):
    from _labelsets import write_label_set

    labels = write_label_set(tmp_path / "labels", videos=2, frames_per_class=2)
    config = tmp_path / "task.yaml"
    config.write_text("classes: [idle, running, broken]\nstudent: {model: resnet10t, image_size: 32}\n")
    out = tmp_path / "student"
    result = CliRunner().invoke(app, ["train", str(labels), "--config", str(config), "--out", str(out)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "(idle, running, broken) differ from the label set's" in lines[0]
    assert "Traceback" not in result.output and not out.exists()  # refused before training wrote anything
