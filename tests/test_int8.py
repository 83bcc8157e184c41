"""Accuracy-aware INT8 on students trained from scratch on real handwriting (scikit-learn digits as videos).

Two digits label sets are written per session: a small one (8 videos of 60 frames, 2 held out: 120 frames) and
a larger one (8 videos of 200 scans, 2 held out: 400 frames). Three students are trained once per module through
`distill.train.run_train` (pretrained=False), then exported with `int8=True` as `distill export --int8` does:
a resnet10t whose plain INT8 holds; the same resnet10t function with one outlier channel, whose plain INT8
collapses (the search must find the sensitive nodes and keep them float); a MobileNetV3-small trained long enough
to be a student one would deploy (its INT8 must hold); and the same MobileNetV3-small trained briefly on the small
set, which no INT8 search can save (the export must refuse).
What is checked: INT8's agreement with fp32 on the held-out frames, the float nodes and agreement recorded in
the INT8 file (and that those nodes really are float), the fp32-vs-INT8 speed lines, and the one-line refusal
naming the best agreement reached when the target cannot be met.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from _digits import DIGITS, write_digit_label_set
from typer.testing import CliRunner

from distill.cli import app
from distill.config import load_config
from distill.errors import ExportError
from distill.export import export_onnx, read_metadata
from distill.export._int8 import METHODS

STUDENTS = {
    # key: (label set, timm name, image size, epochs, lr)
    "resnet10t": ("small", "resnet10t", 32, 6, 3e-3),  # plain INT8 holds (99.2% here)
    # trained through its whole schedule (no early stop) on 1,200 frames: 92-95% accurate over 4 seeds, INT8 99.0-99.5%
    "mobilenetv3_small_100": ("large", "mobilenetv3_small_100", 48, 30, 5e-3),
    # 12 epochs on 360 frames: ~40% accurate, 3-8% of its frames within 0.05 logits of a tie; INT8: 92-96% at best
    "mobilenetv3-brief": ("small", "mobilenetv3_small_100", 48, 12, 5e-3),
}
LABEL_SETS = {  # name: (scans per video, frames per scan); 8 videos each, 2 held out
    "small": (30, 2),
    "large": (200, 1),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """key -> checkpoint, for each student in STUDENTS, trained from scratch on its digits videos."""
    from distill.train import run_train

    sets = {}
    for name, (scans, hold) in LABEL_SETS.items():
        folder = tmp_path_factory.mktemp(f"digits-{name}") / "labels"
        sets[name] = write_digit_label_set(folder, videos=8, scans_per_video=scans, hold=hold)
    ckpts = {}
    for key, (labels, name, size, epochs, lr) in STUDENTS.items():
        cfg = load_config(
            overrides={
                "classes": DIGITS,
                "student.model": name,
                "student.image_size": size,
                "student.pretrained": False,
                "train.epochs": epochs,
                "train.patience": epochs,  # the whole schedule: an early stop mid-way keeps a half-trained student
                "train.batch_size": 32,
                "train.lr": lr,
                "train.mixup": 0,
                "train.val_fraction": 0.25,
            }
        )
        out = tmp_path_factory.mktemp(key)
        ckpts[key] = run_train(sets[labels], out, cfg, accelerator="cpu", num_workers=0).checkpoint
    return ckpts


def _weight_is_float(graph: onnx.GraphProto, node: onnx.NodeProto) -> bool:
    """A Conv/Gemm whose weight comes straight from a float initializer, not through DequantizeLinear."""
    initializers = {i.name: i for i in graph.initializer}
    weight = initializers.get(node.input[1])
    return weight is not None and weight.data_type == onnx.TensorProto.FLOAT


def test_resnet_int8_holds_and_is_recorded(trained: dict[str, Path], tmp_path: Path) -> None:
    report = export_onnx(trained["resnet10t"], tmp_path / "student.onnx", int8=True)
    (int8,) = report.variants
    assert int8.agreement_fp32 >= 0.98
    assert int8.frames == 120  # the two held-out videos
    checks = read_metadata(int8.path).checks
    assert checks["agreement_fp32"] == pytest.approx(int8.agreement_fp32)
    assert isinstance(checks["float_nodes"], list)
    assert checks["method"] in METHODS
    assert {"provider", "fps"} <= set(checks["speed"])
    lines = report.lines()
    assert any(line.startswith("speed on ") and "batch 16" in line for line in lines)


def _with_outlier_channel(ckpt: Path, out: Path, scale: float) -> Path:
    """The same resnet10t function with channel 0 of its last residual sum `scale` times larger: both branches'
    final BatchNorm scale that channel, ReLU commutes with it, and the classifier divides it back. The outlier
    MobileNetV3-small's head has naturally (one channel ~190x the median): per-tensor uint8 activations round
    every other channel of that tensor to nothing."""
    import torch

    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    weights = saved["state_dict"]
    for bn in ("model.layer4.0.bn2", "model.layer4.0.downsample.2"):
        weights[f"{bn}.weight"][0] *= scale
        weights[f"{bn}.bias"][0] *= scale
    weights["model.fc.weight"][:, 0] /= scale
    torch.save(saved, out)
    return out


def _logits(path: Path, frames: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: frames})[0]


def test_search_keeps_the_sensitive_nodes_float_and_names_them(trained: dict[str, Path], tmp_path: Path) -> None:
    """A student whose plain INT8 collapses because of one tensor: the search finds it, keeps it float, stops once
    the target holds, and the INT8 file's metadata names exactly the nodes that are float in it."""
    plain = export_onnx(trained["resnet10t"], tmp_path / "plain" / "student.onnx").path
    ckpt = _with_outlier_channel(trained["resnet10t"], tmp_path / "outlier.ckpt", 1000.0)
    report = export_onnx(ckpt, tmp_path / "student.onnx", int8=True, force=True)
    frames = np.random.default_rng(0).normal(size=(16, 3, 32, 32)).astype(np.float32)
    assert np.allclose(_logits(report.path, frames), _logits(plain, frames), atol=1e-3)  # the same function

    (int8,) = report.variants
    checks = read_metadata(int8.path).checks
    search = checks["search"]
    assert all(step["agreement"] < 0.5 for step in search if step["float_nodes"] == 0)  # plain INT8 collapses
    assert search[-1]["float_nodes"] > 0 and int8.agreement_fp32 >= 0.9  # nodes kept float bring it back
    assert all(step["agreement"] < 0.98 for step in search[:-1])  # the search goes on only while below the target
    float_nodes = checks["float_nodes"]
    assert float_nodes == list(int8.float_nodes) and f"{len(float_nodes)} nodes kept float" in int8.line()

    graph = onnx.load(str(int8.path)).graph
    nodes = {n.name: n for n in graph.node}
    assert set(float_nodes) <= set(nodes)
    (pool,) = [n for n in graph.node if n.op_type in ("ReduceMean", "GlobalAveragePool")]
    made_by = {out: n for n in graph.node for out in n.output}

    def producer(tensor: str) -> onnx.NodeProto:  # the node that computes `tensor`, looking through QDQ pairs
        node = made_by[tensor]
        return producer(node.input[0]) if node.op_type in ("QuantizeLinear", "DequantizeLinear") else node

    relu = producer(pool.input[0])
    outlier = producer(relu.input[0])  # the last residual sum, where channel 0 is 1000x the others
    assert outlier.op_type == "Add" and outlier.name in float_nodes
    quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    assert outlier.output[0] not in quantized  # no QDQ pair left on the outlier tensor
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert all(_weight_is_float(graph, n) == (n.name in float_nodes) for n in convs)
    assert sum(not _weight_is_float(graph, n) for n in convs) >= len(convs) / 2  # still an INT8 model


