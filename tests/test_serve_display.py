"""The OpenCV window of `distill serve`, on a virtual X server (Xvfb), grabbed from the screen with `xwd`.

Skipped where Xvfb or xwd is not installed (Debian: `apt-get install xvfb x11-apps`).
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_serve_fixtures import BGR, colour_clip, make_student

pytestmark = pytest.mark.skipif(
    shutil.which("Xvfb") is None or shutil.which("xwd") is None,
    reason="needs Xvfb and xwd (apt-get install xvfb x11-apps)",
)


@pytest.fixture
def xvfb() -> Iterator[str]:
    """A virtual X server; `-displayfd` makes it pick a free display and print it once it accepts clients."""
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", "1", "-screen", "0", "1024x768x24", "-nolisten", "tcp", "-noreset"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline().strip()  # blocks until the server is ready (or has died: "")
    if not line.isdigit():
        proc.kill()
        pytest.skip("Xvfb did not start")
    yield f":{line}"
    proc.terminate()
    proc.wait(5)


def grab_screen(display: str) -> np.ndarray:
    """The whole X screen as a BGR array, read from `xwd` output (ZPixmap, 24 or 32 bits per pixel)."""
    data = subprocess.run(["xwd", "-root", "-silent", "-display", display], capture_output=True, check=True).stdout
    header = struct.unpack(">25I", data[:100])
    header_size, width, height, byte_order, bits_per_pixel, bytes_per_line, ncolors = (
        header[0], header[4], header[5], header[7], header[11], header[12], header[19]
    )  # fmt: skip
    assert bits_per_pixel in (24, 32), f"unexpected xwd pixel size {bits_per_pixel}"
    step = bits_per_pixel // 8
    pixels = np.frombuffer(data, np.uint8, count=bytes_per_line * height, offset=header_size + 12 * ncolors)
    pixels = pixels.reshape(height, bytes_per_line)[:, : width * step].reshape(height, width, step)
    if byte_order == 0:  # LSBFirst: B, G, R (, x)
        return pixels[..., :3].copy()
    return pixels[..., step - 3 :][..., ::-1].copy()  # MSBFirst: (x,) R, G, B


def content_box(screen: np.ndarray, colour: tuple[int, int, int]) -> tuple[int, int, int, int] | None:
    """Bounding box (y0, x0, y1, x1) of the pixels of the video frame's colour, None if hardly any."""
    mask = (np.abs(screen.astype(int) - colour) < 40).all(axis=2)
    ys, xs = np.nonzero(mask)
    if len(ys) < 0.8 * 640 * 480:
        return None
    return ys.min(), xs.min(), ys.max() + 1, xs.max() + 1


def wait_for_label(events: Path, label: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not (events.exists() and f'"label":"{label}"' in events.read_text()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {label} label within {timeout_s} s"
        time.sleep(0.05)


class NotPainted(Exception):
    """The window never showed the frame in time."""


def grab_overlay(display: str, colour, proc: subprocess.Popen, differs_from=None, timeout_s: float = 30):
    """Grab the screen until the window shows a `colour` frame (and, if given, an overlay text unlike
    `differs_from`); returns (the frame as shown, its overlay's white-text mask)."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        screen = grab_screen(display)
        box = content_box(screen, colour)
        if box is not None:
            y0, x0, y1, x1 = box
            frame = screen[y0:y1, x0:x1].astype(int)
            text = (frame[:25, :80] > 200).all(axis=2)  # white text in the label line's box
            if differs_from is None or (text != differs_from).sum() > 30:
                return frame, text
        time.sleep(0.1)
    raise NotPainted(f"the window never showed the expected frame within {timeout_s} s")


def serve_and_grab(tmp_path: Path, display: str) -> tuple[list, str]:
    """Run `distill serve` with its window on a red-then-blue clip; grab the screen in each colour; stop it.

    Qt on a bare Xvfb (no window manager) now and then maps a window that it never paints; plain
    `cv2.namedWindow` + `cv2.imshow` shows the same in a few percent of starts. Such a start is retried.
    """
    student = make_student(tmp_path / "student.onnx")
    clip = colour_clip(tmp_path / "rb.mp4", ["red", "red", "blue"], seconds_each=3.0)
    events = tmp_path / "events.jsonl"
    cmd = [sys.executable, "-m", "distill.cli", "serve", "--source", str(clip), "--student", str(student)]
    cmd += ["--events", str(events), "--max-seconds", "30"]
    env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    for attempt in range(3):
        events.unlink(missing_ok=True)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            wait_for_label(events, "red", proc)
            try:
                red = grab_overlay(display, BGR["red"], proc, timeout_s=4)
            except NotPainted:
                if attempt == 2:
                    raise
                continue
            wait_for_label(events, "blue", proc)
            blue = grab_overlay(display, BGR["blue"], proc, differs_from=red[1])  # "red" -> "blue"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
            assert proc.returncode == 0, err
            return [(*red, BGR["red"]), (*blue, BGR["blue"])], out
        finally:
            proc.kill()
            proc.wait()
    raise AssertionError("unreachable")


def test_window_shows_the_label_overlay(tmp_path: Path, xvfb: str) -> None:
    grabs, out = serve_and_grab(tmp_path, xvfb)
    assert "stopped by signal" in out
    for frame, text, colour in grabs:
        assert frame.shape[:2] == (480, 640)  # the 64x48 clip, scaled up for a readable overlay
        assert (np.abs(frame[:25, :80] - colour) >= 40).any(axis=2).mean() > 0.9  # drawn over the video
        assert text.sum() > 30  # white text
        assert (np.abs(frame[-50:, -50:] - colour) < 40).all()  # the rest of the frame is the video
    # and between the two grabs the label text changed from "red" to "blue" (grab_overlay's differs_from)
