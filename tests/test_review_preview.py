"""`distill label --preview N`: N frames spread over the videos, one teacher call per 24, no label set written."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import solid_frames
from typer.testing import CliRunner

from distill.cli import app
from distill.config import load_config
from distill.label import build_teacher
from distill.label.preview import run_preview, spread
from distill.video import write_video

RED, GREEN, BLUE = (0, 0, 255), (0, 255, 0), (255, 0, 0)  # BGR


def clips(root: Path) -> tuple[Path, Path]:
    """Two videos (6 s and 3 s) and a CSV that covers them completely."""
    write_video(root / "videos" / "a.mp4", solid_frames([RED, GREEN, BLUE], 2.0, noise=3), 25)
    write_video(root / "videos" / "b.mp4", solid_frames([BLUE, RED], 1.5, noise=3), 25)
    csv = root / "segments.csv"
    csv.write_text(
        "video,start_s,end_s,label\na.mp4,0,2,red\na.mp4,2,4,green\na.mp4,4,6,blue\nb.mp4,0,1.5,blue\nb.mp4,1.5,3,red\n"
    )
    return root / "videos", csv


class Counting:
    """A teacher that counts its calls and the frames in each."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.classes, self.input_size = inner.classes, inner.input_size

    def label(self, frames):
        self.calls.append(len(frames))
        return self.inner.label(frames)

    def describe(self):
        return self.inner.describe()


@pytest.mark.parametrize(
    ("durations", "n", "want"),
    [([6, 3], 24, [16, 8]), ([6, 3], 2, [1, 1]), ([6, 3, 1], 2, [1, 1, 0]), ([1, 1, 1], 4, [2, 1, 1]), ([5], 3, [3])],
)
def test_frames_are_spread_over_the_videos_by_length(durations, n, want):
    assert spread(durations, n) == want


@pytest.mark.parametrize(("n", "calls"), [(24, [24]), (30, [24, 6])])
def test_preview_asks_the_teacher_once_per_24_frames(tmp_path, n, calls):
    videos, csv = clips(tmp_path)
    flags = {"classes": "red,green,blue", "teacher.backend": "annotations", "teacher.annotations": str(csv)}
    cfg = load_config(overrides=flags | {"teacher.batch_size": 4})  # the labelling batch size does not apply
    teacher = Counting(build_teacher(cfg, root=videos))
    preview = run_preview([videos], cfg, n, teacher=teacher)
    assert teacher.calls == calls and preview.calls == len(calls)
    rows = preview.table.to_pylist()
    assert len(rows) == n and preview.skipped == 0
    by_video = {v: [r for r in rows if r["video"] == v] for v in ("a.mp4", "b.mp4")}
    assert abs(len(by_video["a.mp4"]) - 2 * len(by_video["b.mp4"])) <= 1  # 6 s and 3 s of video
    times = [r["timestamp_s"] for r in by_video["a.mp4"]]
    assert times == sorted(times) and times[0] < 1.0 and times[-1] > 5.0  # spread over the whole video
    for r in rows:  # the seek landed where the CSV says that colour is
        truth = {"a.mp4": ["red", "green", "blue"][min(int(r["timestamp_s"] // 2), 2)],
                 "b.mp4": "blue" if r["timestamp_s"] < 1.5 else "red"}[r["video"]]  # fmt: skip
        assert r["label"] == truth


def test_cli_preview_writes_a_review_page_and_no_label_set(tmp_path):
    videos, csv = clips(tmp_path)
    out = tmp_path / "runs" / "labels"
    args = ["label", str(videos), "--classes", "red,green,blue", "--annotations", str(csv), "--preview", "24"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not out.exists()  # no label set, not even its folder
    page = tmp_path / "runs" / "labels-preview" / "review.html"
    assert page.is_file() and str(page) in result.stdout.replace("\n", "")
    assert "24 frames" in result.stdout and "1 teacher call" in result.stdout
    text = page.read_text()
    assert "distill label --preview" in text and all(f"{c}: " in text for c in ("red", "green", "blue"))


def test_cli_preview_with_a_tiny_paligemma(tmp_path, tmp_path_factory):
    from _tiny_paligemma import tiny_paligemma_dir

    model = tiny_paligemma_dir(tmp_path_factory.getbasetemp())
    videos, _ = clips(tmp_path)
    out = tmp_path / "labels"
    args = ["label", str(videos), "--classes", "cat,dog,bird", "--teacher-model", str(model), "--local-files-only"]
    result = CliRunner().invoke(app, [*args, "--device", "cpu", "--preview", "6", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "previewed 6 frames in 1 teacher call(s)" in result.stdout and not out.exists()
    text = (tmp_path / "labels-preview" / "review.html").read_text()
    assert all(f"{c}: " in text for c in ("cat", "dog", "bird")) and "confidence " in text


def test_preview_frames_carry_the_index_and_time_a_labelling_run_stores(tmp_path):
    """The preview's frames are frames of the sampling timeline: same frame index, same timestamp, same pixels."""
    from distill.decode import sample_frames
    from distill.video import find_videos

    videos, csv = clips(tmp_path)
    flags = {"classes": "red,green,blue", "teacher.backend": "annotations", "teacher.annotations": str(csv)}
    cfg = load_config(overrides=flags)
    preview = run_preview([videos], cfg, 7, teacher=build_teacher(cfg, root=videos))
    every = {}
    for video in find_videos([videos])[0]:
        every |= {(f.video, f.frame_index): f.timestamp_s for f in sample_frames(video, fps=25)}
    rows = preview.table.to_pylist()
    assert len(rows) == 7
    for r in rows:
        assert every[(r["video"], r["frame_index"])] == r["timestamp_s"]
