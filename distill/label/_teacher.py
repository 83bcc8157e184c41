"""The teacher protocol, its answer type, the prompt, and the registry of backends behind `build_teacher`.

A teacher takes a batch of `Frame`s (BGR pixels plus video, time and frame index) and answers, per frame, a
label (a class name, or None where a free-text answer matched no class), a probability per class (config
order, summing to 1) and the raw text it generated; or None for a frame it has no answer for (the annotations
teacher, where no segment covers the frame); or a `TeacherFailure` for a frame it could not answer this time (a
server that kept failing): that frame is not stored, and the next run asks again. Labelling, compare and
serve's fallback all call `label`.

Backends register under a name with `register_teacher(name, build=..., describe=...)`, in their own module
(which imports its heavy libraries only when `build` runs); `distill.label` imports those modules, so every
backend is registered once the package is imported.

This module does not load models itself and does not sample or store frames (see `_run.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from distill.errors import TeacherError

if TYPE_CHECKING:
    from distill.config import TaskConfig
    from distill.video import Frame

_TASK_PREFIXES = ("answer ", "caption ", "describe ", "ocr", "question ", "detect ", "segment ")


@dataclass(frozen=True)
class TeacherAnswer:
    """A teacher's answer for one image.

    Attributes:
        label: a class name, or None when a generated answer matched no class (counted as unmatched).
        probs: (K,) float32 over the classes in config order, summing to 1.
        raw: the text the teacher generated, where it generated any.
    """

    label: str | None
    probs: np.ndarray = field(repr=False)
    raw: str | None = None

    @property
    def confidence(self) -> float:
        return float(np.max(self.probs))


@dataclass(frozen=True)
class TeacherFailure:
    """A frame the teacher could not answer this time (its server failed after retries); `reason` says why."""

    reason: str


@runtime_checkable
class Teacher(Protocol):
    """What labelling, compare and the real-time fallback need from a teacher.

    Attributes:
        classes: class names, in the order of every answer's `probs`.
        input_size: the short side the teacher shrinks images to anyway (callers may pre-shrink frames to it
            to save memory and transfer); None when it looks at pixels at their own size or not at all.
    """

    classes: tuple[str, ...]
    input_size: int | None

    def label(self, frames: Sequence[Frame]) -> list[TeacherAnswer | TeacherFailure | None]:
        """One answer per frame, in order; None where the teacher has no answer for that frame, a
        `TeacherFailure` where it failed to get one this time."""
        ...

    def describe(self) -> dict[str, Any]:
        """backend, model, mode, prompt (and anything else that makes two label sets comparable)."""
        ...


BuildTeacher = Callable[..., Teacher]  # (cfg, *, root=None) -> Teacher
DescribeTeacher = Callable[["TaskConfig"], dict[str, Any]]
InputSize = Callable[["TaskConfig"], "int | None"]


@dataclass(frozen=True)
class _Backend:
    build: BuildTeacher
    describe: DescribeTeacher
    input_size: InputSize | None = None


_BACKENDS: dict[str, _Backend] = {}


def register_teacher(
    name: str, *, build: BuildTeacher, describe: DescribeTeacher, input_size: InputSize | None = None
) -> None:
    """Register a teacher backend under `name` (what `teacher.backend` / `--teacher` select).

    Args:
        build: `build(cfg, *, root=None) -> Teacher`; `root` is a folder that annotation-style video names
            may be given under. Heavy libraries are imported inside it, not when its module is imported.
        describe: `describe(cfg) -> dict`, the teacher's description computed from the config alone (no model
            is loaded); equal to what the built teacher's `describe()` returns.
        input_size: optional `input_size(cfg) -> int | None`: the built teacher's `input_size`, read cheaply from
            the model's configuration files before the model loads (so frames can be decoded and shrunk for it
            meanwhile); None where that cannot be known without building. It must never raise.
    """
    _BACKENDS[name] = _Backend(build, describe, input_size)


def teacher_backends() -> tuple[str, ...]:
    """The registered backend names, sorted."""
    return tuple(sorted(_BACKENDS))


def _backend(cfg: TaskConfig) -> _Backend:
    name = cfg.teacher.backend
    if name not in _BACKENDS:
        raise TeacherError(f"unknown teacher backend {name!r}; choose one of: {', '.join(teacher_backends())}")
    return _BACKENDS[name]


def one_hot(index: int | None, k: int) -> np.ndarray:
    """(K,) float32: 1 at `index`; uniform when `index` is None (an answer that matched no class)."""
    if index is None:
        return np.full(k, 1.0 / k, np.float32)
    probs = np.zeros(k, np.float32)
    probs[index] = 1.0
    return probs


def build_prompt(cfg: TaskConfig) -> str:
    """The exact prompt: PaliGemma's `answer en <question>` with `{choices}` filled in with the class texts.

    Example:
        >>> from distill.config import load_config
        >>> build_prompt(load_config(overrides={"classes": "idle,running,error"}))
        'answer en which of these best describes the image: idle, running or error?'
    """
    question = cfg.question.strip()
    if not question:
        raise TeacherError("the question is empty; pass --question 'what is the machine doing?'")
    texts = [c.text for c in cfg.classes]
    choices = ", ".join(texts[:-1]) + " or " + texts[-1] if len(texts) > 1 else "".join(texts)
    question = question.replace("{choices}", choices)
    if question.lower().startswith(_TASK_PREFIXES):
        return question
    return f"answer en {question}"


def normalize_answer(text: str) -> str:
    """The matching key of a free-text answer: lower-case, letters only (`"Idle-Warning!"` -> `"idlewarning"`)."""
    return "".join(ch for ch in text.lower() if ch.isalpha())


def match_class(raw: str, names: Sequence[str], texts: Sequence[str]) -> int | None:
    """Index of the class whose text or name equals the normalised answer exactly, else None (never guessed)."""
    key = normalize_answer(raw)
    if not key:
        return None
    for i, (name, text) in enumerate(zip(names, texts)):
        if key in (normalize_answer(text), normalize_answer(name)):
            return i
    return None


def teacher_tag(description: dict[str, Any]) -> str:
    """The per-row `teacher` column, backend:model:mode (`paligemma:google/paligemma2-3b-mix-224:constrained`)."""
    return ":".join(str(description.get(k) or "-") for k in ("backend", "model", "mode"))


def describe_teacher(cfg: TaskConfig) -> dict[str, Any]:
    """The teacher description stored in the manifest, computed from the config alone (no model is loaded).

    Two runs whose descriptions differ may not share a label set; `Teacher.describe()` returns the same dict.
    """
    return _backend(cfg).describe(cfg)


def teacher_input_size(cfg: TaskConfig) -> int | None:
    """The `input_size` the teacher the config asks for will have, if its backend can tell before building it
    (None otherwise: build it and read `teacher.input_size`)."""
    backend = _backend(cfg)
    return backend.input_size(cfg) if backend.input_size is not None else None


def build_teacher(cfg: TaskConfig, *, root: str | Path | None = None) -> Teacher:
    """Build the teacher the config asks for (`teacher.backend`, looked up in the registry).

    Args:
        cfg: the task config; needs at least two classes.
        root: a folder that video names given to the teacher may be relative to (the annotations teacher makes
            the CSV's paths relative to it, to match the names `find_videos` gives).

    Raises:
        TeacherError: an unknown backend (the message lists the registered ones), a model that cannot be
            loaded, or an unusable annotations file; one line naming the fix.
    """
    cfg.require_classes()
    return _backend(cfg).build(cfg, root=root)
