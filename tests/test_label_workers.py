"""`distill label` with decode workers: N workers label what one does, a corrupt file among good ones is named once,
and a SIGKILL of the whole process group (or a SIGTERM of the command alone) leaves no process behind and a
label set that the same command completes with nothing lost and nothing doubled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _h264 import mixed_videos
from conftest import moving_frames
from typer.testing import CliRunner

from distill.cli import app
from distill.config import load_config
from distill.dataset import read_manifest, read_table
from distill.label import run_label
from distill.video import write_video

runner = CliRunner()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Two H.264 clips, an MPEG-4 one in a subfolder, and a corrupt file among them."""
    return mixed_videos(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="module")
def segments(videos: Path) -> Path:
    csv = videos.parent / "segments.csv"
    lines = [f"{name},0,2.5,a\n{name},2.5,9,b\n" for name in ("a.mp4", "b.mp4", "cam/c.mp4")]
    csv.write_text("video,start_s,end_s,label\n" + "".join(lines))
    return csv


def _rows(out: Path) -> list[dict]:
    return sorted(read_table(out).to_pylist(), key=lambda r: (r["video"], r["frame_index"]))


def test_two_workers_label_what_one_does_and_name_the_corrupt_file_once(tmp_path, videos, segments) -> None:
    flags = {"classes": "a,b", "teacher.annotations": str(segments), "teacher.backend": "annotations"}
    results = {}
    for workers in (1, 2):
        sampling = {"sampling.fps": 2, "sampling.workers": workers, "sampling.chunk_s": 2.0}
        summary = run_label([videos], tmp_path / f"w{workers}", load_config(overrides=flags | sampling))
        assert [f.name for f in summary.failures] == ["corrupt.mp4"]
        assert summary.stats.videos == 3 and summary.frames_labelled == 12 + 8 + 10
        assert summary.video_s == pytest.approx(6 + 4.004 + 5, abs=0.05)
        results[workers] = _rows(tmp_path / f"w{workers}")
    assert results[1] == results[2]  # images (JPEG bytes), labels, probabilities: all equal
    args = ["label", str(videos), "--classes", "a,b", "--annotations", str(segments), "--fps", "2", "--workers", "2"]
    result = runner.invoke(app, [*args, "--chunk-seconds", "2", "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert result.output.count("corrupt.mp4") == 2  # one warning line, and the summary's list of failed videos
    assert "video-hours per hour" in result.stdout and "teacher busy" in result.stdout


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from _tiny_paligemma import tiny_paligemma_dir

    return tiny_paligemma_dir(tmp_path_factory.getbasetemp())


def test_two_workers_equal_one_with_the_tiny_paligemma(tmp_path, videos, tiny_model) -> None:
    flags = {"classes": "cat,dog,bird", "teacher.model": str(tiny_model), "teacher.local_files_only": True}
    flags |= {"teacher.device": "cpu", "teacher.batch_size": 4, "sampling.fps": 1, "sampling.chunk_s": 2.0}
    rows = {}
    for workers in (1, 2):
        cfg = load_config(overrides=flags | {"sampling.workers": workers})
        run_label([videos / "a.mp4", videos / "cam"], tmp_path / f"w{workers}", cfg)
        rows[workers] = _rows(tmp_path / f"w{workers}")
    assert [(r["video"], r["frame_index"]) for r in rows[1]] == [(r["video"], r["frame_index"]) for r in rows[2]]
    assert len(rows[1]) == 6 + 5
    assert len({r["label"] for r in rows[1]}) > 1  # the random teacher does tell frames apart
    for one, two in zip(rows[1], rows[2]):
        assert one["image"] == two["image"] and one["label"] == two["label"]
        np.testing.assert_allclose(one["probs"], two["probs"], atol=1e-5)


def test_a_teacher_that_fails_to_load_leaves_no_worker_and_no_label_set(tmp_path, videos) -> None:
    """The decode workers start while the teacher loads; when loading fails they are stopped with it."""
    import multiprocessing

    from distill.errors import TeacherError

    flags = {"classes": "cat,dog", "teacher.model": str(tmp_path / "no-model"), "sampling.workers": 2}
    with pytest.raises(TeacherError, match="does not exist"):
        run_label([videos], tmp_path / "labels", load_config(overrides=flags))
    assert multiprocessing.active_children() == []
    assert not (tmp_path / "labels").exists()


def _group_alive(pgid: int) -> list[int]:
    """Processes still in process group `pgid` (zombies excluded)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def _start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_for_shards(manifest: Path, proc: subprocess.Popen, shards: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= shards:
            return
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be stopped"


def _wait_gone(pgid: int, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _group_alive(pgid)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_sigkill_of_the_process_group_then_the_same_command(tmp_path) -> None:
    write_video(tmp_path / "videos" / "long.mp4", moving_frames(24.0, size=(48, 64)), 25)  # 600 frames
    write_video(tmp_path / "videos" / "short.mp4", moving_frames(6.0, size=(48, 64)), 25)
    csv = tmp_path / "segments.csv"
    csv.write_text("video,start_s,end_s,label\nlong.mp4,0,12,a\nlong.mp4,12,25,b\nshort.mp4,0,9,a\n")
    args = ["label", str(tmp_path / "videos"), "--classes", "a,b", "--annotations", str(csv), "--fps", "25"]
    args += ["--no-dedup", "--shard-rows", "8", "--workers", "2", "--chunk-seconds", "6"]
    ref = runner.invoke(app, [*args, "--workers", "1", "--out", str(tmp_path / "ref")])
    assert ref.exit_code == 0, ref.output
    command = [sys.executable, "-m", "distill.cli", *args, "--out", str(tmp_path / "killed")]
    proc = _start(command)
    _wait_for_shards(tmp_path / "killed" / "manifest.json", proc, 2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _wait_gone(proc.pid, 2.0) == []  # no decode worker outlives the kill
    assert 16 <= read_manifest(tmp_path / "killed")["counts"]["frames"] < 750
    subprocess.run(command, check=True, timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    got, want = _rows(tmp_path / "killed"), _rows(tmp_path / "ref")
    assert len({(r["video"], r["frame_index"]) for r in got}) == len(got) == 750  # no duplicate key
    assert got == want  # same rows, images and labels included
    assert read_manifest(tmp_path / "killed")["counts"] == read_manifest(tmp_path / "ref")["counts"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
@pytest.mark.parametrize("how", ["SIGTERM to the command", "Ctrl-C to the group"])
def test_stopping_the_command_stops_every_worker_within_two_seconds(tmp_path, how: str) -> None:
    write_video(tmp_path / "videos" / "long.mp4", moving_frames(24.0, size=(48, 64)), 25)
    csv = tmp_path / "segments.csv"
    csv.write_text("video,start_s,end_s,label\nlong.mp4,0,25,a\n")
    args = ["label", str(tmp_path / "videos"), "--classes", "a,b", "--annotations", str(csv), "--fps", "25"]
    args += ["--no-dedup", "--shard-rows", "8", "--workers", "2", "--chunk-seconds", "4"]
    proc = _start([sys.executable, "-m", "distill.cli", *args, "--out", str(tmp_path / "out")])
    _wait_for_shards(tmp_path / "out" / "manifest.json", proc, 1)
    workers = [pid for pid in _group_alive(proc.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 2  # the two decode workers
    if how == "SIGTERM to the command":
        os.kill(proc.pid, signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(pid in _group_alive(proc.pid) for pid in workers):
        time.sleep(0.05)
    assert [pid for pid in workers if pid in _group_alive(proc.pid)] == []  # every worker gone within 2 s
    assert proc.wait(timeout=20) != 0  # the command stops too, having stored what it had
    assert _wait_gone(proc.pid, 2.0) == []


def test_a_chunk_is_recorded_finished_only_once_a_shard_holds_all_its_rows(tmp_path, monkeypatch) -> None:
    """Shards of 9 rows, batches of 8, chunks of 20 frames: a flush falls inside the batch that ends a chunk.
    Every time the manifest records
    finished chunks, all rows those chunks end up with must already be on disk (a SIGKILL then loses none)."""
    from distill.dataset import LabelSetWriter, read_table

    write_video(tmp_path / "videos" / "a.mp4", moving_frames(12.0, size=(48, 64)), 25)
    csv = tmp_path / "segments.csv"
    csv.write_text("video,start_s,end_s,label\na.mp4,0,13,a\n")
    snapshots = []
    real_update = LabelSetWriter.update

    def spy(self, **fields):
        if "finished" in fields:
            table = read_table(self.directory, ["video", "frame_index"])
            on_disk = set(zip(table.column("video").to_pylist(), table.column("frame_index").to_pylist()))
            state = fields["finished"]
            done = {(v, n) for v, entry in state["chunks"].items() for n in entry["numbers"]}
            snapshots.append((done, set(state["videos"]), on_disk))
        return real_update(self, **fields)

    monkeypatch.setattr(LabelSetWriter, "update", spy)
    args = ["label", str(tmp_path / "videos"), "--classes", "a,b", "--annotations", str(csv), "--fps", "10"]
    args += ["--no-dedup", "--shard-rows", "9", "--batch-size", "8", "--workers", "1", "--chunk-seconds", "2"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "labels")])
    assert result.exit_code == 0, result.output
    rows = read_table(tmp_path / "labels", ["video", "frame_index", "timestamp_s"]).to_pylist()
    assert len(rows) == 120 and len(snapshots) > 3
    for chunks, videos, on_disk in snapshots:
        for r in rows:
            if r["video"] in videos or (r["video"], int(r["timestamp_s"] // 2)) in chunks:
                assert (r["video"], r["frame_index"]) in on_disk
