"""Fixtures of the serving tests: a tiny real ONNX student, colour clips and test teachers (plus their own tests).

The student is a real ONNX Runtime model loaded through `distill.export.Student`: it averages the input's
colour channels and maps the mean (R, G, B) to logits of the classes red / green / blue, so a solid colour
clip has a known answer and a grey frame an unsure one.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from distill.export.metadata import write_metadata
from distill.label import TeacherAnswer
from distill.train.meta import StudentMeta
from distill.video import Frame, write_video

CLASSES = ("red", "green", "blue")
BGR = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0), "grey": (128, 128, 128)}


def make_student(path: Path, scale: float = 3.0, image_size: int = 16, **recorded) -> Path:
    """Write `student.onnx`: logits = scale * mean normalised (R, G, B), with the distill metadata.

    `recorded` sets more `StudentMeta` fields (e.g. the `question` and `class_texts` labelling asked).
    """
    weight = helper.make_tensor("W", TensorProto.FLOAT, [3, 3], (np.eye(3, dtype=np.float32) * scale).ravel().tolist())
    bias = helper.make_tensor("b", TensorProto.FLOAT, [3], [0.0, 0.0, 0.0])
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["mean"], axes=[2, 3], keepdims=0),  # (B, 3)
            helper.make_node("MatMul", ["mean", "W"], ["scaled"]),
            helper.make_node("Add", ["scaled", "b"], ["logits"]),  # (B, K)
        ],
        "mean_colour",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["B", 3, image_size, image_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 3])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = StudentMeta(
        classes=CLASSES,
        model="mean-colour-test",
        image_size=image_size,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        teacher={"backend": "test"},
        **recorded,
    )
    onnx.checker.check_model(write_metadata(model, meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def colour_clip(path: Path, colours: list[str], seconds_each: float, fps: float = 25.0, size=(48, 64)) -> Path:
    """A clip of solid colours, each held `seconds_each` seconds."""
    h, w = size
    frames = []
    for name in colours:
        frame = np.empty((h, w, 3), np.uint8)
        frame[:] = BGR[name]
        frames += [frame] * round(seconds_each * fps)
    return write_video(path, frames, fps)


class FixedTeacher:
    """A teacher double with the `distill.label` protocol: always answers `answer`, after `sleep_s` seconds.

    Records the (start, end) monotonic time of every call and the frames it was given; `fail` (an exception) is
    raised instead of answering.
    """

    input_size = None

    def __init__(self, answer: str = "green", sleep_s: float = 0.0, fail: BaseException | None = None, classes=CLASSES):
        self.classes = tuple(classes)
        self.answer = answer
        self.sleep_s = sleep_s
        self.fail = fail
        self.calls: list[tuple[float, float]] = []
        self.frames: list[Frame] = []
        self._lock = threading.Lock()

    def describe(self) -> dict:
        return {"backend": "test", "model": "fixed", "mode": self.answer, "prompt": None}

    def label(self, frames: list[Frame]) -> list[TeacherAnswer]:
        start = time.monotonic()
        time.sleep(self.sleep_s)
        with self._lock:
            self.calls.append((start, time.monotonic()))
            self.frames.extend(frames)
        if self.fail is not None:
            raise self.fail
        probs = np.zeros(len(self.classes), np.float32)
        probs[self.classes.index(self.answer)] = 1.0
        return [TeacherAnswer(self.answer, probs, f"raw {self.answer}") for _ in frames]


class RecordingStudent:
    """Wraps a `Student`, recording when each `predict` call ran; `fail_on` (a colour name) makes frames of
    that colour raise."""

    def __init__(self, student, fail_on: str | None = None):
        self.student = student
        self.classes = student.classes
        self.times: list[float] = []
        self.fail_on = fail_on

    def predict(self, frames):
        if self.fail_on is not None:
            target = np.array(BGR[self.fail_on])
            if any(np.abs(f.reshape(-1, 3).mean(axis=0) - target).max() < 40 for f in frames):
                raise ValueError(f"cannot classify a {self.fail_on} frame")
        self.times.append(time.monotonic())
        return self.student.predict(frames)


# --- the fixtures' own tests --------------------------------------------------------------------------------


def test_tiny_student_classifies_solid_colours(tmp_path: Path) -> None:
    from distill.export import Student

    student = Student(make_student(tmp_path / "s.onnx"), threads=1)
    frames = [np.full((48, 64, 3), BGR[c], np.uint8) for c in ("red", "green", "blue", "grey")]
    pred = student.predict(frames)
    assert pred.labels[:3] == ["red", "green", "blue"]
    assert pred.probs[:3].max(axis=1).min() > 0.95  # confident on solid colours
    assert pred.probs[3].max() < 0.4  # unsure on grey
