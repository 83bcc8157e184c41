"""`distill label --engine ray`: Ray run for real on this machine (`ray.init(num_cpus=2)`, once for the module).

The Ray engine gives the local engine's label set (annotations teacher, with a corrupt file among good ones, and
the tiny random PaliGemma); a teacher actor killed mid-run, a decode worker that keeps crashing and a driver
SIGKILLed mid-run lose and double nothing; without Ray, `--engine ray` is one line naming the install command
and nothing else imports Ray. Failures are made on demand inside Ray's workers by `_ray_hooks.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from _h264 import make_h264, mixed_videos
from _ray_hooks import register_dying
from conftest import moving_frames
from typer.testing import CliRunner

from distill.cli import app
from distill.config import load_config
from distill.dataset import read_manifest, read_table
from distill.label import RayLabelSummary, run_label, run_label_ray
from distill.label._ray_driver import Ledger
from distill.video import VideoFile, write_video

runner = CliRunner()
TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def ray_address():
    """Ray on two CPUs for this module; its workers run `_ray_hooks.install` first. Yields the cluster address."""
    ray = pytest.importorskip("ray")
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    env = {"worker_process_setup_hook": "_ray_hooks.install", "env_vars": {"PYTHONPATH": path}}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", runtime_env=env)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Two H.264 clips, an MPEG-4 one in a subfolder, and a corrupt file among them."""
    return mixed_videos(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="module")
def segments(videos: Path) -> Path:
    csv = videos.parent / "segments.csv"
    lines = [f"{name},0,2.5,a\n{name},2.5,9,b\n" for name in ("a.mp4", "b.mp4", "cam/c.mp4", "crash.mp4")]
    csv.write_text("video,start_s,end_s,label\n" + "".join(lines))
    return csv


def _flags(segments: Path, **more) -> dict:
    flags = {"classes": "a,b", "teacher.backend": "annotations", "teacher.annotations": str(segments)}
    return flags | {"sampling.fps": 2, "sampling.workers": 1, "sampling.chunk_s": 2.0} | more


def _rows(out: Path) -> list[dict]:
    return sorted(read_table(out).to_pylist(), key=lambda r: (r["video"], r["frame_index"]))


def _same_label_sets(got: Path, want: Path) -> None:
    a, b = _rows(got), _rows(want)
    assert len({(r["video"], r["frame_index"]) for r in a}) == len(a)  # no duplicate key
    assert [(r["video"], r["frame_index"]) for r in a] == [(r["video"], r["frame_index"]) for r in b]
    for x, y in zip(a, b):
        assert x["image"] == y["image"] and x["label"] == y["label"] and x["timestamp_s"] == y["timestamp_s"]
        np.testing.assert_allclose(x["probs"], y["probs"], atol=1e-5)
    mg, mw = read_manifest(got), read_manifest(want)
    assert mg["counts"] == mw["counts"] and mg["finished"] == mw["finished"] and mg["teacher"] == mw["teacher"]


