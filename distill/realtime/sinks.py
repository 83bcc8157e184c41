"""Where results go: a JSON-lines event log and an OpenCV window with the label drawn over the video.

- `EventLog`: one JSON object per line (label changes from the inference thread, stats from the main thread),
  flushed per line so `tail -f` follows it; `-` writes to stdout.
- `render_overlay`: a pure function drawing label, confidence, fps and a "teacher" marker on a copy of a frame.
- `DisplaySink`: one window per source, on the main thread; `q` (or Esc, or closing the window) quits.

This module does not decide labels; it only shows what the inference worker decided.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

from distill.errors import ConfigError
from distill.realtime.inference import Shown

MIN_DISPLAY_WIDTH = 640  # small frames are scaled up so the overlay stays readable
TEACHER_COLOUR = (0, 165, 255)  # BGR orange
STUDENT_COLOUR = (255, 255, 255)


class EventLog:
    """Append JSON lines to a file (`-` for stdout); safe to call from several threads."""

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.target = str(target)
        if self.target == "-":
            self._fh: TextIO = sys.stdout
            self._own = False
        else:
            path = Path(target)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = path.open("w", encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot write events to {path}: {exc.strerror or exc}; check --events") from None
            self._own = True
        self._lock = threading.Lock()
        self.lines = 0

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if self._fh.closed:
                return
            self._fh.write(line)
            self._fh.flush()
            self.lines += 1

    def close(self) -> None:
        with self._lock:
            if self._own and not self._fh.closed:
                self._fh.close()


def render_overlay(shown: Shown, fps: float | None = None, min_width: int = MIN_DISPLAY_WIDTH) -> np.ndarray:
    """A copy of the shown frame with its label, confidence, fps and (when the teacher answered) a marker.

    Example:
        >>> image = render_overlay(shown, fps=24.8)  # doctest: +SKIP
        >>> cv2.imshow("camera 0", image)  # doctest: +SKIP
    """
    image = shown.frame.image
    h, w = image.shape[:2]
    if w < min_width:
        scale = min_width / w
        image = cv2.resize(image, (min_width, round(h * scale)), interpolation=cv2.INTER_NEAREST)
    else:
        image = image.copy()
    w = image.shape[1]
    font, size = cv2.FONT_HERSHEY_SIMPLEX, max(0.6, w / 1280)
    thick = max(1, round(size * 2))
    line_h = round(34 * size)
    lines = [(f"{shown.label}  {shown.confidence:.2f}", STUDENT_COLOUR)]
    if fps is not None:
        lines.append((f"{fps:.1f} fps", STUDENT_COLOUR))
    if shown.by == "teacher":
        lines.append((f"teacher (student: {shown.student_label} {shown.student_confidence:.2f})", TEACHER_COLOUR))
    width = max(cv2.getTextSize(text, font, size, thick)[0][0] for text, _ in lines) + 20
    box = image[: line_h * len(lines) + 12, : min(width, w)]
    box[:] = (box * 0.35).astype(np.uint8)  # darken behind the text
    for i, (text, colour) in enumerate(lines):
        cv2.putText(image, text, (10, line_h * (i + 1)), font, size, colour, thick, cv2.LINE_AA)
    if shown.by == "teacher":
        cv2.rectangle(image, (0, 0), (image.shape[1] - 1, image.shape[0] - 1), TEACHER_COLOUR, max(2, thick * 2))
    return image


def check_display() -> None:
    """Raise a `ConfigError` when no display can be opened (instead of letting the GUI toolkit abort)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise ConfigError("no display found (DISPLAY is not set); pass --no-display to run headless")


class DisplaySink:
    """One OpenCV window per source, driven from the main thread."""

    def __init__(self, names: Sequence[str]) -> None:
        check_display()
        self.windows = [f"distill: {name}" for name in names]
        self.last: list[np.ndarray | None] = [None] * len(names)  # the last rendered image per source
        self._shown: list[Shown | None] = [None] * len(names)
        self._opened: set[int] = set()

    def show(self, number: int, shown: Shown | None, fps: float | None) -> None:
        """Draw the source's newest result (skipped when nothing changed since the last call)."""
        if shown is None or shown is self._shown[number]:
            return
        self._shown[number] = shown
        image = render_overlay(shown, fps)
        first = number not in self._opened
        if first:
            cv2.namedWindow(self.windows[number], cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
            self._opened.add(number)
        cv2.imshow(self.windows[number], image)
        if first and number:
            cv2.moveWindow(self.windows[number], 40 * number, 40 * number)  # cascade, so none hides another
        self.last[number] = image

    def quit_requested(self) -> bool:
        """Pump the GUI events; True when `q`/Esc was pressed or a window was closed."""
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), ord("Q"), 27):
            return True
        return any(cv2.getWindowProperty(self.windows[n], cv2.WND_PROP_VISIBLE) < 1 for n in self._opened)

    def close(self) -> None:
        if self._opened:
            cv2.destroyAllWindows()
            cv2.waitKey(1)
