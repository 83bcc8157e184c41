"""`distill train` end to end on generated label sets (CPU, tiny timm models, seconds per run)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from _labelsets import CLASSES, write_label_set
from typer.testing import CliRunner

from distill.cli import app
from distill.config import load_config
from distill.dataset import LabelSetWriter
from distill.train import build_meta, create_student, load_student, run_train, save_student

TASK = """
student: {model: test_convnext, image_size: 64, pretrained: false}
train: {epochs: 8, batch_size: 32, lr: 0.003}
"""


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sets")
    return {
        "main": write_label_set(root / "labels", videos=8),
        "extra": write_label_set(root / "extra", videos=2, frames_per_class=3, prefix="hard", seed=9),
        "hard": write_label_set(root / "hard-only", videos=4, frames_per_class=10, soft=False, seed=4),
    }


def test_cli_trains_a_student_that_agrees_with_the_teacher(sets, tmp_path):
    config, out = tmp_path / "task.yaml", tmp_path / "student"
    config.write_text(TASK)
    args = ["train", str(sets["main"]), "--config", str(config), "--extra", str(sets["extra"])]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--accelerator", "cpu"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["agreement"] >= 0.95, metrics
    assert metrics["accuracy"] >= 0.9 and metrics["macro_f1"] >= 0.9
    assert set(metrics["per_class"]) == set(CLASSES)
    assert sum(map(sum, metrics["confusion"]["matrix"])) == metrics["frames"]
    splits = json.loads((out / "splits.json").read_text())
    assert splits["mode"] == "by-video" and not set(splits["videos"]["train"]) & set(splits["videos"]["val"])
    assert splits["counts"]["train"]["extra_frames"] == 2 * len(CLASSES) * 3  # every labelled extra frame
    assert metrics["frames"] == splits["counts"]["val"]["frames"]
    audit = json.loads((out / "label_audit.json").read_text())
    assert sum(audit["classes"].values()) == 8 * 4 * 12 + 2 * 4 * 3 and audit["unmatched"] == 10 * 2
    assert "labels: " in result.output and "split by-video" in result.output and "agreement" in result.output
    assert (out / "config.yaml").read_text().count("test_convnext") == 1 and (out / "last.ckpt").is_file()

    model, meta = load_student(out / "student.ckpt")
    assert meta.classes == tuple(CLASSES) and meta.model == "test_convnext" and meta.image_size == 64
    assert meta.metrics["agreement"] == metrics["agreement"]
    assert meta.label_set["path"] == str(sets["main"].resolve()) and meta.split.mode == "by-video"
    assert list(meta.split.val_videos) == splits["videos"]["val"]  # the split itself travels with the student
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, len(CLASSES))

    from distill.export import Student

    student = Student(out / "student.onnx")
    assert list(student.classes) == CLASSES and student.image_size == 64


def test_hard_labels_train_and_a_run_resumes(sets, tmp_path):
    cfg_overrides = {"student.model": "test_convnext", "student.image_size": 32, "student.pretrained": False}
    cfg_overrides |= {"train.batch_size": 16, "train.lr": 0.003}
    cfg = load_config(overrides={**cfg_overrides, "train.epochs": 3})
    out = tmp_path / "run"
    first = run_train(sets["hard"], out, cfg, accelerator="cpu")
    assert not first.soft  # the set has no distributions: hard labels, no mixup
    assert first.epochs == 3 and first.metrics["agreement"] >= 0.7  # chance is 0.25
    longer = load_config(overrides={**cfg_overrides, "train.epochs": 5})
    resumed = run_train(sets["hard"], out, longer, accelerator="cpu", resume=out / "last.ckpt")
    assert resumed.epochs == 5
    first_log, second_log = (list(csv.DictReader(p.open())) for p in sorted(out.glob("logs/version_*/metrics.csv")))
    last_step = max(int(r["step"]) for r in first_log)
    assert {int(r["epoch"]) for r in first_log} == {0, 1, 2}
    assert {int(r["epoch"]) for r in second_log} >= {3, 4} and min(int(r["epoch"]) for r in second_log) >= 2
    assert min(int(r["step"]) for r in second_log) >= last_step  # optimizer steps went on, not from zero


def test_hard_flag_overrides_soft_targets(sets, tmp_path):
    cfg = load_config(
        overrides={
            "student.model": "test_convnext",
            "student.image_size": 32,
            "student.pretrained": False,
            "train.epochs": 1,
            "train.soft": False,
        }  # fmt: skip
    )
    summary = run_train(sets["main"], tmp_path / "h", cfg, accelerator="cpu")
    assert not summary.soft and summary.metrics["frames"] > 0


def _one_class(path: Path) -> Path:
    with LabelSetWriter(path, classes=["only"], teacher={"backend": "t"}) as writer:
        writer.add({"video": "v", "frame_index": 0, "timestamp_s": 0.0, "image": b"", "label": "only",
                    "probs": [1.0], "confidence": 1.0, "teacher": "t", "raw": None})  # fmt: skip
    return path


def _empty(path: Path) -> Path:
    LabelSetWriter(path, classes=["a", "b"], teacher={"backend": "t"}).close()
    return path


def _other_ckpt(path: Path) -> Path:
    meta = build_meta(["x", "y"], "test_convnext", 32)
    return save_student(create_student(meta), meta, path)


@pytest.mark.parametrize(
    "labels, flags, message",
    [
        (lambda s, t: t / "nowhere", [], "does not exist"),
        (lambda s, t: _empty(t / "empty"), [], "no frames"),
        (lambda s, t: _one_class(t / "one"), [], "needs two or more"),
        (lambda s, t: s["main"], ["--model", "mobilenetv3_smal_100"], "did you mean mobilenetv3_small_100"),
        (lambda s, t: s["main"], ["--model", "halonet26t", "--image-size", "32"], "too small for halonet26t"),
        (lambda s, t: s["main"], ["--model", "test_coatnet", "--image-size", "40"], "does not fit test_coatnet"),
        (lambda s, t: s["main"], ["--resume", "{other}"], "cannot resume"),
        (lambda s, t: s["main"], ["--extra", "{nowhere}"], "does not exist"),
    ],
    ids=["missing", "empty", "one-class", "unknown-model", "too-small", "does-not-fit", "bad-resume", "bad-extra"],
)
def test_bad_input_is_one_line(sets, tmp_path, labels, flags, message):
    subs = {"{other}": str(_other_ckpt(tmp_path / "other.ckpt")), "{nowhere}": str(tmp_path / "nowhere")}
    flags = [subs.get(f, f) for f in flags]
    args = ["train", str(labels(sets, tmp_path)), "--out", str(tmp_path / "o"), "--no-pretrained", *flags]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert message in result.output and result.output.strip().count("\n") == 0, result.output


def test_pretrained_weights_that_cannot_be_fetched_name_the_fix(sets, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from distill.train import _models

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # nothing cached
    monkeypatch.setattr(_models, "_reachable", lambda host, port=443: False)  # as on an offline machine
    args = ["train", str(sets["main"]), "--out", str(tmp_path / "o"), "--model", "mobilenetv3_small_050"]
    result = CliRunner().invoke(app, [*args, "--image-size", "32"])
    assert result.exit_code == 1
    assert "--no-pretrained" in result.output and result.output.strip().count("\n") == 0, result.output
