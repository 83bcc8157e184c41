"""Task config: defaults < YAML < flags, and one-line errors that name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distill.config import ClassSpec, config_from_dict, load_config, parse_classes, save_config
from distill.errors import ConfigError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_defaults_yaml_flags_precedence(tmp_path: Path) -> None:
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump({"classes": ["a", "b"], "sampling": {"fps": 2.0, "dedup": False}}))
    assert load_config().sampling.fps == 1.0  # default
    assert load_config(path).sampling.fps == 2.0  # YAML over default
    cfg = load_config(path, {"sampling.fps": "4", "sampling.dedup": None})
    assert cfg.sampling.fps == 4.0  # flag over YAML, coerced from a string
    assert cfg.sampling.dedup is False  # an unset flag (None) does not override the file


def test_classes_bare_strings_and_mappings() -> None:
    classes = parse_classes(["active", {"name": "error", "text": "red warning light"}, {"idle": "machine idle"}])
    assert classes == (
        ClassSpec("active", "active"),
        ClassSpec("error", "red warning light"),
        ClassSpec("idle", "machine idle"),
    )
    assert parse_classes("a, b ,c") == tuple(ClassSpec(n, n) for n in "abc")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert len(cfg.classes) >= 2
    cfg.require_classes()


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS[0], {"sampling.fps": 3, "classes": [{"name": "on", "text": "lamp on"}, "off"]})
    saved = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(saved) == cfg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"sampling": {"fsp": 1}}, "unknown key 'fsp' in config: sampling; did you mean 'fps'?"),
        ({"clases": ["a", "b"]}, "did you mean 'classes'?"),
        ({"classes": ["a", "b", "a"]}, "duplicate class names: a"),
        ({"classes": ["a"]}, "need at least two classes (got 1)"),
        ({"classes": []}, "need at least two classes (got 0)"),
        ({"sampling": {"fps": 0}}, "fps must be > 0 (got 0.0); try --fps 1"),
        ({"sampling": {"fps": -2}}, "fps must be > 0"),
        ({"sampling": {"fps": "fast"}}, "fps must be a number"),
        ({"sampling": {"dedup": "maybe"}}, "dedup must be true or false"),
        ({"sampling": {"start_s": 5, "end_s": 2}}, "end_s (2.0) must be greater than start_s (5.0)"),
        ({"teacher": {"backend": " "}}, "teacher backend is empty"),
        ({"question": "  "}, "question is empty"),
        ({"sampling": [1, 2]}, "sampling must be a mapping"),
        ({"classes": [{"name": "a", "txt": "x"}, "b"]}, "did you mean 'text'?"),
    ],
)
def test_bad_config_is_one_line(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("classes: [a, b\nsampling: {fps: 1}\n", "is not valid YAML at line"),
        ("- just\n- a list\n", "must hold a mapping"),
    ],
)
def test_unreadable_yaml(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; check the --config path"):
        load_config(tmp_path / "nope.yaml")


def test_require_classes_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--classes"):
        load_config().require_classes()
