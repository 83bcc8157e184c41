"""`StudentMeta` across versions and stages: old student files, exact round trips, and one held-out split.

The students are hand-built ONNX graphs (mean colour -> linear layer) and randomly initialised tiny timm
checkpoints, so nothing here trains; label sets are the generated ones of `_labelsets`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from _labelsets import CLASSES, write_label_set
from onnx import TensorProto, helper

from distill.dataset import read_table
from distill.errors import DatasetError
from distill.evaluate import compare
from distill.export import Student, read_metadata, write_metadata
from distill.export._frames import check_frames
from distill.train.data import VAL, load_rows, make_splits
from distill.train.meta import HeldOutSplit, StudentMeta

SIZE = 16
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# distill-student/1 keys, in the order and encoding the old `meta_to_props` wrote them (plain format string,
# every other value `json.dumps(value, sort_keys=True)`)
OLD_KEYS = (
    "classes", "model", "image_size", "mean", "std", "channel_order", "resize", "interpolation", "teacher",
    "label_set", "metrics", "precision", "checks", "source_short_side",
)  # fmt: skip


def graph(k: int = len(CLASSES)) -> onnx.ModelProto:
    """(B, 3, S, S) -> (B, K) logits: the mean of each RGB channel through a fixed linear layer."""
    weights = np.random.default_rng(0).normal(0, 3, (k, 3)).astype(np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "b"], ["logits"], transB=1),
    ]
    body = helper.make_graph(
        nodes,
        "mean-colour",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", k])],
        [onnx.numpy_helper.from_array(weights, "W"), onnx.numpy_helper.from_array(np.zeros(k, np.float32), "b")],
    )
    model = helper.make_model(body, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def save_onnx(path: Path, meta: StudentMeta) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(write_metadata(graph(len(meta.classes)), meta), str(path))
    return path


def student_meta(**changes) -> StudentMeta:
    base = {"classes": CLASSES, "model": "mean-colour", "image_size": SIZE, "mean": MEAN, "std": STD}
    return StudentMeta(**{**base, **changes})


def frames(n: int) -> list[np.ndarray]:
    """BGR frames of assorted sizes, each dominated by one colour (so the graph's answers differ)."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        img = rng.integers(0, 80, (48 + 7 * i, 64, 3), dtype=np.uint8)
        img[..., i % 3] = 230
        out.append(img)
    return out


# --- versions --------------------------------------------------------------------------------------------------


def test_a_distill_student_1_file_loads_and_predicts_like_the_same_graph_with_new_metadata(tmp_path: Path) -> None:
    values = {
        "classes": CLASSES, "model": "mean-colour", "image_size": SIZE, "mean": list(MEAN), "std": list(STD),
        "channel_order": "RGB", "resize": "squash", "interpolation": "bilinear",
        "teacher": {"backend": "paligemma", "model": "google/paligemma2-3b-mix-224", "mode": "constrained"},
        "label_set": {"path": "runs/labels", "frames": 40, "classes": CLASSES}, "metrics": {"agreement": 0.9},
        "precision": "fp32", "checks": {"parity": {"frames": 8}}, "source_short_side": 24,
    }  # fmt: skip
    old = graph()
    props = {"distill.format": "distill-student/1"} | {
        f"distill.{k}": json.dumps(values[k], sort_keys=True) for k in OLD_KEYS
    }
    for key, value in sorted(props.items()):
        old.metadata_props.add(key=key, value=value)
    onnx.save(old, str(tmp_path / "old.onnx"))
    new_meta = StudentMeta(**values)
    save_onnx(tmp_path / "new.onnx", new_meta)

    assert read_metadata(tmp_path / "old.onnx") == new_meta  # split None, class texts = the names
    assert new_meta.split is None and new_meta.class_texts == tuple(CLASSES) and new_meta.question is None
    batch = frames(6)
    was, now = Student(tmp_path / "old.onnx").predict(batch), Student(tmp_path / "new.onnx").predict(batch)
    assert was.labels == now.labels and len(set(now.labels)) >= 2
    np.testing.assert_array_equal(was.probs, now.probs)
    assert Student(tmp_path / "old.onnx").preprocessor.source_short_side == 24


def test_new_metadata_round_trips_exactly_through_onnx_and_the_checkpoint(tmp_path: Path) -> None:
    from distill.train import build_meta, create_student, load_student, read_meta, save_student

    split = HeldOutSplit("time-blocks", ("cam0.mp4",), (0.0, 12.5, 25.0, 37.5, 50.0), (1, 3), 0.34, 7)
    fields = {
        "class_texts": ("idle machine", "running", "error light", "service"),
        "question": "what is the machine doing? {choices}",
        "prompt": "answer en what is the machine doing? idle machine, running, error light or service",
        "source_short_side": 320, "split": split, "teacher": {"backend": "paligemma", "mode": "constrained"},
        "label_set": {"path": "/data/labels", "frames": 48, "extra": []},
        "metrics": {"agreement": 0.93, "per_class": {"idle": {"f1": 0.9}}},
    }  # fmt: skip
    meta = build_meta(CLASSES, "test_convnext", 32, **fields)
    assert meta.to_props()["distill.format"] == "distill-student/2"
    onnx_meta = meta.replace(precision="int8", checks={"agreement_fp32": 0.99})
    path = save_onnx(tmp_path / "student.onnx", onnx_meta)
    assert read_metadata(path) == onnx_meta and Student(path).meta == onnx_meta
    assert read_metadata(path).split.held_out(["cam0.mp4", "cam0.mp4"], [20.0, 30.0]).tolist() == [True, False]

    ckpt = save_student(create_student(meta), meta, tmp_path / "student.ckpt")
    assert read_meta(ckpt) == meta and load_student(ckpt)[1] == meta


def test_a_distill_student_1_checkpoint_loads(tmp_path: Path) -> None:
    import torch

    from distill.train import build_meta, create_student, load_student

    model = create_student(build_meta(["a", "b"], "test_convnext", 32))
    old = {
        "format": "distill-student/1", "classes": ["a", "b"], "model": "test_convnext", "image_size": 32,
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "channel_order": "RGB", "resize": "squash",
        "interpolation": "bilinear", "teacher": {}, "label_set": {}, "metrics": {},
        "split": {"mode": "by-video", "val_fraction": 0.2, "seed": 0}, "source_short_side": 96,
    }  # fmt: skip
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "distill": old}, tmp_path / "old.ckpt")
    loaded, meta = load_student(tmp_path / "old.ckpt")
    assert meta.split is None and meta.source_short_side == 96 and meta.class_texts == ("a", "b")
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x))


