"""Temporal smoothing of the student's per-frame probabilities, with hysteresis so the label does not flicker.

- `ema` (default): exponential moving average of the probabilities, `s = alpha * p + (1 - alpha) * s`.
- `vote`: majority vote over the last `window` frames' top classes (steadier on noisy cameras); the
  reported confidence is the mean probability of the shown class over the window.

Hysteresis: the shown label changes only when another class's score beats the shown one's by `hysteresis`.

Example:
    >>> s = Smoother(3, method="ema", alpha=0.5, hysteresis=0.1)
    >>> s.update(np.array([0.9, 0.05, 0.05], np.float32))
    (0, 0.9)

This module does not decide about the teacher; it only turns a stream of distributions into a label.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from distill.config import ServeConfig
from distill.errors import ConfigError


class Smoother:
    """Smoothed label of one source. `update(probs)` -> (shown class index, its smoothed confidence)."""

    def __init__(
        self, num_classes: int, method: str = "ema", alpha: float = 0.3, window: int = 5, hysteresis: float = 0.1
    ) -> None:
        if method not in {"ema", "vote"}:
            raise ConfigError(f"unknown smoothing {method!r}; choose one of: ema, vote")
        self.num_classes = num_classes
        self.method = method
        self.alpha = alpha
        self.hysteresis = hysteresis
        self._ema: np.ndarray | None = None  # (K,)
        self._recent: deque[np.ndarray] = deque(maxlen=window)  # last `window` probability vectors, (K,) each
        self.shown: int | None = None

    @classmethod
    def from_config(cls, num_classes: int, serve: ServeConfig) -> Smoother:
        return cls(num_classes, serve.smoothing, serve.ema_alpha, serve.window, serve.hysteresis)

    @property
    def lag_frames(self) -> int:
        """Frames after a clean switch between two confident classes until the shown label follows (at most)."""
        if self.method == "vote":  # k new votes of `window` must beat the old class's window - k by the margin
            return math.floor(self._recent.maxlen * (1 + self.hysteresis) / 2) + 1
        if self.alpha >= 1:
            return 1
        # the new class's EMA 1 - (1 - a)^n must beat the old one's (1 - a)^n by the hysteresis margin
        return math.floor(math.log((1 - self.hysteresis) / 2) / math.log(1 - self.alpha)) + 1

    def update(self, probs: np.ndarray) -> tuple[int, float]:
        probs = np.asarray(probs, np.float32)
        self._recent.append(probs)
        if self.method == "ema":
            self._ema = probs.copy() if self._ema is None else self.alpha * probs + (1 - self.alpha) * self._ema
            scores = self._ema
        else:
            votes = np.bincount([int(np.argmax(p)) for p in self._recent], minlength=self.num_classes)
            scores = votes / len(self._recent)
        best = int(np.argmax(scores))
        if self.shown is None or scores[best] >= scores[self.shown] + self.hysteresis:
            self.shown = best
        return self.shown, self.confidence(self.shown)

    def confidence(self, index: int) -> float:
        """Smoothed probability of class `index` (EMA, or the window's mean for `vote`)."""
        if self.method == "ema" and self._ema is not None:
            return float(self._ema[index])
        return float(np.mean([p[index] for p in self._recent])) if self._recent else 0.0
