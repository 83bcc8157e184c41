"""The accuracy half of `bench/student.py`: each student trained from scratch on the demo, then INT8-exported.

The demo's quick scenario (rendered machine-state videos, labelled by the annotations teacher, as `distill demo
--quick` does) is made once; each timm model is trained on it from scratch (pretrained=False, the demo's
recipe at a small image size) and exported with `int8=True, force=True`, exactly as `distill export --int8
--force` would. Per model it records the fp32 student's accuracy on the held-out videos (against the teacher's
labels, which the demo's stand-in teacher gets right except around state changes), INT8's agreement with fp32
on those frames, the calibration method and the nodes INT8 had to keep float.

This module does not measure serving speed at 224 px (`bench/student.py` does, on random weights).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any


def demo_labels(root: Path) -> tuple[Path, Any]:
    """Render the demo's quick scenario and label it with the annotations teacher; (label set, plan)."""
    from distill.demo.pipeline import QUICK, demo_config, teacher_segments
    from distill.demo.scenes import render_scenario, write_segments_csv
    from distill.label import run_label

    scenario = render_scenario(root / "videos", QUICK.scene)
    csv = write_segments_csv(root / "teacher.csv", teacher_segments(scenario.segments, QUICK.teacher_lag_s, 0))
    cfg = demo_config(QUICK, csv)
    run_label([scenario.video_dir], root / "labels", cfg, overwrite=True)
    return root / "labels", QUICK


def train_and_export(name: str, labels: Path, plan: Any, root: Path, image_size: int, epochs: int) -> dict[str, Any]:
    """Train `name` on `labels` from scratch and export it with INT8; the figures of both."""
    from distill.demo.pipeline import demo_config
    from distill.export import export_onnx
    from distill.train import run_train

    cfg = demo_config(dataclasses.replace(plan, model=name, image_size=image_size, epochs=epochs))
    start = time.perf_counter()
    summary = run_train(labels, root / name, cfg, accelerator="cpu", num_workers=0)
    trained = time.perf_counter() - start
    report = export_onnx(summary.checkpoint, root / name / "student.onnx", int8=True, force=True)
    (int8,) = report.variants
    speed = int8.speed.fps if int8.speed else {}
    return {
        "model": name,
        "image_size": image_size,
        "epochs": epochs,
        "train_s": round(trained, 1),
        "held_out_frames": report.frames,
        "accuracy": report.agreement_teacher,
        "int8_agreement": int8.agreement_fp32,
        "int8_holds": int8.agreement_fp32 >= 0.98,
        "int8_method": int8.method,
        "float_nodes": len(int8.float_nodes),
        "candidates": len(int8.search),
        f"fps_at_{image_size}px": speed,
    }
