"""`distill sample`: preview which frames a labelling run would see, as JPEGs plus `index.csv`.

The same decode workers as `distill label` (`distill._decode_workers`), with the same sampling settings, hand
over the stored JPEGs; they are written as they come and `index.csv` is written sorted at the end.

This module does not label frames; `distill label` samples the same frames with the same settings.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from distill._decode_workers import ChunkDone, DecodePool, EncodedFrame, VideoDone, stop_on_sigterm
from distill._progress import progress_bar
from distill.config import TaskConfig, save_config
from distill.decode import check_decode_device
from distill.errors import VideoError
from distill.video import Failure, SampleStats, find_videos, probe

INDEX_COLUMNS = ("video", "frame_index", "timestamp_s", "path")


@dataclass
class SampleSummary:
    """What a sampling run did; `video_s / seconds` is the speed in video-hours per hour."""

    out: Path
    videos_found: int = 0
    stats: SampleStats = field(default_factory=SampleStats)
    failures: list[Failure] = field(default_factory=list)
    video_s: float = 0.0  # media time sampled
    decode_s: float = 0.0  # worker time spent decoding and encoding (over all workers)
    seconds: float = 0.0  # wall time
    workers: int = 0

    @property
    def video_hours_per_hour(self) -> float:
        return self.video_s / self.seconds if self.seconds > 0 else 0.0


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
    all could be sampled (or `--decode-device cuda` has no decoder to use).
    """
    out = Path(out)
    videos, failures = find_videos(inputs)
    summary = SampleSummary(out=out, videos_found=len(videos), failures=list(failures))
    if videos:
        check_decode_device(cfg.sampling.decode_device, videos[0].path)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    rows: list[tuple[str, int, float, str]] = []
    start = time.perf_counter()
    total = sum(_duration(v.path) for v in videos) or None
    with (
        stop_on_sigterm(),
        progress_bar("sampling", total=total, unit="video s", enabled=show_progress) as bar,
        DecodePool(videos, cfg.sampling) as pool,
    ):
        summary.workers = pool.workers
        for event in pool.events():
            if isinstance(event, EncodedFrame):
                rel = frame_filename(event.video, event.frame_index)
                _write(out / rel, event.jpeg)
                rows.append((event.video, event.frame_index, event.timestamp_s, rel))
            elif isinstance(event, ChunkDone):
                summary.stats.add(event.stats)
                summary.decode_s += event.decode_s
                summary.video_s += event.seconds
                bar.advance(event.seconds)
            elif isinstance(event, VideoDone):
                summary.stats.videos += 1
                summary.video_s += event.seconds
                bar.advance(event.seconds)
            else:
                summary.failures.append(event)
    summary.seconds = time.perf_counter() - start
    _write_index(out, rows)
    if summary.stats.videos == 0:
        raise VideoError(f"no video could be sampled from {', '.join(map(str, inputs))}; see the warnings above")
    return summary


def _write(path: Path, jpeg: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg)
    except OSError as exc:
        raise VideoError(f"cannot write {path} ({exc.strerror}); is the output folder writable?") from None


def _write_index(out: Path, rows: list[tuple[str, int, float, str]]) -> None:
    with open(out / "index.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(INDEX_COLUMNS)
        for video, index, t, rel in sorted(rows):
            writer.writerow([video, index, f"{t:.3f}", rel])


def _duration(path: Path) -> float:
    try:
        return probe(path).duration_s
    except VideoError:
        return 0.0
