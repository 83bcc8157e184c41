"""`distill demo`: the whole path — videos, labels, student, report, serving — on rendered videos, on a CPU.

Steps, each the same library call the matching command makes:

1. render machine-state videos and their ground truth (`distill.demo.scenes`);
2. label them with the *annotations* teacher (`run_label`): a stand-in for PaliGemma that reads a segments CSV.
   Its CSV is the ground truth with every state change noticed up to a second late or early, like a real teacher
   that is unsure around transitions, so the report shows a teacher that is good but not perfect;
3. train a small timm student from scratch (`run_train`) and export it to `student.onnx` (`export_onnx`);
4. compare student, teacher and ground truth on the held-out videos (`run_compare`);
5. serve one held-out video headless for a few seconds, events to a JSON-lines file (`run_serve`).

Example:
    >>> report = run_demo("runs/demo", quick=True)  # doctest: +SKIP
    >>> report.compare.student_accuracy  # doctest: +SKIP
    0.97

This module does not print; `on_stage(name, detail)` is called as each step finishes (the CLI prints it).
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.config import TaskConfig, load_config, save_config
from distill.demo.scenes import STATES, Scenario, SceneSpec, Segment, render_scenario, write_segments_csv

logger = logging.getLogger(__name__)

StageCallback = Callable[[str, str], None]


@dataclass(frozen=True)
class DemoPlan:
    """How big the demo is: the scenario, the student and how long to train and serve."""

    scene: SceneSpec
    sample_fps: float
    model: str
    image_size: int
    epochs: int
    serve_seconds: float
    teacher_lag_s: float = 1.0  # the stand-in teacher notices state changes up to this late or early


QUICK = DemoPlan(
    SceneSpec(n_videos=8, seconds=24.0, fps=10.0, min_segment_s=3.0, max_segment_s=8.0, seed=0), sample_fps=2.0,
    model="resnet10t", image_size=96, epochs=5, serve_seconds=3.0,
)  # fmt: skip
FULL = DemoPlan(
    SceneSpec(n_videos=12, seconds=48.0, fps=10.0, min_segment_s=3.0, max_segment_s=10.0, seed=0), sample_fps=2.0,
    model="resnet10t", image_size=112, epochs=6, serve_seconds=8.0,
)  # fmt: skip


@dataclass
class DemoReport:
    """Where everything the demo made is, and the figures of each step."""

    out: Path
    config: Path
    scenario: Scenario
    teacher_csv: Path
    labels: Path
    student_dir: Path
    onnx: Path
    report_dir: Path
    events: Path
    served_video: Path
    label_command: str  # the same labelling with PaliGemma, for a real run
    label: Any = None  # distill.label.LabelSummary
    train: Any = None  # distill.train.TrainSummary
    compare: Any = None  # distill.evaluate.CompareReport
    serve: Any = None  # distill.realtime.ServeSummary
    seconds: dict[str, float] = field(default_factory=dict)


def demo_config(plan: DemoPlan, teacher_csv: Path | None = None) -> TaskConfig:
    """The task config of the demo: the four machine states, its sampling, a from-scratch student."""
    overrides: dict[str, Any] = {
        "classes": list(STATES),
        "question": "is the machine active, idle, in an error state, or offline?",
        "sampling.fps": plan.sample_fps,
        "sampling.dedup": False,  # keep every sampled frame, so the ground-truth comparison covers whole videos
        "teacher.backend": "annotations" if teacher_csv else "paligemma",
        "teacher.annotations": str(teacher_csv) if teacher_csv else None,
        "student.model": plan.model,
        "student.image_size": plan.image_size,
        "student.pretrained": False,  # nothing is downloaded
        "train.epochs": plan.epochs,
        "train.batch_size": 32,
        "train.lr": 3e-3,
        "train.patience": plan.epochs,
        "serve.fallback_threshold": 0.6,
    }
    return load_config(None, overrides)


def teacher_segments(segments: tuple[Segment, ...], lag_s: float, seed: int) -> list[Segment]:
    """The ground truth with each state change moved by up to `lag_s` seconds (a plausible, imperfect teacher)."""
    rng = np.random.default_rng(seed + 1000)
    out: list[Segment] = []
    for seg in segments:
        prev = out[-1] if out and out[-1].video == seg.video else None
        if prev is None:
            out.append(seg)
            continue
        room = min(lag_s, (prev.end_s - prev.start_s) / 3, (seg.end_s - seg.start_s) / 3)
        t = round(seg.start_s + float(rng.uniform(-room, room)), 3)
        out[-1] = Segment(prev.video, prev.start_s, t, prev.label)
        out.append(Segment(seg.video, t, seg.end_s, seg.label))
    return out


def run_demo(
    out: str | os.PathLike[str] = "runs/demo",
    *,
    quick: bool = False,
    plan: DemoPlan | None = None,
    show_progress: bool = False,
    on_stage: StageCallback | None = None,
) -> DemoReport:
    """Run the whole path on rendered videos; everything goes under `out` (files there are replaced).

    Args:
        out: the demo folder.
        quick: the small plan (`QUICK`, for CI) instead of `FULL`; `plan` overrides both.
        on_stage: called with (step name, one-line detail) as each step finishes.

    Raises:
        DistillError: from any step (one line naming the fix).
    """
    from distill.evaluate import run_compare
    from distill.export import export_onnx
    from distill.label import run_label
    from distill.realtime import run_serve
    from distill.train import run_train

    plan = plan or (QUICK if quick else FULL)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    note = on_stage or (lambda stage, detail: None)
    clock = _Clock()

    scenario = render_scenario(out / "videos", plan.scene)
    teacher_csv = write_segments_csv(
        out / "teacher-segments.csv", teacher_segments(scenario.segments, plan.teacher_lag_s, plan.scene.seed)
    )
    cfg = demo_config(plan, teacher_csv)
    report = DemoReport(
        out=out, config=save_config(cfg, out / "task.yaml"), scenario=scenario, teacher_csv=teacher_csv,
        labels=out / "labels", student_dir=out / "student", onnx=out / "student" / "student.onnx",
        report_dir=out / "report", events=out / "events.jsonl", served_video=scenario.videos[0],
        label_command=paligemma_command(scenario.video_dir, out),
    )  # fmt: skip
    report.seconds["render"] = clock.lap()
    n_frames = round(plan.scene.seconds * plan.scene.fps)
    note("render", f"{len(scenario.videos)} videos x {n_frames} frames -> {scenario.video_dir}")

    report.label = run_label([scenario.video_dir], report.labels, cfg, overwrite=True, show_progress=show_progress)
    report.seconds["label"] = clock.lap()
    note("label", f"{report.label.total_frames} frames labelled by the annotations teacher -> {report.labels}")

    report.train = run_train(report.labels, report.student_dir, cfg, show_progress=show_progress, num_workers=0)
    export_onnx(report.train.checkpoint, report.onnx)
    report.seconds["train"] = clock.lap()
    note("train", f"{plan.model} ({plan.image_size}px, {report.train.epochs} epochs) -> {report.onnx}")

    report.compare = run_compare(
        report.labels, report.report_dir, student_path=report.onnx, truth_csv=scenario.truth_csv,
        show_progress=show_progress,
    )  # fmt: skip
    report.seconds["compare"] = clock.lap()
    acc = report.compare.student_accuracy
    note("compare", f"student accuracy {acc:.3f} on held-out videos -> {report.report_dir / 'report.html'}")

    held_out = report.compare.metrics["videos"]
    report.served_video = scenario.video_dir / held_out[0]
    report.serve = run_serve(
        [str(report.served_video)], report.onnx, cfg, display=False, events=report.events,
        max_seconds=plan.serve_seconds, hard_examples=None,
    )  # fmt: skip
    report.seconds["serve"] = clock.lap()
    note("serve", f"{report.served_video.name}: {report.serve.frames_classified} frames -> {report.events}")
    return report


def paligemma_command(videos: Path, out: Path) -> str:
    """The labelling command of a real run: the same videos and classes, PaliGemma as the teacher."""
    parts = ["distill", "label", str(videos), "--config", str(out / "task.yaml"), "--teacher", "paligemma"]
    parts += ["--out", str(out / "labels-paligemma")]
    return shlex.join(parts)


class _Clock:
    def __init__(self) -> None:
        self._last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        return round(elapsed, 2)
