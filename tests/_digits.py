"""Real-image label sets for tests: scikit-learn's handwritten digits rendered as short videos.

`sklearn.datasets.load_digits` ships with scikit-learn (1797 scans of real handwriting, 8x8 px, 16 grey
levels; nothing is downloaded). Each "video" holds its own digits (no scan appears in two videos, so a held-out
video shows handwriting training never saw): every scan is shown for a few consecutive frames, upscaled,
dark ink on a per-video paper tone, drifting by a pixel or two, with sensor noise and brightness flicker.
The teacher is perfect here (the label is the digit), so agreement figures measure the student alone.

This module does not train or export anything; `write_digit_clips` also writes the frames as MP4 files for
tests that need real clips.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from distill.dataset import LabelSetWriter, label_row
from distill.video import encode_jpeg, write_video

DIGITS = [str(d) for d in range(10)]


def _scans(classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 8, 8) float ink 0..1 and (N,) digit, shuffled, for digits below `classes`."""
    from sklearn.datasets import load_digits

    data = load_digits(n_class=classes)
    order = np.random.default_rng(seed).permutation(len(data.target))
    return data.images[order] / 16.0, data.target[order]


def _frames(
    ink: np.ndarray, rng: np.random.Generator, paper: np.ndarray, size: tuple[int, int], hold: int
) -> Iterator[np.ndarray]:
    """`hold` BGR frames of one scan: upscaled ink on paper, drifting, noisy."""
    h, w = size
    side = int(min(h, w) * 0.75)
    glyph = cv2.resize(ink.astype(np.float32), (side, side), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    top0, left0 = (h - side) // 2, (w - side) // 2 + int(rng.integers(-w // 8, w // 8 + 1))
    for _ in range(hold):
        top = int(np.clip(top0 + rng.integers(-2, 3), 0, h - side))
        left = int(np.clip(left0 + rng.integers(-2, 3), 0, w - side))
        img = np.empty((h, w, 3), np.float32)
        img[:] = paper
        region = img[top : top + side, left : left + side]
        region *= 1.0 - 0.85 * glyph[..., None]  # dark ink
        img *= rng.uniform(0.85, 1.15)
        img += rng.normal(0, 8, img.shape)
        yield np.clip(img, 0, 255).astype(np.uint8)


def digit_videos(
    *, videos: int = 6, scans_per_video: int = 40, hold: int = 3, classes: int = 10, size=(48, 64), seed: int = 0
) -> Iterator[tuple[str, list[np.ndarray], list[int]]]:
    """(name, BGR frames, digit per frame) for each video; videos use disjoint scans."""
    ink, digit = _scans(classes, seed)
    if videos * scans_per_video > len(digit):
        raise ValueError(f"{videos} x {scans_per_video} scans asked, scikit-learn has {len(digit)}")
    rng = np.random.default_rng(seed + 1)
    for v in range(videos):
        paper = rng.uniform(150, 245, 3).astype(np.float32)
        frames, labels = [], []
        for i in range(v * scans_per_video, (v + 1) * scans_per_video):
            for image in _frames(ink[i], rng, paper, size, hold):
                frames.append(image)
                labels.append(int(digit[i]))
        yield f"digits{v}.mp4", frames, labels


def write_digit_label_set(directory: str | Path, *, fps: float = 5.0, **kwargs) -> Path:
    """A label set of `digit_videos(**kwargs)` (one row per frame, the digit as the teacher's answer)."""
    classes = DIGITS[: kwargs.get("classes", 10)]
    teacher = {"backend": "generated", "model": "tests._digits", "mode": "ground-truth"}
    with LabelSetWriter(directory, classes=classes, teacher=teacher, shard_rows=500, overwrite=True) as writer:
        for name, frames, labels in digit_videos(**kwargs):
            for t, (image, label) in enumerate(zip(frames, labels)):
                probs = np.eye(len(classes))[label]
                writer.add(label_row(name, t, t / fps, encode_jpeg(image), classes[label], probs, teacher="generated"))
    return Path(directory)


def write_digit_clips(directory: str | Path, *, fps: float = 5.0, **kwargs) -> list[Path]:
    """The same videos as MP4 files (frames at `fps`)."""
    directory = Path(directory)
    return [write_video(directory / name, frames, fps) for name, frames, _ in digit_videos(**kwargs)]
