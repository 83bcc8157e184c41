"""`distill review` with a student, on real images: scikit-learn's digits with 10% of the labels flipped.

A tiny student is trained on the noisy set (seconds on a CPU); cleanlab on out-of-fold probabilities from its
penultimate features must find the flipped frames among the first suspects.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from _digits import DIGITS as CLASSES
from _digits_review import write_noisy_digits, write_truth_csv

from distill.dataset import decode_image, read_table


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict:
    from distill.config import load_config
    from distill.export import export_onnx
    from distill.train import run_train

    root = tmp_path_factory.mktemp("digits")
    labels, flipped = write_noisy_digits(root / "labels", videos=5, scans_per_video=100, flip=0.1)
    overrides = {"student.model": "test_convnext", "student.image_size": 32, "student.pretrained": False}
    overrides |= {"train.epochs": 8, "train.batch_size": 32, "train.lr": 0.003}
    summary = run_train(labels, root / "student", load_config(overrides=overrides), accelerator="cpu", num_workers=0)
    onnx = export_onnx(summary.checkpoint, root / "student" / "student.onnx").path
    return {"labels": labels, "flipped": flipped, "student": Path(onnx), "root": root}


def test_feature_student_reads_the_pooled_features_next_to_the_logits(digits):
    import onnx

    from distill.export import Student
    from distill.export.features import FeatureStudent, feature_output

    path = digits["student"]
    assert feature_output(onnx.load(str(path))) is not None
    table = read_table(digits["labels"], columns=["image"])
    images = [decode_image(b) for b in table.column("image").to_pylist()[:40]]
    features, probs = FeatureStudent(path).features(images, batch_size=16)
    assert features.shape[0] == 40 and features.shape[1] >= 8 and np.isfinite(features).all()
    assert np.allclose(probs, Student(path).predict(images).probs, atol=1e-5)  # same model, same answers
    assert len(onnx.load(str(path)).graph.output) == 1  # the file itself is untouched


def test_flipped_labels_are_among_the_first_suspects(digits, tmp_path):
    from distill.evaluate.review import run_review

    flipped = digits["flipped"]
    truth = write_truth_csv(tmp_path / "truth.csv", digits["labels"], flipped)
    report = run_review(digits["labels"], tmp_path / "review", student_path=digits["student"], truth_csv=truth)
    assert report.summary["method"] == "cleanlab"
    rows = list(csv.DictReader((tmp_path / "review" / "review.csv").open()))
    top = {(r["video"], int(r["frame_index"])) for r in rows[: 2 * len(flipped)]}
    recall = len(top & set(flipped)) / len(flipped)
    assert recall >= 0.7, recall
    suggested_right = [r["suggested"] == flipped[(r["video"], int(r["frame_index"]))][0]
                       for r in rows[: 2 * len(flipped)] if (r["video"], int(r["frame_index"])) in flipped]  # fmt: skip
    assert np.mean(suggested_right) >= 0.5  # the suggestion is mostly the true digit
    assert all(r["student"] in CLASSES for r in rows)
    acc = report.summary["truth"]
    assert acc["frames"] == 500 and abs(acc["teacher"] - 0.9) < 1e-9  # exactly the 10% flipped are wrong
    assert set(acc["per_class"]) == set(CLASSES) and acc["student"] > 0.5
    page = (tmp_path / "review" / "review.html").read_text()
    assert "student" in page and page.count("<svg") == 5 and "Teacher against ground truth" in page


def test_cli_review_with_a_student_and_truth(digits, tmp_path):
    from typer.testing import CliRunner

    from distill.cli import app

    truth = write_truth_csv(tmp_path / "truth.csv", digits["labels"], digits["flipped"])
    args = ["review", str(digits["labels"]), "--student", str(digits["student"]), "--truth", str(truth)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "review"), "--limit", "100"])
    assert result.exit_code == 0, result.output
    text = result.stdout.replace("\n", "")
    assert "100 suspects ranked by cleanlab on the student's features" in text
    assert "teacher vs truth on 500 frames: accuracy 0.900" in text
    wrong = CliRunner().invoke(app, ["review", str(digits["labels"]), "--student", str(tmp_path / "missing.onnx")])
    assert wrong.exit_code == 1 and "missing.onnx does not exist" in wrong.output


def test_compare_sees_the_corrected_labels(digits, tmp_path):
    import shutil

    from distill.dataset import write_corrections
    from distill.evaluate import run_compare

    work = tmp_path / "labels"
    shutil.copytree(digits["labels"], work)
    truth = write_truth_csv(tmp_path / "truth.csv", work, digits["flipped"])
    before = run_compare(work, tmp_path / "before", student_path=digits["student"], truth_csv=truth)
    assert before.metrics["teacher"]["accuracy"] < 1.0  # held-out videos hold flipped frames
    write_corrections(work, {key: true for key, (true, _) in digits["flipped"].items()})
    after = run_compare(work, tmp_path / "after", student_path=digits["student"], truth_csv=truth)
    assert after.metrics["teacher"]["accuracy"] == 1.0 and after.metrics["frames"] == before.metrics["frames"]
