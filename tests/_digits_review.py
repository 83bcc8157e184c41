"""A noisy label set of real images for `distill review`: `_digits`' handwritten-digit videos, 10% mislabelled.

The frames are those of `tests._digits.digit_videos` (scikit-learn's digits rendered as videos); the teacher's
label is the digit except for `flip` of the frames, chosen at random, whose label is another digit at random.
Its distribution is confident in whatever it said, so only the pictures tell the flipped frames apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _digits import DIGITS, digit_videos

from distill.dataset import LabelSetWriter, label_row, read_table
from distill.video import encode_jpeg

Flipped = dict[tuple[str, int], tuple[str, str]]  # (video, frame_index) -> (true digit, the teacher's label)


def write_noisy_digits(
    directory: str | Path, *, videos: int = 5, scans_per_video: int = 100, hold: int = 1, flip: float = 0.1,
    fps: float = 1.0, seed: int = 0,
) -> tuple[Path, Flipped]:  # fmt: skip
    """Write the label set; returns it and the flipped frames (exactly round(flip x frames) of them)."""
    clips = list(digit_videos(videos=videos, scans_per_video=scans_per_video, hold=hold, seed=seed))
    total = sum(len(labels) for _, _, labels in clips)
    rng = np.random.default_rng(seed + 7)
    chosen = set(rng.choice(total, round(flip * total), replace=False).tolist())
    flipped: Flipped = {}
    teacher = {"backend": "generated", "model": "tests._digits_review", "mode": "noisy"}
    i = 0
    with LabelSetWriter(directory, DIGITS, teacher, shard_rows=200, overwrite=True) as writer:
        for name, frames, labels in clips:
            for t, (image, digit) in enumerate(zip(frames, labels)):
                said = (digit + int(rng.integers(1, 10))) % 10 if i in chosen else digit
                probs = np.full(10, 0.02 / 9)
                probs[said] = 0.98
                writer.add(label_row(name, t, t / fps, encode_jpeg(image), DIGITS[said], probs, teacher="generated"))
                if said != digit:
                    flipped[(name, t)] = (DIGITS[digit], DIGITS[said])
                i += 1
    return Path(directory), flipped


def write_truth_csv(path: str | Path, label_dir: Path, flipped: Flipped, fps: float = 1.0) -> Path:
    """Ground truth as segments `video,start_s,end_s,label`, one per frame (the set's labels, unflipped)."""
    table = read_table(label_dir, columns=["video", "frame_index", "timestamp_s", "label"], corrected=False)
    lines = ["video,start_s,end_s,label"]
    half = 0.4 / fps
    for video, index, t, label in zip(*(table.column(c).to_pylist() for c in table.column_names)):
        true = flipped.get((video, index), (label,))[0]
        lines.append(f"{video},{max(0.0, t - half):.3f},{t + half:.3f},{true}")
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)
