"""The GPU paths, on a real CUDA GPU: the bf16 teacher, CUDA out-of-memory recognition, Lightning training in
bf16 and the exported student on ONNX Runtime's CUDA / TensorRT providers.

Every test here is marked `gpu`: conftest skips them on machines without a CUDA GPU, and they run whenever
one is at hand (`pytest -m gpu`). Models are the tiny ones the CPU tests build; nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
from _labelsets import CLASSES, tiny_student_config, write_label_set
from _tiny_paligemma import tiny_config, tiny_paligemma_dir

from distill.errors import is_out_of_memory
from distill.video import Frame

pytestmark = pytest.mark.gpu


def _frames(n: int) -> list[Frame]:
    rng = np.random.default_rng(0)
    return [Frame("v.mp4", i, i / 25, rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)) for i in range(n)]


def test_teacher_runs_in_bf16_on_the_gpu_and_matches_fp32(tmp_path_factory: pytest.TempPathFactory) -> None:
    import torch

    from distill.label import build_teacher

    folder = tiny_paligemma_dir(tmp_path_factory.getbasetemp())
    gpu = build_teacher(tiny_config(folder, **{"teacher.device": "cuda"}))  # dtype auto: bf16 on a GPU
    cpu = build_teacher(tiny_config(folder))
    assert gpu.model.dtype == torch.bfloat16 and gpu.device.type == "cuda"
    frames = _frames(12)
    on_gpu, on_cpu = gpu.label(frames), cpu.label(frames)
    assert all(a.label in gpu.classes for a in on_gpu)
    probs_gpu = np.stack([a.probs for a in on_gpu])  # (N, K)
    probs_cpu = np.stack([a.probs for a in on_cpu])
    np.testing.assert_allclose(probs_gpu.sum(1), 1.0, atol=1e-3)
    np.testing.assert_allclose(probs_gpu, probs_cpu, atol=0.05)  # bf16 rounding only


def test_a_real_cuda_out_of_memory_is_recognised() -> None:
    import torch

    with pytest.raises(Exception) as info:
        torch.empty(1 << 46, dtype=torch.uint8, device="cuda")  # 64 TiB: more than any GPU holds
    assert is_out_of_memory(info.value)
    assert not is_out_of_memory(RuntimeError("CUDA error: device-side assert triggered"))


@pytest.fixture(scope="module")
def gpu_student(tmp_path_factory: pytest.TempPathFactory):
    from distill.export import export_onnx
    from distill.train import run_train

    root = tmp_path_factory.mktemp("gpu")
    labels = write_label_set(root / "labels", videos=4, frames_per_class=12, size=(48, 64))
    cfg = tiny_student_config(CLASSES)
    summary = run_train(labels, root / "run", cfg, accelerator="gpu", devices=1, num_workers=0)
    report = export_onnx(summary.checkpoint, root / "run" / "student.onnx")
    return summary, report, labels


def test_lightning_trains_on_the_gpu_in_bf16(gpu_student) -> None:
    import torch

    summary, report, _ = gpu_student
    assert summary.epochs == 2 and summary.metrics["frames"] > 0
    assert torch.cuda.is_bf16_supported()  # so the default precision was bf16-mixed
    assert report.top1_match == 1.0  # the export's parity gate passed on the GPU-trained weights


@pytest.mark.parametrize("provider", ["CUDAExecutionProvider", "TensorrtExecutionProvider"])
def test_student_on_gpu_providers_agrees_with_cpu(gpu_student, provider: str) -> None:
    import onnxruntime as ort

    from distill.dataset import decode_image, read_table
    from distill.export import Student

    if provider not in ort.get_available_providers():
        pytest.skip(f"this onnxruntime build has no {provider}")
    _, report, labels = gpu_student
    images = [decode_image(j) for j in read_table(labels, columns=["image"]).column("image").to_pylist()[:32]]
    cpu = Student(report.path, providers=["CPUExecutionProvider"])
    gpu = Student(report.path, providers=[provider, "CPUExecutionProvider"])
    if gpu.providers[0] != provider:
        pytest.skip(f"{provider} is built in but could not start here (missing libraries)")
    np.testing.assert_allclose(gpu.predict(images).probs, cpu.predict(images).probs, atol=2e-2)