def test_mobilenet_int8_holds(trained: dict[str, Path], tmp_path: Path) -> None:
    """A MobileNetV3-small trained through its schedule: INT8 holds on the 400 held-out frames, and is recorded."""
    report = export_onnx(trained["mobilenetv3_small_100"], tmp_path / "student.onnx", int8=True)
    (int8,) = report.variants
    assert int8.frames == 400 and int8.agreement_fp32 >= 0.98
    checks = read_metadata(int8.path).checks
    assert checks["agreement_fp32"] == pytest.approx(int8.agreement_fp32)
    assert checks["float_nodes"] == list(int8.float_nodes)  # the nodes kept float, named (none needed is [])
    graph = onnx.load(str(int8.path)).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    quantized = [n for n in convs if not _weight_is_float(graph, n)]
    assert len(convs) > 40 and len(quantized) >= len(convs) / 2  # an INT8 model: its convolutions take int8 weights


def test_briefly_trained_mobilenet_is_refused_naming_the_best(
    trained: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="distill.export._int8")
    with pytest.raises(ExportError) as info:
        export_onnx(trained["mobilenetv3-brief"], tmp_path / "student.onnx", int8=True)
    message = str(info.value)
    assert "\n" not in message
    match = re.search(r"int8 agrees with fp32 on only ([\d.]+)% of 120 frames at best", message)
    assert match, message
    tried = [float(m) for m in re.findall(r"agreement ([\d.]+),", caplog.text)]
    assert len(tried) >= 4  # every calibration method, then nodes kept float
    assert float(match.group(1)) == pytest.approx(100 * max(tried), abs=0.05)
    assert max(int(n) for n in re.findall(r"(\d+) float nodes: agreement", caplog.text)) > 0  # the float search ran
    assert not (tmp_path / "student.int8.onnx").exists()


def test_cli_export_int8_prints_speed(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cli.onnx"
    result = CliRunner().invoke(app, ["export", str(trained["resnet10t"]), "--out", str(out), "--int8"])
    assert result.exit_code == 0, result.output
    assert "int8:" in result.output and "speed on CPUExecutionProvider" in result.output
    assert (tmp_path / "cli.int8.onnx").is_file()


def test_calibration_frames_cover_every_class_of_every_video() -> None:
    from distill.export._frames import _stratified

    videos = ["long.mp4"] * 90 + ["short.mp4"] * 10
    labels = ["idle"] * 80 + ["error"] * 10 + ["idle"] * 5 + ["error"] * 5
    picked = _stratified(range(100), videos, labels, 20)
    assert len(picked) == len(set(picked)) == 20
    groups = [(videos[i], labels[i]) for i in picked]
    assert {g: groups.count(g) for g in set(groups)} == {
        ("long.mp4", "idle"): 5,
        ("long.mp4", "error"): 5,
        ("short.mp4", "idle"): 5,
        ("short.mp4", "error"): 5,
    }
    assert _stratified(range(8), videos, labels, 20) == list(range(8))


def test_calibration_prints_nothing_of_its_own(trained: dict[str, Path], tmp_path: Path, capsys) -> None:
    """ONNX Runtime's Percentile calibrator prints its progress on stdout; `distill export --int8` shows none of it."""
    import onnxruntime as ort

    from distill.export._int8 import search_int8

    fp32 = export_onnx(trained["resnet10t"], tmp_path / "student.onnx").path
    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()
    frames = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)
    reference = session.run(None, {given.name: frames})[0]
    capsys.readouterr()
    result = search_int8(fp32, tmp_path / "q.onnx", [frames], frames, reference, given.name, target=0.0,
                         methods=("percentile",))  # fmt: skip
    assert result.method == "percentile" and result.path.is_file()
    assert capsys.readouterr().out == ""
