"""What an export measured: fp32 parity with PyTorch, and each INT8/FP16 variant's agreement.

This module only holds results; it runs nothing and imports no model library.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MIN_AGREEMENT = 0.98  # INT8 / FP16 top-1 agreement with fp32 below this fails the export (unless forced)
PARITY_ATOL = 1e-4  # fp32: ONNX Runtime vs PyTorch logits, max abs difference


@dataclass(frozen=True)
class VariantReport:
    """An INT8 or FP16 model written next to the fp32 one."""

    precision: str  # "int8" | "fp16"
    path: Path
    agreement_fp32: float  # top-1 agreement with the fp32 model on the check frames, 0..1
    agreement_teacher: float | None  # top-1 agreement with the teacher's labels (None: no labelled frames)
    frames: int  # check frames
    calibration: str | None = None  # INT8: which frames calibrated it
    forced: bool = False  # kept below MIN_AGREEMENT because of --force

    def line(self) -> str:
        teacher = "n/a" if self.agreement_teacher is None else f"{self.agreement_teacher:.1%}"
        flag = " (below 98%, kept by --force)" if self.forced else ""
        return (
            f"{self.precision}: {self.path} agrees with fp32 on {self.agreement_fp32:.1%} and with the teacher on "
            f"{teacher} of {self.frames} frames{flag}"
        )


@dataclass(frozen=True)
class ExportReport:
    """The result of `export_onnx`."""

    path: Path  # the fp32 student.onnx
    model: str
    classes: list[str]
    image_size: int
    opset: int
    frames: int  # frames the parity gate ran on
    frames_source: str  # which frames (val split, or all frames when the split is not recoverable)
    max_abs_diff: float  # fp32 logits, ONNX Runtime vs PyTorch
    top1_match: float  # fraction of frames with the same top-1 (1.0 when the gate passed)
    agreement_teacher: float | None  # fp32 student vs the teacher's labels on the same frames
    variants: list[VariantReport] = field(default_factory=list)

    def lines(self) -> list[str]:
        """A human summary, one line per artifact (the CLI prints these)."""
        teacher = "n/a" if self.agreement_teacher is None else f"{self.agreement_teacher:.1%}"
        head = (
            f"fp32: {self.path} ({self.model}, {len(self.classes)} classes, {self.image_size}px, opset {self.opset}); "
            f"parity on {self.frames} frames: max |diff| {self.max_abs_diff:.2e}, top-1 identical; "
            f"teacher agreement {teacher}"
        )
        return [head] + [v.line() for v in self.variants]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["variants"] = [{**asdict(v), "path": str(v.path)} for v in self.variants]
        return data
