"""Export of a really trained student: parity, metadata, Student vs PyTorch, INT8/FP16 agreement, gates, bad input.

One tiny student (resnet10t, 48 px, 2 epochs on a generated label set) is trained once per module through
`distill.train.run_train` and exported to `student.onnx` the way `distill train` does. Tests that only exercise
the gates reuse that graph instead of re-running the exporter.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from _labelsets import CLASSES, tiny_student_config, write_label_set
from typer.testing import CliRunner

from distill.cli import app
from distill.dataset import read_table
from distill.errors import DistillError, ExportError
from distill.export import Student, export_onnx, onnx_export, read_metadata
from distill.train import StudentMeta, load_student, read_meta


@dataclass
class Trained:
    root: Path
    labels: Path
    run: Path
    ckpt: Path
    onnx: Path
    test_frames: list[np.ndarray]  # held-out generated frames (another seed, other "videos"), BGR


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from distill.train import run_train

    root = tmp_path_factory.mktemp("export")
    labels = write_label_set(root / "labels", videos=4, frames_per_class=12, size=(48, 64))
    cfg = tiny_student_config(CLASSES)
    summary = run_train(labels, root / "run", cfg, accelerator="cpu", num_workers=0)
    export_onnx(summary.checkpoint, root / "run" / "student.onnx")
    test_set = write_label_set(root / "test", videos=2, frames_per_class=12, size=(48, 64), seed=7, prefix="test")
    jpegs = read_table(test_set, columns=["image"]).column("image").to_pylist()
    frames = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in jpegs]
    frames += [cv2.resize(f, (1280, 720), interpolation=cv2.INTER_NEAREST) for f in frames[::6]]  # 720p frames too
    return Trained(root, labels, root / "run", summary.checkpoint, root / "run" / "student.onnx", frames)


@pytest.fixture
def reuse_graph(trained: Trained, monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip torch.onnx.export in gate tests: hand back the graph training already exported (metadata stripped)."""

    def graph(model, image_size, opset=onnx_export.OPSET):
        proto = onnx.load(str(trained.onnx))
        del proto.metadata_props[:]
        return proto

    monkeypatch.setattr(onnx_export, "export_graph", graph)


def torch_reference(model: torch.nn.Module, meta: StudentMeta, frames: list[np.ndarray]) -> np.ndarray:
    """(N, K) logits the way training sees frames: squash (bilinear), BGR->RGB, /255, normalise in torch."""
    size = meta.image_size
    rgb = [cv2.cvtColor(cv2.resize(f, (size, size), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB) for f in frames]
    x = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(meta.mean).view(1, 3, 1, 1)) / torch.tensor(meta.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x).numpy()


# --- the export training wrote -----------------------------------------------------------------------------------


def test_training_exports_a_parity_checked_onnx(trained: Trained) -> None:
    assert trained.onnx == trained.run / "student.onnx" and trained.onnx.is_file()
    model = onnx.load(str(trained.onnx))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch axis
    checks = read_metadata(trained.onnx).checks
    parity = checks["parity"]
    assert parity["top1_match"] == 1.0
    assert parity["max_abs_diff"] < parity["limit"] <= 1e-3
    assert parity["source"].startswith("val split of ") and str(trained.labels) in parity["source"]
    val_frames = read_meta(trained.ckpt).metrics["frames"]
    assert parity["frames"] == val_frames  # exactly the frames the student's recorded split held out


def test_metadata_round_trips(trained: Trained) -> None:
    ckpt_meta = read_meta(trained.ckpt)
    onnx_meta = read_metadata(trained.onnx)
    assert onnx_meta.replace(checks={}) == ckpt_meta  # the export adds its checks, and changes nothing else
    assert onnx_meta.classes == tuple(CLASSES) and onnx_meta.precision == "fp32" and onnx_meta.checks["parity"]
    assert onnx_meta.metrics["agreement"] > 0 and onnx_meta.split is not None  # training figures and split travel
    student = Student(trained.onnx)
    assert student.meta == onnx_meta and student.image_size == 48


def test_student_gives_the_pytorch_labels(trained: Trained) -> None:
    model, meta = load_student(trained.ckpt)
    want = torch_reference(model, meta, trained.test_frames)  # (N, K)
    pred = Student(trained.onnx, threads=2).predict(trained.test_frames, batch_size=16)
    labels = [meta.classes[i] for i in want.argmax(1)]
    assert len(set(labels)) >= 2, "the tiny student should not be constant; the comparison would be vacuous"
    assert pred.labels == labels
    probs = torch.softmax(torch.from_numpy(want), 1).numpy()
    np.testing.assert_allclose(pred.probs, probs, atol=1e-4)


# --- INT8 / FP16 -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def variants(trained: Trained):
    return export_onnx(trained.ckpt, trained.root / "q" / "student.onnx", int8=True, fp16=True)


def test_int8_agrees_with_fp32_on_a_test_set(trained: Trained, variants) -> None:
    int8 = next(v for v in variants.variants if v.precision == "int8")
    assert int8.path == trained.root / "q" / "student.int8.onnx"
    graph = onnx.load(str(int8.path))
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # static QDQ
    assert int8.path.stat().st_size < 0.5 * variants.path.stat().st_size
    fp32 = Student(variants.path).predict(trained.test_frames)
    q = Student(int8.path).predict(trained.test_frames)
    assert len(set(fp32.labels)) >= 2
    agree = np.mean([a == b for a, b in zip(fp32.labels, q.labels, strict=True)])
    assert agree >= 0.98, f"INT8 agrees with fp32 on {agree:.1%} of {len(q.labels)} test frames"
    meta = read_metadata(int8.path)
    assert meta.precision == "int8" and meta.classes == tuple(CLASSES)
    assert meta.checks["agreement_fp32"] == int8.agreement_fp32 >= 0.98
    assert "train-split frames of" in meta.checks["calibration"]


