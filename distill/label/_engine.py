"""`run_label`: the labelling run on the engine the config names (`engine: local` or `ray`).

Both engines write the same label set, resumable alike; this module only picks one. It does not sample, label
or store anything itself (see `_run.py` for the local engine, `_ray_engine.py` for Ray).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from distill.config import TaskConfig
from distill.errors import ConfigError
from distill.label._run import LabelSummary, run_label_local
from distill.label._teacher import Teacher


def run_label(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    cfg: TaskConfig,
    *,
    overwrite: bool = False,
    show_progress: bool = False,
    shard_rows: int = 512,
    teacher: Teacher | None = None,
    root: str | os.PathLike[str] | None = None,
) -> LabelSummary:
    """Label every sampled frame of `inputs` into the label set `out`, on `cfg.engine`.

    The arguments are `run_label_local`'s. With `engine: ray` the teachers are built on Ray's workers, so
    `teacher` must be None; the summary is then a `RayLabelSummary`.

    Example:
        >>> summary = run_label(["videos/"], "runs/labels", load_config("task.yaml"))  # doctest: +SKIP
        >>> summary.frames_labelled, summary.per_class  # doctest: +SKIP
    """
    options = {"overwrite": overwrite, "show_progress": show_progress, "shard_rows": shard_rows, "root": root}
    if cfg.engine != "ray":
        return run_label_local(inputs, out, cfg, teacher=teacher, **options)
    if teacher is not None:
        raise ConfigError("the Ray engine builds its teachers on its workers; pass no teacher object with engine: ray")
    from distill.label._ray_engine import run_label_ray

    return run_label_ray(inputs, out, cfg, **options)