# --- one held-out split ----------------------------------------------------------------------------------------


@pytest.fixture(params=["by-video", "time-blocks"])
def trained_split(request, tmp_path: Path) -> tuple[Path, StudentMeta, np.ndarray, dict]:
    """(label set, student meta with the split `make_splits` made, the row numbers training held out, the
    splits report training writes)."""
    one_video = request.param == "time-blocks"
    labels = write_label_set(
        tmp_path / "labels", videos=1 if one_video else 4, frames_per_class=12 if one_video else 4, size=(24, 32)
    )
    rows = load_rows(labels)
    split, info = make_splits(rows, 0.34, seed=1)
    assert info["mode"] == request.param
    meta = student_meta(split=info["held_out"], label_set={"path": str(labels)})
    return labels, meta, rows.row[(rows.set_index == 0) & (split == VAL)], info


@pytest.fixture
def quick_compare(monkeypatch: pytest.MonkeyPatch) -> list:
    """run_compare without timing or report files; collects the frames it evaluated."""
    seen: list = []
    load = compare._load_frames

    def spy(*args, **kwargs):
        seen.append(load(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(compare, "_load_frames", spy)
    monkeypatch.setattr(compare, "time_student", lambda student, images: {})
    monkeypatch.setattr(compare, "write_report", lambda out_dir, metrics: {})
    return seen


def test_export_and_compare_evaluate_the_rows_training_held_out(trained_split, quick_compare, tmp_path: Path) -> None:
    labels, meta, held, _ = trained_split
    assert 0 < len(held) < len(read_table(labels, columns=["video"]))
    picked = check_frames(meta, calibration=None, need_calibration=True, check_limit=10_000, calibration_limit=10_000)
    assert picked.check.rows == held.tolist() and picked.check.source.startswith("val split of ")
    assert not set(picked.calibration.rows) & set(held.tolist())  # calibration never sees the held-out frames

    student = save_onnx(tmp_path / "run" / "student.onnx", meta)
    metrics = compare.run_compare(labels, tmp_path / "report", student_path=student).metrics
    table = read_table(labels, columns=["video", "frame_index"]).to_pylist()
    (evaluated,) = quick_compare
    assert list(zip(evaluated.videos, evaluated.frame_index)) == [tuple(table[i].values()) for i in held]
    assert metrics["frames"] == len(held) and metrics["split_source"].endswith("student.onnx")


def test_compare_gives_the_same_answer_after_the_student_moves(trained_split, quick_compare, tmp_path: Path) -> None:
    labels, meta, held, info = trained_split
    run = tmp_path / "run"  # the training folder, with the files `distill train` writes beside the student
    student = save_onnx(run / "student.onnx", meta)
    (run / "splits.json").write_text(json.dumps(info, default=HeldOutSplit.to_dict))
    (run / "config.yaml").write_text("train:\n  val_fraction: 0.34\n  seed: 1\n")
    before = compare.run_compare(labels, tmp_path / "a", student_path=student).metrics
    moved = tmp_path / "elsewhere" / "student.onnx"
    moved.parent.mkdir()
    shutil.move(student, moved)
    shutil.rmtree(run)
    after = compare.run_compare(labels, tmp_path / "b", student_path=moved).metrics
    assert before.pop("student_path") != after.pop("student_path")
    assert json.dumps(before, sort_keys=True) == json.dumps(after, sort_keys=True)  # (NaN-safe equality)
    assert before["frames"] == len(held)


def test_older_students_use_splits_json_beside_them_or_ask_for_all(tmp_path: Path, quick_compare) -> None:
    labels = write_label_set(tmp_path / "labels", videos=3, frames_per_class=2, size=(24, 32))
    legacy = student_meta(label_set={"path": str(labels)})  # no split: what a distill-student/1 file gives
    student = save_onnx(tmp_path / "run" / "student.onnx", legacy)
    with pytest.raises(DatasetError, match="records no held-out split.*--all") as err:
        compare.run_compare(labels, tmp_path / "r", student_path=student)
    assert "\n" not in str(err.value)
    (student.parent / "splits.json").write_text(json.dumps({"mode": "by-video", "videos": {"val": ["cam1.mp4"]}}))
    metrics = compare.run_compare(labels, tmp_path / "r", student_path=student).metrics
    assert metrics["videos"] == ["cam1.mp4"] and metrics["split_source"] == str(student.parent / "splits.json")
    checked = check_frames(legacy, calibration=None, need_calibration=False, check_limit=1000, calibration_limit=0)
    assert len(checked.check) == len(read_table(labels, columns=["video"]))  # export checks on every frame
    assert "records no held-out split" in checked.check.source


def test_a_label_set_training_held_nothing_of_is_a_one_line_error(trained_split, tmp_path: Path) -> None:
    meta = trained_split[1]
    other = write_label_set(tmp_path / "other", videos=2, frames_per_class=2, size=(24, 32), prefix="other")
    student = save_onnx(tmp_path / "run" / "student.onnx", meta)
    with pytest.raises(DatasetError, match="nothing was held out of .*--all") as err:
        compare.run_compare(other, tmp_path / "r", student_path=student)
    assert "\n" not in str(err.value)


def test_training_records_what_the_teacher_was_asked(tmp_path: Path) -> None:
    from distill.train.run import _meta

    labels = write_label_set(tmp_path / "labels", videos=2, frames_per_class=2, size=(24, 32))
    manifest = json.loads((labels / "manifest.json").read_text())
    manifest["teacher"]["prompt"] = "answer en what is the state? lamp off, green lamp, red lamp or blue lamp"
    manifest["config"] = {
        "classes": [{"name": "idle", "text": "lamp off"}, {"name": "running", "text": "green lamp"}, "error",
                    {"maintenance": "blue lamp"}],
        "question": "what is the state? {choices}", "sampling": {"image_size": 240},
    }  # fmt: skip
    (labels / "manifest.json").write_text(json.dumps(manifest))
    rows = load_rows(labels)
    _, info = make_splits(rows, 0.5, seed=0)
    meta = _meta(rows, "test_convnext", 32, labels, [], info["held_out"])
    assert meta.class_texts == ("lamp off", "green lamp", "error", "blue lamp")
    assert meta.question == "what is the state? {choices}" and meta.prompt == manifest["teacher"]["prompt"]
    assert meta.source_short_side == 240 and meta.split == info["held_out"] and meta.split.mode == "by-video"
