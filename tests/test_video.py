"""Frame sampling by media time, near-duplicate suppression, sources and provenance."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import moving_frames, solid_frames

from distill.decode import sample_frames
from distill.errors import VideoError
from distill.video import (
    Failure,
    SampleStats,
    find_videos,
    mask_url,
    parse_source,
    probe,
    resize_short_side,
)


def test_one_fps_of_a_ten_second_clip(make_clip) -> None:
    clip = make_clip("ten.mp4", seconds=10, fps=25)
    frames = list(sample_frames(clip, fps=1))
    assert len(frames) == 10
    for expected, frame in enumerate(frames):
        assert abs(frame.timestamp_s - expected) <= 1 / 25
        assert frame.frame_index == round(frame.timestamp_s * 25)
        assert frame.video == "ten.mp4"
        assert frame.image.shape == (96, 128, 3) and frame.image.dtype == np.uint8


@pytest.mark.parametrize(("fps", "expected"), [(2.0, 20), (0.5, 5), (25.0, 250), (100.0, 250)])
def test_sampling_rate(make_clip, fps: float, expected: int) -> None:
    clip = make_clip("ten.mp4", seconds=10, fps=25)
    frames = list(sample_frames(clip, fps=fps))
    assert len(frames) == expected
    stamps = [f.timestamp_s for f in frames]
    assert stamps == sorted(stamps)


def test_start_end_and_max_frames(make_clip) -> None:
    clip = make_clip("ten.mp4", seconds=10, fps=25)
    frames = list(sample_frames(clip, fps=1, start_s=2.5, end_s=6.0))
    # the frame nearest each target time (2.5, 3.5, ...), within one frame interval
    assert len(frames) == 4
    for target, frame in zip([2.5, 3.5, 4.5, 5.5], frames):
        assert abs(frame.timestamp_s - target) <= 1 / 25
    assert len(list(sample_frames(clip, fps=1, max_frames=3))) == 3


def test_dedup_keeps_first_frame_after_a_change(make_clip) -> None:
    # static for 8 s, then a different static scene for 2 s
    clip = make_clip(
        "static.mp4",
        frames=list(solid_frames([(40, 40, 40)], 8, noise=3)) + list(solid_frames([(20, 20, 220)], 2, noise=3, seed=1)),
    )
    stats = SampleStats()
    frames = list(sample_frames(clip, fps=1, dedup=True, stats=stats))
    assert len(frames) <= 3
    assert any(f.timestamp_s >= 8.0 for f in frames), "the first frame after the change must be kept"
    assert frames[0].timestamp_s == 0.0
    assert stats.duplicates == 10 - len(frames)
    # without dedup every sampled frame is kept
    assert len(list(sample_frames(clip, fps=1, dedup=False))) == 10


def test_dedup_keeps_a_moving_scene(make_clip) -> None:
    clip = make_clip("moving.mp4", seconds=5)
    assert len(list(sample_frames(clip, fps=1, dedup=True))) == 5


def test_find_videos_provenance_and_filtering(tmp_path: Path, make_clip) -> None:
    root = tmp_path / "recordings"
    (root / "cam1").mkdir(parents=True)
    make_clip("recordings/cam1/a.mp4", seconds=1)
    make_clip("recordings/b.MOV", seconds=1)
    (root / "notes.txt").write_text("not a video")
    (root / "cam1" / "thumbs.jpg").write_bytes(b"\xff\xd8")
    videos, failures = find_videos([root])
    assert [v.name for v in videos] == ["b.MOV", "cam1/a.mp4"]  # relative to the folder given, stable order
    assert failures == []
    # a file given directly is named by its file name; a glob matches files; duplicates are merged
    videos, failures = find_videos([root / "cam1" / "a.mp4", str(root / "*.MOV"), root])
    assert sorted(v.name for v in videos) == ["a.mp4", "b.MOV"]


def test_probe_and_errors(tmp_path: Path, make_clip) -> None:
    info = probe(make_clip("p.mp4", seconds=2, fps=25))
    assert (info.width, info.height, info.frame_count) == (128, 96, 50)
    assert info.fps == pytest.approx(25)
    with pytest.raises(VideoError, match="x.mp4: not a readable video"):
        (tmp_path / "x.mp4").write_bytes(os.urandom(2048))
        probe(tmp_path / "x.mp4")


def test_resize_short_side() -> None:
    img = np.zeros((720, 1280, 3), np.uint8)
    assert resize_short_side(img, 320).shape == (320, 569, 3)
    assert resize_short_side(img, 0) is img
    assert resize_short_side(img, 1000) is img  # never upscales


@pytest.mark.parametrize(
    ("spec", "kind", "shown"),
    [
        ("0", "camera", "0"),
        (2, "camera", "2"),
        ("rtsp://admin:secret@10.0.0.5:554/stream1", "url", "rtsp://***@10.0.0.5:554/stream1"),
        ("http://cam.local/mjpeg", "url", "http://cam.local/mjpeg"),
        ("videos/a.mp4", "file", "videos/a.mp4"),
    ],
)
def test_parse_source(spec, kind: str, shown: str) -> None:
    source = parse_source(spec)
    assert (source.kind, source.display_name, source.live) == (kind, shown, kind != "file")


def test_mask_url_leaves_plain_urls() -> None:
    assert mask_url("rtsp://u:p@h/x") == "rtsp://***@h/x"
    assert mask_url("rtsp://h/x@y") == "rtsp://h/x@y"


def test_failure_is_a_value() -> None:
    assert Failure("a.mp4", "file is empty (0 bytes)").reason.startswith("file is empty")


def test_moving_frames_helper_differs() -> None:
    a, b = list(moving_frames(0.08))[:2]
    assert not np.array_equal(a, b)
