"""The web view's app on a hand-fed board: API, SSE, MJPEG, metrics, tokens and status codes, over real HTTP."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("uvicorn")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from distill.errors import ConfigError  # noqa: E402
from distill.realtime._state import LatencyHistogram  # noqa: E402
from distill.realtime.capture import CapturedFrame  # noqa: E402
from distill.realtime.inference import Shown  # noqa: E402
from distill.realtime.live import EventFeed, JpegCache, SourceCounters  # noqa: E402
from distill.realtime.web import WebServer  # noqa: E402

CLASSES = ("idle", "running")
NAMES = ("cam-a", "cam-b")


class HandBoard:
    """A `Board` fed by the test: counters and shown frames are set directly."""

    def __init__(self) -> None:
        self.classes = list(CLASSES)
        self.start_mono = time.monotonic()
        self.latency = LatencyHistogram()
        for ms in (3, 4, 8, 30, 120):
            self.latency.add(ms / 1000)
        self.sources = [
            SourceCounters(n, "file", "running", 0, 0, 0, 0, 0, 0, (0, 0), self.latency.snapshot(), 0.165)
            for n in NAMES
        ]
        self._shown: list[Shown | None] = [None, None]
        self.frames = 0

    def counters(self) -> list[SourceCounters]:
        return list(self.sources)

    def shown(self, number: int) -> Shown | None:
        return self._shown[number]

    def show(self, number: int, label: str, by: str = "student", size: tuple[int, int] = (90, 160)) -> Shown:
        self.frames += 1
        if size[1] <= 640:
            image = np.full((*size, 3), (40, (self.frames * 37) % 256, 200), np.uint8)  # each frame its own colour
        else:  # noise: a large JPEG
            image = np.random.default_rng(self.frames).integers(0, 256, (*size, 3), dtype=np.uint8)
        frame = CapturedFrame(number, self.frames, self.frames / 25, time.monotonic(), image)
        shown = Shown(frame, label, 0.91, by, label, 0.91)
        self._shown[number] = shown
        self.sources[number] = replace(
            self.sources[number],
            captured=self.sources[number].captured + 1,
            classified=self.sources[number].classified + 1,
            class_counts=tuple(c + (CLASSES[i] == label) for i, c in enumerate(self.sources[number].class_counts)),
        )
        return shown


class Served:
    """A `WebServer` on a free port, on its own thread, stopped (and timed) by `close`."""

    def __init__(self, token: str | None = None) -> None:
        self.board = HandBoard()
        self.feed = EventFeed(NAMES)
        self.server = WebServer(self.board, self.feed, "127.0.0.1", 0, token)
        self.stop = self.server.stop
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def request(self, method: str, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def get_json(self, path: str) -> dict:
        status, _, body = self.request("GET", path)
        assert status == 200, body
        return json.loads(body)

    def close(self) -> float:
        """Stop the server; returns how long the thread took to end."""
        start = time.monotonic()
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive(), "the web thread did not stop"
        return time.monotonic() - start


@pytest.fixture
def served():
    s = Served()
    yield s
    s.close()


@pytest.fixture(scope="module")
def shared():
    s = Served()  # for tests that only read: one server for all their cases
    yield s
    s.close()


def test_sources_api_reports_labels_stats_and_timeline(served: Served) -> None:
    served.board.show(0, "running", by="teacher")
    served.feed.publish({"event": "label", "source": "cam-a", "t": 0.0, "label": "idle", "by": "student"})
    served.feed.publish({"event": "label", "source": "cam-a", "t": 1.0, "label": "running", "by": "teacher"})
    state = served.get_json("/api/sources")
    assert state["classes"] == list(CLASSES)
    a, b = state["sources"]
    assert (a["id"], a["name"], a["label"], a["by"], a["confidence"]) == (0, "cam-a", "running", "teacher", 0.91)
    assert b["label"] is None and b["timeline"] == []
    assert [(label, by) for _, label, by in a["timeline"]] == [("idle", "student"), ("running", "teacher")]
    assert a["stats"]["classified"] == 1 and a["stream"] == "/stream/0.mjpg"
    assert a["stats"]["latency_ms"]["p95"] == pytest.approx(120, abs=1)
    status, headers, body = served.request("GET", "/healthz")
    assert (status, body) == (200, b"ok\n")
    status, headers, body = served.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"/api/events" in body
    assert b"http://" not in body and b"https://" not in body  # nothing fetched from elsewhere


@pytest.mark.parametrize(
    ("method", "path", "status", "says"),
    [
        ("GET", "/nope", 404, "not found: /nope"),
        ("GET", "/api/nope", 404, "not found"),
        ("GET", "/stream/7.mjpg", 404, "no stream '7.mjpg'"),
        ("GET", "/stream/cam-a.mjpg", 404, "no stream"),
        ("GET", "/stream/0.png", 404, "no stream"),
        ("GET", "/stream/1.jpg", 503, "no frame yet"),
        ("GET", "/api/events?after=x", 400, "after must be an event number"),
        ("POST", "/api/sources", 405, "method POST not allowed on /api/sources"),
        ("DELETE", "/metrics", 405, "not allowed"),
    ],
)
def test_bad_requests_get_the_right_status_and_one_line(
    shared: Served, method: str, path: str, status: int, says: str
) -> None:
    got, headers, body = shared.request(method, path)
    assert got == status
    text = body.decode()
    assert says in text and text.endswith("\n") and text.count("\n") == 1
    if status == 405:
        assert "GET" in headers["allow"]


def test_token_is_required_everywhere() -> None:
    served = Served(token="s3cret")
    try:
        for path in ("/", "/api/sources", "/api/events", "/stream/0.mjpg", "/metrics", "/healthz", "/nope"):
            status, headers, body = served.request("GET", path)
            assert status == 401, path
            assert body.decode().count("\n") == 1 and "--http-token" in body.decode()
            assert headers["www-authenticate"] == "Bearer"
            assert served.request("GET", path, {"Authorization": "Bearer wrong"})[0] == 401
        assert served.request("GET", "/healthz", {"Authorization": "Bearer s3cret"})[0] == 200
        assert served.request("GET", "/api/sources?token=s3cret")[0] == 200
        assert served.request("GET", "/nope?token=s3cret")[0] == 404  # past the check, the usual statuses
        status, headers, _ = served.request("GET", "/?token=s3cret")  # the page sets a cookie for its own requests
        assert status == 200 and "HttpOnly" in headers["set-cookie"]
        cookie = headers["set-cookie"].split(";")[0]
        assert served.request("GET", "/metrics", {"Cookie": cookie})[0] == 200
    finally:
        served.close()


def test_metrics_parse_and_the_frame_counter_grows(served: Served) -> None:
    def scrape() -> dict:
        status, headers, body = served.request("GET", "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        return {f.name: f for f in text_string_to_metric_families(body.decode())}

    def value(families: dict, name: str, suffix: str = "_total", **labels) -> float:
        samples = families[name].samples
        return next(s.value for s in samples if s.name == name + suffix and labels.items() <= s.labels.items())

    for _ in range(3):
        served.board.show(0, "idle")
    first = scrape()
    assert value(first, "distill_frames_classified", source="cam-a") == 3
    assert value(first, "distill_frames_by_class", source="cam-a", label="idle") == 3
    assert value(first, "distill_frames_by_class", source="cam-a", label="running") == 0
    assert first["distill_frames_captured"].type == "counter"
    latency = first["distill_capture_to_label_seconds"]
    assert latency.type == "histogram"
    buckets = {
        s.labels["le"]: s.value for s in latency.samples if s.name.endswith("_bucket") and s.labels["source"] == "cam-a"
    }
    assert buckets["0.005"] == 2 and buckets["0.01"] == 3 and buckets["0.05"] == 4 and buckets["+Inf"] == 5
    assert value(first, "distill_capture_to_label_seconds", "_count", source="cam-a") == 5

    for _ in range(4):
        served.board.show(0, "running")
    second = scrape()
    assert value(second, "distill_frames_classified", source="cam-a") == 7
    assert value(second, "distill_frames_by_class", source="cam-a", label="running") == 4


def read_sse(sock_file, count: int) -> list[tuple[int, str, dict]]:
    """`count` events from a raw SSE response body (after its headers)."""
    events, fields = [], {}
    while len(events) < count:
        line = sock_file.readline().decode()
        assert line, "the stream ended early"
        line = line.rstrip("\n")
        if not line and "data" in fields:
            events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
            fields = {}
        elif line and not line.startswith(":"):
            key, _, val = line.partition(": ")
            fields[key] = val
    return events


def open_stream(port: int, path: str, extra: str = "") -> tuple[socket.socket, object]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
    f = sock.makefile("rb")
    assert f.readline().startswith(b"HTTP/1.1 200")
    while f.readline() not in (b"\r\n", b""):
        pass
    return sock, f


def _chunked_lines(f):
    """Yield the body of a chunked HTTP response as one file-like object of lines."""

    class Lines:
        def __init__(self) -> None:
            self.buffer = b""

        def readline(self) -> bytes:
            while b"\n" not in self.buffer:
                size = int(f.readline().strip(), 16)
                if size == 0:
                    return b""
                self.buffer += f.read(size)
                f.readline()
            line, _, self.buffer = self.buffer.partition(b"\n")
            return line + b"\n"

    return Lines()


def test_events_stream_replays_and_follows_in_order(served: Served) -> None:
    labels = ["idle", "running", "idle"]
    for i, label in enumerate(labels[:2]):
        served.feed.publish({"event": "label", "source": "cam-a", "t": i, "label": label, "by": "student"})
    served.feed.publish({"event": "stats", "inference_fps": 25.0})
    sock, f = open_stream(served.server.port, "/api/events?after=0")
    try:
        lines = _chunked_lines(f)
        first = read_sse(lines, 3)
        served.feed.publish({"event": "label", "source": "cam-b", "t": 2, "label": labels[2], "by": "student"})
        (last,) = read_sse(lines, 1)
    finally:
        sock.close()
    assert [n for n, _, _ in first + [last]] == [1, 2, 3, 4]
    assert [e for _, e, _ in first] == ["label", "label", "stats"]
    assert [r["label"] for _, e, r in first + [last] if e == "label"] == labels
    assert last[2] == {"event": "label", "source": "cam-b", "t": 2, "label": "idle", "by": "student"}

    sock, f = open_stream(served.server.port, "/api/events", "Last-Event-ID: 2\r\n")  # a browser reconnecting
    try:
        resumed = read_sse(_chunked_lines(f), 2)
    finally:
        sock.close()
    assert [n for n, _, _ in resumed] == [3, 4]


def read_part(f) -> bytes:
    """One JPEG part of a chunked multipart/x-mixed-replace body."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += f.read(1)
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    body = f.read(length)
    f.read(2)
    return body


