"""`distill sample`: preview which frames a labelling run would see, as JPEGs plus `index.csv`.

This module does not label frames; `distill label` samples the same frames with the same settings.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from distill._progress import progress_bar
from distill.config import TaskConfig, save_config
from distill.errors import VideoError
from distill.video import Failure, SampleStats, find_videos, probe, resize_short_side, sample_videos

INDEX_COLUMNS = ("video", "frame_index", "timestamp_s", "path")


@dataclass
class SampleSummary:
    """What a sampling run did."""

    out: Path
    videos_found: int = 0
    stats: SampleStats = field(default_factory=SampleStats)
    failures: list[Failure] = field(default_factory=list)


def frame_filename(video: str, frame_index: int) -> str:
    """Where a frame's JPEG goes, relative to the output folder: `frames/<video>/<frame_index>.jpg`."""
    return f"frames/{video}/{frame_index:07d}.jpg"


def run_sample(
    inputs: list[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    cfg: TaskConfig,
    show_progress: bool = False,
) -> SampleSummary:
    """Sample frames of every video in `inputs` into `out/` (JPEGs + `index.csv` + `config.yaml`).

    Bad videos are logged as warnings and listed in the summary; raises `VideoError` only when no video at
    all could be sampled.
    """
    out = Path(out)
    videos, failures = find_videos(inputs)
    summary = SampleSummary(out=out, videos_found=len(videos), failures=list(failures))
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    total_s = sum(_duration(v.path) for v in videos)
    with (
        progress_bar("sampling", total=total_s or None, unit="s", enabled=show_progress) as bar,
        open(out / "index.csv", "w", newline="", encoding="utf-8") as fh,
    ):
        writer = csv.writer(fh)
        writer.writerow(INDEX_COLUMNS)
        last_t = 0.0
        for frame in sample_videos(videos, cfg.sampling, stats=summary.stats, failures=summary.failures):
            rel = frame_filename(frame.video, frame.frame_index)
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            image = resize_short_side(frame.image, cfg.sampling.image_size)
            if not cv2.imwrite(str(out / rel), image, [cv2.IMWRITE_JPEG_QUALITY, 90]):
                raise VideoError(f"cannot write {out / rel}; is the output folder writable?")
            writer.writerow([frame.video, frame.frame_index, f"{frame.timestamp_s:.3f}", rel])
            bar.advance(max(frame.timestamp_s - last_t, 0.0) if frame.timestamp_s >= last_t else frame.timestamp_s)
            last_t = frame.timestamp_s
    if summary.stats.videos == 0:
        raise VideoError(f"no video could be sampled from {', '.join(map(str, inputs))}; see the warnings above")
    return summary


def _duration(path: Path) -> float:
    try:
        return probe(path).duration_s
    except VideoError:
        return 0.0
