"""Accuracy-aware INT8: quantize, measure agreement with fp32, keep the most sensitive nodes float until it holds.

Steps of `search_int8` (ONNX Runtime's quantization tools throughout, nothing hand-rolled):
1. `quant_pre_process` (shape inference, Conv+BatchNorm folding); every node gets a name, since
   `nodes_to_exclude` selects nodes by name.
2. Calibration methods in turn (`DEFAULT_METHODS`: MinMax averaged over batches, MinMax, Percentile): calibrate
   once per method on the calibration frames, `quantize_static` the whole graph (QDQ, per-channel int8
   weights, uint8 activations), measure top-1 agreement with fp32 on the held-out frames. The first method
   that reaches the target wins; else the best one (agreement, then mean |logit error|) goes on to step 3.
3. Sensitivity: `qdq_loss_debug` runs fp32 and INT8 side by side on a few calibration frames and gives, for
   every activation, its signal-to-quantization-noise ratio (SQNR) against fp32. A node's sensitivity is the
   noise power its output adds to what its inputs already carried (relative to the signal, so a noisy layer
   near the logits counts more than a few dB lost on a clean stem). The most sensitive outputs are kept float
   with their producer's inputs (the producer and every consumer of each excluded from quantization, so no
   QDQ pair is left on them: a node's noise includes its inputs' quantization, which their own SQNR can hide
   behind one large channel), 1, 2, 4, 8 ... at a time, until the agreement reaches the target or more than
   half of the Conv/Gemm/MatMul nodes would be float: beyond that the file is no longer an INT8 model and
   nothing is left to gain. The best file found is written either way; the caller decides whether its
   agreement is enough.

What the students this was built on showed (scikit-learn digits as videos, trained from scratch, 120 held-out
frames): resnet10t held 98-100% with plain MinMax. MobileNetV3-small's error was spread over every activation
(uint16 activations alone cut the logit error 3-10x, int16 weights changed nothing, and no single float output
helped by more than a fifth), so it holds once well trained and not when trained briefly (best 92-96% however
many outputs stay float): the export then refuses with the best agreement reached. Of five MobileNetV3-small
students trained for 30 epochs on 1,200 frames (400 held out), four (92-95% accurate) held 99.0-99.5% with
averaged MinMax; the fifth, stopped early at 88%, got 97.8% and reached 98.0% with 4 nodes float. Floating
the producer's inputs with each sensitive output found a planted outlier (one channel 1000x, ahead of a layer
that scales it back) at the first step, 3 nodes float, where floating outputs alone needed 13; on three trained
students it changed the best agreement by 0 to +0.3 points (MinMax alone: -1.7 to +0.8). Quantizing
only Conv/Gemm/MatMul (leaving Add, Mul and pooling float) moved agreement by -1.0 to +2.5 points: no better.
More on MobileNetV3-small (8 students, 38-75% held-out accuracy): the loss is the 8-bit activations (logit
error 0.2-0.3 with uint8, 0.02-0.06 with uint16, 0.005 with int16 weights too), spread over all of them:
keeping any one Conv float changed the error by under 5%, and only 40 of its 54 Conv/Gemm nodes float reached
98%. Its head (the 1x1 conv before the classifier, without BatchNorm) has one channel ~190x the median, so
plain MinMax can lose most of the others (agreement 56% on one student): averaged MinMax is the usual winner.
NNCF 3.4's ONNX backend (MinMax with fast or full bias correction, performance or mixed preset) did no better
(77-97% where ONNX Runtime got 85-98% on the same students), and its accuracy-controlled quantization (ONNX:
ranking by the metric only) reverted every quantizer, an fp32 model, after 10 minutes; so it is not used.

The agreement that steers the search is measured on the held-out frames, the ones that are reported.
This module does not load checkpoints, decide pass/fail, or import torch.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import math
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import ExportError, first_line

logger = logging.getLogger(__name__)

# name: (ONNX Runtime CalibrationMethod, its extra options). "minmax-average" averages each batch's min/max
# instead of taking the extremes over all batches: on a MobileNetV3 it cut the mean logit error from 0.34 to 0.20
# where plain Percentile (99.999) did not help; on another Percentile took 94% agreement to 100%.
METHODS = {
    "minmax": ("MinMax", {}),
    "minmax-average": ("MinMax", {"CalibMovingAverage": True}),
    "percentile": ("Percentile", {}),
    "entropy": ("Entropy", {}),
}
# Averaged MinMax goes first: of 14 MobileNetV3-small and resnet10t students (38-95% accurate) it gave the best
# agreement, or shared it, on 13; on five MobileNetV3s trained to 88-95% it gave 97.8-99.5% where MinMax gave
# 93.3-98.8%. Entropy is left out: on every student tried, ONNX Runtime's entropy calibration picked MinMax's
# ranges (the same INT8 file, bit for bit) and took longer.
DEFAULT_METHODS = ("minmax-average", "minmax", "percentile")
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
REMOVABLE = ("Relu", "Clip")  # QDQ folds these into the producer's output range: their "error" is the clipping
MAX_FLOAT_SHARE = 0.5  # at most this share of the weighted nodes float; beyond it INT8 has nothing left to give
RANK_FRAMES = 8  # calibration frames for the sensitivity pass (SQNR settles quickly; all activations are kept)
EVAL_BATCH = 64


@dataclass(frozen=True)
class Step:
    """One quantized candidate the search measured."""

    method: str
    float_nodes: int
    agreement: float  # top-1 agreement with fp32 on the held-out frames, 0..1
    logit_error: float  # mean |logit - fp32 logit|


@dataclass(frozen=True)
class Int8Result:
    """The INT8 file `search_int8` wrote and how it got there."""

    path: Path
    method: str  # calibration method of the written file
    agreement: float  # its top-1 agreement with fp32 on the held-out frames (the best reached)
    float_nodes: tuple[str, ...]  # nodes kept in float (besides those ONNX Runtime never quantizes)
    weighted_nodes: int  # Conv/Gemm/MatMul nodes in the graph
    float_weighted: int  # how many of them stayed float
    target: float
    steps: tuple[Step, ...] = field(default_factory=tuple)

    @property
    def reached(self) -> bool:
        return self.agreement >= self.target


def search_int8(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calibration: Sequence[np.ndarray],
    check: np.ndarray,
    reference: np.ndarray,
    input_name: str,
    *,
    target: float,
    methods: Sequence[str] = DEFAULT_METHODS,
    max_float_share: float = MAX_FLOAT_SHARE,
    progress: Callable[[str], None] | None = None,
) -> Int8Result:
    """Write the INT8 copy of `fp32_path` that agrees best with fp32, keeping sensitive nodes float as needed.

    Args:
        calibration: (B, 3, S, S) float32 batches to calibrate activation ranges on.
        check: (N, 3, S, S) float32 held-out frames the agreement is measured on.
        reference: (N, K) fp32 logits of `check`.
        target: the agreement to reach (0..1).
        progress: called with a short description of each candidate (for a progress bar).

    Raises:
        ExportError: no calibration data, or ONNX Runtime cannot quantize the graph.
    """
    if not calibration:
        raise ExportError("no calibration frames for --int8; pass --calibration LABELS (a label set of the task)")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ExportError(f"unknown calibration method(s) {unknown}; choose from {', '.join(METHODS)}")
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="distill-int8-") as tmp:
        work = _Work(Path(tmp), prepare(fp32_path, Path(tmp) / "pre.onnx"), calibration, input_name)
        judge = _Judge(check, reference, input_name)
        steps: list[Step] = []
        best: _Best | None = None
        for method in methods:
            if progress:
                progress(f"int8: {method} calibration")
            path = work.quantize(method, (), f"{method}-0")
            step = judge(method, 0, path)
            steps.append(step)
            if best is None or _better(step, best[0]):
                best = (step, path, ())
            if step.agreement >= target:
                break
        assert best is not None
        if best[0].agreement < target:
            best = _keep_float(work, judge, best, target, max_float_share, steps, progress)
        step, path, excluded = best
        shutil.copyfile(path, out_path)
    weighted = work.weighted
    return Int8Result(
        out_path, step.method, step.agreement, excluded, len(weighted), len(weighted & set(excluded)), target,
        tuple(steps),
    )  # fmt: skip


def _better(a: Step, b: Step) -> bool:
    """Higher agreement wins; then the smaller logit error; then fewer float nodes."""
    return (a.agreement, -a.logit_error, -a.float_nodes) > (b.agreement, -b.logit_error, -b.float_nodes)


_Best = tuple[Step, Path, tuple[str, ...]]  # the best candidate so far: its figures, file and float nodes


def _keep_float(
    work: _Work,
    judge: _Judge,
    best: _Best,
    target: float,
    max_float_share: float,
    steps: list[Step],
    progress: Callable[[str], None] | None,
) -> _Best:
    """Keep the 1, 2, 4 ... most sensitive outputs float while that stays within `max_float_share`."""
    method = best[0].method
    ranked = work.rank(method, best[1])
    limit = max_float_share * max(1, len(work.weighted))
    k, tried = 1, set()
    while k <= len(ranked):
        excluded = work.exclusion(ranked[:k])
        if len(work.weighted & set(excluded)) > limit:
            break  # the next step would leave more float than INT8: nothing left to gain
        if excluded not in tried:
            tried.add(excluded)
            if progress:
                progress(f"int8: {len(excluded)} nodes float")
            path = work.quantize(method, excluded, f"{method}-{k}")
            step = judge(method, len(excluded), path)
            steps.append(step)
            if _better(step, best[0]):
                best = (step, path, excluded)
            if step.agreement >= target:
                break
        k *= 2
    return best


def prepare(fp32_path: str | os.PathLike[str], out_path: Path) -> Path:
    """ORT's quantization pre-processing, then a name for every node; returns `out_path`."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=False)
        model = onnx.load(str(out_path))
    except Exception as exc:  # pre-processing is an optimisation; quantize the plain graph without it
        logger.warning("quantization pre-processing failed (%s); quantizing the graph as exported", exc)
        model = onnx.load(str(fp32_path))
    used = {n.name for n in model.graph.node}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
    onnx.save(model, str(out_path))
    return out_path