class ChunkReader:
    def __init__(self, f) -> None:
        self.f, self.buffer = f, b""

    def read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            size = int(self.f.readline().strip(), 16)
            self.buffer += self.f.read(size)
            self.f.readline()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out


def test_mjpeg_clients_get_new_frames_encoded_once_and_a_stalled_one_blocks_nothing(
    served: Served, tmp_path: Path
) -> None:
    board, port = served.board, served.server.port
    for _ in range(3):
        board.show(0, "idle")
    time.sleep(0.1)
    assert served.server.app.state.frames.caches[0].encoded == 0  # nobody watches: nothing encoded

    stalled = socket.socket()  # asks for the stream, then never reads
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting, so the window stays small
    stalled.connect(("127.0.0.1", port))
    stalled.sendall(b"GET /stream/0.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
    readers = [open_stream(port, "/stream/0.mjpg") for _ in range(3)]
    try:
        got = [[read_part(ChunkReader(f))] for _, f in readers]  # each starts with the frame shown now
        for n in range(5):
            board.show(0, "running" if n % 2 else "idle")
            for parts, (_, f) in zip(got, readers):
                parts.append(read_part(ChunkReader(f)))
        image = cv2.imdecode(np.frombuffer(got[0][-1], np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[1] >= 160  # a real JPEG of the frame, label drawn on it
        cv2.imwrite(str(tmp_path / "frame.jpg"), image)
        for parts in got:
            assert len(parts) == 6 and len({p for p in parts}) == 6  # every new frame, each one different
        caches = served.server.app.state.frames.caches
        assert caches[0].encoded <= 6  # four clients (one stalled), six frames: encoded once each
        assert caches[1].encoded == 0
        for sock, f in readers:
            f.close()
            sock.close()
        for _ in range(40):  # about 40 MB of JPEGs: more than the stalled client's socket buffers hold
            board.show(0, "idle", size=(540, 960))
            time.sleep(0.02)
        elapsed = served.close()  # the stalled client must not hold the server open
        assert elapsed < 1.0
    finally:
        stalled.close()
        for sock, _ in readers:
            sock.close()


def test_a_busy_port_is_a_one_line_config_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}.*--http"):
            WebServer(HandBoard(), EventFeed(NAMES), "127.0.0.1", port)


def test_event_feed_keeps_the_newest_events_and_a_timeline_per_source() -> None:
    feed = EventFeed(NAMES, kept=3)
    for i, label in enumerate(["idle", "running", "idle", "running", "idle"]):
        feed.publish({"event": "label", "source": NAMES[i % 2], "t": i, "label": label, "by": "student"})
    assert [n for n, _ in feed.since(0)] == [3, 4, 5]  # the ring holds the newest; nothing queues up
    assert feed.since(5) == [] and [n for n, _ in feed.since(4)] == [5]
    assert [label for _, label, _ in feed.timeline(0, span_s=1e6)] == ["idle", "idle", "idle"]
    assert [label for _, label, _ in feed.timeline(1, span_s=1e6)] == ["running", "running"]
    assert len(feed.timeline(0, span_s=-1)) == 1  # all older than the span: only the label still in force


@pytest.mark.parametrize(
    ("size", "width"), [((720, 1280), 640), ((48, 64), 640), ((360, 500), 640), ((300, 1000), 640)]
)
def test_jpeg_cache_encodes_each_frame_once_at_a_tile_size(size: tuple[int, int], width: int) -> None:
    board, cache = HandBoard(), JpegCache()
    shown = board.show(0, "idle", size=size)
    first = cache.get(shown)
    assert cache.get(shown) is first and cache.encoded == 1
    image = cv2.imdecode(np.frombuffer(first, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[1] == width
    cache.get(board.show(0, "running", size=size))
    assert cache.encoded == 2
