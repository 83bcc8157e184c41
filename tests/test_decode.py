"""Decoding only what sampling needs (`distill.decode`) and the decode workers (`distill._decode_workers`).

The reference is the plainest sampler there is: OpenCV grabs every frame in order and keeps, for each target
time, the first frame whose container time reaches it minus half a frame (the rule `distill label` always had).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from _h264 import make_h264
from conftest import solid_frames
from typer.testing import CliRunner

from distill._decode_workers import ChunkDone, DecodePool, EncodedFrame, VideoDone
from distill.cli import app
from distill.config import SamplingConfig
from distill.decode import plan_chunks, read_timeline, sample_chunk, sample_file
from distill.errors import VideoError
from distill.video import Failure, SampleStats, VideoFile, write_video


def reference(path: Path, fps: float, start_s: float = 0.0, end_s: float | None = None) -> list[tuple]:
    """(frame_index, timestamp_s, BGR image) by a full sequential decode with OpenCV and the nearest-frame rule."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    half, target, index, out = 0.5 / cap.get(cv2.CAP_PROP_FPS), start_s, -1, []
    while cap.grab():
        index += 1
        t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        if end_s is not None and t >= end_s:
            break
        if t + half < target:
            continue
        while target <= t + half:
            target += 1.0 / fps
        out.append((index, t, cap.retrieve()[1]))
    cap.release()
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    return {
        "h264-gop1s": make_h264(root / "gop1.mp4", 6, gop_s=1.0),
        "h264-gop2s-ntsc": make_h264(root / "gop2.mp4", 6, fps="30000/1001", gop_s=2.0),
        "mpeg4": write_video(root / "mp4v.mp4", solid_frames([(40, 90, 200), (200, 90, 40)], 2.0, noise=20), 25),
    }


@pytest.mark.parametrize("clip", ["h264-gop1s", "h264-gop2s-ntsc", "mpeg4"])
@pytest.mark.parametrize(("fps", "start_s", "end_s"), [(1.0, 0.0, None), (0.2, 0.0, None), (7.3, 1.3, 3.5), (60, 0, 2)])
def test_exact_mode_equals_a_full_decode(clips, clip: str, fps: float, start_s: float, end_s: float | None) -> None:
    path = clips[clip]
    want = reference(path, fps, start_s, end_s)
    sampling = SamplingConfig(fps=fps, start_s=start_s, end_s=end_s, dedup=False, chunk_s=1.7)
    got = list(sample_file(VideoFile(path, "v.mp4"), sampling))
    assert [(f.frame_index, f.timestamp_s) for f in got] == [(i, t) for i, t, _ in want]  # to the last bit
    for frame, (_, _, image) in zip(got, want):
        assert frame.video == "v.mp4"
        np.testing.assert_array_equal(frame.image, image)


def test_sparse_sampling_seeks_past_whole_keyframe_intervals(clips) -> None:
    path = clips["h264-gop1s"]  # 150 frames, a keyframe every 25
    stats = SampleStats()
    frames = list(sample_file(path, SamplingConfig(fps=0.2, dedup=False), stats))
    assert [f.timestamp_s for f in frames] == [0.0, 5.0]
    assert stats.frames_read <= 2 * 25  # at most a keyframe interval decoded per kept frame, not all 150
    dense = SampleStats()
    list(sample_file(path, SamplingConfig(fps=25, dedup=False), dense))
    assert dense.frames_read == 150  # every frame wanted: decoded once each, no seek back


@pytest.mark.parametrize("clip", ["h264-gop1s", "h264-gop2s-ntsc", "mpeg4"])
@pytest.mark.parametrize(("fps", "keyframes"), [(1.0, False), (0.2, False), (7.3, False), (1.0, True)])
def test_a_chunks_decode_cost_is_the_decoding_it_takes(clips, clip: str, fps: float, keyframes: bool) -> None:
    """The cost the Ray engine orders work by: the frames sampling really decodes, times the picture size."""
    path = clips[clip]
    sampling = SamplingConfig(fps=fps, keyframes=keyframes, dedup=False, chunk_s=2.5)
    timeline = read_timeline(path)
    height, width = cv2.VideoCapture(str(path)).read()[1].shape[:2]
    assert timeline.pixels == width * height
    for chunk in plan_chunks(VideoFile(path, "v.mp4"), sampling, timeline):
        stats = SampleStats()
        list(sample_chunk(chunk, sampling, stats))
        assert chunk.decode_cost == pytest.approx(stats.frames_read * width * height / 1e6)


