"""`distill review`: suspects without a student, review.html / review.csv, and corrections that last."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from _labelsets import CLASSES, write_label_set

from distill.dataset import load_labels, read_corrections, read_table, write_corrections
from distill.errors import DatasetError
from distill.evaluate._suspects import flicker_marks, rank_without_student
from distill.evaluate.review import apply_review, run_review


def write_rows(path: Path, rows: list[dict]) -> None:
    """Save review.csv rows as a person would after filling in some `corrected` cells."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def labels(tmp_path_factory) -> Path:
    return write_label_set(tmp_path_factory.mktemp("review") / "labels", videos=3, frames_per_class=6, flip=0.1)


def test_without_a_student_flipped_uncertain_frames_rank_first():
    rng = np.random.default_rng(3)
    n, k = 300, 4
    truth = np.repeat(rng.integers(0, k, n // 10), 10)  # scenes of ten frames
    said = truth.copy()
    flipped = rng.choice(n, 30, replace=False)
    said[flipped] = (truth[flipped] + rng.integers(1, k, 30)) % k
    conf = rng.uniform(0.7, 0.99, n)  # the teacher is sure of the right labels ...
    conf[flipped] = rng.uniform(0.3, 0.5, 30)  # ... and unsure of the wrong ones
    conf[rng.choice(np.setdiff1d(np.arange(n), flipped), 20, replace=False)] = 0.55  # some right ones are unsure too
    probs = np.zeros((n, k), np.float32)
    probs[np.arange(n), said] = conf
    probs[np.arange(n), (said + 1) % k] = 1 - conf
    videos = np.array(["a.mp4"] * (n // 2) + ["b.mp4"] * (n // 2), dtype=object)
    t = np.tile(np.arange(n // 2, dtype=float) * 5.0, 2)  # 5 s apart: no flicker, confidence alone ranks
    s = rank_without_student([str(c) for c in range(k)], videos, t, said, probs, conf, np.ones(n, bool))
    assert set(s.index[:30]) == set(flipped.tolist())
    assert s.method == "confidence+flicker" and np.all(np.diff(s.score) <= 0)
    assert s.reason[0].startswith("confidence 0.")


def test_a_one_frame_blip_is_a_suspect_with_the_neighbours_label():
    label = np.array([0, 0, 1, 0, 0, 2, 2, 2])
    videos = np.array(["v"] * 8, dtype=object)
    t = np.arange(8, dtype=float)
    changed, blip = flicker_marks(videos, t, label)
    assert blip.tolist() == [False, False, True, False, False, False, False, False]
    assert changed.tolist() == [False, True, True, True, True, True, False, False]
    conf = np.full(8, 0.95)
    s = rank_without_student(["a", "b", "c"], videos, t, label, np.zeros((8, 3)), conf, np.ones(8, bool))
    assert s.index[0] == 2 and s.suggested[0] == 0 and "blip" in s.reason[0]
    two = np.array(["v"] * 5 + ["w"] * 3, dtype=object)  # a label change across videos is no flicker
    assert flicker_marks(two, t, label)[0].tolist() == [False, True, True, True, False, False, False, False]
    t_gap = np.array([0, 1, 2, 3, 4, 60, 61, 62], float)  # nor one across a gap in time
    assert not flicker_marks(videos, t_gap, label)[0][4:].any()


def test_review_writes_a_self_contained_page_and_a_csv(labels, tmp_path):
    report = run_review(labels, tmp_path / "review")
    page = (tmp_path / "review" / "review.html").read_text()
    assert "<script" not in page and "<link" not in page and "url(" not in page
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)  # every picture is inlined
    assert not re.search(r"https?://", page)
    for name in CLASSES:
        assert f"{name}: " in page  # a section per class
    assert page.count("<svg") == 3  # a timeline per video
    rows = list(csv.DictReader((tmp_path / "review" / "review.csv").open()))
    assert rows and [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    assert all(r["corrected"] == "" and r["label"] in CLASSES for r in rows)
    assert [float(r["score"]) for r in rows] == sorted((float(r["score"]) for r in rows), reverse=True)
    assert report.summary["frames"] == 3 * (4 * 6 + 2) and report.summary["method"] == "confidence+flicker"
    assert report.summary["suspects"] == len(rows)


def test_corrections_change_what_readers_see_and_last(labels, tmp_path):
    import shutil

    from distill.train.data import load_rows

    work = tmp_path / "labels"
    shutil.copytree(labels, work)
    run_review(work, tmp_path / "review")
    path = tmp_path / "review" / "review.csv"
    rows = list(csv.DictReader(path.open()))
    chosen = rows[:3]
    for r in chosen:  # correct to a class other than the current label
        r["corrected"] = next(c for c in CLASSES if c != r["label"])
    write_rows(path, rows)
    teacher_before = read_table(work, corrected=False)
    assert apply_review(work, path) == {"corrections": 3, "changed": 3, "unchanged": 0}
    want = {(r["video"], int(r["frame_index"])): r["corrected"] for r in chosen}
    assert read_corrections(work) == want

    def labels_of(table):
        keys = zip(table.column("video").to_pylist(), table.column("frame_index").to_pylist())
        return dict(zip(keys, table.column("label").to_pylist()))

    now, teacher = labels_of(read_table(work)), labels_of(read_table(work, corrected=False))
    assert teacher == labels_of(teacher_before)  # the teacher's rows stay
    assert all(now[k] == v for k, v in want.items()) and all(teacher[k] != v for k, v in want.items())
    assert {k: v for k, v in now.items() if k not in want} == {k: v for k, v in teacher.items() if k not in want}
    fixed = read_table(work, columns=["video", "frame_index", "probs", "teacher", "confidence"])
    i = list(zip(fixed.column("video").to_pylist(), fixed.column("frame_index").to_pylist())).index(next(iter(want)))
    assert fixed.column("teacher")[i].as_py() == "human" and fixed.column("confidence")[i].as_py() == 1.0
    assert sorted(fixed.column("probs")[i].as_py()) == [0.0] * (len(CLASSES) - 1) + [1.0]

    ds = load_labels(work)
    assert ds.column_names == teacher_before.column_names
    assert labels_of(ds.data.table) == now and ds.features["image"].__class__.__name__ == "Image"
    rows_seen = load_rows(work)  # what `distill train` reads
    for (video, index), label in want.items():
        at = np.flatnonzero((rows_seen.video == video) & (rows_seen.frame_index == index))
        assert [rows_seen.classes[j] for j in rows_seen.label[at]] == [label]
        assert rows_seen.probs[at].max() == 1.0

    files = {p.name: p.read_bytes() for p in work.iterdir()}
    assert apply_review(work, path) == {"corrections": 3, "changed": 0, "unchanged": 3}
    assert {p.name: p.read_bytes() for p in work.iterdir()} == files  # applying twice changes nothing

    review = run_review(work, tmp_path / "again")
    assert review.summary["corrected"] == 3
    assert not set(want) & {(review_row["video"], int(review_row["frame_index"]))
                             for review_row in csv.DictReader((tmp_path / "again" / "review.csv").open())}  # fmt: skip


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.update(corrected="purple"), "line 2: corrected label 'purple' is not a class"),
        (lambda r: r.update(corrected=CLASSES[0], frame_index="99999"), "holds no frame 99999 of"),
        (lambda r: r.update(corrected=CLASSES[0], video="nope.mp4"), "holds no frame"),
        (lambda r: r.update(corrected=CLASSES[0], frame_index="x"), "frame_index 'x' is not a number"),
    ],
    ids=["unknown-class", "unknown-frame", "unknown-video", "bad-index"],
)
def test_bad_corrections_are_one_line_errors(labels, tmp_path, edit, message):
    run_review(labels, tmp_path / "review")
    path = tmp_path / "review" / "review.csv"
    rows = list(csv.DictReader(path.open()))
    edit(rows[0])
    write_rows(path, rows)
    before = (labels / "manifest.json").read_bytes()
    with pytest.raises(DatasetError, match=re.escape(message)) as info:
        apply_review(labels, path)
    assert "\n" not in str(info.value)
    assert (labels / "manifest.json").read_bytes() == before and not (labels / "corrections.parquet").exists()


def test_write_corrections_checks_classes_and_frames(labels):
    with pytest.raises(DatasetError, match="is not a class"):
        write_corrections(labels, {("cam0.mp4", 0): "nope"})
    with pytest.raises(DatasetError, match="holds no frame"):
        write_corrections(labels, {("cam0.mp4", 1): CLASSES[0]})
    with pytest.raises(DatasetError, match="no column 'corrected'"):
        bad = labels.parent / "bad.csv"
        bad.write_text("video,frame_index\ncam0.mp4,0\n")
        apply_review(labels, bad)


def test_cli_review_then_apply(labels, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from distill.cli import app

    work, out = tmp_path / "labels", tmp_path / "review"
    shutil.copytree(labels, work)
    runner = CliRunner()
    result = runner.invoke(app, ["review", str(work), "--out", str(out), "--limit", "10"])
    assert result.exit_code == 0, result.output
    text = result.stdout.replace("\n", "")
    assert "78 frames from 3 video(s)" in text and "suspects ranked by confidence and flicker" in text
    assert str(out / "review.html") in text
    rows = list(csv.DictReader((out / "review.csv").open()))
    assert len(rows) == 10
    rows[0]["corrected"] = CLASSES[0] if rows[0]["label"] != CLASSES[0] else CLASSES[1]
    write_rows(out / "review.csv", rows)
    applied = runner.invoke(app, ["review", str(work), "--apply", str(out / "review.csv")])
    assert applied.exit_code == 0, applied.output
    assert "applied 1 correction(s)" in applied.stdout and "1 new or changed" in applied.stdout
    again = runner.invoke(app, ["review", str(work), "--apply", str(out / "review.csv")])
    assert "0 new or changed, 1 already stored" in again.stdout
    rows[0]["corrected"] = "nope"
    write_rows(out / "review.csv", rows)
    bad = runner.invoke(app, ["review", str(work), "--apply", str(out / "review.csv")])
    assert bad.exit_code == 1 and "line 2: corrected label 'nope' is not a class" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    missing = runner.invoke(app, ["review", str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "does not exist" in missing.output
