"""Turn BGR uint8 frames of any size into the student's input tensor, the same way everywhere.

One `cv2.resize` per frame (two for frames larger than the training frames were stored at), straight
into a preallocated uint8 batch (the "squash" policy: the whole frame resized to `image_size x image_size`,
no crop, so nothing at the frame edge is lost), then one vectorised pass per batch that splits the channels,
flips BGR to RGB, lays them out as NCHW and normalises with the student's mean/std into a preallocated
float32 array. `Student`, the export parity gate and INT8 calibration all use this class, so the exported
model is checked on exactly the pixels it will see in production.

Example:
    >>> prep = Preprocessor(224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    >>> x = prep([np.zeros((720, 1280, 3), np.uint8)])
    >>> x.shape, x.dtype
    ((1, 3, 224, 224), dtype('float32'))

This module does not decode video or run a model; it imports numpy and OpenCV only (no torch).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from distill.video import resize_short_side

INTERPOLATIONS = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "bicubic": cv2.INTER_CUBIC}


class Preprocessor:
    """Resize + colour order + normalisation for one student, with buffers reused between calls.

    Args:
        image_size: the square input side of the student.
        mean: per-channel mean in RGB order, 0..1 scale.
        std: per-channel standard deviation in RGB order, 0..1 scale.
        channel_order: the order the model expects, "RGB" (timm) or "BGR".
        interpolation: "bilinear" (cv2.INTER_LINEAR), "bicubic" or "nearest".
        source_short_side: frames whose short side is larger are first shrunk to it with area averaging,
            as `distill label` stored the training frames; then the squash resize. 0 turns it off. Without
            it a 1080p frame goes to 224 px by bilinear sampling alone, which aliases fine texture that the
            student never saw in training.

    The array returned by a call is a view of an internal buffer that the next call overwrites; copy it
    (`x.copy()`) if you need to keep it.
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        channel_order: str = "RGB",
        interpolation: str = "bilinear",
        source_short_side: int = 0,
    ) -> None:
        if channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR' (got {channel_order!r})")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)} (got {interpolation!r})")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0 (got mean={mean}, std={std})")
        self.image_size = int(image_size)
        self.source_short_side = int(source_short_side)
        self.interpolation = INTERPOLATIONS[interpolation]
        mean_rgb = np.asarray(mean, np.float32)
        std_rgb = np.asarray(std, np.float32)
        # x = (pixel / 255 - mean) / std  ==  pixel * scale + bias, per model input channel
        order = [0, 1, 2] if channel_order == "RGB" else [2, 1, 0]
        self._scale = (1.0 / (255.0 * std_rgb[order])).reshape(1, 3, 1, 1)
        self._bias = (-mean_rgb[order] / std_rgb[order]).reshape(1, 3, 1, 1)
        # the source channel (in BGR frames) that feeds each model input channel
        self._source = [2, 1, 0] if channel_order == "RGB" else [0, 1, 2]
        self._pixels = np.empty((0, self.image_size, self.image_size, 3), np.uint8)  # (B, S, S, 3) BGR
        self._tensor = np.empty((0, 3, self.image_size, self.image_size), np.float32)  # (B, 3, S, S)

    def _buffers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self._pixels) < n:
            size = self.image_size
            self._pixels = np.empty((n, size, size, 3), np.uint8)
            self._tensor = np.empty((n, 3, size, size), np.float32)
        return self._pixels[:n], self._tensor[:n]

    def resize(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Resize every frame into the uint8 batch buffer; returns (B, S, S, 3) BGR uint8 (a reused view)."""
        pixels, _ = self._buffers(len(frames))
        size = (self.image_size, self.image_size)
        for i, frame in enumerate(frames):
            frame = resize_short_side(_as_bgr(frame, i), self.source_short_side)  # as `distill label` stored it
            if frame.shape[:2] == size:
                pixels[i] = frame
            else:
                cv2.resize(frame, size, dst=pixels[i], interpolation=self.interpolation)
        return pixels

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) BGR uint8 -> (B, 3, S, S) float32 normalised model input (a reused view)."""
        n, size = len(pixels), self.image_size
        _, tensor = self._buffers(n)
        # one de-interleave of the whole batch (seen as one tall image), then per channel one contiguous
        # multiply-add over all B planes; ~2x faster than reading the interleaved channels with a stride
        planes = cv2.split(np.ascontiguousarray(pixels).reshape(n * size, size, 3))  # 3 x (B*S, S) uint8
        for c, src in enumerate(self._source):
            np.multiply(planes[src].reshape(n, size, size), self._scale[0, c, 0, 0], out=tensor[:, c])
            tensor[:, c] += self._bias[0, c, 0, 0]
        return tensor

    def __call__(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """BGR uint8 frames of any size -> (B, 3, S, S) float32 model input (a reused view)."""
        if len(frames) == 0:
            return np.empty((0, 3, self.image_size, self.image_size), np.float32)
        return self.normalise(self.resize(frames))


def _as_bgr(frame: np.ndarray, index: int) -> np.ndarray:
    """Accept HxWx3 BGR uint8 (what OpenCV gives); grey and BGRA frames are converted."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        kind = frame.dtype if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"frame {index} must be a uint8 numpy array (BGR, as OpenCV reads it), got {kind}")
    if frame.size == 0:
        raise ValueError(f"frame {index} is empty (shape {frame.shape}); the video source returned no pixels")
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    raise ValueError(f"frame {index} has shape {frame.shape}; expected HxWx3 BGR (or HxW grey, HxWx4 BGRA)")
