"""A student's penultimate features: the pooled vector its classifier layer reads, from the ONNX file alone.

`student.onnx` has one output (the logits). The classifier head ends in a `Gemm` (or `MatMul` + `Add`) whose
data input is the pooled feature vector; `feature_output` finds that tensor by walking back from the logits,
and `FeatureStudent` opens the model with it added as a second graph output, so one run gives both the
features and the logits. Nothing is re-exported and no torch is needed.

Example:
    >>> fs = FeatureStudent("runs/student/student.onnx")  # doctest: +SKIP
    >>> features, probs = fs.features(frames)  # doctest: +SKIP
    >>> features.shape, probs.shape  # doctest: +SKIP
    ((B, 1024), (B, K))

This module does not classify for serving (`Student` does) and does not train anything on the features.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import ExportError, first_line
from distill.export.runtime import Student, session_options, softmax

# Ops a classifier head's output passes through after its last matrix product (bias, dequantize, casts).
_PASS_THROUGH = {"Add", "Cast", "Identity", "DequantizeLinear", "QuantizeLinear"}
_MATMUL = {"Gemm", "MatMul"}


def feature_output(model: object) -> str | None:
    """The name of the tensor the last matrix product before the first graph output reads (None if none).

    Args:
        model: an `onnx.ModelProto`.
    """
    graph = model.graph  # type: ignore[attr-defined]
    producer = {out: node for node in graph.node for out in node.output}
    constants = {init.name for init in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    name = graph.output[0].name
    for _ in range(8):  # a head is a few ops deep; stop before wandering into the backbone
        node = producer.get(name)
        if node is None:
            return None
        data = [i for i in node.input if i and i not in constants]
        if node.op_type in _MATMUL and data:
            return data[0]
        if node.op_type not in _PASS_THROUGH or not data:
            return None
        name = data[0]
    return None


class FeatureStudent(Student):
    """A `Student` whose session also returns the penultimate features.

    Raises:
        ExportError: the file is not a distill student, or its head has no matrix product to read features from.
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        super().__init__(path, providers=["CPUExecutionProvider"], threads=threads)
        import onnx

        model = onnx.load(str(self.path))
        name = feature_output(model)
        if name is None:
            raise ExportError(
                f"{self.path}: no classifier layer (Gemm/MatMul) found before the logits; "
                "re-export the student with `distill export`"
            )
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        self.feature_name = name
        # one session serves both: `predict` asks it for the logits only, `features` for both outputs
        self.session = self._feature_session = _session_from_bytes(model.SerializeToString(), threads, self.path)

    def features(self, frames: Sequence[np.ndarray], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(B, D) float32 features and (B, K) probabilities (in `classes` order) of BGR frames."""
        feats, logits = [], []
        with self._lock:
            for i in range(0, len(frames), batch_size):
                tensor = self.preprocessor(frames[i : i + batch_size])
                out_logits, out_feats = self._feature_session.run(
                    [self.output_name, self.feature_name], {self.input_name: tensor}
                )
                logits.append(out_logits)
                feats.append(np.asarray(out_feats, np.float32).reshape(len(out_logits), -1))
        if not feats:
            return np.zeros((0, 0), np.float32), np.zeros((0, len(self.classes)), np.float32)
        return np.concatenate(feats), softmax(np.concatenate(logits))


def _session_from_bytes(data: bytes, threads: int | None, path: Path) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(data, sess_options=session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(
            f"cannot add a feature output to {path}: {first_line(exc)}; re-export it with `distill export`"
        ) from None
