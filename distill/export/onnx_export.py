"""Export a student checkpoint to one `student.onnx`, gated on parity with PyTorch; optional INT8/FP16 copies.

Steps of `export_onnx`:
1. `distill.train.load_student` rebuilds the timm model and its `StudentMeta` (one-line error for other
   checkpoints).
2. `torch.onnx.export(dynamo=True)` at opset 20 with a dynamic batch axis (the TorchScript exporter is the
   fallback for models torch.export cannot trace); `onnx.checker` must pass.
3. Parity gate: real frames the student's training held out (its recorded split), preprocessed as `Student`
   does, go through PyTorch and ONNX Runtime (CPU, fp32); logits must agree within 1e-4 and top-1 must be
   identical.
4. The `StudentMeta` (with the figures of step 3) goes into `metadata_props`, and the file is moved into
   place only now, so a failed export never leaves a `student.onnx` behind.
5. `int8` / `fp16`: `student.int8.onnx` / `student.fp16.onnx` next to it, each checked for top-1 agreement
   with fp32 (and with the teacher) on the same frames; below 98% the variant is deleted and the export
   fails, unless `force`. INT8 is accuracy-aware (`distill.export._int8`: calibration methods, then the most
   sensitive nodes kept float until it agrees), and its frames/s are measured against fp32 on this machine's
   provider at batch 1 and 16 (`distill.export._speed`); the report says when INT8 is not faster.

This module needs torch; `distill.export` imports it only when `export_onnx` is used. It does not train.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from distill._files import write_atomic
from distill._progress import ProgressBar, progress_bar
from distill.errors import DistillError, ExportError, first_line
from distill.export._frames import CheckFrames, FrameSet, check_frames
from distill.export.metadata import write_metadata
from distill.export.preprocess import Preprocessor
from distill.export.quantize import (
    agreement,
    batches,
    convert_fp16,
    teacher_agreement,
    top1,
)
from distill.export.report import MIN_AGREEMENT, PARITY_ATOL, ExportReport, VariantReport
from distill.export.runtime import default_providers, open_session
from distill.train.meta import StudentMeta

logger = logging.getLogger(__name__)

OPSET = 20
CHECK_FRAMES = 512  # frames for parity and agreement (spread evenly over the val split)
CALIBRATION_FRAMES = 256  # frames for INT8 calibration
INPUT_NAME, OUTPUT_NAME = "image", "logits"


def export_onnx(
    ckpt_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    int8: bool = False,
    fp16: bool = False,
    calibration: str | os.PathLike[str] | None = None,
    force: bool = False,
    show_progress: bool = False,
) -> ExportReport:
    """Export a student checkpoint to ONNX with its preprocessing metadata, after checking parity.

    Args:
        ckpt_path: a student checkpoint from `distill train` (or a folder holding one).
        out_path: where the fp32 `student.onnx` goes; INT8/FP16 copies go next to it
            (`student.int8.onnx`, `student.fp16.onnx`).
        int8: also write a static-QDQ INT8 copy calibrated on label-set frames.
        fp16: also write an FP16 copy (for GPU providers).
        calibration: a label set to calibrate INT8 on (default: the train split of the checkpoint's label set).
        force: keep INT8/FP16 copies that agree with fp32 on fewer than 98% of the check frames.
        show_progress: show a progress bar on stderr.

    Returns:
        `ExportReport` with the parity and agreement figures (also stored in each file's metadata).

    Raises:
        ExportError: parity fails, a variant disagrees (without `force`), or no frames to check on.
        TrainError: the checkpoint is missing or not a distill student.
    """
    ckpt = find_checkpoint(ckpt_path)
    out_path = Path(out_path)
    steps = 3 + int(int8) + int(fp16)
    with progress_bar("exporting", total=steps, unit="steps", enabled=show_progress) as bar:
        model, meta = _load(ckpt)
        frames = check_frames(
            meta,
            calibration=calibration,
            need_calibration=int8,
            check_limit=CHECK_FRAMES,
            calibration_limit=CALIBRATION_FRAMES,
        )
        prep = Preprocessor(
            meta.image_size,
            meta.mean,
            meta.std,
            meta.channel_order,
            meta.interpolation,
            source_short_side=meta.source_short_side,
        )
        bar.advance()
        proto = export_graph(model, meta.image_size)
        bar.advance()
        report, fp32_logits = _parity_gate(model, proto, meta, prep, frames.check, out_path)
        bar.advance()
        variants = []
        if int8:
            variants.append(_int8_variant(out_path, meta, prep, frames, fp32_logits, force, bar))
            bar.advance()
        if fp16:
            path = _variant_path(out_path, "fp16")
            _save(convert_fp16(out_path), path)
            variants.append(_check_variant("fp16", path, meta, prep, frames.check, fp32_logits, force))
            bar.advance()
    return replace(report, variants=variants)


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """`path` itself, or for a folder (a training run) its `student.ckpt`, else its newest `*.ckpt`."""
    path = Path(path)
    if not path.is_dir():
        return path
    if (path / "student.ckpt").is_file():
        return path / "student.ckpt"
    found = sorted(path.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ExportError(f"no checkpoint (*.ckpt) in {path}; run `distill train` or pass the .ckpt file")
    return found[-1]


def _load(ckpt: Path) -> tuple[Any, StudentMeta]:
    from distill.train import load_student

    try:
        model, meta = load_student(ckpt)
    except DistillError:
        raise
    except Exception as exc:  # anything load_student did not foresee still becomes one line
        raise ExportError(
            f"cannot load {ckpt} as a distill student ({first_line(exc)}); pass a .ckpt from `distill train`"
        ) from None
    return model.eval().float().cpu(), meta


def export_graph(model: Any, image_size: int, opset: int = OPSET) -> Any:
    """The model as a checked `onnx.ModelProto`: input `image` (B, 3, S, S) float32 -> `logits` (B, K)."""
    import onnx
    import torch

    dummy = torch.zeros(2, 3, image_size, image_size)
    kwargs = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet), torch.no_grad():
            program = torch.onnx.export(
                model, (dummy,), dynamo=True, verbose=False, dynamic_shapes=({0: torch.export.Dim("batch")},), **kwargs
            )
        proto = program.model_proto
    except Exception as exc:  # torch.export could not trace it: the TorchScript exporter usually can
        logger.info("dynamo export failed (%s); using the TorchScript exporter", first_line(exc))
        buffer = io.BytesIO()
        try:
            with contextlib.redirect_stdout(quiet), torch.no_grad():
                torch.onnx.export(
                    model,
                    (dummy,),
                    buffer,
                    dynamo=False,
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    **kwargs,
                )
        except Exception as exc2:
            raise ExportError(
                f"torch.onnx cannot export this model ({first_line(exc2)}); train another --model"
            ) from None
        proto = onnx.load_from_string(buffer.getvalue())
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported graph fails onnx.checker ({first_line(exc)})") from None
    return proto


def _logits_torch(model: Any, tensor: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(tensor)).float().numpy()


def _run(session: Any, prep: Preprocessor, frames: FrameSet) -> np.ndarray:
    """(N, K) logits of an ORT session over the check frames."""
    out = [session.run(None, {INPUT_NAME: x})[0] for x in batches(prep, frames.images, 32)]
    return np.concatenate(out).astype(np.float32)


def parity_limit(logits: np.ndarray) -> float:
    """The parity tolerance: 1e-4 absolute for logits within +-10, 1e-5 of the largest logit beyond.

    float32 keeps ~7 significant digits: on a student with logits up to 108, PyTorch fp32 itself was 1.2e-4
    away from a float64 run while ONNX Runtime was 0.9e-4 away, so a fixed 1e-4 would fail correct exports of
    confident models. Export bugs (preprocessing, operator semantics) show up as 1e-2 and more.
    """
    scale = float(np.abs(logits).max()) if logits.size else 0.0
    return PARITY_ATOL * max(1.0, scale / 10.0)


def _parity_gate(
    model: Any, proto: Any, meta: StudentMeta, prep: Preprocessor, frames: FrameSet, out_path: Path
) -> tuple[ExportReport, np.ndarray]:
    """Compare ORT (CPU, fp32) with PyTorch on the check frames; write `out_path` only if they agree."""
    import onnxruntime as ort

    from distill.export.runtime import session_options

    session = ort.InferenceSession(proto.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    ort_logits, torch_logits = [], []
    for x in batches(prep, frames.images, 32):
        ort_logits.append(session.run(None, {INPUT_NAME: x})[0])
        torch_logits.append(_logits_torch(model, x))
    ort_all, torch_all = np.concatenate(ort_logits), np.concatenate(torch_logits)  # (N, K) each
    diff = float(np.abs(ort_all - torch_all).max())
    match = agreement(top1(ort_all), top1(torch_all))
    limit = parity_limit(torch_all)
    if not diff < limit or match < 1.0:
        raise ExportError(
            f"ONNX export does not match PyTorch on {len(frames)} frames (max |logit diff| {diff:.2e}, "
            f"limit {limit:.0e}; top-1 identical on {match:.1%}); nothing written, report this model"
        )
    teacher = teacher_agreement(top1(ort_all), frames.teacher, list(meta.classes))
    checks = {
        "parity": {
            "frames": len(frames),
            "source": frames.source,
            "max_abs_diff": diff,
            "limit": limit,
            "top1_match": match,
        },
        "agreement_teacher": teacher,
    }
    write_metadata(proto, meta.replace(precision="fp32", checks=checks))
    _save(proto, out_path)
    report = ExportReport(
        path=out_path,
        model=meta.model,
        classes=list(meta.classes),
        image_size=meta.image_size,
        opset=next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), OPSET),
        frames=len(frames),
        frames_source=frames.source,
        max_abs_diff=diff,
        top1_match=match,
        agreement_teacher=teacher,
    )
    return report, ort_all


def _int8_variant(
    out_path: Path,
    meta: StudentMeta,
    prep: Preprocessor,
    frames: CheckFrames,
    fp32_logits: np.ndarray,
    force: bool,
    bar: ProgressBar,
) -> VariantReport:
    """The accuracy-aware INT8 copy (`_int8.search_int8`), its speed against fp32, then the agreement gate."""
    from distill.export._int8 import search_int8
    from distill.export._speed import compare_speed

    assert frames.calibration is not None
    calib = list(batches(prep, frames.calibration.images))
    check = np.concatenate(list(batches(prep, frames.check.images, 64)))  # (N, 3, S, S)
    path = _variant_path(out_path, "int8")
    found = search_int8(
        out_path, path, calib, check, fp32_logits, INPUT_NAME, target=MIN_AGREEMENT,
        progress=lambda what: bar.update(description=what),
    )  # fmt: skip
    speed = None
    if found.reached or force:
        bar.update(description="int8: fp32 vs int8 speed")
        speed = compare_speed({"fp32": out_path, "int8": path}, meta.image_size, INPUT_NAME)
    search = tuple(asdict(step) for step in found.steps)
    return _check_variant(
        "int8", path, meta, prep, frames.check, fp32_logits, force, calibration=frames.calibration.source,
        method=found.method, float_nodes=found.float_nodes, search=search, speed=speed,
    )  # fmt: skip


def _check_variant(
    precision: str,
    path: Path,
    meta: StudentMeta,
    prep: Preprocessor,
    frames: FrameSet,
    fp32_logits: np.ndarray,
    force: bool,
    calibration: str | None = None,
    **found: Any,
) -> VariantReport:
    """Measure a variant against fp32 and the teacher; delete it and raise below 98% unless forced.

    `found`: what the INT8 search recorded (method, float_nodes, search, speed), kept in the report and file.
    """
    import onnx

    providers = ["CPUExecutionProvider"] if precision == "int8" else default_providers()
    logits = _run(open_session(path, providers), prep, frames)
    predicted = top1(logits)
    agree = agreement(predicted, top1(fp32_logits))
    teacher = teacher_agreement(predicted, frames.teacher, list(meta.classes))
    if agree < MIN_AGREEMENT and not force:
        path.unlink(missing_ok=True)
        why = f" (< {MIN_AGREEMENT:.0%})"
        if found.get("search"):  # INT8: the best of every candidate the search measured
            why = f" at best (< {MIN_AGREEMENT:.0%}, {len(found['search'])} INT8 candidates measured)"
        raise ExportError(
            f"{precision} agrees with fp32 on only {agree:.1%} of {len(frames)} frames{why}; "
            f"use the fp32 student, or --force to keep the {precision} one anyway"
        )
    variant = VariantReport(
        precision, path, agree, teacher, len(frames), calibration=calibration, forced=agree < MIN_AGREEMENT, **found
    )
    model = onnx.load(str(path))
    write_metadata(model, meta.replace(precision=precision, checks=variant.checks()))
    _save(model, path)
    return variant


def _variant_path(out_path: Path, precision: str) -> Path:
    return out_path.with_name(f"{out_path.stem}.{precision}{out_path.suffix or '.onnx'}")


def _save(proto: Any, path: Path) -> None:
    """Write atomically (temp file + fsync + rename), so readers never see half a model."""
    write_atomic(path, proto.SerializeToString())
