"""`distill serve --http` watched from a real headless Chromium, then stopped with SIGINT.

Needs Debian's `chromium` and `chromium-driver` (CI installs them); skipped cleanly without them. The page's
screenshot is kept as a test artifact: under pytest's tmp dir, and copied to `$DISTILL_ARTIFACTS` when set.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from test_serve_fixtures import colour_clip, make_student

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)
TOKEN = "browser-token"


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="distill-chromium-")
    for arg in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
        "--window-size=1100,760",
    ):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for_url(proc: subprocess.Popen, deadline_s: float = 60) -> str:
    """The web view's address, from the line `distill serve` prints when it listens."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if match := re.search(r"web view on (http://\S+)", line):
            return match.group(1)
        assert line or proc.poll() is None, proc.communicate()
    raise AssertionError("distill serve never printed its web address")


# what became of the page's frame requests (HTTP status: count), and the live view's current source
FRAME_REQUESTS = (
    "const counts = {}; for (const e of performance.getEntriesByType('resource'))"
    "  if (e.name.includes('/stream/')) counts[e.responseStatus] = (counts[e.responseStatus] ?? 0) + 1;"
    "const img = document.querySelector('#src-0 img');"
    "return JSON.stringify({counts, src: img?.src, complete: img?.complete})"
)


def labels_seen(driver) -> list[str]:
    return driver.execute_script("return window.__seen")


def test_page_follows_the_label_and_sigint_stops_everything(tmp_path: Path, browser) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    student = make_student(tmp_path / "student.onnx")
    clip = colour_clip(tmp_path / "rb.mp4", ["red", "blue"], seconds_each=7.0, size=(90, 160))  # red: time to load
    cmd = [sys.executable, "-m", "distill.cli", "serve", "--source", str(clip), "--student", str(student)]
    cmd += ["--no-display", "--http", "127.0.0.1:0", "--events", str(tmp_path / "events.jsonl")]
    env = {**os.environ, "COLUMNS": "200", "DISTILL_HTTP_TOKEN": TOKEN}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stalled = None
    try:
        url = wait_for_url(proc)
        browser.get(f"{url}?token={TOKEN}")  # the page keeps the token in a cookie
        browser.execute_script(
            "window.__seen = [];"
            "const record = () => { const t = document.querySelector('#src-0 .label')?.textContent;"
            "  if (t && window.__seen.at(-1) !== t) window.__seen.push(t); };"
            "setInterval(record, 20);"
            "performance.setResourceTimingBufferSize(100000);"  # keep every frame request for FRAME_REQUESTS
            "window.__picture = 0;"  # the widest frame the live view has shown, looked at as often as the labels
            "const look = () => { const w = document.querySelector('#src-0 img')?.naturalWidth ?? 0;"
            "  window.__picture = Math.max(window.__picture, w); };"
            "setInterval(look, 20);"
        )
        segments = "return [...document.querySelectorAll('#src-0 .timeline .seg')].map(e => e.dataset.label)"
        blue_width = "return document.querySelector('#src-0 .timeline .seg[data-label=blue]')?.offsetWidth ?? 0"
        wait = WebDriverWait(browser, 30, poll_frequency=0.1)
        for what, condition in [
            ("red shown", lambda d: "red" in labels_seen(d)),
            ("a live picture", lambda d: d.execute_script("return window.__picture") > 0),
            ("then blue", lambda d: labels_seen(d)[-1:] == ["blue"]),  # the label shown changed to the next class
            ("both in the timeline", lambda d: {"red", "blue"} <= set(d.execute_script(segments))),
            ("blue plainly visible", lambda d: d.execute_script(blue_width) >= 30),
        ]:
            try:
                wait.until(condition)
            except TimeoutException:
                status = browser.find_element("id", "status").text
                raise AssertionError(
                    f"page never showed {what}: labels {labels_seen(browser)}, status {status!r}, "
                    f"frame requests {browser.execute_script(FRAME_REQUESTS)}"
                ) from None
        assert browser.execute_script("return document.querySelector('#src-0 .by').textContent") == "student"
        shot = tmp_path / "serve-page.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        if os.environ.get("DISTILL_ARTIFACTS"):
            Path(os.environ["DISTILL_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(os.environ["DISTILL_ARTIFACTS"]) / shot.name)

        host, port = url.split("//")[1].rstrip("/").split(":")
        stalled = socket.create_connection((host, int(port)))  # an MJPEG client that never reads
        stalled.sendall(f"GET /stream/0.mjpg?token={TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.3)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)  # while the page still fetches frames and listens to events
        out, err = proc.communicate(timeout=20)
        exited = time.monotonic() - sent
    finally:
        proc.kill()
        if stalled is not None:
            stalled.close()
    assert proc.returncode == 0, err
    assert "stopped by signal; all threads joined in" in out, out + err
    joined_s = float(out.split("all threads joined in ")[1].split(" s")[0])
    assert joined_s < 1.0
    assert exited < 2.5, f"the process took {exited:.2f} s to exit after SIGINT"  # generous: a loaded machine
    assert TOKEN not in out + err  # the token is never printed or logged
