"""Label-set storage: atomic shards, manifest, resume, `load_labels`, split by video."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill.dataset import LabelSetWriter, load_labels, read_manifest, read_table, split_by_video
from distill.errors import DatasetError
from distill.video import encode_jpeg

CLASSES = ["active", "idle", "error"]
TEACHER = {"backend": "annotations", "model": "segments.csv", "mode": "segments"}


def make_row(video: str, index: int, label: str | None = "idle") -> dict:
    image = np.full((24, 32, 3), index % 255, np.uint8)
    probs = [1.0 if c == label else 0.0 for c in CLASSES]
    return {
        "video": video,
        "frame_index": index,
        "timestamp_s": index / 25,
        "image": encode_jpeg(image),
        "label": label,
        "probs": probs if label else [1 / 3] * 3,
        "confidence": 1.0 if label else 1 / 3,
        "teacher": "annotations",
        "raw": None if label else "banana",
    }


def test_round_trip(tmp_path: Path) -> None:
    rows = [make_row(f"cam{v}/a.mp4", i, CLASSES[i % 3]) for v in range(2) for i in range(0, 250, 25)]
    rows.append(make_row("cam0/a.mp4", 999, None))
    with LabelSetWriter(tmp_path / "labels", CLASSES, TEACHER, config={"classes": CLASSES}, shard_rows=8) as w:
        w.add_many(rows)
    manifest = read_manifest(tmp_path / "labels")
    assert manifest["classes"] == CLASSES
    assert [s["rows"] for s in manifest["shards"]] == [8, 8, 5]
    per_class = {c: sum(r["label"] == c for r in rows) for c in CLASSES}
    assert manifest["counts"] == {"frames": 21, "per_class": per_class, "unmatched": 1}

    ds = load_labels(tmp_path / "labels")
    assert len(ds) == len(rows)
    first = ds[0]
    assert isinstance(first["image"], Image.Image) and first["image"].size == (32, 24)
    assert (first["video"], first["frame_index"], first["label"]) == (rows[0]["video"], 0, "active")
    assert first["probs"] == pytest.approx(rows[0]["probs"])
    assert ds[len(rows) - 1]["label"] is None and ds[len(rows) - 1]["raw"] == "banana"


def test_resume_skips_done_and_never_duplicates(tmp_path: Path) -> None:
    out = tmp_path / "labels"
    with LabelSetWriter(out, CLASSES, TEACHER, shard_rows=4) as w:
        w.add_many(make_row("a.mp4", i) for i in range(6))
    w = LabelSetWriter(out, CLASSES, TEACHER, shard_rows=4)
    assert w.done == {("a.mp4", i) for i in range(6)}
    w.add_many(make_row("a.mp4", i) for i in range(10) if ("a.mp4", i) not in w.done)
    w.close()
    table = read_table(out, columns=["video", "frame_index"])
    assert sorted(table.column("frame_index").to_pylist()) == list(range(10))


@pytest.mark.parametrize(
    ("classes", "teacher", "message"),
    [
        (["active", "idle"], TEACHER, "was labelled with classes"),
        (CLASSES, {**TEACHER, "model": "other.csv"}, "different teacher (model differ)"),
    ],
)
def test_incompatible_rerun_is_refused(tmp_path: Path, classes, teacher, message: str) -> None:
    with LabelSetWriter(tmp_path, CLASSES, TEACHER) as w:
        w.add(make_row("a.mp4", 0))
    with pytest.raises(DatasetError, match=re.escape(message)):
        LabelSetWriter(tmp_path, classes, teacher)
    fresh = LabelSetWriter(tmp_path, classes, teacher, overwrite=True)
    assert fresh.done == set() and read_manifest(tmp_path)["classes"] == classes


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, "does not exist; run `distill label` first"),
        (lambda d: d.mkdir(), "is not a label set (no manifest.json)"),
        (lambda d: (d.mkdir(), (d / "manifest.json").write_text("{oops")), "cannot read"),
    ],
)
def test_bad_label_set(tmp_path: Path, setup, message: str) -> None:
    target = tmp_path / "labels"
    setup(target)
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_labels(target)


def test_empty_label_set_says_so(tmp_path: Path) -> None:
    LabelSetWriter(tmp_path, CLASSES, TEACHER).close()
    with pytest.raises(DatasetError, match="has no frames yet"):
        load_labels(tmp_path)


KILLED_WRITER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {tests!r})
    import distill.dataset as ds
    from test_dataset import CLASSES, TEACHER, make_row

    real_replace = os.replace
    def slow_replace(src, dst):  # a shard's bytes are on disk but not yet renamed into place
        if str(dst).endswith(".parquet"):
            time.sleep(0.4)
        real_replace(src, dst)
    ds.os.replace = slow_replace
    with ds.LabelSetWriter({out!r}, CLASSES, TEACHER, shard_rows=5) as w:
        for i in range(10_000):
            w.add(make_row("a.mp4", i))
    """
)


def test_killed_writer_leaves_only_whole_shards(tmp_path: Path) -> None:
    out = tmp_path / "labels"
    script = KILLED_WRITER.format(tests=str(Path(__file__).parent), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until a shard is listed and the next is half-written
            listed = (out / "manifest.json").exists() and json.loads((out / "manifest.json").read_text())["shards"]
            if listed and list(out.glob(".shard-*.tmp")):
                break
            time.sleep(0.02)
        else:
            pytest.fail("the writer never got mid-shard")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    assert list(out.glob(".shard-*.tmp")), "the kill should have left a partial temp file behind"
    manifest = read_manifest(out)
    ds = load_labels(out)
    assert len(ds) == sum(s["rows"] for s in manifest["shards"]) == 5 * len(manifest["shards"])
    assert sorted(ds["frame_index"]) == list(range(len(ds)))
    # reopening resumes from the whole shards and removes the leftover
    w = LabelSetWriter(out, CLASSES, TEACHER, shard_rows=5)
    assert len(w.done) == len(ds) and not list(out.glob(".shard-*.tmp"))


def test_split_by_video_is_disjoint_and_seeded() -> None:
    videos = [f"cam{i}.mp4" for i in range(10)]
    train, val = split_by_video(videos, val_fraction=0.2, seed=0)
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(videos)
    assert len(val) == 2
    assert split_by_video(reversed(videos), 0.2, seed=0) == (train, val)  # order does not matter
    assert any(split_by_video(videos, 0.2, seed=s)[1] != val for s in range(1, 5))  # the seed does
    train, val = split_by_video(["a.mp4", "b.mp4"], 0.01)
    assert len(train) == len(val) == 1  # at least one video on each side
    assert split_by_video(["only.mp4"]) == (["only.mp4"], [])
