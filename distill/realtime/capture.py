"""Capture workers: one thread per source, writing the newest frame into that source's `Slot`.

- Files play at their native rate, paced by the container timestamps; with `fast`, as fast as the inference
  worker takes them (back-pressure: every frame is classified). A file that ends closes its stream.
- Live sources (cameras, RTSP/HTTP) are read continuously so the newest frame always wins and stale ones are
  dropped; a source that drops out is reopened with exponential backoff until the loop stops.
- Every log line names a source by `Source.display_name`, so credentials in URLs never reach a log.

This module does not classify or display frames.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from distill.errors import VideoError
from distill.realtime._state import Slot
from distill.video import Source, _timestamp, open_source

logger = logging.getLogger(__name__)

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0


@dataclass(frozen=True)
class CapturedFrame:
    """One frame as captured. `t` is media seconds for files and wall-clock (epoch) seconds for live sources;
    `captured` is `time.monotonic()` right after decoding (the start of the capture-to-label latency)."""

    source: int  # index into the run's sources
    index: int  # frame number in the file, or a running count for live sources
    t: float
    captured: float
    image: np.ndarray = field(repr=False)  # BGR uint8 (H, W, 3); never modified after capture


@dataclass
class CaptureStats:
    """Counters of one source, written only by its capture thread."""

    frames: int = 0
    reconnects: int = 0
    status: str = "starting"  # starting | running | reconnecting | ended | failed | stopped
    error: str | None = None


class CaptureWorker:
    """Reads one source into `slot` until it ends or `stop` is set.

    Args:
        number: the source's index in the run (stored in every `CapturedFrame`).
        source: what to read.
        slot: where the newest frame goes.
        stop: set by anyone to end the run.
        wake: set after every new frame (the inference worker waits on it).
        fast: files only: no pacing, wait for each frame to be taken instead.
        opener: opens a source (tests pass a fake); `distill.video.open_source` by default.
    """

    def __init__(
        self,
        number: int,
        source: Source,
        slot: Slot[CapturedFrame],
        stop: threading.Event,
        wake: threading.Event,
        *,
        fast: bool = False,
        opener: Callable[[Source], cv2.VideoCapture] = open_source,
    ) -> None:
        self.number = number
        self.source = source
        self.slot = slot
        self.stop = stop
        self.wake = wake
        self.fast = fast and not source.live
        self.opener = opener
        self.stats = CaptureStats()
        self.name = source.display_name

    @property
    def video_name(self) -> str:
        """The name a file carries in hard examples (its file name, as `distill label` names files)."""
        return Path(self.source.spec).name if not self.source.live else self.name

    def run(self) -> None:
        """Thread body."""
        try:
            cap = self.opener(self.source)
        except VideoError as exc:
            self.stats.status, self.stats.error = "failed", str(exc)
            logger.warning("source %s failed to open: %s", self.name, exc)
            self.wake.set()
            return
        logger.info("source %s opened", self.name)
        self.stats.status = "running"
        try:
            if self.source.live:
                self._run_live(cap)
            else:
                self._run_file(cap)
        finally:
            self.wake.set()  # lets the inference worker notice that this source is done

    def _run_file(self, cap: cv2.VideoCapture) -> None:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        start_wall: float | None = None
        start_t = 0.0
        index = -1
        try:
            while not self.stop.is_set():
                ok, image = cap.read()
                if not ok or image is None:
                    self.stats.status = "ended"
                    logger.info("source %s ended after %d frames", self.name, index + 1)
                    return
                index += 1
                t = _timestamp(cap, index, fps)
                if self.fast:
                    self._emit(index, t, image, wait=True)
                    continue
                if start_wall is None:
                    start_wall, start_t = time.monotonic(), t
                delay = start_wall + (t - start_t) - time.monotonic()
                if delay > 0 and self.stop.wait(delay):
                    break
                self._emit(index, t, image, wait=False)
            self.stats.status = "stopped"
        finally:
            cap.release()

    def _run_live(self, cap: cv2.VideoCapture) -> None:
        if self.source.kind == "camera":
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep the driver from queueing stale frames (where supported)
        index = -1
        backoff = BACKOFF_START_S
        while not self.stop.is_set():
            ok, image = cap.read() if cap is not None else (False, None)
            if ok and image is not None:
                index += 1
                backoff = BACKOFF_START_S
                self._emit(index, time.time(), image, wait=False)
                continue
            if cap is not None:
                cap.release()
                cap = None
                logger.warning("source %s dropped out; reconnecting in %.1f s", self.name, backoff)
            self.stats.status = "reconnecting"
            if self.stop.wait(backoff):
                break
            cap = self._reopen(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
        if cap is not None:
            cap.release()
        self.stats.status = "stopped"

    def _reopen(self, backoff: float) -> cv2.VideoCapture | None:
        try:
            cap = self.opener(self.source)
        except VideoError as exc:
            logger.warning(
                "source %s still unreachable (%s); next try in %.1f s", self.name, exc, min(backoff * 2, BACKOFF_MAX_S)
            )
            return None
        self.stats.reconnects += 1
        self.stats.status = "running"
        logger.warning("source %s reconnected", self.name)
        return cap

    def _emit(self, index: int, t: float, image: np.ndarray, *, wait: bool) -> None:
        if wait and not self.slot.wait_empty(self.stop):
            return
        self.slot.put(CapturedFrame(self.number, index, t, time.monotonic(), image))
        self.stats.frames += 1
        self.wake.set()
