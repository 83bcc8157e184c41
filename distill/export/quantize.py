"""FP16 variants of an exported fp32 student, and the helpers every variant check shares.

FP16 converts weights and activations with `onnxruntime.transformers.float16`, keeping float32 inputs and
outputs so callers do not change. `batches` preprocesses frames exactly as `Student` does, for INT8
calibration (`distill.export._int8`, which also searches for the nodes to keep float) and for the checks;
`top1`, `agreement` and `teacher_agreement` are the figures the checks report.

This module does not decide whether a variant is good enough (`onnx_export` checks agreement) and does not
import torch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np

from distill.errors import ExportError, first_line
from distill.export.preprocess import Preprocessor

logger = logging.getLogger(__name__)

CALIBRATION_BATCH = 16


def batches(
    preprocessor: Preprocessor, images: Sequence[np.ndarray], size: int = CALIBRATION_BATCH
) -> Iterator[np.ndarray]:
    """Preprocessed (B, 3, S, S) float32 batches of BGR images (each a fresh copy)."""
    for i in range(0, len(images), size):
        yield preprocessor(images[i : i + size]).copy()


def convert_fp16(fp32_path: str | os.PathLike[str]):
    """An FP16 copy of the model (an `onnx.ModelProto`) with float32 input and output kept."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32_path))
    try:
        return convert_float_to_float16(model, keep_io_types=True)
    except Exception as exc:
        raise ExportError(f"cannot convert {fp32_path} to FP16 ({first_line(exc)}); use fp32 or --int8") from None


def top1(logits: np.ndarray) -> np.ndarray:
    """(B,) class index per row of (B, K) logits."""
    return logits.argmax(axis=1)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of equal entries of two (B,) label arrays."""
    return float((a == b).mean()) if len(a) else 0.0


def teacher_agreement(predicted: np.ndarray, teacher: Sequence[str | None], classes: Sequence[str]) -> float | None:
    """Top-1 agreement with the teacher on frames the teacher labelled (None when it labelled none)."""
    index = {c: i for i, c in enumerate(classes)}
    pairs = [(p, index[t]) for p, t in zip(predicted, teacher, strict=True) if t is not None and t in index]
    if not pairs:
        return None
    return float(np.mean([p == t for p, t in pairs]))
