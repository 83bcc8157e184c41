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
    number = next(
        n for n in range(87, 200) if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists()
    )
    proc = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{number}").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.skip("Xvfb did not start")
        time.sleep(0.05)
    yield f":{number}"
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


def content_box(screen: np.ndarray, colour: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """Bounding box (y0, x0, y1, x1) of the pixels of the video frame's colour."""
    mask = (np.abs(screen.astype(int) - colour) < 40).all(axis=2)
    ys, xs = np.nonzero(mask)
    assert len(ys) > 10_000, "the video window is not on the screen"
    return ys.min(), xs.min(), ys.max() + 1, xs.max() + 1


def wait_for_label(events: Path, label: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not (events.exists() and f'"label":"{label}"' in events.read_text()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {label} label within {timeout_s} s"
        time.sleep(0.05)
    time.sleep(0.5)  # a few display refreshes


def test_window_shows_the_label_overlay(tmp_path: Path, xvfb: str) -> None:
    student = make_student(tmp_path / "student.onnx")
    clip = colour_clip(tmp_path / "rb.mp4", ["red", "blue"], seconds_each=4.0)
    events = tmp_path / "events.jsonl"
    cmd = [sys.executable, "-m", "distill.cli", "serve", "--source", str(clip), "--student", str(student)]
    cmd += ["--events", str(events), "--max-seconds", "30"]
    env = {**os.environ, "DISPLAY": xvfb, "QT_QPA_PLATFORM": "xcb"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for_label(events, "red", proc)
        red_screen = grab_screen(xvfb)
        wait_for_label(events, "blue", proc)
        blue_screen = grab_screen(xvfb)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopped by signal" in out

    y0, x0, y1, x1 = content_box(red_screen, BGR["red"])
    assert (x1 - x0, y1 - y0) == (640, 480)  # the 64x48 clip, scaled up for a readable overlay
    overlays = []
    for screen, colour in ((red_screen, BGR["red"]), (blue_screen, BGR["blue"])):
        frame = screen[y0:y1, x0:x1].astype(int)
        overlay = frame[:25, :80]  # the label line's box
        assert (np.abs(overlay - colour) >= 40).any(axis=2).mean() > 0.9  # drawn over the video
        assert (overlay > 200).all(axis=2).sum() > 30  # white text
        assert (np.abs(frame[-50:, -50:] - colour) < 40).all()  # the rest of the frame is the video
        overlays.append((overlay > 200).all(axis=2))
    assert (overlays[0] != overlays[1]).sum() > 30  # the label text changed from "red" to "blue"
