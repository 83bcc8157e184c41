"""Students compared: serving speed fp32 vs INT8 at 224 px, and accuracy and INT8 agreement on the demo.

Speed. For each timm model (random weights, pretrained=False; speed does not depend on the weights) at 224 px:
export to ONNX as `distill export` does (dynamo, opset 20, metadata; no parity gate, since there is no label
set), make a static INT8 (QDQ, MinMax) copy calibrated on synthetic frames, then measure frames/s at batch 1
and 16:

- `student`  : `Student.predict(frames)` on 720p BGR uint8 frames (resize + normalise + run + softmax)
- `session`  : `session.run` on a ready (B, 3, 224, 224) float32 tensor (the model alone)
- `eager`    : PyTorch fp32 eager end to end on the same frames: per-frame cv2 resize + BGR->RGB, normalise in
               torch, `model(x)` under `inference_mode` (what one would run without `distill export`)

Ratios are taken within one run: `student/session` (goal >= 0.7: preprocessing costs little) and
`student/eager` (goal >= 5x). The three are measured in interleaved rounds and the median round is reported,
so load from other processes hits them alike. Threads: the same number for ONNX Runtime and torch, 1 by
default (on a 2-core machine shared with other jobs, 2 threads per library made torch's OpenMP pool stall
badly under load and the figures meaningless); pass `--threads N` on a dedicated machine.

Accuracy (`bench/_accuracy.py`, skipped with `--no-accuracy`). The demo's quick videos are rendered and
labelled once; each model is trained on them from scratch (`--train-size`, `--epochs`) and exported with
`--int8 --force`: its held-out accuracy (fp32, against the teacher's labels), INT8's agreement with fp32 on
the same frames, and the nodes INT8 kept float. The last table puts these next to the 224 px frames/s.

Usage:
    .venv/bin/python bench/student.py [--quick] [--threads 1] [--models a,b] [--no-accuracy] [--epochs 6]
        [--out bench/results/student.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

MODELS = [
    "mobilenetv3_small_100",
    "mobilenetv3_large_100",
    "efficientnet_b0",
    "resnet10t",
    "resnet18",
    "ghostnet_100",
    "regnetx_002",
    "convnext_atto",
]
CLASSES = ["idle", "running", "error", "maintenance"]
SIZE = 224


def synthetic_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    """720p BGR frames with noise and a few blocks, all different (no cache effects)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        img = rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8)
        for _ in range(4):
            y, x = rng.integers(0, 600), rng.integers(0, 1100)
            img[y : y + 120, x : x + 180] = rng.integers(0, 255, 3)
        frames.append(img)
    return frames


def build(name: str, workdir: Path, calibration: list[np.ndarray]):
    """(torch model, meta, fp32 path, int8 path) for one timm model (random weights, plain MinMax INT8)."""
    import onnx
    import onnxruntime as ort
    import timm

    from distill.export._int8 import search_int8
    from distill.export.metadata import write_metadata
    from distill.export.onnx_export import INPUT_NAME, export_graph
    from distill.export.preprocess import Preprocessor
    from distill.export.quantize import batches
    from distill.train import build_meta

    model = timm.create_model(name, pretrained=False, num_classes=len(CLASSES)).eval()
    meta = build_meta(CLASSES, name, SIZE, teacher={"backend": "bench"}, label_set={})
    fp32 = workdir / f"{name}.onnx"
    proto = export_graph(model, SIZE)
    write_metadata(proto, meta.replace(precision="fp32"))
    onnx.save(proto, str(fp32))
    int8 = workdir / f"{name}.int8.onnx"
    prep = Preprocessor(SIZE, meta.mean, meta.std)
    calib = list(batches(prep, calibration))
    check = np.concatenate(calib)
    reference = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: check})[0]
    # random weights: agreement means nothing here, so no search (target 0); the speed of the INT8 graph is the point
    search_int8(fp32, int8, calib, check, reference, INPUT_NAME, target=0.0, methods=("minmax",))
    qproto = onnx.load(str(int8))
    write_metadata(qproto, meta.replace(precision="int8"))
    onnx.save(qproto, str(int8))
    return model, meta, fp32, int8


def eager_fn(model, meta):
    import torch

    mean = torch.tensor(meta.mean).view(1, 3, 1, 1)
    std = torch.tensor(meta.std).view(1, 3, 1, 1)

    def run(frames):
        rgb = [
            cv2.cvtColor(cv2.resize(f, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB) for f in frames
        ]
        with torch.inference_mode():
            x = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).float().div_(255).sub_(mean).div_(std)
            return torch.softmax(model(x), 1).numpy()

    return run


def fps(fn, arg, batch: int, seconds: float) -> float:
    """Frames/s of `fn(arg)` called repeatedly for at least `seconds` (at least twice)."""
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        fn(arg)
        calls += 1
    return batch * calls / (time.perf_counter() - start)


