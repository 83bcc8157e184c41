"""Teacher labelling: a vision-language model (or an annotations file) labels sampled video frames.

- `build_teacher(cfg)` -> a `Teacher`: `teacher.label(rgb_images) -> [TeacherAnswer(label, probs, raw)]`,
  `teacher.classes`, `teacher.describe()`. The annotations teacher also has `label_frames(frames)`.
- `run_label(inputs, out, cfg)`: the resumable, batched labelling run behind `distill label`.
- `distill.label.annotations`: the `video,start_s,end_s,label` segments CSV (also ground truth for `compare`).

Importing this package does not import torch or transformers; the PaliGemma teacher loads them when built.
"""

from distill.label._run import LabelSummary, run_label
from distill.label._teacher import (
    Teacher,
    TeacherAnswer,
    build_prompt,
    build_teacher,
    describe_teacher,
    match_class,
    normalize_answer,
    teacher_tag,
)

__all__ = [
    "LabelSummary",
    "Teacher",
    "TeacherAnswer",
    "build_prompt",
    "build_teacher",
    "describe_teacher",
    "match_class",
    "normalize_answer",
    "run_label",
    "teacher_tag",
]
