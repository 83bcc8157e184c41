"""The torch-free side of distill.export: preprocessing, metadata, `Student` on a hand-built ONNX graph, bad files.

The graph here is built with `onnx.helper` (global average pool + linear layer), so these tests need neither
torch nor training and the expected outputs can be computed with numpy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from distill.errors import ExportError
from distill.export import Preprocessor, Student, read_metadata
from distill.export.metadata import FORMAT, StudentMeta, write_metadata
from distill.export.runtime import default_providers, softmax

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLASSES = ["blue", "green", "red"]
SIZE = 16


def reference_input(frames: list[np.ndarray], size: int, mean=MEAN, std=STD) -> np.ndarray:
    """The documented preprocessing, written the slow obvious way: squash, BGR->RGB, /255, -mean, /std, NCHW."""
    out = []
    for frame in frames:
        rgb = cv2.cvtColor(cv2.resize(frame, (size, size), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
        x = (rgb.astype(np.float64) / 255.0 - np.array(mean)) / np.array(std)
        out.append(x.transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def meta(**changes) -> StudentMeta:
    base = {
        "classes": CLASSES,
        "model": "handmade",
        "image_size": SIZE,
        "mean": list(MEAN),
        "std": list(STD),
        "channel_order": "RGB",
        "resize": "squash",
        "interpolation": "bilinear",
        "teacher": {"backend": "annotations", "model": "segments.csv"},
        "label_set": {"path": "runs/labels", "frames": 10, "classes": CLASSES},
        "metrics": {"agreement": 0.9},
    }
    return StudentMeta(**{**base, **changes})


# logits = W @ mean_over_pixels(x) + b; channel c of the RGB input votes for class c (blue, green, red reversed)
WEIGHTS = np.array([[0.0, 0.0, 4.0], [0.0, 4.0, 0.0], [4.0, 0.0, 0.0]], np.float32)  # (K, 3): RGB -> classes
BIAS = np.array([0.1, 0.0, -0.1], np.float32)


def expected_logits(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=(2, 3)) @ WEIGHTS.T + BIAS


def handmade_model(with_meta: StudentMeta | None = None) -> onnx.ModelProto:
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "handmade",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(CLASSES)])],
        [onnx.numpy_helper.from_array(WEIGHTS, "W"), onnx.numpy_helper.from_array(BIAS, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    if with_meta is not None:
        write_metadata(model, with_meta)
    return model


@pytest.fixture
def student_path(tmp_path: Path) -> Path:
    path = tmp_path / "student.onnx"
    onnx.save(handmade_model(meta()), str(path))
    return path


def frames(n: int, seed: int = 0) -> list[np.ndarray]:
    """BGR frames of assorted sizes, each dominated by one colour."""
    rng = np.random.default_rng(seed)
    sizes = [(720, 1280), (48, 64), (16, 16), (101, 37), (240, 320)]
    out = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        img[..., i % 3] = 230
        out.append(img)
    return out


# --- preprocessing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [16, 33, 64])
def test_preprocessor_matches_the_documented_recipe(size: int) -> None:
    batch = frames(7)
    got = Preprocessor(size, MEAN, STD)(batch)
    assert got.shape == (7, 3, size, size) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, reference_input(batch, size), atol=1e-5)


def test_large_frames_are_shrunk_like_the_training_frames_were() -> None:
    """A 720p frame reaches the student through the label set's path: area-shrink to the stored short side
    (`distill.video.resize_short_side`), then the squash resize; not by bilinear sampling alone."""
    from distill.video import resize_short_side

    rng = np.random.default_rng(3)
    texture = cv2.resize(
        rng.integers(0, 255, (360, 640, 3), dtype=np.uint8), (1280, 720), interpolation=cv2.INTER_NEAREST
    )
    training_path = reference_input([resize_short_side(texture, 96)], SIZE)
    got = Preprocessor(SIZE, MEAN, STD, source_short_side=96)([texture])
    np.testing.assert_allclose(got, training_path, atol=1e-5)
    naive = Preprocessor(SIZE, MEAN, STD)([texture])  # what serving did before: bilinear straight to SIZE
    assert np.abs(naive - training_path).mean() > 10 * np.abs(got - training_path).mean() + 0.05
    small = [
        f for f in frames(5) if min(f.shape[:2]) <= 96
    ]  # frames already at or below the stored size are not touched
    np.testing.assert_allclose(
        Preprocessor(SIZE, MEAN, STD, source_short_side=96)(small), reference_input(small, SIZE), atol=1e-5
    )


def test_preprocessor_bgr_order_and_buffer_reuse() -> None:
    batch = frames(3)
    rgb = Preprocessor(SIZE, MEAN, STD, channel_order="RGB")(batch).copy()
    prep = Preprocessor(SIZE, MEAN, STD, channel_order="BGR")  # mean/std stay in RGB order
    bgr = prep(batch)
    np.testing.assert_allclose(bgr, rgb[:, ::-1], atol=1e-5)  # same values, channels reversed
    again = prep(batch[:1])
    assert np.shares_memory(again, bgr)  # buffers are reused, not reallocated per call
    assert prep([]).shape == (0, 3, SIZE, SIZE)


def test_preprocessor_converts_grey_and_bgra() -> None:
    bgr = frames(1)[0]
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    prep = Preprocessor(SIZE, MEAN, STD)
    np.testing.assert_allclose(prep([bgra]), prep([bgr]).copy(), atol=1e-6)
    np.testing.assert_allclose(prep([grey]), reference_input([cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)], SIZE), atol=1e-5)


@pytest.mark.parametrize(
    "frame, message",
    [
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        ([[0, 0, 0]], "uint8"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
        (np.zeros((8, 8, 2), np.uint8), "expected HxWx3"),
        (np.zeros((2, 8, 8, 3), np.uint8), "expected HxWx3"),
    ],
)
def test_preprocessor_rejects_bad_frames(frame, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Preprocessor(SIZE, MEAN, STD)([frame])


# --- metadata ----------------------------------------------------------------------------------------------------


def test_metadata_round_trips_through_the_file(student_path: Path) -> None:
    model = onnx.load(str(student_path))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["distill.format"] == FORMAT
    assert json.loads(props["distill.classes"]) == CLASSES  # plain JSON, readable by any ONNX tool
    got = read_metadata(student_path)
    assert got == meta() and got.precision == "fp32" and got.classes == tuple(CLASSES)


def test_write_metadata_keeps_foreign_props_and_replaces_old_distill_ones() -> None:
    model = handmade_model(meta())
    model.metadata_props.add(key="author", value="someone")
    write_metadata(model, meta(classes=["x", "y", "z"], precision="int8"))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["author"] == "someone"
    assert json.loads(props["distill.classes"]) == ["x", "y", "z"]
    assert json.loads(props["distill.precision"]) == "int8"
    assert sum(p.key == "distill.classes" for p in model.metadata_props) == 1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"classes": ["only"]}, "at least two"),
        ({"classes": ["a", "a"]}, "repeat"),
        ({"image_size": "big"}, "image_size"),
        ({"mean": [0.5, 0.5]}, "mean must be 3 numbers"),
        ({"std": [0.2, 0.0, 0.2]}, "std must be > 0"),
        ({"resize": "center-crop"}, "resize 'center-crop' is not supported"),
        ({"channel_order": "RGBA"}, "channel_order"),
        ({"class_texts": ["one", "two"]}, "2 class texts for 3 classes"),
        ({"split": {"mode": "by-time", "val_videos": ["a.mp4"]}}, "unknown split mode"),
    ],
)
def test_bad_metadata_values_are_one_line_errors(change: dict, message: str) -> None:
    props = {**meta().to_props(), **{f"distill.{k}": json.dumps(v) for k, v in change.items()}}
    with pytest.raises(ExportError, match=message) as err:
        StudentMeta.from_props(props, "m.onnx")
    assert "\n" not in str(err.value) and str(err.value).startswith("m.onnx: ") and "retrain" in str(err.value)


def test_newer_format_and_unreadable_values_are_reported() -> None:
    props = meta().to_props()
    with pytest.raises(ExportError, match="upgrade distill"):
        StudentMeta.from_props({**props, "distill.format": "distill-student/9"}, "m.onnx")
    with pytest.raises(ExportError, match="unreadable distill.classes"):
        StudentMeta.from_props({**props, "distill.classes": "[not json"}, "m.onnx")
    with pytest.raises(ExportError, match="lacks model"):
        StudentMeta.from_props({k: v for k, v in props.items() if k != "distill.model"}, "m.onnx")


# --- Student -----------------------------------------------------------------------------------------------------


def test_student_reads_metadata_and_predicts_like_numpy(student_path: Path) -> None:
    student = Student(student_path, providers=["CPUExecutionProvider"], threads=1)
    assert student.classes == tuple(CLASSES) and student.image_size == SIZE
    assert student.meta.teacher["backend"] == "annotations" and student.meta.metrics == {"agreement": 0.9}
    batch = frames(11)
    pred = student.predict(batch)
    want = softmax(expected_logits(reference_input(batch, SIZE)))
    np.testing.assert_allclose(pred.probs, want, atol=1e-5)
    assert pred.labels == [CLASSES[i] for i in want.argmax(1)]
    assert pred.labels[:3] == ["blue", "green", "red"]  # frame i is dominated by BGR channel i
    np.testing.assert_allclose(pred.probs.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(pred.confidence, pred.probs.max(1))


@pytest.mark.parametrize("batch_size", [1, 4, None])
def test_student_batch_size_does_not_change_answers(student_path: Path, batch_size: int | None) -> None:
    student = Student(student_path, providers=["CPUExecutionProvider"])
    batch = frames(9, seed=3)
    whole = student.predict(batch, batch_size=None)
    split = student.predict(batch, batch_size=batch_size)
    assert split.labels == whole.labels
    np.testing.assert_allclose(split.probs, whole.probs, atol=1e-6)
    empty = student.predict([])
    assert empty.labels == [] and empty.probs.shape == (0, len(CLASSES))


def test_student_rejects_a_bare_frame(student_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\[frame\]"):
        Student(student_path, providers=["CPUExecutionProvider"]).predict(frames(1)[0])


def _write(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        onnx.save(content, str(path))
    return path


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"", "not a readable ONNX"),
        (b"\x08\x07garbage-that-is-not-protobuf" * 20, "not a readable ONNX"),
        ("truncated", "not a readable ONNX"),
        ("plain", "not a distill student"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path: Path, student_path: Path, content, message: str) -> None:
    path = tmp_path / "bad.onnx"
    if content == "truncated":
        _write(path, student_path.read_bytes()[:200])
    elif content == "plain":
        _write(path, handmade_model(None))
    elif content is not None:
        _write(path, content)
    for load in (lambda p: Student(p, providers=["CPUExecutionProvider"]), read_metadata):
        with pytest.raises(ExportError, match=message) as err:
            load(path)
        assert "\n" not in str(err.value)


def test_unknown_provider_and_bad_threads_are_one_line_errors(student_path: Path) -> None:
    with pytest.raises(ExportError, match="threads must be >= 1"):
        Student(student_path, threads=0)
    with pytest.raises(ExportError, match="unknown ONNX Runtime provider .NoSuchExecutionProvider."):
        Student(student_path, providers=["NoSuchExecutionProvider"])


def test_default_providers_end_with_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import distill.export.runtime as runtime

    assert default_providers()[-1] == "CPUExecutionProvider"
    monkeypatch.setattr(runtime, "_cuda_driver_present", lambda: False)
    assert default_providers() == ["CPUExecutionProvider"]
    monkeypatch.setattr(runtime, "_cuda_driver_present", lambda: True)
    monkeypatch.setattr(runtime, "_tensorrt_present", lambda: True)
    monkeypatch.setattr(
        runtime.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(runtime.ort, "preload_dlls", lambda **_: None, raising=False)
    assert default_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_importing_student_leaves_torch_out(student_path: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from distill.export import Student\n"
        f"s = Student({str(student_path)!r})\n"
        "print(s.predict([np.zeros((720, 1280, 3), np.uint8)]).labels[0])\n"
        "heavy = [m for m in ('torch', 'timm', 'lightning', 'transformers') if m in sys.modules]\n"
        "print('heavy:', ','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    label, heavy = result.stdout.strip().splitlines()[-2:]
    assert label in CLASSES
    assert heavy == "heavy:", f"importing Student pulled in {heavy}"
