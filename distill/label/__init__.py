"""Teacher labelling: a vision-language model (or an annotations file) labels sampled video frames.

- `build_teacher(cfg)` -> a `Teacher` (the backend named by `cfg.teacher.backend`, looked up in a registry):
  `teacher.label(frames) -> [TeacherAnswer(label, probs, raw) | None]`, `teacher.classes`,
  `teacher.input_size`, `teacher.describe()`. `teacher_backends()` lists the registered names;
  `register_teacher(name, build=..., describe=..., input_size=...)` adds one (`input_size`, optional: the built
  teacher's input size read before it loads, so a labelling run decodes for it meanwhile).
- `run_label(inputs, out, cfg)`: the resumable, batched labelling run behind `distill label`, on the engine
  `cfg.engine` names (`run_label_local`, or `run_label_ray` on Ray).
- `run_label_ray(inputs, out, cfg)`: the same run on a Ray cluster (`--engine ray`; needs `distill[ray]`).
- `distill.label.annotations`: the `video,start_s,end_s,label` segments CSV (also ground truth for `compare`).

Importing this package registers the backends (`_paligemma_teacher`, `_annotations_teacher`, `_openai`) but
does not import torch, transformers or httpx; each backend loads what it needs when built.
"""

from distill.label import _annotations_teacher, _openai, _paligemma_teacher  # noqa: F401  (they register backends)
from distill.label._engine import run_label
from distill.label._ray_engine import RayLabelSummary, run_label_ray
from distill.label._run import LabelSummary, run_label_local
from distill.label._teacher import (
    Teacher,
    TeacherAnswer,
    TeacherFailure,
    build_prompt,
    build_teacher,
    describe_teacher,
    match_class,
    normalize_answer,
    register_teacher,
    teacher_backends,
    teacher_tag,
)

__all__ = [
    "LabelSummary",
    "RayLabelSummary",
    "Teacher",
    "TeacherAnswer",
    "TeacherFailure",
    "build_prompt",
    "build_teacher",
    "describe_teacher",
    "match_class",
    "normalize_answer",
    "register_teacher",
    "run_label",
    "run_label_local",
    "run_label_ray",
    "teacher_backends",
    "teacher_tag",
]
