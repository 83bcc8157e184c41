"""CLI options declared once: the config keys they set, the defaults `--help` shows, one meaning per flag name.

The commands run in process (`CliRunner`) with the library function they call replaced by a recorder, so each
test sees the config a command resolved without labelling, training or serving anything.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, get_type_hints

import pytest
from typer.testing import CliRunner

from distill import cli
from distill._cli_options import TEACHERS, Key, overrides
from distill.config import SamplingConfig, ServeConfig, StudentConfig, TaskConfig, TeacherConfig, TrainConfig
from distill.errors import DistillError

runner = CliRunner()
COMMANDS = {c.callback.__name__: c.callback for c in cli.app.registered_commands}


class Stop(DistillError):
    """Raised by a recorder once it has what the test needs (the CLI turns it into exit code 1)."""


def _help(command: str) -> str:
    result = runner.invoke(cli.app, [command, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert result.exit_code == 0, result.output
    return result.output


def _shown_default(command: str, flag: str) -> str:
    """The `[default: X]` on the help line of `flag` (one line per option at 250 columns)."""
    line = next(line for line in _help(command).splitlines() if re.search(rf"\s{re.escape(flag)}\s", line))
    match = re.search(r"\[default: ([^\]]+)\]", line)
    assert match, line
    return match.group(1)


@pytest.mark.parametrize(
    "command, flag, value",
    [
        ("train", "--epochs", TrainConfig().epochs),
        ("train", "--batch-size", TrainConfig().batch_size),
        ("train", "--model", StudentConfig().model),
        ("train", "--image-size", StudentConfig().image_size),
        ("sample", "--fps", SamplingConfig().fps),
        ("sample", "--image-size", SamplingConfig().image_size),
        ("label", "--batch-size", TeacherConfig().batch_size),
        ("label", "--device", TeacherConfig().device),
        ("label", "--mode", TeacherConfig().mode),
        ("label", "--teacher", TeacherConfig().backend),
        ("compare", "--teacher-model", TeacherConfig().model),
        ("serve", "--fallback-threshold", ServeConfig().fallback_threshold),
        ("serve", "--smoothing", ServeConfig().smoothing),
        ("serve", "--ema-alpha", ServeConfig().ema_alpha),
    ],
)
def test_help_shows_the_config_dataclass_defaults(command: str, flag: str, value: Any) -> None:
    assert _shown_default(command, flag) == str(value)


def test_every_config_key_an_option_sets_exists() -> None:
    """Each `Key` names a real TaskConfig field, so a typo cannot silently drop a flag."""
    sections = {f.name: f.default_factory for f in dataclasses.fields(TaskConfig) if callable(f.default_factory)}
    seen = set()
    for name, func in COMMANDS.items():
        for param, hint in get_type_hints(func, include_extras=True).items():
            for key in (m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Key)):
                head, _, field = key.dotted.partition(".")
                known = {f.name for f in dataclasses.fields(sections[head]())} if field else set()
                assert (field in known) if field else head in {"classes", "question", "engine"}, (name, param, key)
                seen.add(key.dotted)
    assert {"train.epochs", "student.model", "teacher.annotations", "serve.fallback_threshold"} <= seen


def test_teacher_help_lists_the_registered_backends() -> None:
    from distill.label import teacher_backends

    assert teacher_backends() == TEACHERS
    assert " | ".join(TEACHERS) in _help("serve")


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"annotations": Path("a.csv")}, {"teacher.annotations": "a.csv", "teacher.backend": "annotations"}),
        ({"annotations": Path("a.csv"), "teacher": "paligemma"},
         {"teacher.annotations": "a.csv", "teacher.backend": "paligemma"}),
        ({"teacher": "paligemma", "device": "cpu", "batch_size": 2},
         {"teacher.backend": "paligemma", "teacher.device": "cpu", "teacher.batch_size": 2}),
        ({"fps": 2.0, "dedup": False, "local_files_only": False}, {"sampling.fps": 2.0, "sampling.dedup": False}),
        ({"local_files_only": True, "classes": "a,b"}, {"teacher.local_files_only": True, "classes": "a,b"}),
        ({}, {}),
    ],
    ids=["annotations-implies-teacher", "explicit-teacher-wins", "teacher-flags", "unset-and-off", "switch-on", "none"],
)  # fmt: skip
def test_overrides_of_label(values: dict[str, Any], expected: dict[str, Any]) -> None:
    assert overrides(cli.label, values) == expected


def test_train_batch_size_and_image_size_set_the_student_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import distill.train

    seen = {}

    def record(labels, out, cfg, **kwargs):
        seen["cfg"] = cfg
        raise Stop("recorded")

    monkeypatch.setattr(distill.train, "run_train", record)
    args = ["train", str(tmp_path), "--model", "resnet10t", "--batch-size", "4", "--image-size", "64", "--hard"]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 1 and "recorded" in result.output, result.output
    cfg = seen["cfg"]
    assert (cfg.student.model, cfg.student.image_size, cfg.train.batch_size) == ("resnet10t", 64, 4)
    assert cfg.train.soft is False and cfg.teacher.batch_size == TeacherConfig().batch_size


def test_train_student_flag_is_renamed_model() -> None:
    result = runner.invoke(cli.app, ["train", "runs/labels", "--student", "resnet10t"])
    assert result.exit_code == 2 and "--student" in result.output


# --- `--annotations` means the same in label, compare and serve -------------------------------------------------


@pytest.fixture
def task(tmp_path: Path) -> Path:
    path = tmp_path / "task.yaml"
    path.write_text("classes: [idle, busy]\n")
    return path


def test_annotations_selects_the_annotations_teacher_in_label(task, tmp_path, monkeypatch) -> None:
    import distill.label

    seen = {}

    def record(videos, out, cfg, **kwargs):
        seen["cfg"] = cfg
        raise Stop("recorded")

    monkeypatch.setattr(distill.label, "run_label", record)
    result = runner.invoke(cli.app, ["label", "v.mp4", "-c", str(task), "--annotations", str(tmp_path / "a.csv")])
    assert result.exit_code == 1 and "recorded" in result.output, result.output
    assert seen["cfg"].teacher.backend == "annotations"
    assert seen["cfg"].teacher.annotations == str(tmp_path / "a.csv")


def test_annotations_selects_the_annotations_teacher_in_compare(task, tmp_path, monkeypatch) -> None:
    import distill.evaluate

    seen = {}

    def record(labels, out, *, teacher_cfg=None, **kwargs):
        seen["cfg"] = teacher_cfg
        raise Stop("recorded")

    monkeypatch.setattr(distill.evaluate, "run_compare", record)
    base = ["compare", str(tmp_path), "-c", str(task)]
    result = runner.invoke(cli.app, [*base, "--annotations", str(tmp_path / "a.csv")])
    assert result.exit_code == 1 and "recorded" in result.output, result.output
    assert seen["cfg"].teacher.backend == "annotations"
    assert seen["cfg"].teacher.annotations == str(tmp_path / "a.csv")
    runner.invoke(cli.app, base)
    assert seen["cfg"] is None  # no --teacher, no --annotations: compare runs no teacher


def test_annotations_selects_the_annotations_teacher_in_serve(tmp_path, monkeypatch) -> None:
    import distill.export
    import distill.realtime.serve

    seen = {}

    class FakeStudent:
        meta = None

        def __init__(self, path, threads=1):
            pass

    def record(cfg, meta, sources, *, question=None):
        seen["cfg"], seen["question"] = cfg, question
        raise Stop("recorded")

    monkeypatch.setattr(distill.export, "Student", FakeStudent)
    monkeypatch.setattr(distill.realtime.serve, "build_fallback_teacher", record)
    args = ["serve", "--source", "v.mp4", "--annotations", str(tmp_path / "a.csv"), "--question", "what now?"]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 1 and "recorded" in result.output, result.output
    assert seen["cfg"].teacher.backend == "annotations" and seen["question"] == "what now?"
    assert seen["cfg"].teacher.annotations == str(tmp_path / "a.csv")
