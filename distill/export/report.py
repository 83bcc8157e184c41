"""What an export measured: fp32 parity with PyTorch, each INT8/FP16 variant's agreement, and INT8's speed.

This module only holds results; it runs nothing and imports no model library.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MIN_AGREEMENT = 0.98  # INT8 / FP16 top-1 agreement with fp32 below this fails the export (unless forced)
PARITY_ATOL = 1e-4  # fp32: ONNX Runtime vs PyTorch logits, max abs difference
WORTH_IT = 1.1  # INT8 counts as faster only when it beats fp32 by this factor at some batch size (timing noise)


@dataclass(frozen=True)
class SpeedReport:
    """Frames/s of the fp32 and INT8 files on one provider, at each batch size (the model alone)."""

    provider: str
    fps: dict[str, dict[int, float]]  # {"fp32": {1: fps, 16: fps}, "int8": {...}}

    def ratios(self) -> dict[int, float]:
        """INT8 frames/s over fp32 frames/s, per batch size."""
        return {b: self.fps["int8"][b] / self.fps["fp32"][b] for b in self.fps["fp32"] if self.fps["fp32"][b] > 0}

    @property
    def int8_faster(self) -> bool:
        return any(r >= WORTH_IT for r in self.ratios().values())

    def lines(self) -> list[str]:
        """The figures, and one line recommending fp32 when INT8 is not faster."""
        cells = ", ".join(
            f"batch {b}: fp32 {self.fps['fp32'][b]:.0f}, int8 {self.fps['int8'][b]:.0f} frames/s"
            for b in self.fps["fp32"]
        )
        lines = [f"speed on {self.provider}: {cells}"]
        if not self.int8_faster:
            ratio = ", ".join(f"{r:.2f}x at batch {b}" for b, r in self.ratios().items())
            lines.append(f"int8 is not faster than fp32 on {self.provider} here ({ratio}); serve the fp32 student")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "fps": {k: {str(b): v for b, v in d.items()} for k, d in self.fps.items()}}


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
    method: str | None = None  # INT8: the calibration method of the written file
    float_nodes: tuple[str, ...] = ()  # INT8: nodes kept in float because they cost the most agreement
    search: tuple[dict[str, Any], ...] = ()  # INT8: every candidate measured (method, float nodes, agreement)
    speed: SpeedReport | None = None  # INT8: fp32 vs INT8 frames/s on this machine

    def checks(self) -> dict[str, Any]:
        """What goes into the variant file's `StudentMeta.checks` (JSON values)."""
        data = {k: v for k, v in asdict(self).items() if k not in ("path", "precision", "speed")}
        data["float_nodes"] = list(self.float_nodes)
        data["search"] = list(self.search)
        data["speed"] = self.speed.to_dict() if self.speed else None
        return data

    def line(self) -> str:
        teacher = "n/a" if self.agreement_teacher is None else f"{self.agreement_teacher:.1%}"
        flag = " (below 98%, kept by --force)" if self.forced else ""
        how = ""
        if self.method:
            how = f" ({self.method} calibration, {len(self.float_nodes)} nodes kept float)"
        return (
            f"{self.precision}: {self.path} agrees with fp32 on {self.agreement_fp32:.1%} and with the teacher on "
            f"{teacher} of {self.frames} frames{flag}{how}"
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
        lines = [head]
        for v in self.variants:
            lines.append(v.line())
            lines += v.speed.lines() if v.speed else []
        return lines

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["variants"] = [{**v.checks(), "precision": v.precision, "path": str(v.path)} for v in self.variants]
        return data