def test_fp16_is_checked_and_keeps_float32_io(trained: Trained, variants) -> None:
    fp16 = next(v for v in variants.variants if v.precision == "fp16")
    graph = onnx.load(str(fp16.path))
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.graph.initializer)
    meta = read_metadata(fp16.path)
    assert meta.precision == "fp16" and meta.checks["agreement_fp32"] == fp16.agreement_fp32 >= 0.98
    pred = Student(fp16.path).predict(trained.test_frames)
    assert pred.probs.dtype == np.float32 and len(pred.labels) == len(trained.test_frames)
    lines = variants.lines()
    assert lines[0].startswith("fp32:") and lines[1].startswith("int8:")
    assert lines[2].startswith("speed on ")  # INT8's frames/s against fp32 follow its line
    assert lines[-1].startswith("fp16:") and "teacher" in lines[-1]


# --- gates -------------------------------------------------------------------------------------------------------


def test_parity_failure_writes_nothing(trained: Trained, reuse_graph, monkeypatch: pytest.MonkeyPatch) -> None:
    real = onnx_export._logits_torch
    monkeypatch.setattr(onnx_export, "_logits_torch", lambda model, x: real(model, x) + 1e-2)
    out = trained.root / "bad" / "student.onnx"
    with pytest.raises(ExportError, match="does not match PyTorch") as err:
        export_onnx(trained.ckpt, out)
    assert "\n" not in str(err.value)
    assert not out.exists()
    assert not (out.parent.exists() and any(out.parent.iterdir()))  # no temp file left behind either


def test_variant_below_98_percent_fails_unless_forced(
    trained: Trained, reuse_graph, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_export, "MIN_AGREEMENT", 1.01)  # no variant can pass
    out = trained.root / "gate" / "student.onnx"
    with pytest.raises(ExportError, match=r"fp16 agrees with fp32 on only .*--force"):
        export_onnx(trained.ckpt, out, fp16=True)
    assert out.exists() and not (out.parent / "student.fp16.onnx").exists()
    report = export_onnx(trained.ckpt, out, fp16=True, force=True)
    (fp16,) = report.variants
    assert fp16.forced and fp16.path.exists() and read_metadata(fp16.path).checks["forced"] is True
    assert "kept by --force" in fp16.line()


def test_moved_label_set_needs_calibration_frames(trained: Trained, reuse_graph) -> None:
    ckpt = torch.load(trained.ckpt, map_location="cpu", weights_only=True)
    ckpt["distill"]["label_set"]["path"] = str(trained.root / "moved-away")
    moved = trained.root / "moved" / "student.ckpt"
    moved.parent.mkdir()
    torch.save(ckpt, moved)
    with pytest.raises(ExportError, match="--calibration LABELS"):
        export_onnx(moved, moved.parent / "student.onnx")
    report = export_onnx(moved, moved.parent / "student.onnx", calibration=trained.labels)
    assert str(trained.labels) in report.frames_source and report.top1_match == 1.0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.ckpt", "does not exist"),
        (lambda d: _bytes(d / "junk.ckpt", b"\x00not a checkpoint" * 50), "cannot read checkpoint"),
        (
            lambda d: _saved(d / "other.ckpt", {"state_dict": {"w": torch.zeros(2)}, "epoch": 3}),
            "not a distill student",
        ),
        (lambda d: _saved(d / "weights.pt", {"fc.weight": torch.zeros(2, 2)}), "not a distill student"),
        (lambda d: d, "no checkpoint"),
    ],
)
def test_foreign_checkpoints_are_one_line_errors(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(DistillError, match=message) as err:
        export_onnx(make(tmp_path), tmp_path / "out.onnx")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out.onnx").exists()


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _saved(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def test_missing_calibration_set_is_a_one_line_error(trained: Trained) -> None:
    with pytest.raises(ExportError, match="nowhere.*does not exist") as err:
        export_onnx(trained.ckpt, trained.root / "c" / "student.onnx", int8=True, calibration=trained.root / "nowhere")
    assert "\n" not in str(err.value)


def test_calibration_set_of_another_task_is_refused(trained: Trained) -> None:
    other = write_label_set(trained.root / "other", videos=2, frames_per_class=2, classes=["cat", "dog"])
    with pytest.raises(ExportError, match="same task"):
        export_onnx(trained.ckpt, trained.root / "o" / "student.onnx", int8=True, calibration=other)


# --- CLI ---------------------------------------------------------------------------------------------------------


def test_cli_export_from_a_run_folder(trained: Trained, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained.run, run, ignore=shutil.ignore_patterns("*.onnx", "logs"))
    result = CliRunner().invoke(app, ["export", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "student.onnx").is_file()
    assert "parity on" in result.output and "top-1 identical" in result.output
    assert Student(run / "student.onnx").classes == tuple(CLASSES)


def test_cli_export_errors_are_one_line(trained: Trained, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["export", str(trained.ckpt), "--out", str(tmp_path / "x.onnx"), "--int8", "--calibration", "nowhere"]
    )
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "nowhere" in lines[0]
