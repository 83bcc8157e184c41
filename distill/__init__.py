"""distill: turn hours of video into a fast frame classifier without hand labels.

A vision-language model (the teacher) labels frames sampled from videos with a closed vocabulary of classes;
a small timm classifier (the student) learns those labels, is exported to ONNX, and runs in real time.

Stages hand each other files: `distill.video` samples frames, `distill.label` writes a label set
(`distill.dataset`), `distill.train` trains a student, `distill.export` writes `student.onnx`,
`distill.realtime` serves it, `distill.evaluate` compares student and teacher.
"""

from distill.errors import DistillError

__version__ = "0.1.0"
__all__ = ["DistillError", "__version__"]
