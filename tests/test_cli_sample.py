"""`distill sample` end to end in process: outputs, summary, bad inputs, exit codes."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest
from conftest import moving_frames
from typer.testing import CliRunner

from distill.cli import app
from distill.video import write_video

runner = CliRunner()


def _truncated(dir: Path) -> Path:
    full = write_video(dir / "full.tmp.mp4", moving_frames(4))
    data = full.read_bytes()
    full.unlink()
    (dir / "cut.mp4").write_bytes(data[: len(data) // 2])
    return dir / "cut.mp4"


def _unreadable(dir: Path) -> Path:
    path = dir / "locked.mp4"
    if os.geteuid() == 0:  # root reads anything: a dangling link is the unreadable file we can make
        path.symlink_to(dir / "deleted-target.mp4")
    else:
        write_video(path, moving_frames(1))
        path.chmod(0)
    return path


def _no_videos(dir: Path) -> Path:
    folder = dir / "docs"
    folder.mkdir()
    (folder / "readme.txt").write_text("no videos here")
    return folder


def _file(name: str, content: bytes):
    def make(dir: Path) -> Path:
        (dir / name).write_bytes(content)
        return dir / name

    return make


BAD_INPUTS = [
    ("zero-byte file", _file("empty.mp4", b""), "empty.mp4: file is empty (0 bytes)"),
    ("text file named .mp4", _file("notes.mp4", b"hello"), "notes.mp4: not a readable video"),
    ("truncated video", _truncated, "cut.mp4: not a readable video (corrupt, truncated"),
    ("unreadable file", _unreadable, "locked.mp4: "),
    ("missing path", lambda d: d / "missing.mp4", "missing.mp4: no such file or folder"),
    ("folder with no videos", _no_videos, "docs: folder holds no videos"),
]


def _warned(expected: str, text: str) -> bool:
    """`warning: skipping <name as given>: <reason>`; a path given directly is shown as typed."""
    return re.search(r"warning: skipping (\S*/)?" + re.escape(expected), text) is not None


def _invoke(*args: str):
    return runner.invoke(app, ["sample", *map(str, args)])


@pytest.mark.parametrize(("what", "make", "warning"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_alone_fails_with_one_line(tmp_path: Path, what: str, make, warning: str) -> None:
    bad = make(tmp_path)
    result = _invoke(bad, "--out", tmp_path / "out")
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("warning: ")] == [
        f"warning: skipping {lines[0].split('skipping ')[1]}"
    ]
    assert _warned(warning, lines[0])
    assert lines[-1].startswith("error: no video could be sampled")
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("what", "make", "warning"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_next_to_good_clips(tmp_path: Path, what: str, make, warning: str) -> None:
    good = write_video(tmp_path / "good.mp4", moving_frames(3))
    bad = make(tmp_path)
    result = _invoke(good, bad, "--out", tmp_path / "out", "--fps", "1")
    assert result.exit_code == 0, result.output
    assert _warned(warning, result.stderr)
    with open(tmp_path / "out" / "index.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["video"] for r in rows} == {"good.mp4"} and len(rows) == 3


def test_folder_mixing_bad_and_good(tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    (root / "cam2").mkdir(parents=True)
    write_video(root / "cam1.mp4", moving_frames(3))
    write_video(root / "cam2" / "b.mkv", moving_frames(2))
    (root / "empty.mp4").write_bytes(b"")
    (root / "notes.mp4").write_text("not a video")
    _truncated(root)
    (root / "notes.txt").write_text("ignored: not a video extension")
    result = _invoke(root, "--out", tmp_path / "out", "--no-dedup")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("warning: skipping") == 3
    assert "sampled 2 video(s): 5 frames kept, 0 near-duplicates skipped, 3 failed" in " ".join(result.stdout.split())
    with open(tmp_path / "out" / "index.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["video", "frame_index", "timestamp_s", "path"]
    assert sorted({r["video"] for r in rows}) == ["cam1.mp4", "cam2/b.mkv"]
    for row in rows:  # every JPEG exists, path relative to the output folder
        image = (tmp_path / "out" / row["path"]).read_bytes()
        assert image[:2] == b"\xff\xd8"
    assert (tmp_path / "out" / "config.yaml").exists()


def test_ten_second_clip_at_one_fps(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.mp4", moving_frames(10, fps=25), fps=25)
    result = _invoke(clip, "--out", tmp_path / "out", "--fps", "1")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "out" / "index.csv") as fh:
        stamps = [float(r["timestamp_s"]) for r in csv.DictReader(fh)]
    assert len(stamps) == 10
    assert all(abs(t - i) <= 1 / 25 for i, t in enumerate(stamps))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fps", "0"], "error: fps must be > 0 (got 0.0); try --fps 1"),
        (["--fps", "-1"], "error: fps must be > 0"),
        (["--config", "nope.yaml"], "error: config file nope.yaml does not exist"),
        (["--start", "5", "--end", "2"], "error: end_s (2.0) must be greater than start_s (5.0)"),
    ],
)
def test_bad_flags_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    clip = write_video(tmp_path / "clip.mp4", moving_frames(1))
    result = _invoke(clip, "--out", tmp_path / "out", *args)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [message] or result.stderr.strip().startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.mp4", moving_frames(1))
    result = runner.invoke(app, ["--debug", "sample", str(clip), "--fps", "0"])
    assert result.exit_code == 1
    assert type(result.exception).__name__ == "ConfigError"


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "sample" in result.stdout
