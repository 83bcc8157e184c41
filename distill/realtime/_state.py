"""Shared state of the real-time loop: latest-value slots, a latency histogram, and a worker thread group.

Every hand-over between threads is a `Slot` holding one value: writing replaces what is there (the old value
is dropped and counted), so nothing can pile up. Locks are held only to swap a reference, never while
decoding, classifying or asking the teacher.

This module does not know about frames, models or teachers; it only moves references between threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Slot(Generic[T]):
    """A single-value "latest wins" holder shared between threads.

    Example:
        >>> slot = Slot()
        >>> slot.put(1); slot.put(2)
        False
        True
        >>> slot.take(), slot.take(), slot.dropped
        (2, None, 1)
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._value: T | None = None
        self.dropped = 0  # values replaced before anyone took them (written under the lock)

    def put(self, value: T) -> bool:
        """Store `value`, replacing any value not yet taken; returns True when one was replaced."""
        with self._cond:
            replaced = self._value is not None
            self._value = value
            if replaced:
                self.dropped += 1
            self._cond.notify_all()
        return replaced

    def wait_empty(self, stop: threading.Event, poll_s: float = 0.05) -> bool:
        """Wait until the value was taken (back-pressure for a single writer); False if `stop` was set first."""
        with self._cond:
            while self._value is not None:
                if stop.is_set():
                    return False
                self._cond.wait(poll_s)
        return True

    def take(self) -> T | None:
        """Remove and return the value (None when empty)."""
        with self._cond:
            value, self._value = self._value, None
            if value is not None:
                self._cond.notify_all()
        return value

    def wait_take(self, timeout: float) -> T | None:
        """Like `take`, but wait up to `timeout` seconds for a value."""
        with self._cond:
            if self._value is None:
                self._cond.wait(timeout)
            value, self._value = self._value, None
            if value is not None:
                self._cond.notify_all()
        return value

    def peek(self) -> T | None:
        """The value, left in place (readers that only look, such as the display)."""
        with self._cond:
            return self._value


class LatencyHistogram:
    """Fixed-size histogram of latencies (0.25 ms bins up to 10 s), so percentiles never need a growing list.

    Written by one thread (`add`); others read `snapshot()` and diff two snapshots for an interval.
    """

    BIN_S = 0.00025
    BINS = 40_000

    def __init__(self) -> None:
        self.counts = np.zeros(self.BINS + 1, np.int64)  # last bin: overflow (>= 10 s)
        self.sum_s = 0.0  # of every latency added (Prometheus histograms report it)

    def add(self, seconds: float) -> None:
        self.counts[min(max(int(seconds / self.BIN_S), 0), self.BINS)] += 1
        self.sum_s += seconds

    def snapshot(self) -> np.ndarray:
        return self.counts.copy()

    @classmethod
    def percentile_ms(cls, counts: np.ndarray, q: float) -> float | None:
        """The `q`-th percentile (0..100) in milliseconds of a histogram (None when empty)."""
        total = int(counts.sum())
        if total == 0:
            return None
        index = int(np.searchsorted(np.cumsum(counts), max(q / 100.0 * total, 1)))
        return round((index + 0.5) * cls.BIN_S * 1000.0, 2)


class Workers:
    """Threads that share one stop `Event`; an unexpected exception in any of them stops all and is kept
    for the main thread to raise (`raise_first`)."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.threads: list[threading.Thread] = []
        self.errors: list[tuple[str, BaseException]] = []
        self._lock = threading.Lock()

    def start(self, name: str, target: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # a bug in a worker: stop everything, report on the main thread
                logger.debug("worker %s failed", name, exc_info=True)
                with self._lock:
                    self.errors.append((name, exc))
                self.stop.set()

        # daemon: a live read or a teacher call that never returns must not keep the process alive after exit
        thread = threading.Thread(target=run, name=f"distill-{name}", daemon=True)
        self.threads.append(thread)
        thread.start()
        return thread

    def join(self, timeout_s: float) -> list[str]:
        """Join every thread within `timeout_s` in all; returns the names of threads still running."""
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        return [t.name for t in self.threads if t.is_alive()]

    def raise_first(self) -> None:
        """Re-raise the first worker exception, if any, on the calling (main) thread."""
        with self._lock:
            errors = list(self.errors)
        if errors:
            name, exc = errors[0]
            raise exc