def measure(methods: dict, batch: int, seconds: float, rounds: int) -> dict[str, float]:
    """Median frames/s of each method over interleaved rounds (after two warm-up calls each)."""
    for fn, arg in methods.values():
        fn(arg)
        fn(arg)
    results: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(rounds):
        for key, (fn, arg) in methods.items():
            results[key].append(fps(fn, arg, batch, seconds))
    return {k: statistics.median(v) for k, v in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a rough table in a few minutes)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for ONNX Runtime and torch")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "student.json")
    parser.add_argument("--no-accuracy", action="store_true", help="speed only: skip training on the demo")
    parser.add_argument("--train-size", type=int, default=64, help="image size the accuracy students train at")
    parser.add_argument("--epochs", type=int, default=6, help="epochs the accuracy students train for")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from distill.export import Student

    torch.set_num_threads(args.threads)
    frames = synthetic_frames(16)
    calibration = synthetic_frames(16, seed=1)
    rounds, seconds = (3, 0.3) if args.quick else (5, 1.0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="distill-bench-") as tmp:
        for name in args.models.split(","):
            model, meta, fp32, int8 = build(name, Path(tmp), calibration)
            eager = eager_fn(model, meta)
            students = {p: Student(path, providers=["CPUExecutionProvider"], threads=args.threads) for p, path in
                        (("fp32", fp32), ("int8", int8))}  # fmt: skip
            for batch in (int(b) for b in args.batches.split(",")):
                chunk = frames[:batch]
                for precision, student in students.items():
                    tensor = student.preprocessor(chunk).copy()
                    session = student.session
                    feeds = {student.input_name: tensor}
                    methods = {
                        "student": (lambda f, s=student: s.predict(f, batch_size=None), chunk),
                        "session": (lambda t, s=session: s.run(None, t), feeds),
                        "eager": (eager, chunk),
                    }
                    got = measure(methods, batch, seconds, rounds)
                    row = {
                        "model": name,
                        "precision": precision,
                        "batch": batch,
                        **{k: round(v, 1) for k, v in got.items()},
                    }
                    row["student/session"] = round(got["student"] / got["session"], 3)
                    row["student/eager"] = round(got["student"] / got["eager"], 2)
                    rows.append(row)
                    print(_fmt(row), flush=True)
    accuracy = [] if args.no_accuracy else accuracy_rows(args.models.split(","), args.train_size, args.epochs)
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_threads": args.threads,
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "providers": ["CPUExecutionProvider"],
        "quick": args.quick,
        "rounds": rounds,
        "seconds_per_round": seconds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"env": env, "rows": rows, "accuracy": accuracy}, indent=2) + "\n")
    print()
    print(table(rows))
    if accuracy:
        print()
        print(int8_table(rows, accuracy))
    print(f"\nwrote {args.out}")


def accuracy_rows(models: list[str], image_size: int, epochs: int) -> list[dict]:
    """Train each model from scratch on the demo's videos and export it with INT8 (`bench/_accuracy.py`)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _accuracy import demo_labels, train_and_export

    rows = []
    with tempfile.TemporaryDirectory(prefix="distill-bench-acc-") as tmp:
        labels, plan = demo_labels(Path(tmp) / "demo")
        for name in models:
            row = train_and_export(name, labels, plan, Path(tmp), image_size, epochs)
            print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            rows.append(row)
    return rows


def int8_table(rows: list[dict], accuracy: list[dict]) -> str:
    """Markdown: held-out accuracy on the demo, INT8 agreement, and Student fps fp32 vs INT8 at 224 px."""
    speed = {(r["model"], r["precision"], r["batch"]): r["student"] for r in rows}
    head = ["model", "demo acc (fp32)", "int8 agrees", "int8 float nodes", "fp32 fps b1", "int8 fps b1"]
    head += ["fp32 fps b16", "int8 fps b16"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in accuracy:
        m = a["model"]
        acc = "n/a" if a["accuracy"] is None else f"{a['accuracy']:.1%}"
        cells = [m, acc, f"{a['int8_agreement']:.1%} ({a['int8_method']})", a["float_nodes"]]
        cells += [speed.get((m, p, b), "") for b in (1, 16) for p in ("fp32", "int8")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


HEADER = ["model", "precision", "batch", "student", "session", "eager", "student/session", "student/eager"]


def _fmt(row: dict) -> str:
    return "  ".join(f"{k}={row[k]}" for k in HEADER)


def table(rows: list[dict]) -> str:
    """A Markdown table (frames/s; ratios of Student to the session and to PyTorch eager)."""
    head = ["model", "prec", "batch", "Student fps", "session fps", "eager fps", "Student/session", "Student/eager"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], r["precision"], r["batch"], r["student"], r["session"], r["eager"]]
        cells += [f"{r['student/session']:.2f}", f"{r['student/eager']:.1f}x"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
