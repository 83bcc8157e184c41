"""The `paligemma` backend's registration: its description computed from the config, and `build`, which loads
the model (`_paligemma.py`).

This module imports neither torch nor transformers, so importing `distill.label` stays light; the model code
is imported only when a PaliGemma teacher is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.label._teacher import Teacher, build_prompt, register_teacher

if TYPE_CHECKING:
    from distill.config import TaskConfig


def describe_paligemma(cfg: TaskConfig) -> dict[str, Any]:
    """backend, model, mode, the exact prompt and the class texts (and `max_new_tokens` in generate mode)."""
    t = cfg.teacher
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


def build_paligemma(cfg: TaskConfig, *, root: str | Path | None = None) -> Teacher:
    """Load `cfg.teacher.model` (see `load_paligemma`); `root` is not used (PaliGemma looks at pixels only)."""
    from distill.label._paligemma import load_paligemma

    return load_paligemma(cfg)


def paligemma_input_size(cfg: TaskConfig) -> int | None:
    """The side the model's image processor resizes to, read from its `preprocessor_config.json` (no weights are
    loaded; nothing is downloaded when `local_files_only`); None when it cannot be read here (building says why)."""
    from distill.label._paligemma import image_processor_side

    return image_processor_side(cfg)


register_teacher("paligemma", build=build_paligemma, describe=describe_paligemma, input_size=paligemma_input_size)