def test_keyframes_mode_keeps_keyframes_at_their_own_times(clips) -> None:
    path = clips["h264-gop2s-ntsc"]
    timeline = read_timeline(path)
    keys = [(i, t) for i, (t, k) in enumerate(zip(timeline.seconds(), timeline.keyframe)) if k]
    assert len(keys) == 3 and len(timeline) == 180
    frames = list(sample_file(path, SamplingConfig(fps=1, keyframes=True, dedup=False)))
    assert [(f.frame_index, f.timestamp_s) for f in frames] == keys
    full = {i: image for i, _, image in reference(path, 100)}  # every frame
    for frame in frames:
        np.testing.assert_array_equal(frame.image, full[frame.frame_index])
    # --fps caps the rate: at most one keyframe every 3 s
    capped = list(sample_file(path, SamplingConfig(fps=1 / 3, keyframes=True, dedup=False)))
    assert [f.frame_index for f in capped] == [keys[0][0], keys[2][0]]


def test_chunks_split_by_media_time_and_dedup_within_each(tmp_path: Path) -> None:
    # 8 s of one static grey scene: one frame kept per chunk, never one per second
    clip = write_video(tmp_path / "static.mp4", solid_frames([(90, 90, 90)], 8.0, noise=2), 25)
    video = VideoFile(clip, "static.mp4")
    chunks = plan_chunks(video, SamplingConfig(fps=1, chunk_s=3))
    assert [(c.number, c.start_s, c.end_s) for c in chunks] == [(0, 0.0, 3.0), (1, 3.0, 6.0), (2, 6.0, 8.0)]
    assert [len(c.frames) for c in chunks] == [3, 3, 2]
    kept = [f.timestamp_s for c in chunks for f in sample_chunk(c, SamplingConfig(fps=1, chunk_s=3))]
    assert kept == [0.0, 3.0, 6.0]
    # max_frames_per_video counts kept frames over the whole video, so such a video is one chunk
    capped = SamplingConfig(fps=1, chunk_s=3, max_frames_per_video=2, dedup=False)
    assert len(plan_chunks(video, capped)) == 1
    assert len(list(sample_file(video, capped))) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "not a readable video"), (os.urandom(4096), "not a readable video"), (b"\x00" * 64, "not a readable")],
)
def test_unreadable_files_are_one_line_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError, match=f"^bad.mp4: {message}") as err:
        read_timeline(path)
    assert "\n" not in str(err.value)


def _events(videos: list[VideoFile], sampling: SamplingConfig, **kwargs) -> list:
    with DecodePool(videos, sampling, **kwargs) as pool:
        return list(pool.events())


def test_two_worker_processes_hand_over_what_one_thread_does_and_name_a_corrupt_file_once(tmp_path, clips) -> None:
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(clips["h264-gop1s"].read_bytes()[:5000])  # cut before the index: unreadable
    videos = [VideoFile(clips["h264-gop1s"], "a.mp4"), VideoFile(bad, "corrupt.mp4")]
    videos.append(VideoFile(clips["h264-gop2s-ntsc"], "b.mp4"))
    runs = {}
    for workers in (1, 2):
        events = _events(videos, SamplingConfig(fps=2, workers=workers, chunk_s=2), teacher_size=96)
        frames = sorted(
            (e.video, e.frame_index, e.timestamp_s, e.jpeg, e.teacher_jpeg)
            for e in events
            if isinstance(e, EncodedFrame)
        )
        failures = [e for e in events if isinstance(e, Failure)]
        assert [f.name for f in failures] == ["corrupt.mp4"] and "not a readable video" in failures[0].reason
        assert sorted(e.video for e in events if isinstance(e, VideoDone)) == ["a.mp4", "b.mp4"]
        chunks = [e for e in events if isinstance(e, ChunkDone)]
        assert sum(c.seconds for c in chunks) == pytest.approx(6 + 6.006, abs=0.1)  # every second of both clips
        runs[workers] = frames
    assert runs[1] == runs[2] and len(runs[1]) == 24
    stored = cv2.imdecode(np.frombuffer(runs[1][0][3], np.uint8), cv2.IMREAD_COLOR)
    teacher = cv2.imdecode(np.frombuffer(runs[1][0][4], np.uint8), cv2.IMREAD_COLOR)
    assert stored.shape == (240, 320, 3) and teacher.shape == (96, 128, 3)  # pre-shrunk for the teacher


