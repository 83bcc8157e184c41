"""The teacher protocol, its answer type, the prompt, and the factory `build_teacher`.

A teacher takes a batch of RGB images and answers, per image, a label (a class name, or None where a free-text
answer matched no class), a probability per class (config order, summing to 1) and the raw text it generated.

This module does not load models itself (see `_paligemma.py`) and does not sample or store frames (see `_run.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from distill.errors import TeacherError

if TYPE_CHECKING:
    from distill.config import TaskConfig

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


@runtime_checkable
class Teacher(Protocol):
    """What the labelling run and the real-time fallback need from a teacher."""

    @property
    def classes(self) -> tuple[str, ...]: ...

    def label(self, images: list[np.ndarray]) -> list[TeacherAnswer]:
        """Answer for each RGB uint8 (H, W, 3) image."""
        ...

    def describe(self) -> dict[str, Any]:
        """backend, model, mode, prompt (and anything else that makes two label sets comparable)."""
        ...


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
    """The seed recipe's matching key: lower-case, letters only (`"Idle-Warning!"` -> `"idlewarning"`)."""
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
    t = cfg.teacher
    if t.backend == "annotations":
        from distill.label.annotations import csv_fingerprint

        path = _annotations_path(cfg)
        return {
            "backend": "annotations",
            "model": path.name,
            "mode": "segments",
            "prompt": None,
            "sha256": csv_fingerprint(path),
        }
    desc: dict[str, Any] = {
        "backend": "paligemma",
        "model": t.model,
        "mode": t.mode,
        "prompt": build_prompt(cfg),
        "class_texts": [c.text for c in cfg.classes],
    }
    if t.mode == "generate":
        desc["max_new_tokens"] = t.max_new_tokens
    return desc


def _annotations_path(cfg: TaskConfig) -> Path:
    if not cfg.teacher.annotations:
        raise TeacherError("the annotations teacher needs a segments CSV; pass --annotations segments.csv")
    return Path(cfg.teacher.annotations)


def build_teacher(cfg: TaskConfig, *, annotations_root: str | Path | None = None) -> Teacher:
    """Build the teacher the config asks for (`teacher.backend`).

    Args:
        cfg: the task config; needs at least two classes.
        annotations_root: for the annotations teacher, a folder that CSV video paths may be given under
            (they are made relative to it, to match the names `find_videos` gives).

    Raises:
        TeacherError: the model cannot be loaded (missing folder, gated or offline weights), a class text
            tokenises to nothing, or the annotations CSV is unusable; one line naming the fix.
    """
    cfg.require_classes()
    if cfg.teacher.backend == "annotations":
        from distill.label._annotations_teacher import AnnotationsTeacher

        return AnnotationsTeacher(_annotations_path(cfg), cfg.class_names, root=annotations_root)
    if cfg.teacher.backend == "paligemma":
        from distill.label._paligemma import load_paligemma

        return load_paligemma(cfg)
    raise TeacherError(f"unknown teacher {cfg.teacher.backend!r}; choose paligemma or annotations")