class _Work:
    """The prepared graph, its calibration caches and its producer/consumer maps."""

    def __init__(self, tmp: Path, source: Path, calibration: Sequence[np.ndarray], input_name: str) -> None:
        import onnx

        self.tmp, self.source, self.calibration, self.input_name = tmp, source, calibration, input_name
        graph = onnx.load(str(source)).graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.weighted = {n.name for n in graph.node if n.op_type in WEIGHTED_OPS}
        constants = {i.name for i in graph.initializer}
        self.activations = (set(self.producer) | {i.name for i in graph.input}) - constants
        self._cache = "calibration_cache_path" in inspect.signature(_quantize_static()).parameters

    def feeds(self, batches: Sequence[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        return ({self.input_name: b} for b in batches)

    def quantize(self, method: str, excluded: Sequence[str], tag: str) -> Path:
        """Static QDQ quantization of the prepared graph; calibration ranges are computed once per method."""
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType

        batches = self.calibration

        class _Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._items = iter(batches)

            def get_next(self) -> dict[str, np.ndarray] | None:
                batch = next(self._items, None)
                return None if batch is None else {reader_input: batch}

        reader_input = self.input_name
        out = self.tmp / f"{tag}.onnx"
        kind, options = METHODS[method]
        extra = {"calibration_cache_path": str(self.tmp / f"{method}.calib.json")} if self._cache else {}
        try:
            with _quiet_calibration():
                _quantize_static()(
                    str(self.source), str(out), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, kind), nodes_to_exclude=list(excluded),
                    extra_options=dict(options), **extra,
                )  # fmt: skip
        except Exception as exc:
            raise ExportError(
                f"ONNX Runtime could not quantize the student to INT8 ({first_line(exc)}); export fp32/--fp16"
            ) from None
        return out

    def rank(self, method: str, quantized: Path) -> list[str]:
        """Activation tensors, the one whose producer adds the most quantization error (in dB) first."""
        from onnxruntime.quantization.qdq_loss_debug import (
            collect_activations,
            compute_activation_error,
            create_activation_matching,
            modify_model_output_intermediate_tensors,
        )

        frames = np.concatenate(list(self.calibration))[:RANK_FRAMES]
        batches = [frames[i : i + 4] for i in range(0, len(frames), 4)]
        saved = {}
        for name, model in (("float", self.source), ("qdq", quantized)):
            augmented = self.tmp / f"{name}.debug.onnx"
            modify_model_output_intermediate_tensors(str(model), str(augmented))
            saved[name] = collect_activations(str(augmented), self.feeds(batches))
            augmented.unlink()
        errors = compute_activation_error(create_activation_matching(saved["qdq"], saved["float"]))
        snr = {t: e["xmodel_err"] for t, e in errors.items() if "xmodel_err" in e and math.isfinite(e["xmodel_err"])}
        added = {}
        for tensor, value in snr.items():
            node = self.producer.get(tensor)
            if node is None or node.op_type in REMOVABLE:
                continue
            inherited = [_noise(snr[i]) for i in node.input if i in snr]
            if inherited:
                added[tensor] = _noise(value) - max(inherited)
        return sorted(added, key=added.get, reverse=True)

    def exclusion(self, tensors: Sequence[str]) -> tuple[str, ...]:
        """The nodes to exclude so that `tensors` and their producers' activation inputs stay float: each such
        tensor's producer and all its consumers.

        The producer's inputs go float too: the noise measured on a node's output includes the quantization of its
        inputs, which their own SQNR can hide (one channel 1000x the others carries nearly all of a tensor's power,
        so rounding the others to zero costs it almost nothing in dB; the next layer, which scales that channel
        down, shows the loss).
        """
        names: dict[str, None] = {}
        for tensor in tensors:
            made_by = self.producer[tensor]
            for name in (tensor, *(i for i in made_by.input if i in self.activations)):
                for node in [self.producer.get(name), *self.consumers.get(name, [])]:
                    if node is not None:
                        names[node.name] = None
        return tuple(names)


def _noise(sqnr_db: float) -> float:
    """Quantization noise power relative to the signal, from an SQNR in dB."""
    return 10.0 ** (-sqnr_db / 10.0)


@contextlib.contextmanager
def _quiet_calibration() -> Iterator[None]:
    """ONNX Runtime's histogram calibrators (Percentile, Entropy) print their progress on stdout; keep it out of
    distill's output unless distill logs at DEBUG (`--debug`)."""
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _quantize_static():
    from onnxruntime.quantization import quantize_static

    return quantize_static


class _Judge:
    """Agreement of a quantized file with the fp32 logits on the held-out frames (CPU provider)."""

    def __init__(self, check: np.ndarray, reference: np.ndarray, input_name: str) -> None:
        self.check, self.reference, self.input_name = check, reference, input_name
        self.top1 = reference.argmax(axis=1)

    def __call__(self, method: str, float_nodes: int, path: Path) -> Step:
        import onnxruntime as ort

        from distill.export.runtime import session_options

        session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
        logits = np.concatenate(
            [session.run(None, {self.input_name: self.check[i : i + EVAL_BATCH]})[0]
             for i in range(0, len(self.check), EVAL_BATCH)]
        )  # fmt: skip  # (N, K)
        agreement = float((logits.argmax(axis=1) == self.top1).mean()) if len(logits) else 0.0
        error = float(np.abs(logits - self.reference).mean()) if len(logits) else math.inf
        logger.info(
            "int8 %s, %d float nodes: agreement %.4f, mean |logit error| %.4f", method, float_nodes, agreement, error
        )
        return Step(method, float_nodes, agreement, error)
