"""`Student`: classify BGR frames with an exported `student.onnx`, on ONNX Runtime alone.

The model file carries its `StudentMeta` (class names, preprocessing, ...; see `distill.train.meta`), so
nothing here guesses: frames of any size go in, labels and probabilities come out.

Example:
    >>> student = Student("runs/student/student.onnx")  # doctest: +SKIP
    >>> ok, frame = cv2.VideoCapture("clip.mp4").read()  # doctest: +SKIP
    >>> student.predict([frame]).labels  # doctest: +SKIP
    ['active']

This module does not import torch (an edge box needs only onnxruntime, numpy and OpenCV), does not read
video, and does not smooth predictions over time (`distill.realtime` does).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from distill.errors import ExportError, first_line
from distill.export.preprocess import Preprocessor
from distill.train.meta import StudentMeta

logger = logging.getLogger(__name__)

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


@dataclass(frozen=True)
class Prediction:
    """What `Student.predict` returns for a batch of B frames."""

    labels: list[str]  # (B,) the most probable class of each frame
    probs: np.ndarray  # (B, K) float32 softmax over `Student.classes`

    @property
    def confidence(self) -> np.ndarray:
        """(B,) the probability of each frame's label."""
        return self.probs.max(axis=1) if len(self.probs) else np.zeros(0, np.float32)


def _cuda_driver_present() -> bool:
    """True where an NVIDIA driver can be loaded: ONNX Runtime's GPU providers are worth trying."""
    try:
        ctypes.CDLL("libcuda.so.1" if os.name != "nt" else "nvcuda.dll")
    except OSError:
        return False
    return True


def _tensorrt_present() -> bool:
    for name in ("libnvinfer.so.10", "libnvinfer.so"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    try:
        import tensorrt  # noqa: F401  (pip wheels put libnvinfer on the loader path on import)
    except ImportError:
        return False
    return True


def default_providers() -> list[str]:
    """TensorRT and/or CUDA when this onnxruntime build has them and a GPU driver is present, then CPU.

    `ort.get_available_providers()` lists what the build was compiled with, not what this machine can run, so
    a driver check keeps CPU-only machines from trying (and loudly failing) to load the CUDA libraries.
    """
    available = ort.get_available_providers()
    chosen: list[str] = []
    if _cuda_driver_present():
        if hasattr(ort, "preload_dlls"):
            try:  # finds CUDA / cuDNN shipped in pip wheels (nvidia-*), as torch does
                ort.preload_dlls(directory="")
            except Exception:  # best effort only; the provider reports the real problem
                pass
        if "TensorrtExecutionProvider" in available and _tensorrt_present():
            chosen.append("TensorrtExecutionProvider")
        if "CUDAExecutionProvider" in available:
            chosen.append("CUDAExecutionProvider")
    return chosen + ["CPUExecutionProvider"]


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Session options: full graph optimisation, no spin-waiting; `threads` caps intra-op threads (None: ORT's
    default, one per physical core)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        if threads < 1:
            raise ExportError(f"threads must be >= 1 (got {threads}); leave it unset to use every core")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only; provider fallbacks are reported through logging instead
    # Idle worker threads sleep instead of spinning: a student shares its cores with video decoding and
    # preprocessing, and spinning threads slowed the whole Student.predict loop (bench/student.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def _provider_options(providers: Sequence[str | tuple[str, dict[str, Any]]]) -> list[Any]:
    """Give TensorRT an engine cache so a restart does not rebuild engines (minutes for big models)."""
    result: list[Any] = []
    for provider in providers:
        if provider == "TensorrtExecutionProvider":
            cache = Path(os.environ.get("DISTILL_TRT_CACHE", Path.home() / ".cache" / "distill" / "tensorrt"))
            cache.mkdir(parents=True, exist_ok=True)
            provider = (provider, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)})
        result.append(provider)
    return result


_STATE = ort.capi.onnxruntime_pybind11_state
_MODEL_ERRORS = (_STATE.InvalidProtobuf, _STATE.InvalidArgument, _STATE.InvalidGraph, _STATE.NoModel, _STATE.Fail)