def test_ray_labels_what_the_local_engine_labels_and_names_the_corrupt_file(tmp_path, ray_address, videos, segments):
    from ray.data._internal.execution.resource_manager import ResourceManager

    interval = getattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", None)  # the run looks more often
    local = run_label([videos], tmp_path / "local", load_config(overrides=_flags(segments)))
    assert [f.name for f in local.failures] == ["corrupt.mp4"] and local.frames_labelled == 12 + 8 + 10
    task = tmp_path / "task.yaml"  # `engine: ray` in the task config picks the engine
    data = {"classes": ["a", "b"], "engine": "ray", "sampling": {"fps": 2, "chunk_s": 2.0}}
    task.write_text(yaml.safe_dump(data | {"teacher": {"backend": "annotations", "annotations": str(segments)}}))
    args = ["label", str(videos), "--config", str(task), "--out", str(tmp_path / "ray")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "labelled 30 frames" in result.stdout and "1 video(s) failed: corrupt.mp4" in result.stdout
    assert "Ray: 1 teacher actor(s) on CPUs, 1 decode CPU(s)" in result.stdout
    _same_label_sets(tmp_path / "ray", tmp_path / "local")
    run = read_manifest(tmp_path / "ray")["run"]
    assert run["engine"] == "ray" and run["frames_labelled"] == 30 and run["videos_failed"][0].startswith("corrupt")
    again = runner.invoke(app, args)  # the same command again: everything is finished
    assert again.exit_code == 0 and "labelled 0 frames" in again.stdout and "3 videos already done" in again.stdout
    assert getattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", None) == interval  # and puts it back


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from _tiny_paligemma import tiny_paligemma_dir

    return tiny_paligemma_dir(tmp_path_factory.getbasetemp())


def test_ray_with_the_tiny_paligemma_equals_local(tmp_path, ray_address, videos, tiny_model):
    from _tiny_paligemma import tiny_config

    cfg = tiny_config(tiny_model, **{"teacher.batch_size": 4, "sampling.fps": 1, "sampling.chunk_s": 2.0})
    inputs = [videos / "a.mp4", videos / "cam"]
    local = run_label(inputs, tmp_path / "local", cfg)
    ray = run_label(inputs, tmp_path / "ray", dataclasses.replace(cfg, engine="ray"))  # the API honours `engine`
    assert isinstance(ray, RayLabelSummary) and not isinstance(local, RayLabelSummary)
    assert ray.frames_labelled == local.frames_labelled == 6 + 5
    assert len({r["label"] for r in _rows(tmp_path / "ray")}) > 1  # the random teacher does tell frames apart
    _same_label_sets(tmp_path / "ray", tmp_path / "local")


@pytest.fixture
def dying_backend(monkeypatch):
    """The `dying` teacher on the driver too (it describes the teacher before any actor runs), for one test only."""
    from distill.label import _teacher

    monkeypatch.setattr(_teacher, "_BACKENDS", dict(_teacher._BACKENDS))
    register_dying()


def test_a_teacher_actor_killed_mid_run_loses_and_doubles_no_frame(
    tmp_path, ray_address, videos, segments, dying_backend
):
    csv = tmp_path / "segments.csv"
    csv.write_text(segments.read_text())
    csv.with_suffix(".kill-once").touch()  # the `dying` teacher SIGKILLs its actor on its second batch
    flags = _flags(csv, **{"teacher.batch_size": 2})
    run_label([videos], tmp_path / "local", load_config(overrides=flags))
    summary = run_label_ray([videos], tmp_path / "ray", load_config(overrides=flags | {"teacher.backend": "dying"}))
    assert csv.with_suffix(".killed").exists()  # the actor was killed, and Ray replaced it
    assert summary.frames_labelled == 30 and [f.name for f in summary.failures] == ["corrupt.mp4"]
    _same_label_sets(tmp_path / "ray", tmp_path / "local")


def test_a_chunk_whose_worker_keeps_dying_is_retried_then_named_while_the_rest_go_on(tmp_path, ray_address, segments):
    folder = tmp_path / "videos"
    make_h264(folder / "crash.mp4", 2, gop_s=1.0)  # decoding it SIGKILLs the worker (`_ray_hooks`)
    write_video(folder / "cam" / "c.mp4", moving_frames(5.0), 25)
    cfg = load_config(overrides=_flags(segments, **{"ray.max_retries": 1}))
    summary = run_label_ray([folder], tmp_path / "ray", cfg)
    assert [f.name for f in summary.failures] == ["crash.mp4"]
    assert "failed 2 times" in summary.failures[0].reason
    assert summary.frames_labelled == 10 and summary.stats.videos == 1
    finished = read_manifest(tmp_path / "ray")["finished"]
    assert list(finished["videos"]) == ["cam/c.mp4"] and "crash.mp4" not in finished["chunks"]


def _wait_for_shards(manifest: Path, proc: subprocess.Popen, shards: int) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= shards:
            return
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"


def test_sigkill_of_the_driver_then_the_same_command(tmp_path, ray_address):
    write_video(tmp_path / "videos" / "long.mp4", moving_frames(24.0, size=(48, 64)), 25)  # 600 frames
    write_video(tmp_path / "videos" / "short.mp4", moving_frames(6.0, size=(48, 64)), 25)
    csv = tmp_path / "segments.csv"
    csv.write_text("video,start_s,end_s,label\nlong.mp4,0,12,a\nlong.mp4,12,25,b\nshort.mp4,0,9,a\n")
    args = ["label", str(tmp_path / "videos"), "--classes", "a,b", "--annotations", str(csv), "--fps", "25"]
    args += ["--no-dedup", "--shard-rows", "8", "--chunk-seconds", "6", "--batch-size", "4"]
    ref = runner.invoke(app, [*args, "--out", str(tmp_path / "ref")])
    assert ref.exit_code == 0, ref.output
    args += ["--engine", "ray", "--ray-address", ray_address, "--out", str(tmp_path / "killed")]
    command = [sys.executable, "-m", "distill.cli", *args]  # a driver joining this module's Ray
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_for_shards(tmp_path / "killed" / "manifest.json", proc, 2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 16 <= read_manifest(tmp_path / "killed")["counts"]["frames"] < 750
    again = runner.invoke(app, args)  # the same command, here
    assert again.exit_code == 0 and "resumed: " in again.stdout, again.output
    got = _rows(tmp_path / "killed")
    assert len({(r["video"], r["frame_index"]) for r in got}) == len(got) == 750  # no duplicate key
    assert got == _rows(tmp_path / "ref")  # same rows, images and labels included
    assert read_manifest(tmp_path / "killed")["counts"] == read_manifest(tmp_path / "ref")["counts"]


def test_a_teacher_that_fails_to_load_is_one_line_and_leaves_no_label_set(tmp_path, ray_address, videos):
    csv = tmp_path / "labels.csv"
    csv.write_text("video,start_s,end_s,label\na.mp4,0,1,purple\n")
    args = ["label", str(videos), "--classes", "a,b", "--annotations", str(csv), "--engine", "ray"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "is not one of the classes" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


# --- without Ray -----------------------------------------------------------------------------------------------


def test_without_ray_the_engine_is_a_one_line_error(tmp_path, monkeypatch, videos, segments):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    args = ["label", str(videos), "--classes", "a,b", "--annotations", str(segments), "--engine", "ray"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: --engine ray needs Ray, which is not installed; run: pip install 'distill[ray]'"]
    assert not (tmp_path / "out").exists()


def test_nothing_but_the_ray_engine_imports_ray():
    code = (
        "import sys, distill.cli, distill.label, distill.sample, distill.export, distill.evaluate, distill.realtime\n"
        "from distill.cli import app\n"
        "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_unknown_engine_is_a_one_line_error(tmp_path, videos, segments):
    args = ["label", str(videos), "--classes", "a,b", "--annotations", str(segments), "--engine", "spark"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: unknown engine 'spark'; choose one of: local, ray"


# --- the driver's bookkeeping ----------------------------------------------------------------------------------


def _chunk(video: str, number: int, start: float, end: float):
    from distill.decode import Chunk

    return Chunk(VideoFile(Path(video), video), number, start, end, frames=(), keyframes=())


def test_ledger_finishes_chunks_and_videos_whatever_order_rows_come_in():
    ledger = Ledger()
    assert ledger.plan("v", [_chunk("v", 0, 0, 2), _chunk("v", 1, 2, 4)], duration_s=5.0) == 0.0
    assert ledger.plan("empty", [], duration_s=3.0) == 3.0  # nothing left to do: finished at once
    assert ledger.chunk_done("v", 1, frames=2) == 0.0  # its chunk row comes before its frames
    assert ledger.frame("v", 1, 50) and not ledger.frame("v", 1, 50)  # a frame sent twice is stored once
    assert ledger.settle("v", 1) == 0.0
    assert ledger.frame("v", 1, 60) and ledger.settle("v", 1) == 2.0
    assert ledger.frame("v", 0, 0) and ledger.chunk_done("v", 0, frames=1) == 2.0 + 1.0  # the video's rest: 1 s
    assert ledger.chunk_done("v", 0, frames=1) == 0.0  # a chunk row sent twice counts once
    assert ledger.take_finished(set()) == ([("v", 1), ("v", 0)], ["empty", "v"])
    assert ledger.take_finished(set()) == ([], [])
    assert ledger.videos_finished == 2 and ledger.total_s == 8.0 and ledger.lost(3) == []


def test_ledger_keeps_failed_and_lost_videos_open():
    ledger = Ledger()
    ledger.plan("bad", [_chunk("bad", 0, 0, 2), _chunk("bad", 1, 2, 4)], duration_s=4.0)
    ledger.plan("lost", [_chunk("lost", 0, 0, 2)], duration_s=2.0)
    ledger.plan("ok", [_chunk("ok", 0, 0, 2)], duration_s=2.0)
    ledger.chunk_done("bad", 0, frames=0)
    assert ledger.fail("bad", "cannot decode near 2.000 s").name == "bad" and ledger.fail("bad", "again") is None
    ledger.chunk_done("ok", 0, frames=0)
    assert ledger.take_finished(skip={"ok"}) == ([("bad", 0)], [])  # `skip`: a frame the teacher failed
    lost = ledger.lost(4)
    assert [f.name for f in lost] == ["lost"] and "chunk at 0-2 s failed 4 times" in lost[0].reason
