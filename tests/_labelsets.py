"""Generated label sets for the training tests: written directly with `LabelSetWriter`, no teacher involved.

Each video shows a fixed "machine" with a status lamp at the right edge whose colour says the class, on a
background that differs per video, with pixel noise, brightness changes and a lamp that shifts by a few
pixels. The teacher's distributions are noisy (the true class gets 0.42-0.95), a small share of frames carry a
wrong label (teacher flicker), and a few answers are unmatched (label null).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distill.dataset import LabelSetWriter
from distill.video import encode_jpeg

CLASSES = ["idle", "running", "error", "maintenance"]
LAMP_BGR = [(128, 128, 128), (40, 200, 40), (40, 40, 220), (220, 120, 30)]  # grey, green, red, blue


def frame(cls: int, rng: np.random.Generator, background: np.ndarray, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """One BGR frame of class `cls`: the per-video background, the class lamp at the right edge, noise."""
    h, w = size
    img = np.empty((h, w, 3), np.float32)
    img[:] = background
    img[: h // 2, : w // 3] *= 0.6  # a darker "panel" so the scene is not flat
    top = int(rng.integers(h // 6, h // 3))
    left = w - w // 4 - int(rng.integers(0, 4))
    img[top : top + h // 2, left : left + w // 5] = LAMP_BGR[cls]
    img *= rng.uniform(0.8, 1.2)
    img += rng.normal(0, 18, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def teacher_probs(cls: int, k: int, rng: np.random.Generator) -> list[float]:
    """A noisy distribution whose top class is `cls` (about a sixth of them below 0.5)."""
    peak = rng.uniform(0.42, 0.95)
    rest = rng.dirichlet(np.ones(k - 1)) * (1 - peak)
    while rest.max() >= peak:
        rest = rng.dirichlet(np.ones(k - 1)) * (1 - peak)
    return [float(x) for x in np.insert(rest, cls, peak)]


def write_label_set(
    directory: str | Path,
    *,
    videos: int = 6,
    frames_per_class: int = 12,
    classes: list[str] | None = None,
    soft: bool = True,
    flip: float = 0.01,
    unmatched: int = 2,
    seed: int = 0,
    size: tuple[int, int] = (48, 64),
    prefix: str = "cam",
    class_weights: list[float] | None = None,
) -> Path:
    """Write a label set of `videos` videos; each shows every class in a random order, one frame per second.

    Args:
        soft: store teacher distributions (else `probs` is null and only hard labels are known).
        flip: share of frames whose teacher label is another class (teacher errors / flicker).
        unmatched: frames per video whose answer matched no class (label null).
        class_weights: relative number of frames per class (skewed sets), default even.
    """
    classes = list(classes or CLASSES)
    k = len(classes)
    rng = np.random.default_rng(seed)
    weights = class_weights or [1.0] * k
    teacher = {"backend": "generated", "model": "tests._labelsets", "mode": "constrained"}
    with LabelSetWriter(directory, classes=classes, teacher=teacher, shard_rows=100, overwrite=True) as writer:
        for v in range(videos):
            background = rng.uniform(40, 200, 3).astype(np.float32)
            order = rng.permutation(k)
            t = 0
            for cls in order:
                for _ in range(max(1, round(frames_per_class * weights[cls] / max(weights)))):
                    said = int(rng.integers(k)) if rng.random() < flip else int(cls)
                    writer.add(_row(f"{prefix}{v}.mp4", t, frame(int(cls), rng, background, size), classes[said],
                                    teacher_probs(said, k, rng) if soft else None))  # fmt: skip
                    t += 1
            for _ in range(unmatched):
                writer.add(_row(f"{prefix}{v}.mp4", t, frame(int(order[-1]), rng, background, size), None, None))
                t += 1
    return Path(directory)


def _row(video: str, t: int, image: np.ndarray, label: str | None, probs: list[float] | None) -> dict:
    return {
        "video": video,
        "frame_index": t * 25,
        "timestamp_s": float(t),
        "image": encode_jpeg(image),
        "label": label,
        "probs": probs,
        "confidence": max(probs) if probs else (None if label is None else 1.0),
        "teacher": "generated",
        "raw": None,
    }


def tiny_student_config(classes, **more):
    """A `TaskConfig` that trains a resnet10t from scratch at 48 px for 2 epochs: a real student in seconds."""
    from distill.config import load_config

    overrides = {
        "classes": list(classes),
        "student.model": "resnet10t",
        "student.image_size": 48,
        "student.pretrained": False,
        "train.epochs": 2,
        "train.batch_size": 8,
        "train.lr": 3e-3,
        "train.mixup": 0,
    }
    return load_config(overrides=overrides | more)
