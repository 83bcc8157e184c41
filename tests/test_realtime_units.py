"""Unit tests of the real-time pieces: slots, latency histogram, smoothing, capture reconnects, fallback, sinks."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_serve_fixtures import CLASSES, FixedTeacher

from distill.errors import ConfigError, VideoError, is_out_of_memory
from distill.realtime import capture as capture_module
from distill.realtime._state import LatencyHistogram, Slot, Workers
from distill.realtime.capture import CapturedFrame, CaptureWorker
from distill.realtime.fallback import FallbackWorker, Request
from distill.realtime.hard_examples import HardExamples
from distill.realtime.inference import Shown
from distill.realtime.sinks import EventLog, render_overlay
from distill.realtime.smoothing import Smoother
from distill.video import Frame, parse_source

# --- slots and histogram ------------------------------------------------------------------------------------


def test_slot_keeps_only_the_latest_value_and_counts_drops() -> None:
    slot: Slot[int] = Slot()
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.peek() == 2
    assert slot.take() == 2 and slot.take() is None
    assert slot.dropped == 1
    assert slot.wait_take(0.01) is None


def test_slot_wait_empty_gives_up_when_stopped() -> None:
    slot: Slot[int] = Slot()
    stop = threading.Event()
    slot.put(1)
    threading.Timer(0.05, stop.set).start()
    assert slot.wait_empty(stop) is False
    slot.take()
    assert slot.wait_empty(stop) is True


def test_latency_histogram_percentiles_match_numpy() -> None:
    rng = np.random.default_rng(0)
    samples = rng.gamma(2.0, 0.005, 5000)  # seconds, around 10 ms
    hist = LatencyHistogram()
    for s in samples:
        hist.add(float(s))
    for q in (50, 95):
        expected = np.percentile(samples, q) * 1000
        assert abs(LatencyHistogram.percentile_ms(hist.snapshot(), q) - expected) <= 0.3
    assert LatencyHistogram.percentile_ms(np.zeros(10, np.int64), 50) is None


def test_workers_surface_an_exception_and_stop_the_others() -> None:
    stop = threading.Event()
    workers = Workers(stop)
    workers.start("waits", lambda: stop.wait(5))
    workers.start("fails", lambda: 1 / 0)
    assert stop.wait(2)
    assert workers.join(1.0) == []
    with pytest.raises(ZeroDivisionError):
        workers.raise_first()


# --- smoothing ----------------------------------------------------------------------------------------------


def one_hot(i: int, k: int = 3, p: float = 0.98) -> np.ndarray:
    v = np.full(k, (1 - p) / (k - 1), np.float32)
    v[i] = p
    return v


@pytest.mark.parametrize(
    ("method", "alpha", "window", "hysteresis"),
    [("ema", 0.3, 5, 0.1), ("ema", 0.5, 5, 0.0), ("ema", 1.0, 5, 0.1), ("vote", 0.3, 5, 0.1), ("vote", 0.3, 9, 0.3)],
)
def test_smoother_follows_a_clean_switch_within_lag_frames(method: str, alpha: float, window: int, hysteresis: float):
    smoother = Smoother(3, method, alpha, window, hysteresis)
    for _ in range(20):
        assert smoother.update(one_hot(0))[0] == 0
    shown = [smoother.update(one_hot(2))[0] for _ in range(20)]
    assert shown.index(2) + 1 <= smoother.lag_frames  # frames it took
    assert set(shown[shown.index(2) :]) == {2}


def test_hysteresis_stops_flicker_between_close_classes() -> None:
    frames = [np.array([0.52, 0.48], np.float32), np.array([0.48, 0.52], np.float32)] * 10
    steady = Smoother(2, "ema", alpha=1.0, hysteresis=0.1)
    jumpy = Smoother(2, "ema", alpha=1.0, hysteresis=0.0)
    assert len({steady.update(p)[0] for p in frames}) == 1
    assert len({jumpy.update(p)[0] for p in frames}) == 2


def test_vote_confidence_is_the_window_mean() -> None:
    smoother = Smoother(2, "vote", window=4, hysteresis=0.0)
    for p in ([0.9, 0.1], [0.7, 0.3], [0.8, 0.2]):
        label, confidence = smoother.update(np.array(p, np.float32))
    assert label == 0 and confidence == pytest.approx(0.8)


def test_unknown_smoothing_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="ema, vote"):
        Smoother(3, "median")


# --- capture: a live source that drops out and comes back ---------------------------------------------------


class FakeCapture:
    def __init__(self, frames: int) -> None:
        self.left = frames

    def read(self):
        if self.left <= 0:
            return False, None
        self.left -= 1
        time.sleep(0.002)
        return True, np.zeros((4, 4, 3), np.uint8)

    def set(self, *_: object) -> bool:
        return True

    def release(self) -> None:
        self.left = 0


def test_live_source_reconnects_with_backoff_and_masks_credentials(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(capture_module, "BACKOFF_START_S", 0.01)
    source = parse_source("rtsp://admin:s3cret@10.0.0.7/stream")
    opens = []

    def opener(src):
        opens.append(src)
        if len(opens) in (2, 3):  # the first two reconnects fail
            raise VideoError(f"cannot open url {src.display_name}; check that it exists")
        return FakeCapture(frames=3)

    class RecordingEvent(threading.Event):
        waits: list[float] = []

        def wait(self, timeout: float | None = None) -> bool:
            self.waits.append(timeout)
            return super().wait(timeout)

    slot: Slot[CapturedFrame] = Slot()
    stop, wake = RecordingEvent(), threading.Event()
    worker = CaptureWorker(0, source, slot, stop, wake, opener=opener)
    with caplog.at_level(logging.INFO, logger="distill"):
        thread = threading.Thread(target=worker.run)
        thread.start()
        deadline = time.monotonic() + 5
        while (worker.stats.reconnects < 2 or worker.stats.frames < 9) and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        thread.join(2)
    assert not thread.is_alive()
    assert worker.stats.reconnects >= 2 and worker.stats.frames >= 9
    assert stop.waits[:4] == [0.01, 0.02, 0.04, 0.01]  # doubles after each failed attempt, resets after success
    assert "s3cret" not in caplog.text and "rtsp://***@10.0.0.7/stream" in caplog.text
    assert "reconnected" in caplog.text
    frame = slot.take()
    assert frame is not None and frame.t > 1e9  # live frames carry wall-clock time


# --- fallback -----------------------------------------------------------------------------------------------


def captured(index: int, source: int = 0) -> CapturedFrame:
    return CapturedFrame(source, index, index / 25, time.monotonic(), np.full((8, 8, 3), index % 255, np.uint8))


def test_fallback_takes_the_latest_offer_and_respects_the_rate(tmp_path: Path) -> None:
    teacher = FixedTeacher("blue", sleep_s=0.05)
    verdicts = [Slot()]
    stop = threading.Event()
    worker = FallbackWorker(teacher, CLASSES, verdicts, stop, max_per_second=5, hold_s=1.0)
    thread = threading.Thread(target=worker.run)
    thread.start()
    start = time.monotonic()
    index = 0
    while time.monotonic() - start < 1.0:
        index += 1
        worker.offer(Request(captured(index), "v.mp4", index / 25))
        time.sleep(0.002)
    stop.set()
    thread.join(2)
    assert 2 <= worker.stats.asked <= 1.0 * 5 + 1
    assert worker.stats.offered == index and worker.slot.dropped >= index - worker.stats.asked - 1
    verdict = verdicts[0].peek()
    assert verdict.label == "blue" and verdict.confidence == 1.0 and verdict.frame_index > 1


def test_fallback_reorders_teacher_probabilities_to_the_student_classes(tmp_path: Path) -> None:
    teacher = FixedTeacher("green", classes=("blue", "green", "red"))
    hard = HardExamples(tmp_path / "hard", CLASSES, teacher.describe(), image_size=0)
    verdicts = [Slot()]
    worker = FallbackWorker(teacher, CLASSES, verdicts, threading.Event(), hard_examples=hard)
    worker._ask(Request(captured(3), "v.mp4", 0.12))
    hard.close()
    from distill.dataset import read_table

    row = read_table(tmp_path / "hard").to_pylist()[0]
    assert row["label"] == "green" and row["probs"] == [0.0, 1.0, 0.0]
    assert (row["video"], row["frame_index"], row["timestamp_s"]) == ("v.mp4", 3, 0.12)
    assert hard.add(Frame("v.mp4", 4, 0.16, captured(4).image), "red", np.eye(3)[0], None) is False  # closed
    (frame,) = teacher.frames  # the teacher was given the frame with the name and time hard examples store
    assert (frame.video, frame.frame_index, frame.timestamp_s) == ("v.mp4", 3, 0.12)


@pytest.mark.parametrize(
    ("exc", "oom"),
    [
        (MemoryError(), True),
        (type("OutOfMemoryError", (RuntimeError,), {})("CUDA"), True),
        (RuntimeError("CUDA error: out of memory"), True),
        (RuntimeError("shape mismatch"), False),
        (ValueError("bad"), False),
    ],
)
def test_out_of_memory_detection(exc: BaseException, oom: bool) -> None:
    assert is_out_of_memory(exc) is oom


# --- sinks --------------------------------------------------------------------------------------------------


def shown(by: str = "student", colour=(0, 0, 255), size=(48, 64)) -> Shown:
    image = np.empty((*size, 3), np.uint8)
    image[:] = colour
    return Shown(CapturedFrame(0, 0, 0.0, 0.0, image), "red", 0.93, by, "red", 0.93)


def test_overlay_draws_label_and_marks_the_teacher() -> None:
    student_view = render_overlay(shown("student"), fps=25.0)
    teacher_view = render_overlay(shown("teacher"), fps=25.0)
    assert student_view.shape[1] == 640  # small frames are scaled up to stay readable
    top_left = student_view[:20, :100].reshape(-1, 3)
    assert (top_left != (0, 0, 255)).any(axis=1).mean() > 0.5  # the overlay box covers the frame there
    assert (student_view[-20:, -20:] == (0, 0, 255)).all()  # the rest is the frame
    assert not np.array_equal(student_view, teacher_view)  # "teacher" line and border
    assert (teacher_view[-2:, -2:] == (0, 165, 255)).all()


def test_event_log_writes_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    log = EventLog(tmp_path / "e.jsonl")
    log.write({"event": "label", "label": "red"})
    log.close()
    log.write({"event": "late"})  # after close: ignored
    assert [json.loads(x) for x in (tmp_path / "e.jsonl").read_text().splitlines()] == [
        {"event": "label", "label": "red"}
    ]
    out = EventLog("-")
    out.write({"a": 1})
    out.close()
    assert capsys.readouterr().out == '{"a":1}\n'
