"""Sampling speed: `distill.decode.sample_frames` at 1 fps against grab-only decoding of the same clip.

Sampling grabs every frame (demux + decode) and converts only the sampled ones to BGR images, so its cost
should be close to decoding alone. Prints a table and writes bench/results/sample.json.

    python bench/sample.py [--seconds 60] [--width 1280 --height 720] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from distill.decode import sample_frames
from distill.video import write_video


def render(seconds: float, fps: float, width: int, height: int):
    """A camera-like scene (texture + sensor noise) with a moving object, static in the middle third."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
    base = cv2.resize(base, (width, height), interpolation=cv2.INTER_LINEAR)
    noise = [rng.integers(-4, 5, (height, width, 3), dtype=np.int16) for _ in range(8)]
    n = round(seconds * fps)
    for i in range(n):
        frame = np.clip(base + noise[i % len(noise)], 0, 255).astype(np.uint8)
        if not (n // 3 <= i < 2 * n // 3):  # the middle third is static
            x = (i * 7) % (width - 80)
            cv2.rectangle(frame, (x, height // 3), (x + 80, height // 3 + 80), (0, 255, 255), -1)
        yield frame


def grab_only(path: Path) -> int:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--fps", type=float, default=25)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "sample.json")
    args = parser.parse_args()
    cv2.setNumThreads(0)

    with tempfile.TemporaryDirectory() as tmp:
        clip = write_video(Path(tmp) / "clip.mp4", render(args.seconds, args.fps, args.width, args.height), args.fps)
        total = grab_only(clip)
        runs: dict[str, list[float]] = {"grab only": [], "sample 1 fps": [], "sample 1 fps + dedup": []}
        kept: dict[str, int] = {}
        for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits every variant alike
            runs["grab only"].append(timed(lambda: grab_only(clip))[0])
            t, frames = timed(lambda: list(sample_frames(clip, fps=1)))
            runs["sample 1 fps"].append(t)
            kept["sample 1 fps"] = len(frames)
            t, frames = timed(lambda: list(sample_frames(clip, fps=1, dedup=True)))
            runs["sample 1 fps + dedup"].append(t)
            kept["sample 1 fps + dedup"] = len(frames)

    base = min(runs["grab only"])
    rows = []
    for name, times in runs.items():
        best = min(times)
        rows.append(
            {
                "variant": name,
                "video_frames": total,
                "frames_kept": kept.get(name, 0),
                "seconds": round(best, 3),
                "video_frames_per_s": round(total / best, 1),
                "ratio_vs_grab": round(base / best, 3),
            }
        )
    header = f"{'variant':<22} {'video frames':>12} {'kept':>6} {'seconds':>8} {'frames/s':>9} {'ratio':>6}"
    clip_text = f"{args.width}x{args.height}, {args.seconds:.0f} s at {args.fps:g} fps"
    print(f"{clip_text}, best of {args.repeats} runs (the least disturbed by other load)")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['variant']:<22} {r['video_frames']:>12} {r['frames_kept']:>6} {r['seconds']:>8.3f} "
            f"{r['video_frames_per_s']:>9.1f} {r['ratio_vs_grab']:>6.3f}"
        )
    print("goal: ratio >= 0.9 (sampling costs about what decoding does)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"config": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