def _check_providers(providers: Sequence[str | tuple[str, dict[str, Any]]]) -> list[Any]:
    """Unknown provider names are errors; known ones this onnxruntime build lacks are skipped with a warning."""
    available = ort.get_available_providers()
    kept = []
    for provider in providers:
        name = provider if isinstance(provider, str) else provider[0]
        if name not in ort.get_all_providers():
            raise ExportError(f"unknown ONNX Runtime provider {name!r}; this build has: {', '.join(available)}")
        if name in available:
            kept.append(provider)
        else:
            logger.warning("%s is not in this onnxruntime build; skipping it", name)
    return kept or ["CPUExecutionProvider"]


def open_session(
    path: str | os.PathLike[str],
    providers: Sequence[str | tuple[str, dict[str, Any]]] | None = None,
    threads: int | None = None,
) -> ort.InferenceSession:
    """An ONNX Runtime session on `path`, with one-line `ExportError`s for missing or damaged files."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path} does not exist; export a student with `distill export CKPT --out {path}`")
    wanted = _check_providers(providers) if providers is not None else default_providers()
    try:
        session = ort.InferenceSession(
            str(path), sess_options=session_options(threads), providers=_provider_options(wanted)
        )
    except _MODEL_ERRORS as exc:
        raise ExportError(
            f"{path} is not a readable ONNX model ({first_line(exc)}); re-export it with `distill export`"
        ) from None
    except Exception as exc:  # unknown provider names, provider start-up failures
        raise ExportError(f"cannot open {path} with providers {wanted}: {first_line(exc)}") from None
    names = [p if isinstance(p, str) else p[0] for p in wanted]
    missing = [p for p in names if p in GPU_PROVIDERS and p not in session.get_providers()]
    if missing:
        logger.warning(
            "%s unavailable (missing GPU libraries?); running on %s", ", ".join(missing), session.get_providers()[0]
        )
    return session


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (B, K) logits, in float32."""
    z = logits.astype(np.float32, copy=True)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


class Student:
    """An exported student on ONNX Runtime: BGR frames in, labels and probabilities out.

    Args:
        path: a `student.onnx` written by `distill export` (or `distill train`).
        providers: ONNX Runtime execution providers, best first; None picks TensorRT/CUDA when a GPU is
            usable, else CPU (`default_providers()`).
        threads: intra-op threads (None: ONNX Runtime's default, one per physical core).

    `predict` may be called from several threads; calls are serialised (they share preprocessing buffers).

    Raises:
        ExportError: the file is missing, damaged, or not a distill student.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: Sequence[str | tuple[str, dict[str, Any]]] | None = None,
        threads: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.session = open_session(self.path, providers, threads)
        self.meta = StudentMeta.from_props(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.classes: tuple[str, ...] = self.meta.classes
        self.image_size: int = self.meta.image_size
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ExportError(f"{self.path} must have one image input; re-export it with `distill export`")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self._lock = threading.Lock()  # the preprocessor's buffers are reused between calls
        self.preprocessor = Preprocessor(
            self.image_size,
            self.meta.mean,
            self.meta.std,
            channel_order=self.meta.channel_order,
            interpolation=self.meta.interpolation,
            source_short_side=self.meta.source_short_side,
        )

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses, best first."""
        return self.session.get_providers()

    def logits(self, tensor: np.ndarray) -> np.ndarray:
        """Raw (B, K) logits for an already preprocessed (B, 3, S, S) float32 batch."""
        return self.session.run([self.output_name], {self.input_name: tensor})[0]

    def predict(self, frames: Sequence[np.ndarray], batch_size: int | None = 64) -> Prediction:
        """Classify BGR uint8 frames of any size (what OpenCV gives).

        Args:
            frames: HxWx3 BGR uint8 arrays (grey and BGRA are converted); sizes may differ.
            batch_size: frames per model call (bounds memory); None runs them all at once.

        Returns:
            `Prediction` with one label per frame and (B, K) probabilities in `classes` order.
        """
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            raise ValueError("predict takes a list of frames; wrap a single frame as [frame]")
        step = batch_size if batch_size else len(frames)
        with self._lock:
            chunks = [self.logits(self.preprocessor(frames[i : i + step])) for i in range(0, len(frames), step or 1)]
        logits = np.concatenate(chunks) if chunks else np.zeros((0, len(self.classes)), np.float32)
        probs = softmax(logits)
        return Prediction([self.classes[i] for i in probs.argmax(axis=1)], probs)

    def __repr__(self) -> str:
        return (
            f"Student({str(self.path)!r}, model={self.meta.model!r}, precision={self.meta.precision!r}, "
            f"classes={len(self.classes)}, image_size={self.image_size}, providers={self.providers})"
        )