def test_finished_chunks_are_not_decoded_and_done_frames_not_handed_over(clips) -> None:
    video = VideoFile(clips["h264-gop1s"], "a.mp4")
    sampling = SamplingConfig(fps=1, dedup=False, workers=1, chunk_s=2)
    events = _events([video], sampling, finished_chunks={"a.mp4": {0}}, done_frames={"a.mp4": {75}})
    frames = [e.frame_index for e in events if isinstance(e, EncodedFrame)]
    assert frames == [50, 100, 125]  # chunk 0 (frames 0, 25) skipped; frame 75 decoded but not handed over
    assert [e.number for e in events if isinstance(e, ChunkDone)] == [1, 2]
    assert [e.seconds for e in events if isinstance(e, VideoDone)] == [pytest.approx(2.0)]  # chunk 0's time


def test_sample_command_keyframes_and_workers(tmp_path, clips) -> None:
    runner = CliRunner()
    indexes = {}
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}"
        args = ["sample", str(clips["h264-gop1s"]), str(clips["h264-gop2s-ntsc"]), "--keyframes", "--no-dedup"]
        result = runner.invoke(app, [*args, "--workers", workers, "--chunk-seconds", "2", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "video-hours per hour" in result.stdout
        indexes[workers] = (out / "index.csv").read_text()
    assert indexes["1"] == indexes["2"]
    rows = [line.split(",")[:3] for line in indexes["1"].splitlines()[1:]]
    assert [(v, int(i)) for v, i, _ in rows] == [("gop1.mp4", 25 * k) for k in range(6)] + [
        ("gop2.mp4", 60 * k) for k in range(3)
    ]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--workers", "0"], "Invalid value for '--workers'"),
        (["--chunk-seconds", "0"], "chunk_s must be > 0 seconds"),
        (["--decode-device", "tpu"], "unknown decode device 'tpu'; choose one of: cpu, cuda"),
    ],
)
def test_bad_decode_flags_are_one_line_errors(tmp_path, clips, flags: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["sample", str(clips["mpeg4"]), *flags, "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and message in result.output


def test_decode_device_cuda_without_a_decoder_says_so_in_one_line(tmp_path, clips) -> None:
    from av.codec.hwaccel import hwdevices_available

    if "cuda" in hwdevices_available() and Path("/dev/nvidia0").exists():
        pytest.skip("this machine may have an NVIDIA video decoder")
    result = CliRunner().invoke(app, ["sample", str(clips["mpeg4"]), "--decode-device", "cuda", "--out", str(tmp_path)])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1
    assert lines[0].startswith("error: --decode-device cuda: no NVIDIA video decoder is usable here (")
    assert lines[0].endswith("use --decode-device cpu")


@pytest.mark.gpu
def test_nvdec_decodes_the_same_frames(clips) -> None:
    path = clips["h264-gop2s-ntsc"]
    cpu = list(sample_file(path, SamplingConfig(fps=2, dedup=False)))
    gpu = list(sample_file(path, SamplingConfig(fps=2, dedup=False, decode_device="cuda")))
    assert [(f.frame_index, f.timestamp_s) for f in gpu] == [(f.frame_index, f.timestamp_s) for f in cpu]
    assert max(np.abs(a.image.astype(int) - b.image.astype(int)).max() for a, b in zip(cpu, gpu)) <= 2
